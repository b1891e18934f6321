"""A disk that fails on demand, for the fault matrix (tests/test_storage_faults.py).

`failing_storage(monkeypatch, fault)` makes every artifact root opened in this process a wrapper
around the real file system it names (a local folder, or fsspec's in-memory store standing in for a
remote root) that reports each write to `fault` and lets it fail:

- the fsspec calls the artifact layer writes with (`open` for writing, `mv`, `put_file`, `pipe_file`,
  `cp_file`), on local and remote roots alike;
- for local roots, the writes the pipeline makes straight to disk under the root: `open()` for writing,
  `os.replace` and `os.link` (the lease's temp file and link, vector shards' memory maps).

Each write is named by its **write point** (`point_of`: lease, plan, manifest, part, image, ...). A
`Fault(point, kind)` fires at that point's first write (`enospc`: nothing written; `short`: half the
bytes written, then ENOSPC) or at its first rename/link into place (`eio`; its first write where the
point has no rename). Once fired the disk stays broken, as a full one does: every later write fails
the same way (removing files still works) until `fault.clear()` (the space freed). A fault with
`point=None` only records what was written where (`fault.seen`).
"""

from __future__ import annotations

import builtins
import errno
import os
import re
from dataclasses import dataclass, field

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

# (write point, pattern over the path with `_tmp.` taken off its base name); the first match names it
POINTS: list[tuple[str, str]] = [
    ("lease", r"/_LEASE"),
    ("plan", r"/_PLAN\.json"),
    ("attempt owner", r"/_ATTEMPT\.json"),
    ("shard marker", r"/_shards/"),
    ("drop file", r"/_drops/|/attempts/[^/]+/drops-\d+\.parquet"),
    ("stage manifest", r"/partitions/[^/]+/[^/]+/_MANIFEST\.json"),
    ("part file", r"/attempts/[^/]+/[a-z_]+-\d{5}\.parquet"),
    ("stored config", r"/_configs/"),
    ("image", r"/images/[0-9a-f]{2}/"),
    ("tokenizer", r"/tokenizer\.json"),
    ("embedding cache", r"/cache/embeddings/"),
    ("request cache", r"/cache/requests/"),
    ("vector shard", r"/cache/vectors/"),
    ("corpus table", r"/corpora/"),
    ("checkpoint", r"/models/"),
    ("user index", r"/indexes/"),
]
KINDS = {"enospc": errno.ENOSPC, "short": errno.ENOSPC, "eio": errno.EIO}


def point_of(path: str) -> str:
    path = re.sub(r"/_tmp\.", "/", str(path))
    return next((name for name, pattern in POINTS if re.search(pattern, path)), "other")


@dataclass
class Fault:
    point: str | None = None  # None: record only
    kind: str = "enospc"
    commits: set[str] = field(default_factory=set)  # points that rename/link into place (for `eio`)
    seen: list[tuple[str, str, str]] = field(default_factory=list)  # (point, "write" | "commit", path)
    fired: str | None = None  # the path it first failed
    broken: bool = False

    def clear(self) -> None:
        """The cause fixed (space freed, device back): writes succeed again."""
        self.broken = False

    def error(self, path: str) -> OSError:
        code = KINDS[self.kind]
        return OSError(code, os.strerror(code), path)

    def _fires(self, op: str, point: str) -> bool:
        if self.broken:
            return True
        if self.fired is not None or point != self.point:
            return False
        if self.kind == "eio" and point in self.commits:
            return op == "commit"
        return True

    def on_write(self, path: str, data, raw) -> None:
        """Before `data` goes to `raw` (the real file) at `path`: raise when the disk fails here."""
        point = point_of(path)
        self.seen.append((point, "write", str(path)))
        if self._fires("write", point):
            self.fired, self.broken = self.fired or str(path), True
            if self.kind == "short" and len(data) > 1:
                raw.write(data[: len(data) // 2])
            raise self.error(str(path))

    def on_commit(self, path: str) -> None:
        """Before a finished file is renamed or linked to `path`."""
        point = point_of(path)
        self.seen.append((point, "commit", str(path)))
        if self._fires("commit", point):
            self.fired, self.broken = self.fired or str(path), True
            raise self.error(str(path))


class FaultyFile:
    """A file open for writing whose writes go through the fault first."""

    def __init__(self, raw, fault: Fault, path: str):
        self._raw, self._fault, self._path = raw, fault, path

    def write(self, data):
        self._fault.on_write(self._path, data, self._raw)
        return self._raw.write(data)

    def __getattr__(self, name):
        return getattr(self._raw, name)

    def __iter__(self):
        return iter(self._raw)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._raw.close()


def _writing(mode: str) -> bool:
    return any(c in mode for c in "wxa+")


class FaultyFS:
    """Mixin over an fsspec file system: its writes report to (and may fail at) `fault`."""

    fault: Fault
    cachable = False

    def _open(self, path, mode="rb", *args, **kwargs):
        f = super()._open(path, mode, *args, **kwargs)
        return FaultyFile(f, self.fault, path) if _writing(mode) else f

    def mv(self, path1, path2, *args, **kwargs):
        self.fault.on_commit(path2)
        return super().mv(path1, path2, *args, **kwargs)

    def put_file(self, lpath, rpath, *args, **kwargs):
        self.fault.on_write(rpath, b"", None)
        return super().put_file(lpath, rpath, *args, **kwargs)

    def pipe_file(self, path, value, *args, **kwargs):
        self.fault.on_write(path, value, None)
        return super().pipe_file(path, value, *args, **kwargs)

    def cp_file(self, path1, path2, *args, **kwargs):
        self.fault.on_write(path2, b"", None)
        return super().cp_file(path1, path2, *args, **kwargs)


class FaultyLocal(FaultyFS, LocalFileSystem):
    pass


class FaultyMemory(FaultyFS, MemoryFileSystem):
    pass


def failing_storage(monkeypatch, fault: Fault, local_root: str | None = None) -> None:
    """Route this process's artifact roots through `fault` (see the module docstring). `local_root`:
    also the direct writes under that folder (open, os.replace, os.link)."""
    real = fsspec.core.url_to_fs

    def url_to_fs(url, **kwargs):
        fs, path = real(url, **kwargs)
        for plain, faulty in ((LocalFileSystem, FaultyLocal), (MemoryFileSystem, FaultyMemory)):
            if type(fs) is plain:
                wrapped = faulty(**kwargs)
                wrapped.fault = fault
                return wrapped, path
        return fs, path

    monkeypatch.setattr(fsspec.core, "url_to_fs", url_to_fs)
    if local_root is None:
        return
    under = os.path.realpath(local_root) + os.sep
    real_open, real_replace, real_link = builtins.open, os.replace, os.link

    def inside(path) -> bool:
        return isinstance(path, (str, os.PathLike)) and os.path.realpath(os.fspath(path)).startswith(under)

    def open_(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return FaultyFile(f, fault, os.fspath(file)) if _writing(mode) and inside(file) else f

    def replace(src, dst, *args, **kwargs):
        if inside(dst):
            fault.on_commit(os.fspath(dst))
        return real_replace(src, dst, *args, **kwargs)

    def link(src, dst, *args, **kwargs):
        if inside(dst):
            fault.on_commit(os.fspath(dst))
        return real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "link", link)

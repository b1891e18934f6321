"""Reading a stage's output a page at a time, in memory bounded independently of the table's size,
and opening any file of the root safely (`open_regular`).

A stage's manifest lists its output files with their row counts; a file's footer gives its row
groups' counts. A page of rows [start, stop) skips whole files and row groups by those counts and
streams the row group(s) that hold its rows in batches of `BATCH` rows, one column at a time (so
the reader holds a batch and a page of one column, however wide the table), keeping only the
page's rows. With filters (a column equal to a value), one scan of the filter columns alone counts the
matches per row group (cached: a few integers per row group, and each filter column's distinct
values for the filter form; the cache is bounded by the bytes it holds, `SCAN_BYTES`), so the rows
themselves are again read only from the row groups that hold the page. A lookup by id (`find_rows`)
streams the file in batches and keeps only the matches.

Every file of the root (Parquet, JSON, Markdown, images) is opened through `open_regular`: a
regular file inside the root, reached without a symlink at any step below the root, with a single
link, and (for the callers that give one) at most a cap in bytes; anything else is `Refused`, saying
why. Parquet files must also have the manifest's size and row count (as
`nyx_tasks.store.artifacts.iter_stage_batches` checks). Nothing here caches rows or tables.
"""

from __future__ import annotations

import math
import os
import stat
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from nyx_tasks.store.artifacts import SnapshotError, repair_hint

BATCH = 256  # rows decoded at a time: a batch of the widest table (triplets with texts) is a few MB
BUFFER = 1 << 16  # the Parquet reader streams column chunks through a buffer this big
# what the filter scans kept between requests may hold (estimated by `footprint`): a filter value is
# part of its key, and each distinct value of every request used to be kept (the last 64 scans,
# however big: five `reason` filters on a 1M-row drops table grew the API server by 430 MB)
SCAN_BYTES = 64 << 20


# ------------------------------------------------------------------ files of the root


class Refused(SnapshotError):
    """A file or folder of the root the explorer will not read, and why (`rel` and `why`); the app
    answers 404 with the message and logs it."""

    def __init__(self, rel: str, why: str):
        super().__init__(f"{rel}: {why}")
        self.rel, self.why = rel, why


class TooLarge(Refused):
    """A file over the cap its reader gives (a report, an image): refused before it is read."""


KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"),
         (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _kind(mode: int) -> str:
    return next((name for test, name in KINDS if test(mode)), "not a regular file")


def _file_refusal(st: os.stat_result, cap: int | None) -> tuple[str, type[Refused]] | None:
    """Why a file with this stat is refused (and as what), or None."""
    if not stat.S_ISREG(st.st_mode):
        return f"{_kind(st.st_mode)}, not a regular file", Refused
    if st.st_nlink != 1:  # another name of the same bytes, which may be outside the root
        return f"hard-linked ({st.st_nlink} links), not a file of the root alone", Refused
    if cap is not None and st.st_size > cap:
        return over_cap(st.st_size, cap), TooLarge
    return None


def over_cap(size: int, cap: int) -> str:
    return f"{size:,} bytes, over the explorer's cap of {cap:,} bytes"


def _parts(rel: str) -> list[str]:
    parts = rel.split("/") if isinstance(rel, str) else []
    if not parts or rel.startswith("/") or "\\" in rel or "\0" in rel or any(p in ("", ".", "..") for p in parts):
        raise Refused(repr(rel), "not a path inside the root")
    return parts


def _open_local(store, rel: str, folder: bool, cap: int | None) -> int:
    """A descriptor of the local root's `rel`, each step below the root opened relative to the one
    before without following a symlink (so nothing swapped in between the check and the read
    leads out of the root); the last step a folder or a regular file (see `_file_refusal`)."""
    parts = _parts(rel)
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(os.path.realpath(store.base), flags | os.O_DIRECTORY)
    try:
        for i, name in enumerate(parts):
            where, last = "/".join(parts[:i + 1]), i == len(parts) - 1
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)  # FileNotFoundError: absent
            except NotADirectoryError as e:
                raise FileNotFoundError(where) from e
            if stat.S_ISLNK(st.st_mode):
                raise Refused(rel, "a symlink" if last else f"under a symlink ({where})")
            if not last or folder:
                if not stat.S_ISDIR(st.st_mode):
                    raise Refused(rel, f"{where} is {_kind(st.st_mode)}, not a folder")
                step = os.open(name, flags | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            else:
                if (problem := _file_refusal(st, cap)) is not None:
                    raise problem[1](rel, problem[0])
                # no blocking on a FIFO swapped in after the stat; checked again on what was opened
                step = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
                opened = os.fstat(step)
                problem = _file_refusal(opened, cap)
                if problem is not None or (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
                    os.close(step)
                    why, kind = problem or ("replaced while it was opened", Refused)
                    raise kind(rel, why)
            os.close(fd)
            fd = step
        step, fd = fd, -1
        return step
    except OSError as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise Refused(rel, f"cannot be opened ({e.strerror or e})") from e
    finally:
        if fd >= 0:
            os.close(fd)


def open_regular(store, rel: str, cap: int | None = None):
    """The root's file `rel` (relative to the root, no `..`), opened for reading in binary: a regular
    file inside the root, reached without a symlink anywhere below the root, with one link, of at
    most `cap` bytes. FileNotFoundError when there is none; `Refused` (`TooLarge` over the cap),
    saying why, for anything else. A remote root has neither symlinks nor hard links: its file must
    be a file (and within the cap)."""
    if store.is_local:
        return os.fdopen(_open_local(store, rel, False, cap), "rb")
    _parts(rel)
    try:
        info = store.fs.info(store.path(rel))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise Refused(rel, f"cannot be opened ({e})") from e
    if info.get("type") != "file":
        raise Refused(rel, f"a {info.get('type', 'thing')}, not a file")
    if cap is not None and (info.get("size") or 0) > cap:
        raise TooLarge(rel, over_cap(info["size"], cap))
    return store.fs.open(store.path(rel), "rb")


def is_regular(store, rel: str) -> bool:
    """`rel` names a regular file of the root that `open_regular` opens (no cap)."""
    try:
        open_regular(store, rel).close()
    except (FileNotFoundError, Refused):
        return False
    return True


def folder_exists(store, rel: str) -> bool:
    """`rel` is a folder of the root reached without a symlink (True) or absent (False); anything
    else (a symlink on the way, a file) is `Refused`. On a remote root: whether it exists."""
    if not store.is_local:
        _parts(rel)
        return store.exists(rel)
    try:
        os.close(_open_local(store, rel, True, None))
    except FileNotFoundError:
        return False
    return True


@dataclass(frozen=True)
class Output:
    """One output kind of a committed stage snapshot, as its manifest lists it."""

    store: Any
    manifest: dict
    kind: str

    @property
    def entries(self) -> list[dict]:
        return (self.manifest.get("outputs") or {}).get(self.kind) or []

    @property
    def rows(self) -> int:
        return sum(int(e["rows"]) for e in self.entries)

    def key(self) -> tuple:
        """What identifies its bytes: the files with their sizes and hashes (the cache key)."""
        return (self.store.root, self.kind,
                tuple((e["path"], e.get("bytes"), e.get("sha256")) for e in self.entries))


@contextmanager
def open_checked(out: Output, entry: dict):
    """The Parquet file of a manifest entry, checked: a regular file inside the root
    (`open_regular`), of the manifest's size and row count (SnapshotError otherwise, as the
    pipeline's readers say; `Refused` when it is no regular file of the root)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    store, rel = out.store, entry["path"]
    stage = out.manifest.get("stage", "?")
    try:
        f = open_regular(store, rel)
    except FileNotFoundError as e:
        raise SnapshotError(f"{stage} output {rel!r} is missing under {store.root}; {repair_hint(out.manifest)}") from e
    except Refused as e:
        raise Refused(e.rel, f"{e.why}: the {stage} output is not a regular file under {store.root}; "
                             f"{repair_hint(out.manifest)}") from e
    with f:
        size = os.fstat(f.fileno()).st_size if store.is_local else store.size(rel)
        if "bytes" in entry and size != entry["bytes"]:
            raise SnapshotError(f"{stage} output {store.url(rel)}: {size} bytes, the manifest says "
                                f"{entry['bytes']}; {repair_hint(out.manifest)}")
        # streamed: no pre-buffering of whole column chunks (pyarrow's default), whose memory grows
        # with the row group; what the reader held is handed back to the OS after the file
        pf = pq.ParquetFile(f, buffer_size=BUFFER, pre_buffer=False)
        if pf.metadata.num_rows != entry["rows"]:
            raise SnapshotError(f"{stage} output {store.url(rel)}: {pf.metadata.num_rows} rows, the manifest "
                                f"says {entry['rows']}; {repair_hint(out.manifest)}")
        try:
            yield pf
        finally:
            del pf
            pa.default_memory_pool().release_unused()


def group_batches(pf, group: int, columns: list[str] | None = None) -> Iterator:
    """One row group's batches. On one thread: decoding on the thread pool leaves each worker's
    allocator holding freed pages, and the API server's memory then grows with the rows skipped
    (measured: +90 MB at row 290k of a 300k-row group, +44 MB on one thread, flat past 50k)."""
    return pf.iter_batches(batch_size=BATCH, row_groups=[group], columns=columns, use_threads=False)


def _mask(batch, filters: tuple[tuple[str, str], ...]):
    """Rows of `batch` whose columns equal every filter (nulls never match)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    mask = pa.array([True] * batch.num_rows, pa.bool_())
    for column, value in filters:
        mask = pc.and_(mask, pc.fill_null(pc.equal(batch.column(column), value), False))
    return mask


@dataclass(frozen=True)
class Scan:
    counts: tuple[tuple[int, ...], ...]  # per file, per row group: rows matching the filters
    choices: dict[str, list]  # each filter column's distinct values (over every row)

    @property
    def total(self) -> int:
        return sum(sum(c) for c in self.counts)


def footprint(obj) -> int:
    """Roughly the bytes `obj` holds: `sys.getsizeof` of it and of everything it contains (tuples,
    lists, sets, dicts, dataclasses), each object counted once."""
    seen, todo, total = set(), [obj], 0
    while todo:
        o = todo.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        if isinstance(o, dict):
            todo.extend(o.keys())
            todo.extend(o.values())
        elif isinstance(o, list | tuple | set | frozenset):
            todo.extend(o)
        elif hasattr(o, "__dataclass_fields__"):
            todo.extend(getattr(o, f) for f in o.__dataclass_fields__)
    return total


class ByteLru:
    """A least-recently-used map bounded by the bytes its entries hold (key and value, estimated by
    `footprint`), not by their number: the budget is read at each insert (`SCAN_BYTES`), an entry
    bigger than the whole budget is not kept."""

    def __init__(self):
        self.entries: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()
        self.bytes = 0
        self.lock = threading.Lock()

    def get(self, key: tuple) -> tuple[bool, Any]:
        with self.lock:
            if key not in self.entries:
                return False, None
            self.entries.move_to_end(key)
            return True, self.entries[key][0]

    def put(self, key: tuple, value: Any, budget: int) -> None:
        size = footprint((key, value))
        with self.lock:
            if key in self.entries:
                self.bytes -= self.entries.pop(key)[1]
            if size <= budget:
                self.entries[key] = (value, size)
                self.bytes += size
            while self.bytes > budget:
                self.bytes -= self.entries.popitem(last=False)[1][1]

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()
            self.bytes = 0


_scans = ByteLru()


def _cached(key: tuple, compute):
    """compute(), kept while the scans kept stay within `SCAN_BYTES` (least recently used first
    out; each key holds the output's files' sizes and hashes, so a recomputed stage is read
    again); only small results are kept here."""
    hit, found = _scans.get(key)
    if hit:
        return found
    found = compute()
    _scans.put(key, found, SCAN_BYTES)
    return found


def scan(out: Output, filters: dict[str, str]) -> Scan:
    """Matches per row group and the filter columns' values, read from the filter columns alone."""
    columns = tuple(sorted(filters))
    active = tuple(sorted((k, v) for k, v in filters.items() if v))
    return _cached((out.key(), "scan", columns, active), lambda: _scan(out, columns, active))


def _scan(out: Output, columns: tuple[str, ...], active: tuple) -> Scan:
    import pyarrow.compute as pc

    counts, values = [], {c: set() for c in columns}
    for entry in out.entries:
        with open_checked(out, entry) as pf:
            per_group = []
            for group in range(pf.metadata.num_row_groups):
                if not columns:
                    per_group.append(pf.metadata.row_group(group).num_rows)
                    continue
                n = 0
                for batch in group_batches(pf, group, list(columns)):
                    n += (pc.sum(_mask(batch, active)).as_py() or 0) if active else batch.num_rows
                    for c in columns:
                        values[c].update(pc.unique(batch.column(c)).to_pylist())
                per_group.append(n)
            counts.append(tuple(per_group))
    choices = {c: sorted(v for v in vs if v is not None) for c, vs in values.items()}
    return Scan(tuple(counts), choices)


def read_range(out: Output, start: int, stop: int, filters: dict[str, str] | None = None,
               counts: tuple[tuple[int, ...], ...] | None = None) -> list[dict]:
    """Rows [start, stop) of the output, in order (of its rows matching `filters`, whose per row
    group match counts are `counts`, from `scan`). Only the row groups holding them are read."""
    active = tuple(sorted((k, v) for k, v in (filters or {}).items() if v))
    rows: list[dict] = []
    pos = 0
    for i, entry in enumerate(out.entries):
        in_file = int(entry["rows"]) if counts is None else sum(counts[i])
        if pos + in_file <= start or in_file == 0:
            pos += in_file
            continue
        with open_checked(out, entry) as pf:
            for group in range(pf.metadata.num_row_groups):
                n = pf.metadata.row_group(group).num_rows if counts is None else counts[i][group]
                if pos + n > start and n:
                    lo, hi = max(0, start - pos), min(n, stop - pos)
                    positions = _matches(pf, group, active, lo, hi) if active else list(range(lo, hi))
                    rows.extend(_take(pf, group, positions))
                pos += n
                if pos >= stop:
                    return rows
    return rows


def _matches(pf, group: int, active: tuple, lo: int, hi: int) -> list[int]:
    """The row numbers (in the row group) of its matches number lo..hi-1, from the filter columns."""
    import pyarrow.compute as pc

    found: list[int] = []
    seen = base = 0
    for batch in group_batches(pf, group, [c for c, _ in active]):
        hits = pc.indices_nonzero(_mask(batch, active)).to_pylist()
        found += [base + h for h in hits[max(0, lo - seen):max(0, hi - seen)]]
        seen, base = seen + len(hits), base + batch.num_rows
        if seen >= hi:
            break
    return found


def _take(pf, group: int, positions: list[int]) -> list[dict]:
    """The rows at `positions` (sorted, in the row group), read one column at a time: a batch and
    the current page of one column are all the reader holds, however wide the table."""
    import pyarrow as pa

    if not positions:
        return []
    columns = []
    for name in pf.schema_arrow.names:
        chunks, base, k = [], 0, 0
        for batch in group_batches(pf, group, [name]):
            end = base + batch.num_rows
            j = k
            while j < len(positions) and positions[j] < end:
                j += 1
            if j > k:
                chunks.append(batch.column(0).take(pa.array([p - base for p in positions[k:j]], pa.int64())))
            base, k = end, j
            if k == len(positions):
                break
        columns.append(pa.concat_arrays(chunks))
    return pa.Table.from_arrays(columns, schema=pf.schema_arrow).to_pylist()


@dataclass(frozen=True)
class Page:
    items: list[Any]
    number: int  # 1-based
    pages: int
    total: int
    per_page: int

    @property
    def first_index(self) -> int:
        return (self.number - 1) * self.per_page


def paginate(items: list, number: int, per_page: int) -> Page:
    """A page of a list already in memory (a page number past the end shows the last page)."""
    pages = max(1, math.ceil(len(items) / per_page))
    number = min(max(1, number), pages)
    start = (number - 1) * per_page
    return Page(items[start:start + per_page], number, pages, len(items), per_page)


def page_of(out: Output, number: int, per_page: int, filters: dict[str, str]) -> tuple[Page, dict[str, list]]:
    """Page `number` of the output's rows matching every non-empty filter (past the end: the last
    page), and each filter column's values."""
    found = scan(out, filters)
    active = {k: v for k, v in filters.items() if v}
    total = found.total if active else out.rows
    pages = max(1, math.ceil(total / per_page))
    number = min(max(1, number), pages)
    start = (number - 1) * per_page
    items = read_range(out, start, min(total, start + per_page), active, found.counts if active else None)
    return Page(items, number, pages, total, per_page), found.choices


def find_rows(out: Output, column: str, values, columns: list[str] | None = None) -> Iterator[dict]:
    """The rows whose `column` is one of `values`, streamed batch by batch (only matches are kept)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    wanted = pa.array(sorted(set(values)), pa.string())
    if not len(wanted):
        return
    for entry in out.entries:
        with open_checked(out, entry) as pf:
            for group in range(pf.metadata.num_row_groups):
                for batch in group_batches(pf, group, columns):
                    hits = batch.filter(pc.is_in(batch.column(column), value_set=wanted))
                    yield from hits.to_pylist()


def iter_batches(out: Output, columns: list[str] | None = None) -> Iterator:
    """Every batch of the output (of `columns`), streamed."""
    for entry in out.entries:
        with open_checked(out, entry) as pf:
            for group in range(pf.metadata.num_row_groups):
                yield from group_batches(pf, group, columns)


# ---------------------------------------------------------------- queries of windows
# The feedback stage writes a query's windows together (query by query, windows in rank order), so
# its queries are the runs of rows with one (source, qa_id): counted and found a page at a time
# from those two columns, without holding every query's id.


def _run_starts(out: Output, source: str) -> Iterator:
    """Per batch of the (source, qa_id) columns: the keys ("source\x1fqa_id") that start a run
    (of `source`'s rows, when given), and the batch's sources."""
    import pyarrow as pa
    import pyarrow.compute as pc

    prev = None
    for batch in iter_batches(out, ["source", "qa_id"]):
        sources = pc.unique(batch.column("source"))
        if source:
            batch = batch.filter(pc.fill_null(pc.equal(batch.column("source"), source), False))
        if not batch.num_rows:
            yield pa.array([], pa.string()), sources
            continue
        key = pc.binary_join_element_wise(batch.column("source"), batch.column("qa_id"), "\x1f")
        changes = pc.not_equal(key.slice(1), key.slice(0, len(key) - 1))
        first = pa.array([key[0].as_py() != prev])
        prev = key[-1].as_py()
        yield key.filter(pa.concat_arrays([first, changes])), sources


def _query_count(out: Output, source: str) -> tuple[int, list[str]]:
    total, sources = 0, set()
    for starts, batch_sources in _run_starts(out, source):
        total += len(starts)
        sources.update(batch_sources.to_pylist())
    return total, sorted(s for s in sources if s is not None)


def query_page(out: Output, number: int, per_page: int, source: str = "") -> tuple[Page, list[str]]:
    """Page `number` of the output's queries ((source, qa_id), in order of their first row; of
    `source` only, when given) and every source. Past the end: the last page."""
    total, sources = _cached((out.key(), "queries", source), lambda: _query_count(out, source))
    pages = max(1, math.ceil(total / per_page))
    number = min(max(1, number), pages)
    start, stop = (number - 1) * per_page, number * per_page
    keys, seen = [], 0
    for starts, _ in _run_starts(out, source):
        if seen + len(starts) > start:
            picked = starts.slice(max(0, start - seen), stop - max(seen, start)).to_pylist()
            keys += [tuple(k.split("\x1f", 1)) for k in picked]
        seen += len(starts)
        if seen >= stop:
            break
    return Page(keys, number, pages, total, per_page), sources

"""The artifact layer: an fsspec root holding content-addressed images and
per-(partition, stage) snapshots of Parquet shards. Each attempt at a stage writes
under its own folder, every file under a temporary name renamed into place and
every JSON marker only after its data is closed; the manifest, written last,
names the committed snapshot's files, and readers read exactly those, checked
against it (`iter_stage_batches`, `snapshot_problems`).

    <root>/images/<sha256[:2]>/<sha256>.<ext>
    <root>/partitions/<partition>/<stage>/_MANIFEST.json                 the snapshot, written last
    <root>/partitions/<partition>/<stage>/_LEASE.json                    the one writer now (lease.py)
    <root>/partitions/<partition>/<stage>/_PLAN.json                     the current attempt's plan
    <root>/partitions/<partition>/<stage>/attempts/<attempt>/<kind>-<shard:05d>.parquet
    <root>/partitions/<partition>/<stage>/attempts/<attempt>/_shards/<shard>.json   per-shard marker
    <root>/partitions/<partition>/_EXPERIMENT.json                       a variant partition's base (experiments)

A manifest lists its files by path from the root, so a variant partition of an experiment
(`nyx_tasks.experiments`) can hold a manifest that adopts its base partition's snapshot by
reference (`adopted_manifest`): every reader resolves it to the base's files unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import fsspec

from nyx_tasks.core.base import StageError

TMP_PREFIX = "_tmp."
MANIFEST = "_MANIFEST.json"
EXPERIMENT = "_EXPERIMENT.json"  # in a variant partition: {experiment, variant, base, overrides}


class SnapshotError(StageError):
    """A committed snapshot does not match its manifest (missing, changed or unreadable files)."""


class RootError(StageError):
    """The artifact root cannot be used (unknown protocol, missing driver, a file)."""


class ArtifactStore:
    def __init__(self, root: str):
        self.root = root.rstrip("/")
        try:
            self.fs, self.base = fsspec.core.url_to_fs(self.root)
        except (ValueError, ImportError) as e:  # unknown protocol; a protocol whose driver is not installed
            raise RootError(f"artifact root {root!r} cannot be opened: {e}") from e
        self.base = self.base.rstrip("/")
        if self.base and self.fs.isfile(self.base):
            raise RootError(f"artifact root {root!r} is a file; give a directory (or a URL of one)")

    @property
    def is_local(self) -> bool:
        """A local file system root: tools that need real paths (training, matplotlib) write in place."""
        protocols = (self.fs.protocol,) if isinstance(self.fs.protocol, str) else self.fs.protocol
        return bool({"file", "local"} & set(protocols))

    # ---------------------------------------------------------------- paths
    def path(self, rel: str) -> str:
        return f"{self.base}/{rel.lstrip('/')}"

    def url(self, rel: str) -> str:
        """A user-facing location (URL for remote roots, path for local ones)."""
        return f"{self.root}/{rel.lstrip('/')}"

    @staticmethod
    def stage_rel(partition: str, stage: str) -> str:
        return f"partitions/{partition}/{stage}"

    @staticmethod
    def shard_file(kind: str, shard: int) -> str:
        return f"{kind}-{shard:05d}.parquet"

    @staticmethod
    def image_rel(image_id: str, ext: str) -> str:
        return f"images/{image_id[:2]}/{image_id}.{ext}"

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def listdir(self, rel: str) -> list[str]:
        """Base names under `rel` (empty when missing)."""
        p = self.path(rel)
        if not self.fs.exists(p):
            return []
        return sorted(x.rstrip("/").rsplit("/", 1)[-1] for x in self.fs.ls(p, detail=False))

    def remove(self, rel: str) -> None:
        p = self.path(rel)
        if self.fs.exists(p):
            self.fs.rm(p, recursive=True)

    # ------------------------------------------------------------ atomicity
    def _tmp_for(self, rel: str) -> str:
        head, _, name = rel.rpartition("/")
        return f"{head}/{TMP_PREFIX}{name}.{uuid.uuid4().hex[:8]}" if head else f"{TMP_PREFIX}{name}"

    def commit_tmp(self, tmp_rel: str, rel: str) -> None:
        """Rename a finished temporary file into place (atomic on local and POSIX file systems)."""
        self.fs.mv(self.path(tmp_rel), self.path(rel))

    def write_bytes_atomic(self, rel: str, data: bytes) -> None:
        """`data` at `rel`, whole or not at all: a failed write (a full disk) leaves no temporary file."""
        tmp = self._tmp_for(rel)
        self.fs.makedirs(self.path(rel).rsplit("/", 1)[0], exist_ok=True)
        try:
            with self.fs.open(self.path(tmp), "wb") as f:
                f.write(data)
            self.commit_tmp(tmp, rel)
        except BaseException:
            self.discard(tmp)
            raise

    def discard(self, rel: str) -> None:
        """Remove a temporary file after a failed write, if it is there (never raises: the write's
        own error is the one to report)."""
        with contextlib.suppress(Exception):
            self.remove(rel)

    def write_json_atomic(self, rel: str, obj: Any) -> None:
        self.write_bytes_atomic(rel, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def read_json(self, rel: str) -> Any | None:
        p = self.path(rel)
        if not self.fs.exists(p):
            return None
        with self.fs.open(p, "rb") as f:
            return json.loads(f.read())

    def size(self, rel: str) -> int:
        return int(self.fs.size(self.path(rel)))

    def sha256(self, rel: str) -> str:
        h = hashlib.sha256()
        with self.fs.open(self.path(rel), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    # ---------------------------------------------------------------- images
    def put_image(self, image_id: str, ext: str, data: bytes) -> str:
        """Store image bytes once under their sha256; returns the relative path."""
        rel = self.image_rel(image_id, ext)
        if not self.exists(rel):
            self.write_bytes_atomic(rel, data)
        return rel

    # --------------------------------------------------------------- parquet
    def parquet_writer(self, rel: str, schema, name: str = "") -> ParquetShardWriter:
        return ParquetShardWriter(self, rel, schema, name or rel)

    def read_parquet(self, rel: str, columns: list[str] | None = None, batch_size: int = 1024):
        """Stream record batches of one Parquet file."""
        with self.fs.open(self.path(rel), "rb") as f:
            yield from iter_parquet_file(f, columns=columns, batch_size=batch_size)


def iter_parquet_file(f, columns: list[str] | None = None, batch_size: int = 1024) -> Iterator:
    """Record batches of an open Parquet file, one row group at a time.

    A single `iter_batches` over the whole file sets up state for every row
    group at once, so its memory grows with the file (measured: +25 MiB at 40k
    documents); reading row group by row group stays flat.
    """
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(f)
    for rg in range(pf.metadata.num_row_groups):
        yield from pf.iter_batches(batch_size=batch_size, row_groups=[rg], columns=columns)


class ParquetShardWriter:
    """Streams row groups to a temporary file; `close()` renames it into place.

    A reader never sees a partial file: until `close()` the data lives under a
    `_tmp.` name that no reader lists. Every table is checked against the schema.
    """

    def __init__(self, store: ArtifactStore, rel: str, schema, name: str):
        import pyarrow.parquet as pq

        self.store, self.rel, self.schema, self.name = store, rel, schema, name
        self.tmp_rel = store._tmp_for(rel)
        store.fs.makedirs(store.path(rel).rsplit("/", 1)[0], exist_ok=True)
        self._fh = store.fs.open(store.path(self.tmp_rel), "wb")
        try:
            self._writer = pq.ParquetWriter(self._fh, schema, compression="zstd")  # writes the magic bytes
        except BaseException:
            with contextlib.suppress(Exception):
                self._fh.close()
            store.discard(self.tmp_rel)
            raise
        self.rows = 0

    def write_rows(self, rows: list[dict]) -> None:
        from nyx_tasks.core.schema import to_table  # pyarrow, only once rows are written

        if rows:
            self._append(to_table(rows, self.schema, self.name))  # to_table has checked it

    def write_table(self, table) -> None:
        from nyx_tasks.core.schema import check  # pyarrow, only once rows are written

        self._append(check(table, self.schema, self.name))

    def _append(self, table) -> None:
        if table.num_rows:
            self._writer.write_table(table)
            self.rows += table.num_rows

    def close(self) -> dict[str, Any]:
        """Finish the file, move it into place; returns {path, rows, bytes, sha256}."""
        self._writer.close()
        self._fh.close()
        self.store.commit_tmp(self.tmp_rel, self.rel)
        return {"path": self.rel, "rows": self.rows, "bytes": self.store.size(self.rel),
                "sha256": self.store.sha256(self.rel)}

    def abort(self) -> None:
        """Drop the unfinished file (after a failure: closing it may fail the same way, which is not
        reported again)."""
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(Exception):
            self._fh.close()
        self.store.discard(self.tmp_rel)

    def __enter__(self) -> ParquetShardWriter:
        return self

    def __exit__(self, exc_type, *_: Any) -> None:
        if exc_type is not None:
            self.abort()


def iter_stage_batches(
    store: ArtifactStore,
    partition: str,
    stage: str,
    kind: str = "part",
    columns: list[str] | None = None,
    batch_size: int = 1024,
) -> Iterator:
    """Stream a completed stage's output: exactly the files its manifest lists, each checked
    against it (bytes, and rows from the Parquet footer) before any row is read."""
    manifest = read_manifest(store, partition, stage)
    for entry in manifest["outputs"].get(kind, []):
        with store.fs.open(store.path(entry["path"]), "rb") as f:
            pf = _open_checked(store, manifest, entry, f)
            for rg in range(pf.metadata.num_row_groups):
                yield from pf.iter_batches(batch_size=batch_size, row_groups=[rg], columns=columns)


def manifest_rel(partition: str, stage: str) -> str:
    return f"{ArtifactStore.stage_rel(partition, stage)}/{MANIFEST}"


def repair_hint(manifest: dict) -> str:
    """The command that rewrites a damaged snapshot."""
    return f"re-run `nyx {manifest.get('stage', '?')} --partition {manifest.get('partition', '?')} --force`"


def read_manifest(store: ArtifactStore, partition: str, stage: str, missing_ok: bool = False) -> dict | None:
    """A committed stage's manifest; a clear error when it is unreadable, and when it is missing
    unless `missing_ok` (then None)."""
    rel = manifest_rel(partition, stage)
    try:
        manifest = store.read_json(rel)
    except (ValueError, UnicodeDecodeError) as e:
        raise SnapshotError(f"{stage}: the manifest {store.url(rel)} is not valid JSON ({e}); "
                            f"re-run `nyx {stage} --partition {partition} --force`") from e
    if manifest is None and not missing_ok:
        raise FileNotFoundError(
            f"stage {stage!r} has no manifest for partition {partition!r} under {store.root}: "
            f"run `nyx {stage} --partition {partition}` first"
        )
    return manifest


def experiment_base(store: ArtifactStore, partition: str) -> str | None:
    """The base partition a variant partition adopts unchanged snapshots from (its `_EXPERIMENT.json`),
    or None for an ordinary partition."""
    marker = store.read_json(f"partitions/{partition}/{EXPERIMENT}")
    return marker.get("base") if marker else None


def missing_files(store: ArtifactStore, manifest: dict) -> list[str]:
    """The listed output files that are not there (a cheap existence check, no footer read)."""
    return [e["path"] for entries in manifest.get("outputs", {}).values() for e in entries
            if not store.exists(e["path"])]


def adopted_manifest(found: dict, partition: str, adopted_at: str) -> dict:
    """`found` (the base partition's manifest) as `partition`'s: the same key, files, hashes and
    location (where the files are), plus `adopted_from`. Readers follow the listed paths, so
    nothing is copied and the variant never writes into the base's folder."""
    return {**found, "partition": partition,
            "adopted_from": {"partition": found["partition"], "attempt": found.get("attempt", ""),
                             "location": found.get("location", ""), "adopted_at": adopted_at}}


def stage_files(store: ArtifactStore, partition: str, stage: str, kind: str = "part") -> list[str]:
    return [o["path"] for o in read_manifest(store, partition, stage)["outputs"].get(kind, [])]


def _parquet_against(store: ArtifactStore, entry: dict, f):
    """(the open Parquet file, None) when a manifest entry's size and row count hold, else (None, what differs)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    size = store.size(entry["path"])
    if "bytes" in entry and size != entry["bytes"]:
        return None, f"{size} bytes, the manifest says {entry['bytes']}"
    try:
        pf = pq.ParquetFile(f)
    except (pa.ArrowInvalid, OSError) as e:
        return None, f"not a readable Parquet file ({e})"
    if pf.metadata.num_rows != entry["rows"]:
        return None, f"{pf.metadata.num_rows} rows, the manifest says {entry['rows']}"
    return pf, None


def _open_checked(store: ArtifactStore, manifest: dict, entry: dict, f):
    pf, problem = _parquet_against(store, entry, f)
    if problem:
        raise SnapshotError(f"{manifest.get('stage', '?')} output {store.url(entry['path'])}: {problem}; "
                            f"{repair_hint(manifest)}")
    return pf


def check_entry(store: ArtifactStore, entry: dict, sha: bool = False) -> str | None:
    """What is wrong with one listed file (missing, size, rows, unreadable; sha256 with `sha`), or None."""
    if not store.exists(entry["path"]):
        return f"missing: {entry['path']}"
    with store.fs.open(store.path(entry["path"]), "rb") as f:
        _, problem = _parquet_against(store, entry, f)
    if problem:
        return f"corrupt: {entry['path']}: {problem}"
    if sha and entry.get("sha256") and store.sha256(entry["path"]) != entry["sha256"]:
        return f"corrupt: {entry['path']}: sha256 differs from the manifest's"
    return None


def snapshot_problems(store: ArtifactStore, manifest: dict, sha: bool = False) -> list[str]:
    """Every listed file checked against the manifest (bytes and rows; sha256 with `sha`), and the
    listed part files' rows against the manifest's `rows_out` (a file taken off the list)."""
    problems = [p for entries in manifest.get("outputs", {}).values() for e in entries
                if (p := check_entry(store, e, sha))]
    listed = sum(e["rows"] for e in manifest.get("outputs", {}).get("part", []))
    if "rows_out" in manifest and "part" in manifest.get("outputs", {}) and listed != manifest["rows_out"]:
        problems.append(f"corrupt: the manifest's part files hold {listed} rows but its rows_out is "
                        f"{manifest['rows_out']} (a file missing from its list?)")
    return problems


def image_paths(store: ArtifactStore, partition: str, needed: set[str] | None = None) -> dict[str, str]:
    """image_id -> stored path (relative to the root), from ingest's image tables."""
    paths: dict[str, str] = {}
    for batch in iter_stage_batches(store, partition, "ingest", kind="images", columns=["image_id", "path"]):
        for iid, path in zip(batch.column("image_id").to_pylist(), batch.column("path").to_pylist(), strict=True):
            if needed is None or iid in needed:
                paths[iid] = path
    return paths


def read_stage_table(store: ArtifactStore, partition: str, stage: str, kind: str = "part", columns=None):
    import pyarrow as pa

    batches = list(iter_stage_batches(store, partition, stage, kind, columns))
    if not batches:
        from nyx_tasks.core.schema import SCHEMAS  # pyarrow, only once rows are written

        schema = SCHEMAS[read_manifest(store, partition, stage)["schemas"][kind]]
        if columns:
            schema = pa.schema([schema.field(c) for c in columns])
        return schema.empty_table()
    return pa.Table.from_batches(batches)

"""Reading a stage's output a page at a time, in memory bounded independently of the table's size.

A stage's manifest lists its output files with their row counts; a file's footer gives its row
groups' counts. A page of rows [start, stop) skips whole files and row groups by those counts and
streams the row group(s) that hold its rows in batches of `BATCH` rows, one column at a time (so
the reader holds a batch and a page of one column, however wide the table), keeping only the
page's rows. With filters (a column equal to a value), one scan of the filter columns alone counts the
matches per row group (cached: a few integers per row group, and each filter column's distinct
values for the filter form), so the rows themselves are again read only from the row groups that
hold the page. A lookup by id (`find_rows`) streams the file in batches and keeps only the matches.

Every file is read only when it is a regular file of the root (`is_regular`) whose size and row
count are the manifest's (as `nyx_tasks.store.artifacts.iter_stage_batches` checks). Nothing here caches
rows or tables.
"""

from __future__ import annotations

import math
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from nyx_tasks.store.artifacts import SnapshotError, repair_hint

BATCH = 256  # rows decoded at a time: a batch of the widest table (triplets with texts) is a few MB
BUFFER = 1 << 16  # the Parquet reader streams column chunks through a buffer this big
SCANS = 64  # filter scans kept (each: a few integers per row group and the filter columns' values)


def is_regular(store, rel: str) -> bool:
    """`rel` (relative to the root, no `..`, not absolute) names a regular file inside the root.
    On a local root the path is resolved: a symlink anywhere below the root, a link out of it
    or anything but a plain file is refused."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in parts):
        return False
    if store.is_local:
        base = os.path.realpath(store.base)
        path = os.path.join(base, *parts)
        if os.path.realpath(path) != path:  # a symlink on the way (or the file itself is one)
            return False
        try:
            return stat.S_ISREG(os.lstat(path).st_mode)
        except OSError:
            return False
    try:
        return store.fs.info(store.path(rel)).get("type") == "file"
    except (OSError, ValueError):
        return False


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
    """The Parquet file of a manifest entry, checked: a regular file inside the root, of the
    manifest's size and row count (SnapshotError otherwise, as the pipeline's readers say)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    store, rel = out.store, entry["path"]
    stage = out.manifest.get("stage", "?")
    if not isinstance(rel, str) or not is_regular(store, rel):
        raise SnapshotError(f"{stage} output {rel!r} is not a regular file under {store.root}; "
                            f"{repair_hint(out.manifest)}")
    size = store.size(rel)
    if "bytes" in entry and size != entry["bytes"]:
        raise SnapshotError(f"{stage} output {store.url(rel)}: {size} bytes, the manifest says "
                            f"{entry['bytes']}; {repair_hint(out.manifest)}")
    with store.fs.open(store.path(rel), "rb") as f:
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


_scans: OrderedDict[tuple, Scan] = OrderedDict()
_scans_lock = threading.Lock()


def _cached(key: tuple, compute):
    """compute(), kept for the last `SCANS` keys (each key holds the output's files' sizes and
    hashes, so a recomputed stage is read again); only small results are kept here."""
    with _scans_lock:
        if key in _scans:
            _scans.move_to_end(key)
            return _scans[key]
    found = compute()
    with _scans_lock:
        _scans[key] = found
        while len(_scans) > SCANS:
            _scans.popitem(last=False)
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

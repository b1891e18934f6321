"""A text set's retrieval corpus as a Parquet table under the artifact root, read by row id:
stages take the texts of the rows they need, never the whole corpus.

    <root>/corpora/<key>/_CORPUS.json                  the table, written last
    <root>/corpora/<key>/<build>/rows-<i:05d>.parquet  columns row (int64), doc_id, text (+ images)
    <root>/corpora/<key>/<build>/repeats.npy           int64 (D, 2): (row, row of its text's first occurrence)
    <root>/corpora/<key>/<build>/drops.parquet         the source rows dropped (reason, where)

`key` is the hash of the corpus files' fingerprint (size, mtime / etag of each file) and the
id / text (/ image) column names, so a changed file builds a new table and an unchanged one is built once.
Rows are numbered 0..N-1 densely in file order; a dropped source row (malformed, empty text, a
duplicate id: `text_sets.read_corpus`'s reasons, in its order) takes no number, so row r is
`read_corpus(ts)[r]`. Every file holds `file_rows` rows in row groups of `row_group` rows (the
last ones shorter), so a row's file and row group are arithmetic, and `texts(rows)` reads only
the row groups those rows sit in. Identical texts count once (as `search.distinct_contents`):
`repeats()` lists each row whose text came before, with that first row. A corpus that names an
image column (a user's own documents, `nyx index`) keeps each row's image URLs (list<string>
`images`), and identical means the same text and the same images in order.

Building it holds 16 bytes a passage (64-bit hashes of ids and texts; equal hashes are checked
against the strings, so a collision never merges two passages) besides one row group.

A build writes its files under a folder of its own and the manifest last, so a crash leaves no
table and two concurrent builds each leave a whole one (the last manifest wins)."""

from __future__ import annotations

import hashlib
import uuid
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from nyx_tasks.core.config import TextSetConfig
from nyx_tasks.core.hashing import stable_hash
from nyx_tasks.core.log import Progress, get_logger
from nyx_tasks.sources.files import fingerprint_urls
from nyx_tasks.sources.text_sets import Drop, corpus_rows, set_files
from nyx_tasks.store.artifacts import ArtifactStore
from nyx_tasks.store.gc import unnamed_builds

FORMAT = 2  # the table layout and how its texts are read (core.text.plain); bump when either changes
PREFIX = "corpora"
MANIFEST = "_CORPUS.json"
ROW_GROUP = 4096
FILE_ROWS = 256 * ROW_GROUP


def _schema(images: bool = False):
    import pyarrow as pa

    fields = [("row", pa.int64()), ("doc_id", pa.string()), ("text", pa.string())]
    return pa.schema(fields + ([("images", pa.list_(pa.string()))] if images else []))


def _columns(ts: TextSetConfig) -> list[str]:
    return [ts.corpus_id_column, ts.corpus_text_column, *([ts.corpus_image_column] if ts.corpus_image_column else [])]


def corpus_key(ts: TextSetConfig) -> str:
    """The table's key: the corpus files' fingerprint and the columns read from them."""
    files = set_files(ts)[1]
    return stable_hash([FORMAT, fingerprint_urls(files), *_columns(ts)], 32)


@dataclass
class CorpusTable:
    """An open corpus table: `len(table)` rows; `texts(rows)`, `doc_ids(rows)` by row id."""

    store: ArtifactStore
    key: str
    manifest: dict
    # an image table's URLs as fetched into the store (URL -> (image_id, path under the root); a URL
    # missing here did not fetch) and the embedder's image placeholder: set by whoever fetched them
    # (`retrieval.user_index`) before embedding; they key the vectors too (`vector_key`)
    fetched: dict[str, tuple[str, str]] | None = None
    placeholder: str = "<image>"
    _files: dict = field(default_factory=dict, repr=False)
    _repeats: tuple | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.manifest["rows"])

    @property
    def row_group(self) -> int:
        return int(self.manifest["row_group"])

    @property
    def file_rows(self) -> int:
        return int(self.manifest["file_rows"])

    def texts(self, rows) -> list[str]:
        """The texts of `rows` (any order, repeats allowed), reading only their row groups."""
        return self._take(rows, "text")

    def doc_ids(self, rows) -> list[str]:
        return self._take(rows, "doc_id")

    @property
    def vector_key(self) -> str:
        """What the vectors of this table depend on besides the model: its key, and for an image
        table the images each URL fetched as and the placeholder they are embedded with."""
        if not self.has_images:
            return self.key
        images = sorted((url, image_id) for url, (image_id, _) in (self.fetched or {}).items())
        return stable_hash([self.key, images, self.placeholder], 32)

    @property
    def has_images(self) -> bool:
        return bool(self.manifest.get("images"))

    def images(self, rows) -> list[tuple[str, ...]]:
        """The image URLs of `rows` (all empty in a text-only table)."""
        if not self.has_images:
            return [()] * len(np.asarray(rows).reshape(-1))
        return [tuple(v or ()) for v in self._take(rows, "images")]

    def contents(self, rows) -> list[tuple[str, tuple[str, ...]]]:
        """(text, image URLs) of `rows`: what makes two rows the same document."""
        return list(zip(self.texts(rows), self.images(rows), strict=True))

    def repeats(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, firsts), int64, rows ascending: each row whose text an earlier row has, and that
        earlier row's number (the text's first occurrence). Few, in a real corpus."""
        if self._repeats is None:
            with self.store.fs.open(self.store.path(self.manifest["repeats"]), "rb") as f:
                pairs = np.load(f).reshape(-1, 2)
            self._repeats = (pairs[:, 0].copy(), pairs[:, 1].copy())
        return self._repeats

    def rep(self, rows) -> np.ndarray:
        """The row of each row's text's first occurrence (equal values: identical texts)."""
        rows = np.asarray(rows, dtype=np.int64)
        dup, first = self.repeats()
        if not len(dup):
            return rows.copy()
        at = np.minimum(np.searchsorted(dup, rows), len(dup) - 1)
        return np.where(dup[at] == rows, first[at], rows)

    def iter_texts(self, start: int = 0, stop: int | None = None, column: str = "text") -> Iterator[list]:
        """The texts (or another column) of rows [start, stop) in order, one row group (or its part in
        range) at a time."""
        stop = len(self) if stop is None else min(stop, len(self))
        g = start // self.row_group
        while g * self.row_group < stop:
            lo, hi = g * self.row_group, min((g + 1) * self.row_group, stop)
            col = self._row_group(g, column)
            yield col.slice(max(start - lo, 0), hi - max(start, lo)).to_pylist()
            g += 1

    def iter_contents(self, start: int = 0, stop: int | None = None) -> Iterator[list[tuple[str, tuple]]]:
        """(text, image URLs) of rows [start, stop) in order, a row group at a time."""
        texts = self.iter_texts(start, stop)
        if not self.has_images:
            yield from ([(t, ()) for t in batch] for batch in texts)
            return
        for batch, images in zip(texts, self.iter_texts(start, stop, "images"), strict=True):
            yield [(t, tuple(i or ())) for t, i in zip(batch, images, strict=True)]

    def close(self) -> None:
        for fh, _ in self._files.values():
            fh.close()
        self._files.clear()

    def _row_group(self, g: int, column: str):
        """Row group `g` (counted over the whole table) of one column, as an Arrow array."""
        per_file = self.file_rows // self.row_group
        return self._parquet(g // per_file).read_row_group(g % per_file, columns=[column]).column(0).combine_chunks()

    def _parquet(self, i: int):
        """File i, opened once (its footer read once) while the table is open."""
        import pyarrow.parquet as pq

        if i not in self._files:
            fh = self.store.fs.open(self.store.path(self.manifest["files"][i]["path"]), "rb")
            self._files[i] = (fh, pq.ParquetFile(fh))
        return self._files[i][1]

    def _take(self, rows, column: str) -> list[str]:
        import pyarrow as pa

        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"corpus {self.key}: rows outside 0..{len(self) - 1}")
        out: list = [None] * rows.size
        order = np.argsort(rows, kind="stable")
        groups = rows[order] // self.row_group
        cuts = np.flatnonzero(np.diff(groups)) + 1
        for part in np.split(order, cuts) if rows.size else []:
            g = int(rows[part[0]] // self.row_group)
            got = self._row_group(g, column).take(pa.array(rows[part] - g * self.row_group)).to_pylist()
            for pos, value in zip(part.tolist(), got, strict=True):
                out[pos] = value
        return out


def corpus_table(store: ArtifactStore, ts: TextSetConfig, drop: Drop | None = None,
                 row_group: int = ROW_GROUP, file_rows: int = FILE_ROWS) -> CorpusTable:
    """The text set's corpus table, built once (streaming its files) when missing. `drop` hears
    every dropped source row as `read_corpus` reports it (`<set>_corpus_...`), built now or not.
    `row_group` / `file_rows` shape a new table only; an existing one keeps its own."""
    key = corpus_key(ts)
    rel = f"{PREFIX}/{key}/{MANIFEST}"
    manifest = store.read_json(rel)
    if manifest is None:
        manifest = _build(store, ts, key, row_group, file_rows)
    if stale := unnamed_builds(store, key, manifest):  # a build that lost the race, or was killed
        for folder in stale:
            store.remove(folder)
        get_logger("corpus").info("corpus %s: removed %d build folder(s) no manifest names: %s", ts.name,
                                  len(stale), ", ".join(stale))
    table = CorpusTable(store, key, manifest)
    if drop is not None:
        _replay_drops(store, manifest, ts.name, drop)
    return table


def _replay_drops(store: ArtifactStore, manifest: dict, name: str, drop: Drop) -> None:
    if not manifest.get("drops"):
        return
    for batch in store.read_parquet(manifest["drops"]):
        for reason, where in zip(batch.column("reason").to_pylist(), batch.column("where").to_pylist(), strict=True):
            drop(f"{name}_{reason}", where)


def _source_rows(ts: TextSetConfig, drops: list) -> Iterator[tuple[str, str, tuple]]:
    """(doc_id, text, image URLs) of every source row with a text, in file order
    (`text_sets.corpus_rows`); malformed and empty rows go to `drops` as (rows accepted before it,
    0, reason, where) for `_build` to order."""
    n = 0
    for where, doc_id, text, images in corpus_rows(ts):
        if text is None:
            drops.append((n, 0, doc_id, where))
            continue
        n += 1
        yield doc_id, text, images


def _h64(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


class _Writer:
    """Rows -> `rows-<i>.parquet` files of `file_rows` rows in row groups of `row_group`."""

    def __init__(self, store: ArtifactStore, folder: str, row_group: int, file_rows: int, images: bool = False):
        self.store, self.folder, self.row_group, self.file_rows = store, folder, row_group, file_rows
        self.schema = _schema(images)
        self.files: list[dict] = []
        self.ids: list[str] = []
        self.texts: list[str] = []
        self.images: list[list[str]] | None = [] if images else None
        self.rows = 0
        self._w = None

    def add(self, doc_id: str, text: str, images: tuple = ()) -> None:
        self.ids.append(doc_id)
        self.texts.append(text)
        if self.images is not None:
            self.images.append(list(images))
        if len(self.ids) == self.row_group:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.ids:
            return
        if self._w is None:
            rel = f"{self.folder}/rows-{len(self.files):05d}.parquet"
            tmp = self.store._tmp_for(rel)
            self.store.fs.makedirs(self.store.path(self.folder), exist_ok=True)
            fh = self.store.fs.open(self.store.path(tmp), "wb")
            self._w = (rel, tmp, fh, pq.ParquetWriter(fh, self.schema, compression="zstd"), self.rows)
        n = len(self.ids)
        columns = {"row": pa.array(np.arange(self.rows, self.rows + n)), "doc_id": pa.array(self.ids, pa.string()),
                   "text": pa.array(self.texts, pa.string())}
        if self.images is not None:
            columns["images"] = pa.array(self.images, pa.list_(pa.string()))
            self.images = []
        self._w[3].write_table(pa.table(columns, schema=self.schema))
        self.rows += n
        self.ids, self.texts = [], []
        if self.rows % self.file_rows == 0:
            self._close_file()

    def _close_file(self) -> None:
        """Finish the open file and rename it into place (no reader sees a partial file)."""
        if self._w is not None:
            rel, tmp, fh, w, first = self._w
            w.close()
            fh.close()
            self.store.commit_tmp(tmp, rel)
            self.files.append({"path": rel, "rows": self.rows - first, "bytes": self.store.size(rel)})
            self._w = None

    def close(self) -> list[dict]:
        self._flush()
        self._close_file()
        return self.files


def _build(store: ArtifactStore, ts: TextSetConfig, key: str, row_group: int, file_rows: int) -> dict:
    """Stream the corpus files into a new build folder and publish its manifest; returns it. A build
    that fails (a full disk, an unreadable file) removes its folder: nothing is left to collect."""
    if file_rows % row_group:
        raise ValueError(f"file_rows ({file_rows}) must be a multiple of row_group ({row_group})")
    folder = f"{PREFIX}/{key}/b-{uuid.uuid4().hex[:12]}"
    try:
        manifest = _build_into(store, ts, key, folder, row_group, file_rows)
        store.write_json_atomic(f"{PREFIX}/{key}/{MANIFEST}", manifest)
    except BaseException:
        store.discard(folder)
        raise
    return manifest


def _build_into(store: ArtifactStore, ts: TextSetConfig, key: str, folder: str, row_group: int,
                file_rows: int) -> dict:
    """Stream the corpus files into `folder`; returns the manifest to write."""
    log = get_logger("corpus")
    drops: list[tuple] = []
    id_hash, text_hash = array("Q"), array("Q")
    images = ts.corpus_image_column is not None
    writer = _Writer(store, folder, row_group, file_rows, images)
    progress = Progress(log, f"corpus {ts.name} ({key[:8]})", unit="passages")
    for doc_id, text, urls in _source_rows(ts, drops):
        id_hash.append(_h64(doc_id))
        text_hash.append(_h64("\x1f".join([text, *urls]) if urls else text))
        writer.add(doc_id, text, urls)
        progress.update()
    files = writer.close()
    progress.close()
    layout = {"row_group": row_group, "file_rows": file_rows}
    with _open(store, key, layout, files) as table:
        dup, _ = _repeats(np.frombuffer(id_hash, np.uint64), table.doc_ids)
    del id_hash
    texts = np.frombuffer(text_hash, np.uint64)
    if dup.size:  # rare: rewrite without the duplicate ids
        files = _drop_duplicate_ids(store, files, dup, drops,
                                    _Writer(store, f"{folder}/dedup", row_group, file_rows, images))
        texts = np.delete(texts, dup)
    rows = sum(f["rows"] for f in files)
    with _open(store, key, {**layout, "images": images}, files) as table:
        same, first = _repeats(texts, table.contents if images else table.texts)
    del texts, text_hash
    _write_npy(store, f"{folder}/repeats.npy", np.stack([same, first], 1))
    manifest = {"format": FORMAT, "key": key, "rows": rows, **layout, "files": files,
                "repeats": f"{folder}/repeats.npy", "distinct": rows - len(same),
                "drops": _write_drops(store, folder, drops), "dropped": len(drops),
                "sources": set_files(ts)[1], "columns": _columns(ts), **({"images": True} if images else {})}
    log.info("corpus %s: %d passages (%d distinct texts), %d source rows dropped -> %s", ts.name, rows,
             manifest["distinct"], len(drops), store.url(f"{PREFIX}/{key}"))
    return manifest


@contextmanager
def _open(store: ArtifactStore, key: str, layout: dict, files: list[dict]) -> Iterator[CorpusTable]:
    """A table over files being built (no manifest yet)."""
    table = CorpusTable(store, key, {**layout, "files": files, "rows": sum(f["rows"] for f in files)})
    try:
        yield table
    finally:
        table.close()


def _repeats(hashes: np.ndarray, values, buckets: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(rows, firsts): each index whose value an earlier index has, and that earlier index,
    rows ascending. `hashes` are the values' 64-bit hashes; `values(indices)` reads the values
    of the few indices whose hash repeats, so a collision is never taken for a repeat. Sorted
    a hash bucket at a time, so it needs about 2 bytes an index besides `hashes`."""
    step = 1 << 20
    top = np.empty(len(hashes), np.uint8)
    for s in range(0, len(hashes), step):
        top[s:s + step] = hashes[s:s + step] >> np.uint64(60)
    cand = [np.zeros(0, np.int64)]
    for b in range(buckets):
        idx = np.flatnonzero(top == b)
        order = np.argsort(hashes[idx], kind="stable")
        h = hashes[idx][order]
        twin = np.zeros(len(h), bool)
        twin[1:] |= h[1:] == h[:-1]
        twin[:-1] |= h[1:] == h[:-1]
        cand.append(idx[order][twin])
    rows = np.sort(np.concatenate(cand))
    seen: dict = {}
    pairs = [(i, seen.setdefault((int(hashes[i]), v), i)) for i, v in zip(rows.tolist(), values(rows), strict=True)]
    out = np.array([p for p in pairs if p[0] != p[1]], np.int64).reshape(-1, 2)
    return out[:, 0].copy(), out[:, 1].copy()


def _drop_duplicate_ids(store: ArtifactStore, files: list[dict], dup: np.ndarray, drops: list,
                        writer: _Writer) -> list[dict]:
    """Rewrite the provisional files through `writer` without the rows whose id came before
    (`dup`, ascending), recording each as `corpus_duplicate_id` where `read_corpus` would;
    returns the files."""
    dup = set(dup.tolist())
    p = 0
    columns = ["doc_id", "text", *(["images"] if writer.images is not None else [])]
    for entry in files:
        for batch in store.read_parquet(entry["path"], columns=columns, batch_size=writer.row_group):
            images = batch.column("images").to_pylist() if writer.images is not None else [()] * batch.num_rows
            for doc_id, text, urls in zip(batch.column("doc_id").to_pylist(), batch.column("text").to_pylist(),
                                          images, strict=True):
                if p in dup:
                    drops.append((p, 1, "corpus_duplicate_id", doc_id))
                else:
                    writer.add(doc_id, text, tuple(urls or ()))
                p += 1
        store.remove(entry["path"])
    drops.sort(key=lambda d: d[:2])
    return writer.close()


def _write_npy(store: ArtifactStore, rel: str, array: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, array)
    store.write_bytes_atomic(rel, buf.getvalue())


def _write_drops(store: ArtifactStore, folder: str, drops: list) -> str | None:
    import pyarrow as pa

    if not drops:
        return None
    rel = f"{folder}/drops.parquet"
    table = pa.table({"reason": [d[2] for d in drops], "where": [d[3] for d in drops]})
    with store.parquet_writer(rel, table.schema, name="corpus drops") as w:
        w.write_table(table)
        w.close()
    return rel

"""A corpus table's document vectors in shards, and exact top-k search over them shard by shard:
a corpus of any size is embedded and searched with memory bounded by
one shard.

    <root>/cache/vectors/<hash(embedder.model_id)>/<corpus key>/s<S>/shard-<i:05d>.npy

Shard i holds the vectors of rows [i*S, min((i+1)*S, N)) (role "document", float32, full
width, L2-normalised) in NumPy's .npy format, so `np.load(path, mmap_mode="r")` maps it. It
is written under a temporary name in the same folder and renamed into place when complete:
a shard that exists is whole and never recomputed, a crash loses at most the shard in flight,
and shards are found by their path, never by listing a folder. `embed_shard` does one (the
unit a mapped task runs), `ensure_embedded` all that are missing.

`search_shards` is exact inner-product search over the shards, merged per query, with the
ranking (score descending, row ascending) at every step, ties included: its result equals
that of searching the concatenated corpus under the same order. Each shard's own top-k is
made tie-exact first (`topk_ties_by_row`: a backend may keep any of several documents tied
at the k-th score; those are fetched until the boundary is passed, then ordered by row).

Memory maps need local files. Under a remote root (s3://, gs://, ...) each shard is
written to a local mirror first, then uploaded under a temporary name and moved into place;
a reader maps its local mirror, downloading a shard it lacks once. The mirror is
`$NYX_VECTOR_CACHE` (default: `<tmp>/nyx-vectors`), keyed like the store's paths."""


from __future__ import annotations

import glob
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from queue import Full, Queue

import numpy as np

from nyx_tasks.core.config import SearchConfig
from nyx_tasks.core.hashing import stable_hash
from nyx_tasks.core.log import get_logger
from nyx_tasks.embedding import MixedItem
from nyx_tasks.embedding.base import Embedder, matryoshka
from nyx_tasks.retrieval.search import exact_topk
from nyx_tasks.sources.corpus_table import CorpusTable
from nyx_tasks.store.artifacts import TMP_PREFIX
from nyx_tasks.store.lease import DEFAULT_TTL

PREFIX = "cache/vectors"
SHARD_ROWS = 65536


@dataclass(frozen=True)
class CorpusVectors:
    """Where one embedder's vectors of one corpus table lie, shard by shard."""

    folder: str  # a local directory: the store's own (local root) or the local mirror (remote root)
    rows: int
    shard_rows: int
    store: object = None  # the ArtifactStore of a remote root, whose `rel` the mirror copies
    rel: str = ""

    @property
    def n_shards(self) -> int:
        return -(-self.rows // self.shard_rows)

    def bounds(self, i: int) -> tuple[int, int]:
        """Rows [start, stop) of shard i."""
        if not 0 <= i < self.n_shards:
            raise IndexError(f"shard {i} outside 0..{self.n_shards - 1}")
        return i * self.shard_rows, min((i + 1) * self.shard_rows, self.rows)

    def path(self, i: int) -> str:
        return os.path.join(self.folder, f"shard-{i:05d}.npy")

    def remote_rel(self, i: int) -> str:
        return f"{self.rel}/shard-{i:05d}.npy"

    def exists(self, i: int) -> bool:
        """Shard i is complete where the store keeps it (the remote root when there is one)."""
        if self.store is not None:
            return self.store.exists(self.remote_rel(i))
        return os.path.exists(self.path(i))

    def fetch(self, i: int) -> str:
        """The local file of shard i (downloaded into the mirror once under a remote root)."""
        local = self.path(i)
        if self.store is not None and not os.path.exists(local):
            os.makedirs(self.folder, exist_ok=True)
            tmp = os.path.join(self.folder, f"{TMP_PREFIX}shard-{i:05d}.{uuid.uuid4().hex[:8]}.npy")
            self.store.fs.get(self.store.path(self.remote_rel(i)), tmp)
            os.replace(tmp, local)
        return local

    def publish(self, i: int) -> None:
        """Upload shard i's finished local file (remote root): a temporary name, then moved into place."""
        if self.store is None:
            return
        tmp = self.store._tmp_for(self.remote_rel(i))
        self.store.fs.makedirs(self.store.path(self.rel), exist_ok=True)
        try:
            self.store.fs.put(self.path(i), self.store.path(tmp))
            self.store.commit_tmp(tmp, self.remote_rel(i))
        except BaseException:
            self.store.discard(tmp)  # the local file stays: the next run uploads it again
            raise

    def missing(self) -> list[int]:
        return [i for i in range(self.n_shards) if not self.exists(i)]

    def load(self, i: int, mode: str = "r") -> np.ndarray:
        """Shard i memory-mapped ((stop - start, dim) float32)."""
        return np.load(self.fetch(i), mmap_mode=mode)

    def take(self, rows) -> np.ndarray:
        """The vectors of `rows` (global row ids, any order), read from their shards."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        shard = rows // self.shard_rows
        out = None
        for i in np.unique(shard).tolist():
            sel = np.flatnonzero(shard == i)
            got = self.load(i)[rows[sel] - i * self.shard_rows]
            out = np.empty((rows.size, got.shape[1]), np.float32) if out is None else out
            out[sel] = got
        return out if out is not None else np.zeros((0, 0), np.float32)


def corpus_vectors(embedder: Embedder, corpus: CorpusTable, shard_rows: int = SHARD_ROWS) -> CorpusVectors:
    """The shards' location for this embedder and corpus (nothing is read or embedded)."""
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be positive, got {shard_rows}")
    rel = f"{PREFIX}/{stable_hash(embedder.model_id)}/{corpus.vector_key}/s{shard_rows}"
    store = corpus.store
    if store.is_local:
        return CorpusVectors(store.path(rel), len(corpus), shard_rows)
    mirror = os.environ.get("NYX_VECTOR_CACHE") or os.path.join(tempfile.gettempdir(), "nyx-vectors")
    where = stable_hash(store.root, 16)  # one mirror folder per root
    return CorpusVectors(os.path.join(mirror, where, rel), len(corpus), shard_rows, store, rel)


def prefetched(batches: Iterator, depth: int = 2) -> Iterator:
    """`batches`, read up to `depth` ahead in a thread: the next Parquet row group is read (pyarrow
    releases the GIL) while the model embeds this one. An error of the reader surfaces here."""
    done = object()
    queue: Queue = Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        """Hand `item` over unless the consumer has stopped (False: the reader ends, never blocked)."""
        while not stop.is_set():
            try:
                queue.put(item, timeout=0.5)
                return True
            except Full:
                continue
        return False

    def read() -> None:
        try:
            for batch in batches:
                if not put(batch):
                    return
            put(done)
        except BaseException as e:  # handed to the consumer, raised there
            put(e)

    reader = threading.Thread(target=read, name="nyx-prefetch", daemon=True)
    reader.start()
    try:
        while (item := queue.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def corpus_items(corpus: CorpusTable, start: int = 0, stop: int | None = None) -> Iterator[list[MixedItem]]:
    """The documents of rows [start, stop) as the embedder takes them, a row group at a time: the
    text, and in an image table each fetched image (`corpus.fetched`; one that did not fetch is
    left out), their placeholders first."""
    fetched = corpus.fetched or {}
    for batch in corpus.iter_contents(start, stop):  # a text-only table: every row's URLs are ()
        items = []
        for text, urls in batch:
            images = tuple(fetched[u] for u in urls if u in fetched)
            items.append(MixedItem(corpus.placeholder * len(images) + text, images))
        yield items


def embed_shard(embedder: Embedder, corpus: CorpusTable, i: int, shard_rows: int = SHARD_ROWS) -> int:
    """Embed shard i unless its file exists; returns the rows embedded now (0: it was there).
    The file appears whole or not at all."""
    vectors = corpus_vectors(embedder, corpus, shard_rows)
    start, stop = vectors.bounds(i)
    final = vectors.path(i)
    if vectors.exists(i):
        return 0
    if os.path.exists(final):  # embedded into the mirror, the upload cut short
        vectors.publish(i)
        return 0
    os.makedirs(vectors.folder, exist_ok=True)
    for old in glob.glob(os.path.join(vectors.folder, f"{TMP_PREFIX}shard-{i:05d}.*.npy")):
        if time.time() - os.path.getmtime(old) > DEFAULT_TTL:  # a writer of this shard that was killed
            os.remove(old)
            get_logger("embed").info("vectors: removed %s, left by a killed writer", old)
    tmp = os.path.join(vectors.folder, f"{TMP_PREFIX}shard-{i:05d}.{uuid.uuid4().hex[:8]}.npy")
    out, done = None, 0
    try:
        for items in prefetched(corpus_items(corpus, start, stop)):
            vecs = np.asarray(embedder.embed(items, "document"), dtype=np.float32)
            if out is None:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(stop - start, vecs.shape[1]))
            out[done:done + len(vecs)] = vecs
            done += len(vecs)
        if done != stop - start:
            raise RuntimeError(f"shard {i}: embedded {done} rows of {stop - start}")
        out.flush()
        del out
        os.replace(tmp, final)  # atomic on a local file system
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    vectors.publish(i)
    return done


def ensure_embedded(embedder: Embedder, corpus: CorpusTable, shard_rows: int = SHARD_ROWS) -> CorpusVectors:
    """Every shard of the corpus embedded (the missing ones now, one log line each)."""
    return embed_missing(embedder, corpus, shard_rows)[0]


def embed_missing(embedder: Embedder, corpus: CorpusTable,
                  shard_rows: int = SHARD_ROWS) -> tuple[CorpusVectors, int]:
    """`ensure_embedded`, and the rows embedded now (a shard another task finished meanwhile
    counts 0)."""
    log = get_logger("embed")
    vectors = corpus_vectors(embedder, corpus, shard_rows)
    todo = vectors.missing()
    log.info("vectors %s: %d rows in %d shards of %d, %d to embed (%s)", corpus.key[:8], vectors.rows,
             vectors.n_shards, shard_rows, len(todo), embedder.model_id[:80])
    total, t0 = 0, time.monotonic()
    for n, i in enumerate(todo, 1):
        t = time.monotonic()
        rows = embed_shard(embedder, corpus, i, shard_rows)
        total += rows
        log.info("vectors %s: shard %d (%d/%d): %d rows in %.1f s (%.0f rows/s overall)", corpus.key[:8], i, n,
                 len(todo), rows, time.monotonic() - t, total / max(time.monotonic() - t0, 1e-9))
    return vectors, total


# --------------------------------------------------------------------------------- search
def _rank_keys(scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """int64 keys whose ascending order is (score descending, row ascending); padding
    (row -1, score -inf) sorts last. Rows must be below 2**31 - 1."""
    bits = (np.asarray(scores, np.float32) + np.float32(0)).view(np.int32).astype(np.int64)  # -0.0 -> 0.0
    ordered = np.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)  # monotone in the float's value
    return ((np.int64(2**31 - 1) - ordered) << 31) | (np.asarray(rows, np.int64) + 1)


def best_k(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query's first `k` candidates by (score descending, row ascending)."""
    if k <= 0:
        return scores[:, :0], rows[:, :0]
    keys = _rank_keys(scores, rows)
    if keys.shape[1] > k:
        part = np.argpartition(keys, k - 1, axis=1)[:, :k]
        keys = np.take_along_axis(keys, part, 1)
        scores, rows = np.take_along_axis(scores, part, 1), np.take_along_axis(rows, part, 1)
    order = np.argsort(keys, axis=1, kind="stable")
    return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)


def topk_ties_by_row(queries: np.ndarray, docs: np.ndarray, k: int, cfg: SearchConfig | None = None,
                     keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`search.exact_topk`, with documents tied at the k-th score resolved by the lower row.

    A backend's top-k holds every document scoring above its k-th score, but may keep any of
    several tied at it (FAISS's heap, torch.topk). So one more is fetched: when the (k+1)-th
    scores below the k-th, every tied document is in hand; otherwise the queries still tied
    fetch twice as many, until the boundary is passed or the corpus is exhausted."""
    cfg = cfg or SearchConfig()
    n = docs.shape[0] if keep is None else len(keep)
    k_eff = min(k, n)
    if k_eff == 0:
        return exact_topk(queries, docs, k, cfg, keep)
    fetch = min(k_eff + 1, n)
    scores, ids = exact_topk(queries, docs, fetch, cfg, keep)
    out_s, out_i = best_k(scores, ids, k_eff)
    open_ = np.flatnonzero(scores[:, -1] == scores[:, k_eff - 1]) if fetch < n else np.zeros(0, np.int64)
    while open_.size:
        fetch = min(2 * fetch, n)
        s, i = exact_topk(queries[open_], docs, fetch, cfg, keep)
        out_s[open_], out_i[open_] = best_k(s, i, k_eff)
        open_ = open_[s[:, -1] == s[:, k_eff - 1]] if fetch < n else open_[:0]
    if k_eff < k:
        pad = k - k_eff
        out_s = np.pad(out_s, ((0, 0), (0, pad)), constant_values=-np.inf)
        out_i = np.pad(out_i, ((0, 0), (0, pad)), constant_values=-1)
    return out_s.astype(np.float32, copy=False), out_i.astype(np.int64, copy=False)


def search_shards(queries: np.ndarray, shards: CorpusVectors | Sequence[np.ndarray], k: int,
                  search_cfg: SearchConfig | None = None, dim: int | None = None,
                  exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores (Q, k) float32, rows (Q, k) int64), best first by (score desc, row asc); -1 / -inf
    past the corpus's end. `shards`: a CorpusVectors or the shard arrays in row order. `dim`:
    Matryoshka (truncate, renormalise queries and each shard as `retrieval.search` does).
    `exclude`: rows (ascending) left out, e.g. `CorpusTable.repeats()[0]` to search each text's
    first occurrence only (identical texts count once). One shard is in
    memory at a time; the queries go through each in `search_cfg.query_batch` batches."""
    cfg = search_cfg or SearchConfig()
    if isinstance(shards, CorpusVectors):
        if missing := shards.missing():
            raise FileNotFoundError(f"vectors {shards.folder}: shards {missing[:10]} not embedded yet "
                                    "(ensure_embedded / embed_shard first)")
        arrays = (shards.load(i, "c") for i in range(shards.n_shards))  # one mapped at a time
    else:
        arrays = iter(shards)
    q = matryoshka(np.asarray(queries, dtype=np.float32), dim)
    best_s = np.full((q.shape[0], k), -np.inf, np.float32)
    best_i = np.full((q.shape[0], k), -1, np.int64)
    offset = 0
    for docs in arrays:
        n = docs.shape[0]
        keep = _kept(exclude, offset, n)
        if n and q.shape[0] and (keep is None or keep.size):
            s, i = topk_ties_by_row(q, matryoshka(docs, dim), k, cfg, keep)
            best_s, best_i = best_k(np.concatenate([best_s, s], 1),
                                    np.concatenate([best_i, np.where(i >= 0, i + offset, -1)], 1), k)
        offset += n
        del docs  # unmap the shard before the next one
    return best_s, best_i


def _kept(exclude: np.ndarray | None, offset: int, n: int) -> np.ndarray | None:
    """The local rows of shard [offset, offset + n) not in `exclude` (None: all of them)."""
    if exclude is None:
        return None
    lo, hi = np.searchsorted(exclude, [offset, offset + n])
    return None if lo == hi else np.setdiff1d(np.arange(n), np.asarray(exclude[lo:hi]) - offset)

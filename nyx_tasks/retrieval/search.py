"""Exact inner-product search over L2-normalised embeddings (mining, feedback,
evaluation).

Two backends, one contract: `exact_topk(queries, docs, k, cfg)` returns the
best `k` (scores, doc indices) per query, best first, -1 where the corpus is
smaller than `k`. Exact ties are ordered by the lower doc index on the torch
path; FAISS's heap may order them differently.

- `faiss`: `IndexFlatIP` on the CPU; with faiss-gpu, sharded over every GPU.
  Queries go in batches of at least ~128k query-dims: below that FAISS takes a
  slow non-BLAS path.
- `torch`: chunked matmul + top-k on the GPU in bf16 (tensor cores; often
  faster than faiss-gpu's fp32 path), each query's best `2k` candidates then
  re-scored in fp32, so bf16 rounding never changes which documents are kept
  beyond what fp32 would. On a CPU it runs in fp32 (the tests compare it to
  FAISS there).

`auto` takes `torch` when a GPU is visible, else `faiss`; `benchmarks/gpu_check.py
--only search` times the torch path on a GPU and compares its top-k with fp32's.

Identical documents count once: `distinct_contents` keeps the first occurrence
of each content (a chunk's text plus its ordered image ids, which are content
hashes; the same text with other images is another document), and
`exact_topk(..., keep=...)` searches those representatives only, so a content
takes one rank however often the corpus repeats it.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from nyx_tasks.core.config import SearchConfig

FAISS_MIN_QUERY_DIMS = 131072
RESCORE_BYTES = 1 << 30  # the torch backend's per-batch candidate memory (shortlist, re-score gather)


def content_key(text: str, image_ids: Iterable[str] = ()) -> tuple[str, tuple[str, ...]]:
    """What makes two documents the same: their text and their ordered image ids (content hashes)."""
    return (text, tuple(image_ids))


def content_keys(texts: Sequence[str], image_ids: Sequence[Sequence[str]] | None = None) -> list[tuple]:
    """`content_key` of every document (`image_ids=None`: text-only documents)."""
    if image_ids is None:
        return [content_key(t) for t in texts]
    return [content_key(t, ims) for t, ims in zip(texts, image_ids, strict=True)]


@dataclass(frozen=True)
class Distinct:
    """A corpus's distinct contents: `keep`, the corpus index of each content's first occurrence
    (ascending, int64), and `rep[i]`, the first occurrence of document i's content."""

    keep: np.ndarray
    rep: np.ndarray

    @property
    def has_duplicates(self) -> bool:
        return len(self.keep) < len(self.rep)


def distinct_contents(keys: Sequence[Hashable]) -> Distinct:
    """First occurrence of each key (a `content_key`, or any hashable standing for a content)."""
    first: dict = {}
    rep = np.fromiter((first.setdefault(k, i) for i, k in enumerate(keys)), dtype=np.int64, count=len(keys))
    return Distinct(np.fromiter(first.values(), dtype=np.int64, count=len(first)), rep)


def resolve_backend(backend: str) -> str:
    if backend != "auto":
        return backend
    try:
        import torch

        return "torch" if torch.cuda.is_available() else "faiss"
    except ImportError:
        return "faiss"


def exact_topk(queries: np.ndarray, docs: np.ndarray, k: int, cfg=None,
               keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores (Q, k) float32, doc indices (Q, k) int64), best first. `cfg` is a
    SearchConfig (None: the defaults). `keep` (e.g. `distinct_contents(...).keep`):
    search only these rows of `docs`; the indices returned are still rows of `docs`."""
    return FlatIndex(docs, cfg, keep).search(queries, k)


class FlatIndex:
    """The documents held by the configured backend, searched many times: FAISS IndexFlatIP built
    once, or the torch vectors on the device once (fp32 and the bf16 copy that shortlists). What
    `exact_topk` builds per call; a caller timing single queries (the evaluation's latency per
    Matryoshka dim) keeps one resident, as a serving index would."""

    def __init__(self, docs: np.ndarray, cfg=None, keep: np.ndarray | None = None):
        self.cfg = cfg or SearchConfig()
        self.rows = None
        if keep is not None and len(keep) < docs.shape[0]:
            docs, self.rows = docs[keep], np.asarray(keep, dtype=np.int64)
        self.n, self.backend = docs.shape[0], resolve_backend(self.cfg.backend)
        self._index = None
        if self.n:
            self._index = (_TorchIndex if self.backend == "torch" else _FaissIndex)(docs, self.cfg)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k_eff = min(k, self.n)
        if queries.shape[0] == 0 or k_eff == 0:
            scores = np.zeros((queries.shape[0], k_eff), np.float32)
            ids = np.zeros((queries.shape[0], k_eff), np.int64)
        else:
            scores, ids = self._index.search(queries, k_eff)
        if k_eff < k:  # the FAISS convention for a short corpus, whatever the backend
            pad = k - k_eff
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        ids = ids.astype(np.int64, copy=False)
        if self.rows is not None:
            ids = np.where(ids >= 0, self.rows[np.maximum(ids, 0)], -1)
        return scores.astype(np.float32, copy=False), ids


class _FaissIndex:
    def __init__(self, docs, cfg):
        import faiss

        self.d, self.cfg = docs.shape[1], cfg
        index = faiss.IndexFlatIP(self.d)
        if hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
            co = faiss.GpuMultipleClonerOptions()
            co.shard = True  # split the corpus across GPUs instead of copying it to each
            index = faiss.index_cpu_to_all_gpus(index, co=co)
        index.add(np.ascontiguousarray(docs, dtype=np.float32))
        self.index = index

    def search(self, queries, k):
        batch = max(self.cfg.query_batch, -(-FAISS_MIN_QUERY_DIMS // self.d))
        scores, ids = [], []
        for s in range(0, queries.shape[0], batch):
            sc, ix = self.index.search(np.ascontiguousarray(queries[s:s + batch], dtype=np.float32), k)
            scores.append(sc)
            ids.append(ix)
        return np.concatenate(scores), np.concatenate(ids)


class _TorchIndex:
    def __init__(self, docs, cfg):
        import torch

        self.cfg = cfg
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.fast = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.docs32 = torch.from_numpy(np.ascontiguousarray(docs, dtype=np.float32)).to(self.device)  # (N, D)
        self.docs_fast = self.docs32.to(self.fast)

    def search(self, queries, k):
        import torch

        cfg, docs32, docs_fast = self.cfg, self.docs32, self.docs_fast
        n, dim = docs32.shape
        cand = min(n, 2 * k if self.fast != torch.float32 else k)  # bf16 shortlists twice as many, then re-scores
        # a deep shortlist (tied scores fetched again, k in the thousands) takes fewer queries at a time:
        # each query's candidates (score + index) stay under the budget, whatever k grows to
        batch = max(1, min(cfg.query_batch, RESCORE_BYTES // (12 * cand)))
        rescore = max(1, RESCORE_BYTES // (4 * cand * dim))  # queries per fp32 re-score gather
        out_s, out_i = [], []
        for s in range(0, queries.shape[0], batch):
            q32 = torch.from_numpy(np.ascontiguousarray(queries[s:s + batch], dtype=np.float32)).to(self.device)
            q_fast = q32.to(self.fast)
            best_s, best_i = None, None
            for c in range(0, n, cfg.doc_chunk):
                sc = q_fast @ docs_fast[c:c + cfg.doc_chunk].T  # (q, chunk)
                top_s, top_i = sc.float().topk(min(cand, sc.shape[1]), dim=1)  # (q, cand)
                top_i += c
                if best_s is not None:
                    top_s, top_i = torch.cat([best_s, top_s], 1), torch.cat([best_i, top_i], 1)
                    keep = top_s.topk(min(cand, top_s.shape[1]), dim=1).indices
                    top_s, top_i = top_s.gather(1, keep), top_i.gather(1, keep)
                best_s, best_i = top_s, top_i
            # fp32 re-score of the shortlist, then order by (score desc, index asc) like FAISS; a
            # product and a sum along D, not a batched matmul: bmm's result for a (query, doc) pair can
            # move by an ulp with the doc's place in the shortlist, and identical documents must tie
            exact = torch.cat([(q32[r:r + rescore, None, :] * docs32[best_i[r:r + rescore]]).sum(-1)
                               for r in range(0, q32.shape[0], rescore)])  # (q, cand), the gather in slices
            order = _order(exact, best_i)[:, :k]
            out_s.append(exact.gather(1, order).cpu().numpy())
            out_i.append(best_i.gather(1, order).cpu().numpy())
        return np.concatenate(out_s), np.concatenate(out_i)


def _order(scores, ids):
    """Column order sorting each row by score descending, then doc index ascending."""
    import torch

    by_id = torch.argsort(ids, dim=1, stable=True)
    by_score = torch.argsort(scores.gather(1, by_id), dim=1, descending=True, stable=True)
    return by_id.gather(1, by_score)

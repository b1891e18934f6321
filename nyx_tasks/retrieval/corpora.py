"""Retrieval, shared by `feedback` (paper: stage 2, VLM feedback) and `evaluate`
(retrieval scores, then RAG accuracy): a corpus, a published retriever
checkpoint that embeds it (through the embedding cache), and exact search at a
Matryoshka dim. What is then asked over the retrieved documents is
`nyx_tasks.retrieval.answering`'s.

`evaluate.protocol: paper` retrieves the text-only sets over a smaller corpus,
as the released code does (experiments/text-only/make_t2t_corpus.py): the union
of every question's top-k passages by another retriever (`union_corpus`).

Identical documents count once: `search` with `distinct=` (the corpus's
`Corpus.distinct()`) ranks each content (text plus ordered image ids) once, at
its first occurrence, and `Corpus.representative_id` maps any document id to
that occurrence's id, so a gold id and its retrieved copy compare equal.

A text set's corpus (Wikipedia: millions of passages) is never held whole: it is a
`CorpusTable` (`text_table`) whose vectors lie in shards under the retrieving embedder
(`search_table`: embed the missing shards, then exact search shard by shard, each text's
first occurrence only), and a stage fetches the texts and ids of the rows it retrieved
(`fetch_rows`), as a small `Corpus` over those rows. Identical texts count once there as
here (`CorpusTable.rep` maps a row to its text's first occurrence, as `Distinct.rep` does).

`search_cost` measures what a Matryoshka dim costs (evaluate's cost rows): the bytes of the
float32 vectors searched at that dim and the latency of single-query searches with the
configured backend (the vectors truncated and resident first, one shard at a time for a table:
a query's latency is its search time summed over the shards)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from nyx_tasks.embedding import MixedItem, make_embedder
from nyx_tasks.embedding.base import matryoshka
from nyx_tasks.embedding.cache import embed_cached
from nyx_tasks.retrieval.search import (
    Distinct,
    FlatIndex,
    content_keys,
    distinct_contents,
    exact_topk,
)
from nyx_tasks.retrieval.vector_shards import (
    SHARD_ROWS,
    CorpusVectors,
    embed_missing,
    search_shards,
)
from nyx_tasks.sources.corpus_table import CorpusTable, corpus_table
from nyx_tasks.store.artifacts import ArtifactStore, image_paths, iter_stage_batches


@dataclass
class Corpus:
    """Documents one search runs over: NyxQA chunks (with images) or a text set's passages."""

    name: str
    ids: list[str]
    texts: list[str]
    image_ids: list[list[str]]
    paths: dict[str, str]  # image_id -> path relative to the artifact root

    def items(self):
        return [MixedItem(t, tuple((i, self.paths[i]) for i in ims))
                for t, ims in zip(self.texts, self.image_ids, strict=True)]

    def distinct(self) -> Distinct:
        """The first occurrence of each content (text and ordered image ids)."""
        return distinct_contents(content_keys(self.texts, self.image_ids))

    def representative_id(self, distinct: Distinct) -> dict[str, str]:
        """Each document id -> the id of its content's first occurrence (what `search` returns)."""
        return {doc_id: self.ids[r] for doc_id, r in zip(self.ids, distinct.rep.tolist(), strict=True)}


def nyxqa_corpus(store: ArtifactStore, partition: str) -> Corpus:
    rows = [r for b in iter_stage_batches(store, partition, "chunk", columns=["chunk_id", "text", "image_ids"])
            for r in b.to_pylist()]
    return Corpus("nyxqa", [r["chunk_id"] for r in rows], [r["text"] for r in rows],
                  [r["image_ids"] for r in rows], image_paths(store, partition))


def text_table(store: ArtifactStore, ts, drop=None) -> CorpusTable:
    """A text set's corpus as a table read by row id (built once); `drop` hears its dropped
    source rows, as `text_sets.read_corpus` reports them."""
    return corpus_table(store, ts, drop)


def search_table(embedder, table: CorpusTable, q_vecs, k: int, search_cfg, dim: int | None = None,
                 shard_rows: int = SHARD_ROWS) -> tuple[np.ndarray, np.ndarray, int]:
    """(scores, rows, rows embedded now): each query's top-k rows of `table` by `embedder`, best
    first by (score desc, row asc), -1 past the corpus's end; identical texts take one rank, at
    their first occurrence. The table's missing vector shards are embedded first; then one
    shard is in memory at a time."""
    vectors, new = embed_missing(embedder, table, shard_rows)
    scores, rows = search_shards(q_vecs, vectors, k, search_cfg, dim, exclude=table.repeats()[0])
    return scores, rows, new


def fetch_rows(table: CorpusTable, name: str, *ranked) -> tuple[Corpus, list[np.ndarray]]:
    """The rows that `ranked` (row arrays, -1 pads) name as a `Corpus` of those rows only (ids and
    texts read by row, ascending), and each array in that corpus's indices (-1 pads kept). Rows
    ascending keep their order, so a ranking's ties stay by row."""
    ranked = [np.asarray(r, dtype=np.int64) for r in ranked]
    rows = np.unique(np.concatenate([r[r >= 0] for r in ranked])) if ranked else np.zeros(0, np.int64)
    local = [np.where(r >= 0, np.searchsorted(rows, np.maximum(r, 0)), -1) for r in ranked]
    corpus = Corpus(name, table.doc_ids(rows), table.texts(rows), [[] for _ in range(len(rows))], {})
    return corpus, local


def union_corpus(embedder, pools: list[tuple[CorpusTable, list[str]]], top_k: int, search_cfg,
                 store: ArtifactStore, name: str = "text_union", shard_rows: int = SHARD_ROWS) -> Corpus:
    """The union of each question's top `top_k` documents by `embedder`: `pools` pairs a corpus table
    with the questions that search it. Each table is searched shard by shard and only the retrieved
    rows' texts are read. A text (passage contents) enters once, with the id of its first entry;
    documents enter in pool order, then question order, then rank order, so the union is the same
    on every run. Released code: the set of FlashRAG's E5 top-20 passage strings over all the sets'
    questions (make_t2t_corpus.py)."""
    ids: list[str] = []
    texts: dict[str, int] = {}
    taken: set[str] = set()
    for table, questions in pools:
        if not questions or not len(table):
            continue
        q_vecs, _ = embed_cached(embedder, [MixedItem(q) for q in questions], "query", store)
        _, ranked, _ = search_table(embedder, table, q_vecs, min(top_k, len(table)), search_cfg,
                                    shard_rows=shard_rows)
        found, (local,) = fetch_rows(table, name, ranked)
        table.close()  # its open files (a later read reopens them)
        for row in local:
            for d in row:
                if d < 0 or found.texts[d] in texts:
                    continue
                doc_id = found.ids[d]
                while doc_id in taken:  # another corpus's document under the same id
                    doc_id = f"{doc_id}#"
                taken.add(doc_id)
                texts[found.texts[d]] = len(ids)
                ids.append(doc_id)
    return Corpus(name, ids, list(texts), [[] for _ in ids], {})


def checkpoint_embedder_cfg(emb_cfg, checkpoint: dict):
    """The embedder config of a published checkpoint: `nyx` on a VLM's merged export;
    `sentence-transformers` on an encoder's (with the prefixes it was trained with)."""
    if checkpoint.get("family", "vlm") == "encoder":
        recipe = checkpoint.get("recipe", {})
        return emb_cfg.model_copy(update={"kind": "sentence-transformers", "model": checkpoint["merged"],
                                          "adapter": None, "dim": None,
                                          "query_prefix": recipe.get("query_prefix", ""),
                                          "document_prefix": recipe.get("document_prefix", "")})
    return emb_cfg.model_copy(update={"kind": "nyx", "model": checkpoint["merged"], "adapter": None, "dim": None})


def checkpoint_embedder(emb_cfg, checkpoint: dict, store: ArtifactStore):
    """The `nyx` embedder loading a published checkpoint's merged export."""
    return make_embedder(checkpoint_embedder_cfg(emb_cfg, checkpoint), store)


def embed(embedder, corpus: Corpus, queries, store: ArtifactStore):
    """(document vectors, query vectors, newly embedded count), full width, L2-normalised."""
    d_vecs, n_docs = embed_cached(embedder, corpus.items(), "document", store)
    q_vecs, n_q = embed_cached(embedder, queries, "query", store)
    return d_vecs, q_vecs, n_docs + n_q


def search(q_vecs, d_vecs, k: int, search_cfg, dim: int | None = None, distinct: Distinct | None = None):
    """Top-k (scores, doc indices) at a Matryoshka dim (truncate, renormalise), best first;
    with `distinct`, over each content's first occurrence only (identical documents count once)."""
    keep = None if distinct is None else distinct.keep
    return exact_topk(matryoshka(q_vecs, dim), matryoshka(d_vecs, dim), k, search_cfg, keep=keep)


def rows_of_ids(table: CorpusTable, ids: list[str | None]) -> np.ndarray:
    """The row of each corpus id in `table` (-1: not in it, or None), reading the id column one
    row group at a time until every id is found."""
    want: dict[str, list[int]] = {}
    for i, doc_id in enumerate(ids):
        if doc_id is not None:
            want.setdefault(doc_id, []).append(i)
    out = np.full(len(ids), -1, np.int64)
    step = table.row_group
    for lo in range(0, len(table), step):
        if not want:
            break
        rows = np.arange(lo, min(lo + step, len(table)))
        for row, doc_id in zip(rows.tolist(), table.doc_ids(rows), strict=True):
            for i in want.pop(doc_id, ()):
                out[i] = row
    return out


def search_cost(q_vecs, docs, k: int, search_cfg, dim: int,
                keep: np.ndarray | None = None, exclude: np.ndarray | None = None) -> dict:
    """{"index_bytes", "n_docs", "p50_ms", "p95_ms", "n_timed"} of searching `docs` at `dim` one
    query at a time: each of `q_vecs` (pass the sample to time), after one untimed warm-up search. `docs`: an
    in-memory array (`keep`: the rows searched, as `search`'s `distinct.keep`) or a table's
    `CorpusVectors` (`exclude`: rows left out, as `search_table`'s). Index bytes: the float32
    vectors searched, n_docs x dim x 4. Latencies are None when no query is timed. Each shard's
    index is built once (`search.FlatIndex`: FAISS IndexFlatIP, or the vectors resident on the GPU)
    and a query's time is its `k`-nearest search, as a serving index answers; a sharded corpus's
    query time is the sum over its shards (one resident at a time here)."""
    q = matryoshka(np.asarray(q_vecs, np.float32), dim)
    if isinstance(docs, CorpusVectors):
        shards = [(docs.bounds(i)[0], lambda i=i: docs.load(i, "c")) for i in range(docs.n_shards)]
    else:
        shards = [(0, lambda: np.asarray(docs)[keep] if keep is not None else np.asarray(docs))]
    total_ms = np.zeros(len(q))
    n_docs = 0
    for offset, load in shards:
        shard = matryoshka(load(), dim)
        kept = None
        if exclude is not None and len(exclude):
            kept = np.setdiff1d(np.arange(shard.shape[0]), np.asarray(exclude) - offset)
        n_docs += shard.shape[0] if kept is None else len(kept)
        if not len(q) or not shard.shape[0]:
            continue
        index = FlatIndex(shard, search_cfg, kept)  # built once, outside the timing
        index.search(q[:1], k)  # warm-up: backend init, caches
        for j in range(len(q)):
            t0 = time.perf_counter()
            index.search(q[j:j + 1], k)
            total_ms[j] += (time.perf_counter() - t0) * 1000.0
        del shard, index
    p50, p95 = (float(x) for x in np.percentile(total_ms, [50, 95])) if len(q) else (None, None)
    return {"index_bytes": n_docs * dim * 4, "n_docs": n_docs, "p50_ms": p50, "p95_ms": p95, "n_timed": len(q)}

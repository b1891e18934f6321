"""`mine` (paper: NyxQA hard negatives): embed the NyxQA queries and the
partition's chunk corpus with the miner (mmE5 in the paper profile), exact
inner-product search of the top `range_max`, skip ranks before `range_min`,
drop the positive by chunk id (two chunks with the same text but different
images are different documents) and documents whose text equals the
positive's, optionally guard against false negatives, keep `num_negatives`.

In small steps (sentence-transformers' mining, taken apart): embed (cached by
content hash) -> search -> select per query. A query short of negatives keeps
what it has and is counted (`extra.queries_short_of_negatives`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..artifacts import image_paths, iter_stage_batches
from ..config import MineConfig, stable_hash
from ..runner import ShardOutputs, Stage, StageContext


@dataclass
class Picked:
    indices: list[int]
    scores: list[float]
    ranks: list[int]
    excluded: dict[str, int]


def select_negatives(ranked: list[int], scores: list[float], pos: int, doc_ids: list[str], doc_texts: list[str],
                     cfg: MineConfig, pos_score: float) -> Picked:
    """Pick negatives from one query's ranked doc indices (best first).

    Ranks before `range_min` are skipped; the positive is excluded by id and, if
    `exclude_same_text`, so is every doc whose text equals the positive's; the
    guard drops candidates scoring above (1 - margin) x pos_score."""
    picked, sc, rk = [], [], []
    excluded = {"positive": 0, "same_text": 0, "guard": 0}
    for rank in range(cfg.range_min, min(cfg.range_max, len(ranked))):
        d = ranked[rank]
        if d < 0:
            break
        if doc_ids[d] == doc_ids[pos]:
            excluded["positive"] += 1
            continue
        if cfg.exclude_same_text and doc_texts[d] == doc_texts[pos]:
            excluded["same_text"] += 1
            continue
        if cfg.false_negative_margin is not None and scores[rank] > (1 - cfg.false_negative_margin) * pos_score:
            excluded["guard"] += 1
            continue
        picked.append(d)
        sc.append(float(scores[rank]))
        rk.append(rank)
        if len(picked) == cfg.num_negatives:
            break
    return Picked(picked, sc, rk, excluded)


class MineStage(Stage):
    name = "mine"
    version = 1
    inputs = ("filter", "chunk", "ingest")
    outputs = {"part": "triplets"}
    execution_only = ("query_batch", "embedder.batch_size", "embedder.device")
    doc = "Embed queries and chunks with the miner, exact top-k search, skip top ranks, drop the positive by id, keep 5."

    def plan_shards(self, ctx: StageContext) -> list[dict]:
        return [{"shard": 0, "name": "all"}]  # the search needs the whole corpus

    def process(self, ctx: StageContext, shard: dict, out: ShardOutputs) -> None:
        import numpy as np

        from ..embedding import MixedItem, make_embedder
        from ..embedding.cache import embed_cached
        from ..search import exact_topk

        cfg = ctx.cfg.mine
        docs = [r for b in iter_stage_batches(ctx.store, ctx.partition, "chunk",
                                              columns=["chunk_id", "text", "image_ids"]) for r in b.to_pylist()]
        queries = [r for b in iter_stage_batches(ctx.store, ctx.partition, "filter") for r in b.to_pylist()]
        out.rows_in = len(queries)
        if not queries:
            return
        paths = image_paths(ctx.store, ctx.partition)
        doc_ids = [d["chunk_id"] for d in docs]
        pos_of = {cid: i for i, cid in enumerate(doc_ids)}
        embedder = make_embedder(cfg.embedder, ctx.store)
        miner_hash = stable_hash(embedder.model_id)
        d_vecs, n_new_docs = embed_cached(embedder, [MixedItem(d["text"], tuple((i, paths[i]) for i in d["image_ids"]))
                                                     for d in docs], "document", ctx.store)
        q_vecs, n_new_q = embed_cached(embedder, [MixedItem(q["query"], tuple((i, paths[i]) for i in q["query_image_ids"]))
                                                  for q in queries], "query", ctx.store)
        out.extra["embedded_documents"] += n_new_docs
        out.extra["embedded_queries"] += n_new_q
        scores, ranked = exact_topk(q_vecs, d_vecs, cfg.range_max, cfg.query_batch)
        texts = [d["text"] for d in docs]
        rows = []
        for qi, q in enumerate(queries):
            pos = pos_of.get(q["pos_chunk_id"])
            if pos is None:
                out.drops.drop("positive_not_in_corpus", q["qa_id"])
                continue
            pos_score = float(np.dot(q_vecs[qi], d_vecs[pos]))
            hits = ranked[qi].tolist()
            p = select_negatives(hits, scores[qi].tolist(), pos, doc_ids, texts, cfg, pos_score)
            for k, v in p.excluded.items():
                out.extra[f"excluded_{k}"] += v
            if len(p.indices) < cfg.num_negatives:
                out.extra["queries_short_of_negatives"] += 1
                out.extra["negatives_missing"] += cfg.num_negatives - len(p.indices)
            rows.append({
                "qa_id": q["qa_id"], "query": q["query"], "query_image_ids": q["query_image_ids"], "answer": q["answer"],
                "pos_chunk_id": q["pos_chunk_id"], "pos_text": q["pos_text"], "pos_image_ids": q["pos_image_ids"],
                "pos_score": pos_score, "pos_rank": hits.index(pos) if pos in hits else -1,
                "neg_chunk_ids": [doc_ids[d] for d in p.indices], "neg_texts": [texts[d] for d in p.indices],
                "neg_image_ids": [docs[d]["image_ids"] for d in p.indices], "neg_scores": p.scores,
                "neg_ranks": p.ranks, "split": q["split"], "modality": q["modality"],
                "miner_id": embedder.model_id, "miner_hash": miner_hash,
            })
        out.write(rows)


STAGE = MineStage()

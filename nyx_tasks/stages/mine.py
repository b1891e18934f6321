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
    ranks: list[int]  # raw search ranks (0-based)
    excluded: dict[str, int]


def select_negatives(ranked: list[int], scores: list[float], pos: int, doc_ids: list[str], doc_texts: list[str],
                     cfg: MineConfig, pos_score: float) -> Picked:
    """Pick negatives from one query's ranked doc indices (best first).

    The positive (by id), documents with the positive's text (if
    `exclude_same_text`) and, with the guard on, candidates scoring above
    pos - |pos| x margin are removed first; of the remaining candidates the
    first `range_min` are skipped and the next `num_negatives` kept, within the
    top `range_max`. This is sentence-transformers' `mine_hard_negatives`
    order (positives never take a rank), which the benchmark checks against."""
    kept: list[tuple[int, float, int]] = []
    excluded = {"positive": 0, "same_text": 0, "guard": 0}
    threshold = None if cfg.false_negative_margin is None else pos_score - abs(pos_score) * cfg.false_negative_margin
    for rank, d in enumerate(ranked):
        if d < 0:
            break
        if doc_ids[d] == doc_ids[pos]:
            excluded["positive"] += 1
            continue
        if cfg.exclude_same_text and doc_texts[d] == doc_texts[pos]:
            excluded["same_text"] += 1
            continue
        if threshold is not None and scores[rank] > threshold:
            excluded["guard"] += 1
            continue
        kept.append((d, float(scores[rank]), rank))
        if len(kept) >= cfg.range_max:
            break
    window = kept[cfg.range_min:cfg.range_min + cfg.num_negatives]
    return Picked([d for d, _, _ in window], [s for _, s, _ in window], [r for _, _, r in window], excluded)


def search_depth(cfg: MineConfig) -> int:
    """Candidates to retrieve: the window plus slack for removed positives / same-text docs."""
    return cfg.range_max + cfg.search_slack


def mine_negatives(q_vecs, d_vecs, positives: list[int], doc_ids: list[str], doc_texts: list[str],
                   cfg: MineConfig) -> tuple[list[Picked], list[float], list[list[int]]]:
    """Search, then select per query: (picks, positive scores, ranked doc indices)."""
    import numpy as np

    from ..search import exact_topk

    scores, ranked = exact_topk(q_vecs, d_vecs, search_depth(cfg), cfg.query_batch)
    pos_scores = np.einsum("ij,ij->i", q_vecs, d_vecs[positives]).tolist() if positives else []
    ranked_l, scores_l = ranked.tolist(), scores.tolist()
    picks = [select_negatives(ranked_l[i], scores_l[i], p, doc_ids, doc_texts, cfg, pos_scores[i])
             for i, p in enumerate(positives)]
    return picks, pos_scores, ranked_l


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
        from ..embedding import MixedItem, make_embedder
        from ..embedding.cache import embed_cached

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
        texts = [d["text"] for d in docs]
        kept = [qi for qi, q in enumerate(queries) if q["pos_chunk_id"] in pos_of]
        for q in queries:
            if q["pos_chunk_id"] not in pos_of:
                out.drops.drop("positive_not_in_corpus", q["qa_id"])
        positives = [pos_of[queries[qi]["pos_chunk_id"]] for qi in kept]
        picks, pos_scores, ranked = mine_negatives(q_vecs[kept], d_vecs, positives, doc_ids, texts, cfg)
        rows = []
        for qi, pos, p, pos_score, hits in zip(kept, positives, picks, pos_scores, ranked, strict=True):
            q = queries[qi]
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


def remine(cfg, store=None):
    """Re-mine the partition's NyxQA negatives with the newest retriever checkpoint
    (or the configured miner when there is none) into a new versioned artifact,
    `partitions/<p>/negatives/<version>/`, leaving earlier versions untouched.
    The version is the hash of the miner, so re-mining with the same miner is a
    no-op. Returns (StageResult, version, checkpoint or None)."""
    from ..artifacts import ArtifactStore
    from ..checkpoints import latest_checkpoint
    from ..runner import run_stage

    store = store or ArtifactStore(cfg.artifact_root())
    ckpt = latest_checkpoint(store)
    emb = cfg.mine.embedder
    if ckpt:
        emb = emb.model_copy(update={"kind": "nyx", "model": ckpt.get("merged") or ckpt["base_model"],
                                     "adapter": None if ckpt.get("merged") else ckpt.get("adapter")})
    cfg = cfg.model_copy(update={"mine": cfg.mine.model_copy(update={"embedder": emb})})
    version = stable_hash({"embedder": emb.model_dump(mode="json"), "checkpoint": ckpt}, 12)

    class VersionedMine(MineStage):
        name = f"negatives/{version}"

        def config_payload(self, c):
            return c.mine.model_dump(mode="json", exclude={"query_batch"})

    return run_stage(VersionedMine(), cfg, store), version, ckpt

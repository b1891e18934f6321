"""`mine` (paper: NyxQA hard negatives): embed the NyxQA queries and the
partition's chunk corpus with the miner (mmE5 in the paper profile), exact
inner-product search of the top `range_max`, skip ranks before `range_min`,
drop the positive and documents whose text equals the positive's, optionally
guard against false negatives, keep `num_negatives`.

Identical documents count once: a document is its content (text plus ordered
image ids; two chunks with the same text but different images are different
documents), the search runs over the first occurrence of each content, so a
repeated document takes one rank, a query never gets the same content twice,
and a copy of the positive is the positive (never a negative).

The same stage mines the text-only sets (`mine.text_sets`: HotpotQA,
2WikiMultiHopQA, MuSiQue as local Parquet/JSONL) against their own corpus with
the text embedder (E5-v2 in the paper profile): the top-1 retrieved document
is the positive, negatives come after rank `range_min`. One shard per corpus;
every row carries its `source`. A text set's corpus (Wikipedia: ~21M passages)
is never held whole: it is a `corpus_table` read by row id, embedded in vector
shards of `corpora.shard_rows` rows (each written once, also by the DAG's mapped
embedding tasks) and searched shard by shard (`mine_text_set`).

In small steps (sentence-transformers' mining, taken apart): embed (cached by
content hash) -> search -> select per query. A query short of negatives keeps
what it has and is counted (`extra.queries_short_of_negatives`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nyx_tasks.core.base import ShardSpec, StageError
from nyx_tasks.core.config import MineConfig, TextSetConfig
from nyx_tasks.core.hashing import stable_hash
from nyx_tasks.embedding import MixedItem, make_embedder
from nyx_tasks.embedding.base import Embedder
from nyx_tasks.embedding.cache import embed_cached
from nyx_tasks.retrieval.corpora import checkpoint_embedder_cfg, rows_of_ids
from nyx_tasks.retrieval.search import content_keys, distinct_contents, exact_topk
from nyx_tasks.retrieval.vector_shards import CorpusVectors, embed_missing, search_shards
from nyx_tasks.runner import RunOptions, ShardOutputs, Stage, StageContext, run_stage
from nyx_tasks.sources.corpus_table import CorpusTable, corpus_table
from nyx_tasks.sources.text_sets import fingerprint, read_questions
from nyx_tasks.store.artifacts import ArtifactStore, image_paths, iter_stage_batches
from nyx_tasks.store.checkpoints import latest_checkpoint


@dataclass
class Picked:
    indices: list[int]
    scores: list[float]
    ranks: list[int]  # raw search ranks (0-based)
    excluded: dict[str, int]


def select_negatives(ranked: list[int], scores: list[float], pos: int, doc_keys: list, doc_texts: list[str],
                     cfg: MineConfig, pos_score: float) -> Picked:
    """Pick negatives from one query's ranked doc indices (best first).

    `doc_keys[d]` is document d's content (`search.content_key`; unique ids
    work too): equal keys are one document. The positive and its copies,
    documents with the positive's text (if `exclude_same_text`) and, with the
    guard on, candidates scoring above pos - |pos| x margin are removed first,
    and a content already seen in the ranking takes no second rank; of the
    remaining candidates the first `range_min` are skipped and the next
    `num_negatives` kept, within the top `range_max`. This is
    sentence-transformers' `mine_hard_negatives` order (positives never take a
    rank, the corpus is deduplicated), which the benchmark checks against."""
    kept: list[tuple[int, float, int]] = []
    excluded = {"positive": 0, "same_text": 0, "guard": 0, "duplicate": 0}
    threshold = None if cfg.false_negative_margin is None else pos_score - abs(pos_score) * cfg.false_negative_margin
    seen = set()
    for rank, d in enumerate(ranked):
        if d < 0:
            break
        if doc_keys[d] == doc_keys[pos]:
            excluded["positive"] += 1
            continue
        if doc_keys[d] in seen:
            excluded["duplicate"] += 1
            continue
        seen.add(doc_keys[d])
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


def mine_negatives(q_vecs, d_vecs, positives: list[int] | None, doc_keys: list, doc_texts: list[str],
                   cfg: MineConfig) -> tuple[list[Picked], list[int], list[float], list[list[int]]]:
    """Search over the distinct contents (`doc_keys`, see `select_negatives`), then
    select per query: (picks, positive indices, positive scores, ranked doc
    indices, each content's first occurrence only). `positives=None` takes each
    query's top-1 retrieved document as its positive (paper: the text-only sets)."""
    distinct = distinct_contents(doc_keys)
    scores, ranked = exact_topk(q_vecs, d_vecs, search_depth(cfg), cfg.search, keep=distinct.keep)
    ranked_l, scores_l = ranked.tolist(), scores.tolist()
    if positives is None:
        positives = [r[0] for r in ranked_l]
    pos_scores = np.einsum("ij,ij->i", q_vecs, d_vecs[positives]).tolist() if positives else []
    picks = [select_negatives(ranked_l[i], scores_l[i], p, doc_keys, doc_texts, cfg, pos_scores[i])
             for i, p in enumerate(positives)]
    return picks, positives, pos_scores, ranked_l


def positive_rank(hits: list[int], pos: int, doc_keys: list) -> int:
    """The rank of the positive's content among a query's hits, -1 when it is not there. `doc_keys`:
    a list over the corpus, or a dict over some rows (a text set's, whose other hits are first
    occurrences: their own key)."""
    key = doc_keys.get if isinstance(doc_keys, dict) else (lambda d, _: doc_keys[d])
    return next((r for r, d in enumerate(hits) if d >= 0 and key(d, d) == key(pos, pos)), -1)


class MineShard(ShardSpec, total=False):
    """The NyxQA corpus (no `text_set`), or a row range of one text-only set's questions."""

    text_set: str
    start: int
    stop: int


class MineStage(Stage):
    name = "mine"
    config_key = "mine"
    version = 3
    inputs = ("filter", "chunk", "ingest")
    outputs = {"part": "triplets"}
    execution_only = ("search.query_batch", "search.doc_chunk", "search.backend", "embedder.batch_size",
                      "embedder.device", "embedder.prepare_workers", "text_embedder.batch_size",
                      "text_embedder.device", "text_embedder.prepare_workers")
    doc = ("Embed queries and chunks with the miner (mmE5), exact search, skip 10 ranks, drop the "
           "positive by id, keep 5 hard negatives; the text-only sets (top-1 retrieved = positive) too.")
    flow = {
        "in": "queries (NyxQA items + text-set questions read)",
        "out": "triplets (query, positive, hard negatives)",
        "drops": "queries; <set>_corpus_* drops count corpus documents",
    }

    embeds_corpora = True

    def corpora(self, cfg, store=None) -> list[tuple]:
        """The text sets, under `mine.text_embedder`."""
        return [(cfg.mine.text_embedder, ts) for ts in cfg.mine.text_sets]

    def input_fingerprint(self, ctx: StageContext) -> dict[str, str]:
        sets = {f"text_set:{t.name}": fingerprint(t) for t in ctx.cfg.mine.text_sets}  # a missing file fails first
        return {**super().input_fingerprint(ctx), **sets}

    def plan_shards(self, ctx: StageContext) -> list[MineShard]:
        # NyxQA in one shard (its chunks); a text set in one shard per `corpora.query_rows` questions,
        # each searching the set's whole corpus shard by shard
        shards: list[MineShard] = [{"shard": 0, "name": "nyxqa"}]
        for t in ctx.cfg.mine.text_sets:
            n = len(read_questions(t, lambda *a, **k: None))
            spans = [(a, min(a + ctx.cfg.corpora.query_rows, n)) for a in range(0, max(n, 1), ctx.cfg.corpora.query_rows)]
            for a, b in spans:
                name = f"text:{t.name}" if len(spans) == 1 else f"text:{t.name}:{a}-{b}"
                shards.append({"shard": len(shards), "name": name, "text_set": t.name, "start": a, "stop": b})
        return shards

    def process(self, ctx: StageContext, shard: MineShard, out: ShardOutputs) -> None:
        if "text_set" in shard:
            ts = next(t for t in ctx.cfg.mine.text_sets if t.name == shard["text_set"])
            mine_text_set(ctx.store, ctx.cfg.mine, ts, make_embedder(ctx.cfg.mine.text_embedder, ctx.store),
                          ctx.cfg.corpora.shard_rows, out, span=(shard.get("start", 0), shard.get("stop")))
        else:
            self._mine_nyxqa(ctx, out)

    def _mine_nyxqa(self, ctx: StageContext, out: ShardOutputs) -> None:
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
        d_vecs, n_new_docs = embed_cached(embedder, [MixedItem(d["text"], tuple((i, paths[i]) for i in d["image_ids"]))
                                                     for d in docs], "document", ctx.store)
        q_vecs, n_new_q = embed_cached(embedder, [MixedItem(q["query"], tuple((i, paths[i]) for i in q["query_image_ids"]))
                                                  for q in queries], "query", ctx.store)
        out.extra["embedded_documents"] += n_new_docs
        out.extra["embedded_queries"] += n_new_q
        out.extra["documents_with_images"] += sum(1 for d in docs if d["image_ids"])
        out.extra["images_embedded"] += getattr(embedder, "images_embedded", 0)  # VLM embedders count them
        kept = [qi for qi, q in enumerate(queries) if q["pos_chunk_id"] in pos_of]
        for q in queries:
            if q["pos_chunk_id"] not in pos_of:
                out.drops.drop("positive_not_in_corpus", q["qa_id"], item=q["qa_id"])
        texts, images = [d["text"] for d in docs], [d["image_ids"] for d in docs]
        mined = Mined(doc_ids, texts, images, embedder.model_id, content_keys(texts, images))
        out.extra["duplicate_documents"] += len(docs) - len(set(mined.keys))
        picks, positives, pos_scores, ranked = mine_negatives(
            q_vecs[kept], d_vecs, [pos_of[queries[qi]["pos_chunk_id"]] for qi in kept], mined.keys, texts, cfg)
        rows = []
        for qi, pos, p, pos_score, hits in zip(kept, positives, picks, pos_scores, ranked, strict=True):
            q = queries[qi]
            rows.append(_triplet(
                out, cfg, mined, p, (pos, pos_score, hits),
                source="nyxqa", qa_id=q["qa_id"], query=q["query"], query_image_ids=q["query_image_ids"],
                answer=q["answer"], answers=[q["answer"]], split=q["split"], modality=q["modality"]))
        out.write(rows)


def mine_text_set(store: ArtifactStore, cfg: MineConfig, ts: TextSetConfig, embedder: Embedder,
                  shard_rows: int, out: ShardOutputs, span: tuple[int, int | None] = (0, None)) -> None:
    """Paper, text-only sets: retrieve with the text embedder (E5-v2), the top-1 document is the
    positive, negatives come after rank `range_min`.

    The corpus is a `corpus_table` (texts by row id) embedded in `shard_rows`-row vector shards
    (`embed_missing`: a shard already there, e.g. from the DAG's mapped embedding tasks, is
    never recomputed) and searched shard by shard (`search_shards`) over each text's first
    occurrence; only the texts of the positives and the negatives kept are read back. `out`:
    the shard's outputs (or anything with their `drops`, `extra`, `rows_in` and `write`). `span`:
    the questions [start, stop) this task mines; the set's drops and corpus counts are reported by
    the task that starts at 0 only, so a set split over tasks counts them once."""
    first = span[0] == 0
    drop = out.drops.drop if first else (lambda *a, **k: None)
    questions = read_questions(ts, drop)[span[0]:span[1]]
    table = corpus_table(store, ts, drop)
    try:
        out.rows_in = len(questions) + sum(v for k, v in out.drops.counts.items() if "_corpus_" not in k)
        if not questions or not len(table):
            raise StageError(f"mine: text set {ts.name!r} has {len(questions)} usable questions and "
                             f"{len(table)} corpus documents; check mine.text_sets[{ts.name}] paths and columns.")
        vectors, embedded = embed_missing(embedder, table, shard_rows)
        out.extra[f"{ts.name}_embedded_documents"] += embedded
        q_vecs, n_new_q = embed_cached(embedder, [MixedItem(q.question) for q in questions], "query", store)
        out.extra[f"{ts.name}_embedded_queries"] += n_new_q
        if first:
            out.extra[f"{ts.name}_duplicate_documents"] += len(table) - int(table.manifest["distinct"])
        scores, ranked = search_shards(q_vecs, vectors, search_depth(cfg), cfg.search, exclude=table.repeats()[0])
        positives = gold_rows(table, questions, drop, ts.name) if ts.gold_id_column else ranked[:, 0]
        keep = np.flatnonzero(positives >= 0)  # a gold id not in the corpus: dropped above
        questions, q_vecs, scores, ranked, positives = ([questions[i] for i in keep], q_vecs[keep], scores[keep],
                                                        ranked[keep], positives[keep])
        picks, pos_scores = select_positive(q_vecs, scores, ranked, vectors, table, cfg, positives)
        mined = _fetch_mined(table, positives, picks, embedder.model_id)
        out.write([_triplet(out, cfg, mined, p, (pos, pos_score, hits),
                            source=ts.name, qa_id=q.qid, query=q.question, query_image_ids=[],
                            answer=q.answers[0], answers=q.answers, split="train", modality="text_only")
                   for q, p, pos, pos_score, hits in zip(questions, picks, positives.tolist(), pos_scores,
                                                         ranked.tolist(), strict=True)])
    finally:
        table.close()


def gold_rows(table: CorpusTable, questions, drop, name: str) -> np.ndarray:
    """Each question's gold passage (`gold_id_column`) as the row of its text's first occurrence;
    -1 where the id is not in the corpus (a named drop, `<set>_gold_not_in_corpus`)."""
    rows = rows_of_ids(table, [q.gold_id for q in questions])
    for q, row in zip(questions, rows.tolist(), strict=True):
        if row < 0:
            drop(f"{name}_gold_not_in_corpus", f"question {q.qid}: gold id {q.gold_id!r} is not in the corpus")
    found = rows >= 0
    rows[found] = table.rep(rows[found])
    return rows


def select_positive(q_vecs, scores, ranked, vectors: CorpusVectors, table: CorpusTable,
                    cfg: MineConfig, positives) -> tuple[list[Picked], list[float]]:
    """(picks, positive scores) for each query's positive row: its top-1 (the paper's text sets)
    or its gold passage. `ranked`: (Q, k) corpus rows best first over the first occurrences (-1
    past the corpus's end). A document's content key is the row of its text's first occurrence
    (`table.rep`), which also stands for its text: equal keys, equal texts. Works one query's
    candidates at a time (no whole-corpus lists)."""
    reps = np.where(ranked >= 0, table.rep(np.maximum(ranked, 0)), -1)
    positives = np.asarray(positives, np.int64)
    pos_scores = np.einsum("ij,ij->i", q_vecs, vectors.take(positives)).tolist() if len(positives) else []
    picks = []
    for hits, rep, s, pos, pos_score in zip(ranked.tolist(), reps.tolist(), scores.tolist(), positives.tolist(),
                                            pos_scores, strict=True):
        keys = dict(zip(hits, rep, strict=True))
        keys.setdefault(pos, pos)  # a gold ranked below the search depth: its own first occurrence
        picks.append(select_negatives(hits, s, pos, keys, keys, cfg, pos_score))
    return picks, pos_scores


def _fetch_mined(table: CorpusTable, positives, picks: list[Picked], miner_id: str) -> Mined:
    """A `Mined` over the rows the output names (the positives and the negatives kept), read by
    row id from the table: its fields are dicts by corpus row."""
    rows = np.unique(np.concatenate([np.asarray(positives, np.int64).reshape(-1)]
                                    + [np.asarray(p.indices, np.int64) for p in picks])).tolist()
    keys = table.rep(rows).tolist()
    return Mined(dict(zip(rows, table.doc_ids(rows), strict=True)), dict(zip(rows, table.texts(rows), strict=True)),
                 {r: [] for r in rows}, miner_id, dict(zip(rows, keys, strict=True)))


@dataclass(frozen=True)
class Mined:
    """The corpus the negatives were mined from, and by which embedder."""

    ids: list[str] | dict[int, str]  # indexed by document: corpus index (NyxQA) or row (a text set's table)
    texts: list[str] | dict[int, str]
    image_ids: list[list[str]] | dict[int, list[str]]
    miner_id: str
    keys: list | dict  # each document's content key: equal keys are one document


def _triplet(out: ShardOutputs, cfg: MineConfig, mined: Mined, p: Picked, positive: tuple[int, float, list[int]],
             **query) -> dict:
    """One output row (`positive`: its corpus index, score, and the ranked hits it is looked up in);
    counts exclusions and queries short of negatives."""
    pos, pos_score, hits = positive
    for k, v in p.excluded.items():
        out.extra[f"excluded_{k}"] += v
    if len(p.indices) < cfg.num_negatives:
        out.extra["queries_short_of_negatives"] += 1
        out.extra["negatives_missing"] += cfg.num_negatives - len(p.indices)
    ids, texts, images = mined.ids, mined.texts, mined.image_ids
    return {
        **query, "pos_chunk_id": ids[pos], "pos_text": texts[pos], "pos_image_ids": images[pos],
        "pos_score": pos_score, "pos_rank": positive_rank(hits, pos, mined.keys),
        "neg_chunk_ids": [ids[d] for d in p.indices], "neg_texts": [texts[d] for d in p.indices],
        "neg_image_ids": [images[d] for d in p.indices], "neg_scores": p.scores, "neg_ranks": p.ranks,
        "miner_id": mined.miner_id, "miner_hash": stable_hash(mined.miner_id),
    }


STAGE = MineStage()


class RemineStage(MineStage):
    """Mining again with a newer miner: the same work as `mine`, run by `nyx remine` and the
    re-mining DAG, declaring its output as one version of the partition's negatives."""

    name = "remine"
    config_key = "mine"
    doc = "Re-mine the NyxQA negatives with the newest checkpoint into negatives/<version>/."

    def __init__(self, negatives_version: str):
        self.negatives_version = negatives_version

    @property
    def output(self) -> str:
        return f"negatives/{self.negatives_version}"


def remine(cfg, store=None, opts: RunOptions | None = None):
    """Re-mine the partition's NyxQA negatives with the newest retriever checkpoint
    (or the configured miner when there is none) into a new versioned artifact,
    `partitions/<p>/negatives/<version>/`, leaving earlier versions untouched.
    Text-only sets are not re-mined (their positives come from the text embedder).
    The version is the hash of the miner, so re-mining with the same miner is a
    no-op. Returns (StageResult, version, checkpoint or None)."""
    store = store or ArtifactStore(cfg.artifact_root())
    ckpt = latest_checkpoint(store)
    emb = cfg.mine.embedder
    if ckpt and ckpt.get("merged"):
        emb = checkpoint_embedder_cfg(emb, ckpt)  # an encoder checkpoint embeds as sentence-transformers
    elif ckpt:
        emb = emb.model_copy(update={"kind": "nyx", "model": ckpt["base_model"], "adapter": ckpt.get("adapter")})
    # NyxQA only: a text set's positive is the text embedder's top-1, which re-mining must not move
    cfg = cfg.model_copy(update={"mine": cfg.mine.model_copy(update={"embedder": emb, "text_sets": []})})
    version = stable_hash({"embedder": emb.model_dump(mode="json"), "checkpoint": ckpt}, 12)
    return run_stage(RemineStage(version), cfg, store, opts), version, ckpt

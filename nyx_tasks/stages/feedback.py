"""`feedback` (paper: stage 2, VLM feedback): for each training query the
stage-1 retriever ranks its top-K documents, the VLM answers the query once
per sliding window over that ranking, and each answer is judged
(`nyx_tasks.evaluation.judges`). The positive is the first document of the earliest
window whose score is the highest, if that score is above a threshold; a query
where no window scores above it is dropped. Negatives are the documents ranked
after the positive: in `"paper"` mode simply the next ones, as the paper's code
did (K=30, windows of 1, stride 1, 3 negatives), in `"strict"` mode only those
that sit in no window which led to a correct answer, so a document that also
helps the VLM is never trained on as a negative.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from nyx_tasks.core.base import ShardSpec, StageError
from nyx_tasks.core.hashing import stable_hash
from nyx_tasks.embedding import MixedItem
from nyx_tasks.embedding.cache import embed_cached
from nyx_tasks.evaluation.judges import option_match, token_f1
from nyx_tasks.inference import GenerationError, make_backend
from nyx_tasks.retrieval.answering import (
    ANSWER_PROMPTS,
    PAPER_ANSWER_PROMPTS,
    Answering,
    free_answer,
    parsed_answer,
)
from nyx_tasks.retrieval.corpora import (
    Corpus,
    checkpoint_embedder,
    checkpoint_embedder_cfg,
    embed,
    fetch_rows,
    nyxqa_corpus,
    search,
    search_table,
    text_table,
)
from nyx_tasks.runner import ShardOutputs, Stage, StageContext
from nyx_tasks.stages.common import GENERATION_TUNING, RETRIEVAL_TUNING, with_prompts
from nyx_tasks.store.artifacts import iter_stage_batches
from nyx_tasks.store.checkpoints import stage_checkpoint

if TYPE_CHECKING:
    from nyx_tasks.core.config import FeedbackConfig
    from nyx_tasks.sources.corpus_table import CorpusTable

Id = TypeVar("Id", bound=Hashable)

MODES = ("strict", "paper")


def _check_window_args(window_size: int, stride: int) -> None:
    if window_size < 1:
        raise ValueError(f"window_size must be >= 1, got {window_size}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")


def num_windows(n_ranked: int, window_size: int, stride: int) -> int:
    """How many windows a ranked list of `n_ranked` documents yields.

    Windows start at ranks 0, stride, 2*stride, ... while the start is
    < n_ranked, so the count is ceil(n_ranked / stride) and does not depend on
    `window_size`. A window is cut at the end of the list, so the last one (and,
    when stride < window_size, the last few) may be shorter than `window_size`;
    when stride > window_size the documents between two windows are in none.
    Zero documents give zero windows. Raises ValueError on n_ranked < 0,
    window_size < 1 or stride < 1.
    """
    _check_window_args(window_size, stride)
    if n_ranked < 0:
        raise ValueError(f"n_ranked must be >= 0, got {n_ranked}")
    return -(-n_ranked // stride)


def windows(ranked_ids: Sequence[Id], window_size: int, stride: int) -> list[list[Id]]:
    """The documents each window shows the VLM, in rank order (paper: stage 2).

    Input: `ranked_ids`, best first. Output: one list per window,
    `ranked_ids[w*stride : w*stride+window_size]` for w in
    range(num_windows(...)); see `num_windows` for shorter and skipped ranks.
    """
    n = num_windows(len(ranked_ids), window_size, stride)
    return [list(ranked_ids[w * stride : w * stride + window_size]) for w in range(n)]


def _check_select_args(n_ranked: int, n_scores: int, window_size: int, stride: int, num_negatives: int,
                       mode: str) -> None:
    _check_window_args(window_size, stride)
    if num_negatives < 0:
        raise ValueError(f"num_negatives must be >= 0, got {num_negatives}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    expected = num_windows(n_ranked, window_size, stride)
    if n_scores != expected:
        raise ValueError(
            f"{n_ranked} ranked documents in windows of {window_size} with stride {stride} "
            f"make {expected} windows, but {n_scores} window scores were given"
        )


def select_feedback(
    ranked_ids: Sequence[Id],
    window_scores: Sequence[float],
    window_size: int,
    stride: int,
    num_negatives: int,
    threshold: float = 0.0,
    mode: str = "strict",
) -> tuple[Id | None, list[Id]]:
    """The positive and negatives of one query from its judged windows (paper: stage 2).

    Inputs: `ranked_ids`, the retriever's ranking, best first; `window_scores[w]`,
    the judged score of the VLM's answer for window w (laid out as in `windows`).
    Output: `(positive, negatives)`.

    Positive: the first document of the earliest window whose score is the
    maximum (ties go to the better-ranked window), provided that maximum is
    strictly above `threshold` (a score equal to it does not count); otherwise
    `(None, [])`, and the caller counts the dropped query. An empty ranking
    gives `(None, [])` too.

    Negatives: up to `num_negatives` documents ranked after the positive's
    rank, in rank order ("after" is by position: with windows wider than 1 the
    rest of the winning window comes after the positive). `"paper"` takes the
    next documents as they come; `"strict"` skips every document that appears
    in any window scoring above `threshold`. Fewer are returned when fewer
    qualify.

    Duplicate ids in `ranked_ids` are not expected (a retriever returns each
    document once); they do not crash, `"strict"` compares by id, and in both
    modes a copy of the positive is never returned as a negative.

    Raises ValueError on window_size < 1, stride < 1, num_negatives < 0, an
    unknown mode, or len(window_scores) != num_windows(len(ranked_ids), ...).
    """
    _check_select_args(len(ranked_ids), len(window_scores), window_size, stride, num_negatives, mode)
    if len(ranked_ids) == 0:
        return None, []

    best = max(window_scores)
    if not best > threshold:
        return None, []
    # the first window reaching the maximum: ties go to the better-ranked window
    pos_rank = next(w for w, score in enumerate(window_scores) if score == best) * stride
    positive = ranked_ids[pos_rank]

    excluded = {positive}
    if mode == "strict":
        for w, score in enumerate(window_scores):
            if score > threshold:
                excluded.update(ranked_ids[w * stride : w * stride + window_size])
    negatives = [d for d in ranked_ids[pos_rank + 1 :] if d not in excluded]
    return positive, negatives[:num_negatives]


# ---------------------------------------------------------------- the stage's steps
# `FeedbackStage.process` runs, per shard: `rank` -> `window_requests` -> `ask_vlm` -> `judge` -> `select`
# -> `triplets`. The steps share a `FeedbackShard` (the queries and their corpus) and a `Ranking`.
TRIPLET_KEYS = ("source", "qa_id", "query", "query_image_ids", "answer", "answers", "split", "modality")


@dataclass
class FeedbackShard:
    """One shard's training queries and what they are asked over."""

    name: str  # the shard's name, for the log
    rows: list[dict]  # mine's train rows of one source, in order
    # the documents they are ranked over; a text set's corpus table until `rank`, which replaces it
    # with the retrieved rows (the steps after it index `corpus` by the ranking's indices)
    corpus: Corpus | CorpusTable
    mc: dict[str, dict]  # qa_id -> {"options", "correct_index"}: NyxQA's multiple choice; {} for text sets

    def options(self, qi: int) -> dict | None:
        return self.mc.get(self.rows[qi]["qa_id"])


@dataclass
class Ranking:
    """The stage-1 retriever's top-K of each query (`search`'s output) and the embedder that ranked."""

    scores: Sequence  # [query][rank] similarity, best first
    ranked: Sequence  # [query][rank] corpus index, -1 where the corpus ran out
    hits: list[list[int]]  # [query] the corpus indices of `ranked` without the -1s, best first
    embedder_id: str


@dataclass(frozen=True)
class WindowRequest:
    """One VLM question: query `query` (index into the shard's rows) over window `window` of its hits."""

    query: int
    window: int
    docs: list[int]  # corpus indices, in rank order


@dataclass(frozen=True)
class Selection:
    """A query's positive and negatives as `select_feedback` picked them, located in its ranking."""

    query: int  # index into the shard's rows
    pos_id: str
    pos: tuple[int, int]  # (corpus index, rank)
    neg_ids: list[str]
    negs: list[tuple[int, int]]  # (corpus index, rank) of each negative


def shard_rows(ctx: StageContext, shard: FeedbackRange) -> list[dict]:
    """The shard's slice of mine's train rows of its source."""
    return [r for b in iter_stage_batches(ctx.store, ctx.partition, "mine") for r in b.to_pylist()
            if r["source"] == shard["source"] and r["split"] == "train"][shard["start"]:shard["stop"]]


def source_corpus(ctx: StageContext, source: str) -> tuple[Corpus | CorpusTable, dict[str, dict]]:
    """The corpus `source`'s queries are ranked over, and NyxQA's options by qa_id ({} for a text set):
    NyxQA's chunks in memory, a text set's corpus as a table read by row id (never whole)."""
    if source == "nyxqa":
        mc = {r["qa_id"]: r for b in iter_stage_batches(ctx.store, ctx.partition, "filter",
                                                         columns=["qa_id", "options", "correct_index"])
              for r in b.to_pylist()}
        return nyxqa_corpus(ctx.store, ctx.partition), mc
    ts = next((t for t in ctx.cfg.mine.text_sets if t.name == source), None)
    if ts is None:
        raise StageError(f"feedback: source {source!r} is not among mine.text_sets")
    return text_table(ctx.store, ts), {}


def rank(ctx: StageContext, data: FeedbackShard, out: ShardOutputs) -> Ranking:
    """Step 1: the top-K documents of every query with the stage-1 checkpoint (counts `embedded`: items
    embedded now, for a text set the queries and the rows of its newly embedded vector shards);
    identical documents (same text and images) take one rank, at their first occurrence. A text
    set's table is searched over its vector shards under this checkpoint, and `data.corpus`
    becomes the retrieved rows only (`fetch_rows`; the ranking indexes them)."""
    cfg, corpus = ctx.cfg.feedback, data.corpus
    ckpt = stage_checkpoint(ctx.store, ctx.partition, "train_stage1")
    embedder = checkpoint_embedder(cfg.embedder, ckpt, ctx.store)
    if not isinstance(corpus, Corpus):  # a text set: text-only queries over its corpus table
        q_vecs, n_q = embed_cached(embedder, [MixedItem(r["query"]) for r in data.rows], "query", ctx.store)
        scores, rows, n_docs = search_table(embedder, corpus, q_vecs, cfg.top_k, cfg.search,
                                            shard_rows=ctx.cfg.corpora.shard_rows)  # a text ranks once
        out.extra["embedded"] += n_docs + n_q
        data.corpus, (ranked,) = fetch_rows(corpus, data.name, rows)
        corpus.close()
    else:
        queries = [MixedItem(r["query"], tuple((i, corpus.paths[i]) for i in r["query_image_ids"]))
                   for r in data.rows]
        d_vecs, q_vecs, n_new = embed(embedder, corpus, queries, ctx.store)
        out.extra["embedded"] += n_new
        scores, ranked = search(q_vecs, d_vecs, cfg.top_k, cfg.search, distinct=corpus.distinct())  # ranks once
    hits = [[int(d) for d in ranked[qi] if d >= 0] for qi in range(len(data.rows))]
    return Ranking(scores, ranked, hits, embedder.model_id)


def window_requests(ranking: Ranking, window_size: int, stride: int) -> list[WindowRequest]:
    """Step 2: one request per window of every query's hits, query by query, windows in rank order."""
    return [WindowRequest(qi, w, docs) for qi, hits in enumerate(ranking.hits)
            for w, docs in enumerate(windows(hits, window_size, stride))]


def ask_vlm(ctx: StageContext, data: FeedbackShard, wins: list[WindowRequest], out: ShardOutputs) -> list:
    """Step 3: the VLM's response to every window, all sent at once (the backend batches and caches);
    counts `requests` and `cache_hits`."""
    cfg = ctx.cfg.feedback
    asking = Answering(cfg.generation, cfg.prompt_version, data.corpus, ctx.cfg.chunk.image_placeholder,
                       cfg.max_images)
    reqs = []
    for wr in wins:
        r, opts = data.rows[wr.query], data.options(wr.query)
        reqs.append(asking.request(r["query"], r["query_image_ids"], wr.docs, options=opts["options"] if opts else None,
                                   protocol=cfg.protocol))
    try:
        backend = make_backend(cfg.generation, ctx.store)
        ctx.log.info("feedback %s: %d queries x windows = %d requests to %s", data.name, len(data.rows), len(reqs),
                     backend.model_id[:80])
        resps = backend.generate(reqs)
    except GenerationError as e:
        raise StageError(f"feedback: {e}") from e
    out.extra["requests"] += len(reqs)
    out.extra["cache_hits"] += backend.hits
    backend.close()
    return resps


def judge_kind(opts: dict | None, protocol: str) -> str:
    """What a window's score is: `option_match` (strict, multiple choice: 1 or 0) or `token_f1`."""
    return "option_match" if opts and protocol == "strict" else "token_f1"


def score_answer(answer: str | None, row: dict, opts: dict | None, protocol: str = "strict") -> float:
    """The judged score of one parsed answer: 0 when unparseable; option match for strict multiple
    choice; token F1 otherwise, against the correct option's text (paper, NyxQA) or the row's answers."""
    if answer is None:
        return 0.0
    if judge_kind(opts, protocol) == "option_match":
        return option_match(answer, opts["options"], opts["correct_index"])
    golds = [opts["options"][opts["correct_index"]]] if opts else (row["answers"] or [row["answer"]])
    return token_f1(answer, golds)


def judge(data: FeedbackShard, ranking: Ranking, wins: list[WindowRequest], resps: Sequence,
          extra: Counter[str], protocol: str = "strict") -> tuple[list[list[float]], list[dict]]:
    """Step 4: each window's judged score, per query in window order, and the stored window rows;
    counts `unparseable_answers` and `window_score_0.0` ... `window_score_1.0`."""
    window_scores: list[list[float]] = [[] for _ in data.rows]
    window_rows = []
    for wr, resp in zip(wins, resps, strict=True):
        qi, docs = wr.query, wr.docs
        r, opts = data.rows[qi], data.options(qi)
        answer = free_answer(resp) if protocol == "paper" else parsed_answer(resp, opts["options"] if opts else None)
        if answer is None:
            extra["unparseable_answers"] += 1
        score = score_answer(answer, r, opts, protocol)
        window_scores[qi].append(score)
        extra[f"window_score_{int(score * 10) / 10:.1f}"] += 1  # 0.0, 0.1, ..., 1.0
        window_rows.append({"qa_id": r["qa_id"], "source": r["source"], "window": wr.window,
                            "doc_ids": [data.corpus.ids[d] for d in docs],
                            "ranks": [list(ranking.ranked[qi]).index(d) for d in docs], "answer": answer,
                            "score": float(score), "judge": judge_kind(opts, protocol)})
    return window_scores, window_rows


def select(data: FeedbackShard, ranking: Ranking, window_scores: list[list[float]], cfg: FeedbackConfig,
           out: ShardOutputs) -> list[Selection]:
    """Step 5: `select_feedback` on every query; drops the ones with no helpful window
    (`no_helpful_window`), counts `positive_rank_NN` and `queries_short_of_negatives`."""
    picked = []
    for qi, r in enumerate(data.rows):
        hits = ranking.hits[qi]
        by_id = {data.corpus.ids[d]: (d, rank) for rank, d in enumerate(hits)}
        pos, negs = select_feedback([data.corpus.ids[d] for d in hits], window_scores[qi], cfg.window_size,
                                    cfg.stride, cfg.num_negatives, cfg.threshold, cfg.mode)
        if pos is None:
            out.drops.drop("no_helpful_window", r["qa_id"], item=r["qa_id"])
            continue
        out.extra[f"positive_rank_{by_id[pos][1]:02d}"] += 1
        if len(negs) < cfg.num_negatives:
            out.extra["queries_short_of_negatives"] += 1
        picked.append(Selection(qi, pos, by_id[pos], negs, [by_id[n] for n in negs]))
    return picked


def triplets(data: FeedbackShard, ranking: Ranking, picked: list[Selection]) -> list[dict]:
    """Step 6: the triplet rows of the selected queries, with texts, images, scores and ranks."""
    corpus, miner = data.corpus, f"feedback:{ranking.embedder_id}"
    rows = []
    for s in picked:
        r, scores, (d_pos, pos_rank) = data.rows[s.query], ranking.scores[s.query], s.pos
        rows.append({**{k: r[k] for k in TRIPLET_KEYS},
                     "pos_chunk_id": s.pos_id, "pos_text": corpus.texts[d_pos], "pos_image_ids": corpus.image_ids[d_pos],
                     "pos_score": float(scores[pos_rank]), "pos_rank": pos_rank,
                     "neg_chunk_ids": s.neg_ids, "neg_texts": [corpus.texts[d] for d, _ in s.negs],
                     "neg_image_ids": [corpus.image_ids[d] for d, _ in s.negs],
                     "neg_scores": [float(scores[k]) for _, k in s.negs], "neg_ranks": [k for _, k in s.negs],
                     "miner_id": miner, "miner_hash": stable_hash(miner)})
    return rows


# ---------------------------------------------------------------- the stage
class FeedbackRange(ShardSpec):
    """A half-open range of one training source's queries."""

    source: str
    start: int
    stop: int


class FeedbackStage(Stage):
    """`feedback` (paper: stage 2): retrieve the top-K with the stage-1 checkpoint,
    ask the answering VLM about each sliding window of the ranked list, judge its
    answers (option match for NyxQA's multiple choice, token F1 for the text-only
    sets), store every window, and apply `select_feedback`. Queries where no
    window helps are dropped by name (`no_helpful_window`)."""

    name = "feedback"
    version = 2
    inputs = ("mine", "filter", "train_stage1", "chunk", "ingest")
    outputs = {"part": "triplets", "windows": "feedback_windows"}
    execution_only = ("shard_queries", *GENERATION_TUNING, *RETRIEVAL_TUNING)
    doc = ("Retrieve the top-K with the stage-1 model, the answering VLM judges sliding windows, the "
           "first document of the best window above the threshold is the positive; queries with no "
           "helpful window dropped by name.")
    flow = {
        "in": "training queries shown to the VLM, window by window",
        "out": "triplets with the positive the VLM's feedback chose",
        "drops": "queries (no_helpful_window: no window's answer scored above the threshold)",
    }

    gpu_routed = True
    embeds_corpora = True

    def corpora(self, cfg, store=None) -> list[tuple]:
        """Its text-set sources, under the partition's published stage-1 checkpoint."""
        wanted = set(cfg.feedback.sources)
        sets = [ts for ts in cfg.mine.text_sets if not wanted or ts.name in wanted]
        if not sets:
            return []
        emb = checkpoint_embedder_cfg(cfg.feedback.embedder, stage_checkpoint(store, cfg.partition, "train_stage1"))
        return [(emb, ts) for ts in sets]

    def config_payload(self, cfg):
        prompts = PAPER_ANSWER_PROMPTS if cfg.feedback.protocol == "paper" else ANSWER_PROMPTS
        payload = with_prompts(super().config_payload(cfg), cfg, cfg.feedback.prompt_version, prompts)
        payload["text_sets"] = [t.model_dump(mode="json") for t in cfg.mine.text_sets]
        return payload

    def plan_shards(self, ctx: StageContext) -> list[FeedbackRange]:
        cfg = ctx.cfg.feedback
        counts: dict[str, int] = {}
        for b in iter_stage_batches(ctx.store, ctx.partition, "mine", columns=["source", "split"]):
            for src, split in zip(b.column("source").to_pylist(), b.column("split").to_pylist(), strict=True):
                if split == "train" and (not cfg.sources or src in cfg.sources):
                    counts[src] = counts.get(src, 0) + 1
        shards = []
        for src, n in counts.items():
            n = min(n, cfg.max_queries_per_source or n)
            for start in range(0, n, cfg.shard_queries):
                stop = min(start + cfg.shard_queries, n)
                shards.append({"shard": len(shards), "name": f"{src}-{start:06d}-{stop:06d}", "source": src,
                               "start": start, "stop": stop})
        return shards or [{"shard": 0, "name": "empty", "source": None, "start": 0, "stop": 0}]

    def process(self, ctx: StageContext, shard: FeedbackRange, out: ShardOutputs) -> None:
        if shard["source"] is None:
            return
        cfg = ctx.cfg.feedback
        rows = shard_rows(ctx, shard)
        out.rows_in = len(rows)
        data = FeedbackShard(shard["name"], rows, *source_corpus(ctx, shard["source"]))
        ranking = rank(ctx, data, out)
        wins = window_requests(ranking, cfg.window_size, cfg.stride)
        resps = ask_vlm(ctx, data, wins, out)
        window_scores, window_rows = judge(data, ranking, wins, resps, out.extra, ctx.cfg.feedback.protocol)
        out.write(window_rows, kind="windows")
        out.write(triplets(data, ranking, select(data, ranking, window_scores, cfg, out)))


STAGE = FeedbackStage()

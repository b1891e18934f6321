"""`evaluate` (paper: results): NyxQA dev and test, retrieval (recall@1/5/10,
MRR against the positive chunk) and RAG accuracy (retrieve top-1, the VLM
answers the multiple-choice question, constrained to the options), at every
Matryoshka dimension, for every retriever of `evaluate.retrievers` side by side;
the held-out text-only sets by answer F1 / EM after top-1 retrieval (and recall@k
/ MRR by corpus id when the set names its gold passage, `gold_id_column`).
Identical documents (same text and images) take one rank, and retrieving a copy
of the gold chunk counts as retrieving the gold.

Retrievers (each name is the results' `model` column): `checkpoint` (the stage-1 /
stage-2 model), `embedder` (any embedder: mmE5, E5, a base model; dims above its
width are skipped with a note in the report), `none` (the VLM answers from the
question alone) and `golden` (the gold passage as the top-1; a text set without
a gold column is skipped with a note). none / golden do not depend on the dim:
their rows repeat the same value at every dim. Every retrieving retriever also
gets cost rows per (dataset, dim): `index_bytes`, `latency_ms_p50`,
`latency_ms_p95` (`retrieval.search_cost`: single-query searches over the
evaluation corpus with the configured backend, `latency_queries` of them).

`evaluate.protocol` picks how (the report and every results row name it):
- strict: the NyxQA query is the question; the VLM's answer is constrained by a
  JSON schema to the option texts (`answer_mc`) and judged by `option_match`;
  the text-only sets retrieve over their full corpus (`answer_free`): a table read
  by row id, its vectors searched shard by shard (`retrieval.search_table`).
- paper: the released code's protocol. NyxQA (experiments/nyxqa/exp1.py,
  nyx_rag.py, generator.py, eval_utils.py): the retrieval query is
  "Question: <q>\nChoices: <option texts joined by ', '>", the VLM answers
  free-form over the top-1 document with the choices in the prompt
  (`answer_paper_mc`), and an answer scores 1 when its SQuAD-normalised text
  equals the correct option's (an option letter alone scores 0). Text-only
  (experiments/text-only/make_t2t_corpus.py, nyx_rag_fb.py, e5_rag.py): every
  set retrieves over one corpus, the union of `union_embedder`'s top
  `union_top_k` passages per question (E5 top 20 in the paper), and the VLM
  answers free-form (`answer_paper_free`), judged by F1 / EM as in strict.

Output: the results table (long format, with bootstrap intervals) and a report
under `<root>/reports/<partition>-<key>/` (Markdown + plots: accuracy vs
dimension, stage 1 vs stage 2), whose summary lines also go to the task log;
the manifest's `report` is its path relative to the root.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nyx_tasks.core.base import ShardSpec, StageError
from nyx_tasks.embedding import MixedItem, make_embedder
from nyx_tasks.embedding.cache import embed_cached
from nyx_tasks.evaluation.imported_sets import (
    Benchmark,
    BenchmarkMissing,
    Scoring,
    answer_scores,
    load_benchmark,
    score_benchmark,
)
from nyx_tasks.evaluation.judges import exact_match, option_match, token_f1
from nyx_tasks.evaluation.metrics import (
    aggregate,
    bootstrap_ci,
    paired_bootstrap_ci,
    retrieval_scores,
)
from nyx_tasks.evaluation.report import COST_METRICS, DELTA_COLUMNS, render_report
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
    rows_of_ids,
    search,
    search_cost,
    search_table,
    text_table,
    union_corpus,
)
from nyx_tasks.retrieval.vector_shards import corpus_vectors
from nyx_tasks.runner import ShardOutputs, Stage, StageContext
from nyx_tasks.sources.text_sets import fingerprint, read_questions, sample_questions
from nyx_tasks.stages.common import GENERATION_TUNING, RETRIEVAL_TUNING, with_prompts
from nyx_tasks.stages.train import run_name
from nyx_tasks.store.artifacts import iter_stage_batches
from nyx_tasks.store.checkpoints import stage_checkpoint


@dataclass(frozen=True)
class ModelRun:
    """The retriever under evaluation (its name, the results' `model`), its embedder (None for
    none / golden), the answering backend, its kind, and the dims it is evaluated at (None: all)."""

    model: str
    embedder: Any
    backend: Any
    kind: str = "checkpoint"
    dims: tuple[int, ...] | None = None


@dataclass(frozen=True)
class TextGold:
    """A text set's gold passages (`gold_id_column`), per evaluated question: the corpus row of its
    text's first occurrence (-1: the id is not in the corpus) and the passage text (None likewise)."""

    rows: Any
    texts: list


def retriever_embedder_cfg(cfg, r):
    """The EmbedderConfig of an `embedder` retriever, a name (`mine.embedder`, ...) resolved."""
    if isinstance(r.embedder, str):
        section, field = r.embedder.split(".")
        return getattr(getattr(cfg, section), field)
    return r.embedder


DIM_FREE_NOTE = ("retrievers none (no document: the VLM answers from the question alone) and golden (the gold "
                 "passage as the top-1) do not depend on the dim: their rows repeat one value at every dim; golden's "
                 "recall is 1 by construction")


def content_scores(ids: list[str], gold_of: dict[str, str], ranked, gold_ids: list[str], ks) -> dict:
    """`retrieval_scores` by content: each query's ranked corpus indices (best first, -1 pads) and
    gold chunk id are mapped to their content's first occurrence (`gold_of`, from
    `Corpus.representative_id`), so retrieving a copy of the gold (same text and images) is a hit."""
    ranked_ids = [[gold_of.get(ids[d], ids[d]) for d in row if d >= 0] for row in ranked]
    return retrieval_scores(ranked_ids, [gold_of.get(g, g) for g in gold_ids], ks)


PAPER_ONLY = ("union_top_k", "union_embedder", "union_questions")  # fields only the paper protocol reads
PROTOCOL_NOTES = {
    "strict": "protocol strict: NyxQA query = the question; RAG accuracy: top-1 retrieved document, answer "
              "constrained to the four options (option match); text-only sets: top-1 over the full corpus, F1 / EM",
    "paper": "protocol paper (the released code's): NyxQA query = question + 'Choices: ' and the option texts; "
             "RAG accuracy: top-1 retrieved document, free-form answer with the choices in the prompt, 1 when it "
             "equals the correct option's text after SQuAD normalisation; text-only sets: top-1 over the union "
             "of {embedder}'s top {k} passages per question, free-form answer, F1 / EM",
}


PER_QUERY = "_values"  # a row's per-query scores while the stage runs (`EvaluateStage._row`); never written


def _pair_key(row: dict) -> tuple:
    """Rows with the same key were scored on the same queries (in the same order): the stage asks
    every retriever the same questions of a dataset/split, in one order, at every dim."""
    return row["dataset"], row["split"], row["dim"], row["metric"], row["n"]


def _delta(values, base: dict | None, n_boot: int) -> dict:
    """The `DELTA_COLUMNS` of a row with per-query `values` against the baseline's row `base`."""
    if base is None or values is None:
        return dict.fromkeys(DELTA_COLUMNS)
    if n_boot:
        d, lo, hi = paired_bootstrap_ci(values, base[PER_QUERY], n_boot=n_boot)
    else:  # no bootstrap: the difference of means, without an interval
        d, lo, hi = float(aggregate(values)["mean"] - aggregate(base[PER_QUERY])["mean"]), None, None
    return {"baseline": base["model"], "delta": d, "delta_ci_low": lo, "delta_ci_high": hi}


def paired_deltas(rows: list[dict], baseline: str, n_boot: int) -> list[dict]:
    """The rows (same order) with their per-query scores (`PER_QUERY`) dropped and the `DELTA_COLUMNS`
    set: every accuracy row of a retriever other than `baseline` whose baseline row has the same
    dataset, split, dim, metric and n gets its paired difference (`metrics.paired_bootstrap_ci`,
    `n_boot` resamples; 0: no interval); None elsewhere (the baseline's rows, cost rows, rows without
    per-query scores such as a retrieving retriever's benchmark rows, other queries)."""
    base = {_pair_key(r): r for r in rows if r["model"] == baseline and PER_QUERY in r}
    out = []
    for r in rows:
        values = r.get(PER_QUERY) if r["model"] != baseline and r["metric"] not in COST_METRICS else None
        row = {k: v for k, v in r.items() if k != PER_QUERY}
        out.append({**row, **_delta(values, base.get(_pair_key(r)), n_boot)})
    return out


def paper_query(question: str, options: list[str]) -> str:
    """The paper protocol's NyxQA retrieval query: the question and its choices (exp1.py; the
    retrieval instruction is the embedder's `query_instruction`)."""
    return f"Question: {question}\nChoices: {', '.join(options)}"


def union_embedder_cfg(cfg):
    """The embedder whose top passages make the paper protocol's text-only corpus."""
    return cfg.evaluate.union_embedder or cfg.mine.text_embedder


def select_questions(ts, cfg, drop):
    """(questions evaluated, every question of the set): the first `max_questions` in file order,
    or with `evaluate.sample_seed` that many drawn at random. The set is read in full only when
    the sample or the paper protocol's union corpus needs every question."""
    paper_all = cfg.protocol == "paper" and cfg.union_questions == "all"
    if cfg.sample_seed is None and not paper_all:
        questions = read_questions(ts, drop)
        return questions, questions
    everything = read_questions(ts, drop, capped=False)
    if cfg.sample_seed is not None:
        return sample_questions(everything, ts.max_questions, cfg.sample_seed), everything
    return everything[: ts.max_questions] if ts.max_questions else everything, everything


class EvaluateStage(Stage):
    name = "evaluate"
    # 2: identical documents take one rank, a copy of the gold counts as a hit; 3: results rows name
    # their protocol (a `protocol` column); 4: retrievers (checkpoint, embedder, none, golden), cost rows
    # (index bytes, search latency) per dim, text sets' retrieval metrics by their gold passage; 5: the paired
    # difference from the baseline retriever (baseline, delta, delta_ci_low, delta_ci_high), the report's summary
    version = 5
    inputs = ("filter", "chunk", "ingest", "train_stage1", "train_stage2")
    outputs = {"part": "eval_results"}
    execution_only = (*GENERATION_TUNING, *RETRIEVAL_TUNING)
    doc = ("Recall@1/5/10, MRR and top-1 RAG accuracy on NyxQA dev/test at every Matryoshka dim, stage 1 "
           "vs stage 2; text sets by F1/EM; `reports/<run>/report.md` with plots.")
    flow = {
        "in": "evaluation queries (NyxQA dev/test items + text-set questions)",
        "out": "result rows (one per model, dataset, split, dim and metric)",
        "drops": "text-set questions or corpus documents that could not be read",
    }

    gpu_routed = True
    embeds_corpora = True

    def corpora(self, cfg, store=None) -> list[tuple]:
        """Its text sets under each evaluated checkpoint; for the paper protocol, under the union
        embedder (the union of each question's top passages)."""
        ev = cfg.evaluate
        if ev.protocol == "paper":
            return [(union_embedder_cfg(cfg), ts) for ts in ev.text_sets]
        return [(checkpoint_embedder_cfg(ev.embedder, stage_checkpoint(store, cfg.partition, f"train_{m}")), ts)
                for m in ev.models for ts in ev.text_sets]

    def config_payload(self, cfg):
        paper = cfg.evaluate.protocol == "paper"
        payload = with_prompts(super().config_payload(cfg), cfg, cfg.evaluate.prompt_version,
                               PAPER_ANSWER_PROMPTS if paper else ANSWER_PROMPTS)
        for key in PAPER_ONLY:  # the union corpus's settings matter to the paper protocol only
            payload.pop(key, None)
        if paper:  # the embedder that makes the union corpus, wherever it is configured
            emb = union_embedder_cfg(cfg).model_dump(mode="json")
            payload["union"] = {"top_k": cfg.evaluate.union_top_k, "questions": cfg.evaluate.union_questions,
                                "embedder": {k: v for k, v in emb.items() if k not in ("batch_size", "device")}}
        retrievers = []
        for r in cfg.evaluate.retrievers:  # a retriever naming mine's embedder hashes that embedder
            d = r.model_dump(mode="json")
            if r.kind == "embedder":
                emb = retriever_embedder_cfg(cfg, r).model_dump(mode="json")
                d["embedder"] = {k: v for k, v in emb.items() if k not in ("batch_size", "device")}
            retrievers.append(d)
        payload["retrievers"] = retrievers
        return payload

    def input_fingerprint(self, ctx: StageContext) -> dict[str, str]:
        stages = ("filter", "chunk", "ingest", *(f"train_{m}" for m in ctx.cfg.evaluate.models))
        found = {s: ctx.input_manifest(s)["output_hash"] for s in stages}
        found.update({f"text_set:{t.name}": fingerprint(t) for t in ctx.cfg.evaluate.text_sets})
        return found

    def plan_shards(self, ctx: StageContext) -> list[ShardSpec]:
        return [{"shard": 0, "name": "all"}]

    def process(self, ctx: StageContext, shard: ShardSpec, out: ShardOutputs) -> None:
        cfg = ctx.cfg.evaluate
        qa = [r for b in iter_stage_batches(ctx.store, ctx.partition, "filter") for r in b.to_pylist()
              if r["split"] in cfg.splits]
        read = [(ts, *select_questions(ts, cfg, out.drops.drop)) for ts in cfg.text_sets]
        text_sets = [(ts, questions) for ts, questions, _ in read]
        try:
            benches = [load_benchmark(ctx.store, name) for name in cfg.benchmarks]
        except BenchmarkMissing as e:
            raise StageError(f"evaluate.benchmarks: {e}") from e
        out.rows_in = len(qa) + sum(len(q) for _, q in text_sets) + sum(len(b.queries) for b in benches)
        if not qa and not any(q for _, q in text_sets) and not benches:
            raise StageError(f"evaluate: no NyxQA {cfg.splits} items and no text-set questions in partition "
                             f"{ctx.partition!r}; check filter.eval_per_group and evaluate.text_sets.")
        try:
            backend = make_backend(cfg.generation, ctx.store)
        except GenerationError as e:
            raise StageError(f"evaluate: {e}") from e
        corpus = nyxqa_corpus(ctx.store, ctx.partition) if qa else None
        union = self._union(ctx, read, out) if cfg.protocol == "paper" and any(q for _, q in text_sets) else None
        golds = {ts.name: self._text_gold(ctx, ts, questions, out) for ts, questions in text_sets
                 if questions and ts.gold_id_column}
        rows: list[dict] = []
        notes: list[str] = []
        for r in cfg.retrievers:
            run = self._retriever_run(ctx, r, backend, notes)
            if run is None:
                continue
            if qa:
                rows += self._nyxqa(ctx, run, corpus, qa, out)
            for ts, questions in text_sets:
                if not questions:
                    continue
                if run.kind == "golden" and ts.name not in golds:
                    notes.append(f"golden skipped on {ts.name}: the set names no gold passage (gold_id_column)")
                    continue
                set_corpus = union if union is not None or run.embedder is None else \
                    text_table(ctx.store, ts, out.drops.drop)
                rows += self._text_set(ctx, run, ts, set_corpus, questions, out, golds.get(ts.name))
            for bench in benches:
                rows += self._benchmark(ctx, run, bench, out, notes)
        backend.close()
        rows = paired_deltas(rows, cfg.baseline_name(), cfg.bootstrap)
        out.write(rows)
        if any(r.kind in ("none", "golden") for r in cfg.retrievers):
            notes.append(DIM_FREE_NOTE)
        self._report(ctx, rows, notes)

    def _retriever_run(self, ctx, r, backend, notes: list[str]) -> ModelRun | None:
        """The retriever's embedder (a checkpoint's, or its own config) and the dims it has; dims above
        its width are skipped with a note (None: it has none of the dims)."""
        cfg = ctx.cfg.evaluate
        if r.kind in ("none", "golden"):
            ctx.log.info("evaluate %s: %s (no retrieval), dims %s", r.name, r.kind, cfg.dims)
            return ModelRun(r.name, None, backend, r.kind, tuple(cfg.dims))
        if r.kind == "checkpoint":
            ckpt = stage_checkpoint(ctx.store, ctx.partition, f"train_{r.stage}")
            embedder = checkpoint_embedder(cfg.embedder, ckpt, ctx.store)
            what = f"checkpoint {ckpt['merged']} (run {ckpt['run']})"
        else:
            emb_cfg = retriever_embedder_cfg(ctx.cfg, r)
            embedder = make_embedder(emb_cfg, ctx.store)
            what = f"embedder {emb_cfg.kind}:{emb_cfg.model}"
        dims = tuple(d for d in cfg.dims if d <= embedder.dim)
        if skipped := [d for d in cfg.dims if d > embedder.dim]:
            notes.append(f"{r.name}: dims {skipped} skipped, above its {embedder.dim} dims")
        ctx.log.info("evaluate %s: %s, dims %s (skipped: %s)", r.name, what, list(dims), skipped)
        if not dims:
            return None
        return ModelRun(r.name, embedder, backend, r.kind, dims)

    def _text_gold(self, ctx, ts, questions, out) -> TextGold:
        """The evaluated questions' gold passages; an id missing from the corpus is a named drop
        (`<set>_gold_not_in_corpus`: the question keeps its answer metrics, not its retrieval ones)."""
        table = text_table(ctx.store, ts)
        rows = rows_of_ids(table, [q.gold_id for q in questions])
        found = rows >= 0
        texts: list = [None] * len(questions)
        for i, t in zip(found.nonzero()[0].tolist(), table.texts(rows[found]), strict=True):
            texts[i] = t
        rows[found] = table.rep(rows[found])
        table.close()
        for q, ok in zip(questions, found.tolist(), strict=True):
            if not ok:
                out.drops.drop(f"{ts.name}_gold_not_in_corpus", q.qid)
        ctx.log.info("evaluate %s: %d of %d questions name a gold passage in the corpus", ts.name,
                     int(found.sum()), len(questions))
        return TextGold(rows, texts)

    # -- paper protocol: the text-only sets' corpus, the union of each question's top passages
    def _union(self, ctx, read, out):
        """One corpus for every text set: each question's top `union_top_k` passages from its set's
        corpus by the union embedder. Sets naming the same corpus files are searched together."""
        cfg = ctx.cfg.evaluate
        pools: dict[tuple, tuple] = {}
        for ts, evaluated, everything in read:
            source = (tuple(ts.corpus), ts.corpus_id_column, ts.corpus_text_column)
            if source not in pools:
                pools[source] = (ts, [])
            pools[source][1].extend(q.question for q in (everything if cfg.union_questions == "all" else evaluated))
        emb_cfg = union_embedder_cfg(ctx.cfg)
        embedder = make_embedder(emb_cfg, ctx.store)
        union = union_corpus(embedder, [(text_table(ctx.store, ts, out.drops.drop), qs) for ts, qs in pools.values()],
                             cfg.union_top_k, cfg.search, ctx.store, shard_rows=ctx.cfg.corpora.shard_rows)
        n_q = sum(len(qs) for _, qs in pools.values())
        ctx.log.info("evaluate: text-only union corpus of %d passages: the top %d of %d questions by %s",
                     len(union.ids), cfg.union_top_k, n_q, emb_cfg.model)
        out.extra["union_passages"] = len(union.ids)
        if not union.ids:
            raise StageError("evaluate: the text-only union corpus is empty; check the text sets' corpus files.")
        return union

    # -- NyxQA: retrieval + multiple-choice RAG accuracy, per split and dim
    def _nyxqa(self, ctx, run: ModelRun, corpus, qa, out) -> list[dict]:
        cfg, model, embedder = ctx.cfg.evaluate, run.model, run.embedder
        if embedder is None:
            return self._nyxqa_fixed(ctx, run, corpus, qa, out)
        paper = cfg.protocol == "paper"
        asking = Answering(cfg.generation, cfg.prompt_version, corpus, ctx.cfg.chunk.image_placeholder, cfg.max_images)
        queries = [MixedItem(paper_query(q["query"], q["options"]) if paper else q["query"],
                             tuple((i, corpus.paths[i]) for i in q["query_image_ids"])) for q in qa]
        d_vecs, q_vecs, n_new = embed(embedder, corpus, queries, ctx.store)
        out.extra[f"{model}_embedded"] += n_new
        distinct = corpus.distinct()  # identical documents take one rank; a copy of the gold is the gold
        gold_of = corpus.representative_id(distinct)
        rows, reqs, where = [], [], []
        for dim in run.dims or cfg.dims:
            _, ranked = search(q_vecs, d_vecs, max(cfg.ks), cfg.search, dim, distinct)
            cost = search_cost(q_vecs[: cfg.latency_queries], d_vecs, max(cfg.ks), cfg.search, dim,
                               keep=distinct.keep)
            rows += self._cost_rows(cfg, model, "nyxqa", "all", dim, cost)
            for split in cfg.splits:
                idx = [i for i, q in enumerate(qa) if q["split"] == split]
                if not idx:
                    continue
                scored = content_scores(corpus.ids, gold_of, [ranked[i] for i in idx],
                                        [qa[i]["pos_chunk_id"] for i in idx], cfg.ks)
                for metric, values in scored.items():
                    rows.append(self._row(cfg, model, "nyxqa", split, dim, metric, values))
                for i in idx:  # RAG: the VLM answers over the top-1 document
                    reqs.append(asking.request(qa[i]["query"], qa[i]["query_image_ids"], [int(ranked[i][0])],
                                               options=qa[i]["options"], protocol=cfg.protocol))
                    where.append((dim, split, i))
        return rows + self._judged_rows(ctx, run, qa, reqs, where, out)

    def _nyxqa_fixed(self, ctx, run: ModelRun, corpus, qa, out) -> list[dict]:
        """none: the question alone; golden: its positive chunk as the top-1 (recall 1 by
        construction, computed as any retriever's). Asked once, the rows repeated at every dim."""
        cfg, model, golden = ctx.cfg.evaluate, run.model, run.kind == "golden"
        asking = Answering(cfg.generation, cfg.prompt_version, corpus, ctx.cfg.chunk.image_placeholder, cfg.max_images)
        index = {cid: i for i, cid in reversed(list(enumerate(corpus.ids)))}  # each id's first row
        gold_of = corpus.representative_id(corpus.distinct())
        rows, reqs, where = [], [], []
        for split in cfg.splits:
            idx = [i for i, q in enumerate(qa) if q["split"] == split]
            if not idx:
                continue
            if golden:
                ranked = [[index[qa[i]["pos_chunk_id"]]] if qa[i]["pos_chunk_id"] in index else [] for i in idx]
                scored = content_scores(corpus.ids, gold_of, ranked, [qa[i]["pos_chunk_id"] for i in idx], cfg.ks)
                rows += [self._row(cfg, model, "nyxqa", split, d, m, v) for m, v in scored.items()
                         for d in run.dims or cfg.dims]
            for i in idx:
                pos = index.get(qa[i]["pos_chunk_id"])
                docs = [pos] if golden and pos is not None else []
                reqs.append(asking.request(qa[i]["query"], qa[i]["query_image_ids"], docs,
                                           options=qa[i]["options"], protocol=cfg.protocol))
                where.append((None, split, i))
        judged = self._judged_rows(ctx, run, qa, reqs, where, out)
        return rows + [{**r, "dim": int(d)} for r in judged for d in run.dims or cfg.dims]

    def _judged_rows(self, ctx, run: ModelRun, qa, reqs, where, out) -> list[dict]:
        """rag_accuracy rows per (dim, split) from the answers to `reqs` (`where`: (dim, split, qa
        index) each; dim None: one row per split, its dim 0 until the caller sets it)."""
        cfg, paper = ctx.cfg.evaluate, ctx.cfg.evaluate.protocol == "paper"
        scores = self._answers(ctx, run.backend, reqs, [qa[i]["options"] for _, _, i in where], out)
        judged: dict[tuple, list[float]] = {}
        for (dim, split, i), answer in zip(where, scores, strict=True):
            opts, right = qa[i]["options"], qa[i]["correct_index"]
            if answer is None:
                ok = 0.0
            elif paper:  # eval_utils.py: normalised answer == normalised text of the correct option
                ok = exact_match(answer, [opts[right]])
            else:
                ok = option_match(answer, opts, right)
            judged.setdefault((dim, split), []).append(ok)
        return [self._row(cfg, run.model, "nyxqa", split, dim or 1, "rag_accuracy", v)
                for (dim, split), v in judged.items()]

    # -- text-only sets: top-1 retrieval, free-form answer, F1 / EM
    def _text_set(self, ctx, run: ModelRun, ts, corpus, questions, out, gold: TextGold | None = None) -> list[dict]:
        """`corpus`: the paper protocol's union (a small `Corpus`), or the set's full corpus as a table
        (strict), searched over its vector shards under this model; only the retrieved texts are read.
        With `gold` (the set's `gold_id_column`), recall@k / MRR over the questions whose gold is in the
        corpus: by row (strict; a copy of the gold's text is the gold) or by text (the union)."""
        cfg, model, embedder = ctx.cfg.evaluate, run.model, run.embedder
        if embedder is None:
            return self._text_set_fixed(ctx, run, ts, questions, out, gold)
        dims = run.dims or cfg.dims
        k = max(cfg.ks) if gold is not None else 1
        queries = [MixedItem(q.question) for q in questions]
        rows: list[dict] = []
        if isinstance(corpus, Corpus):
            d_vecs, q_vecs, _ = embed(embedder, corpus, queries, ctx.store)
            distinct = corpus.distinct()
            ranked = top1 = [search(q_vecs, d_vecs, k, cfg.search, dim, distinct)[1] for dim in dims]
            costs = [search_cost(q_vecs[: cfg.latency_queries], d_vecs, k, cfg.search, dim, keep=distinct.keep)
                     for dim in dims]
            if gold is not None:  # the union holds each text once: the gold is its text's index, if there
                at = {t: i for i, t in enumerate(corpus.texts)}
                gold_keys = [at.get(t, -2) if t is not None else -1 for t in gold.texts]
        else:
            q_vecs, _ = embed_cached(embedder, queries, "query", ctx.store)
            ranked = [search_table(embedder, corpus, q_vecs, k, cfg.search, dim, ctx.cfg.corpora.shard_rows)[1]
                      for dim in dims]
            vectors = corpus_vectors(embedder, corpus, ctx.cfg.corpora.shard_rows)
            costs = [search_cost(q_vecs[: cfg.latency_queries], vectors, k, cfg.search, dim,
                                 exclude=corpus.repeats()[0]) for dim in dims]
            if gold is not None:
                gold_keys = [int(r) for r in gold.rows]
            table, (corpus, top1) = corpus, fetch_rows(corpus, ts.name, *[r[:, :1] for r in ranked])
            table.close()
        for dim, cost in zip(dims, costs, strict=True):
            rows += self._cost_rows(cfg, model, ts.name, "eval", dim, cost)
        if gold is not None:
            has = [i for i, g in enumerate(gold_keys) if g != -1]  # -1: the gold id is not in the corpus
            for d, ranked_d in zip(dims, ranked, strict=True):
                if has:
                    scored = retrieval_scores([[str(x) for x in ranked_d[i] if x >= 0] for i in has],
                                              [str(gold_keys[i]) for i in has], cfg.ks)
                    rows += [self._row(cfg, model, ts.name, "eval", d, m, v) for m, v in scored.items()]
        asking = Answering(cfg.generation, cfg.prompt_version, corpus, ctx.cfg.chunk.image_placeholder, 0)
        reqs, where = [], []
        for dim, ranked_d in zip(dims, top1, strict=True):  # indices in `corpus`, best first
            for i, q in enumerate(questions[:ts.max_answered]):
                reqs.append(asking.request(q.question, [], [int(ranked_d[i][0])], protocol=cfg.protocol))
                where.append((dim, i))
        return rows + self._free_rows(ctx, run, ts, questions, reqs, where, out)

    def _text_set_fixed(self, ctx, run: ModelRun, ts, questions, out, gold: TextGold | None) -> list[dict]:
        """none: the question alone; golden: the gold passage as the top-1, over the questions whose
        gold is in the corpus. Asked once, the rows repeated at every dim."""
        cfg, golden = ctx.cfg.evaluate, run.kind == "golden"
        asked = questions[:ts.max_answered]  # answered; golden's recall (1 by construction) counts them all
        if golden:
            keep = [i for i, t in enumerate(gold.texts[:len(asked)]) if t is not None]
            asked = [asked[i] for i in keep]
            docs = Corpus(ts.name, [q.gold_id for q in asked], [gold.texts[i] for i in keep], [[] for _ in keep], {})
        else:
            docs = Corpus(ts.name, [], [], [], {})
        asking = Answering(cfg.generation, cfg.prompt_version, docs, ctx.cfg.chunk.image_placeholder, 0)
        reqs = [asking.request(q.question, [], [i] if golden else [], protocol=cfg.protocol)
                for i, q in enumerate(asked)]
        rows = self._free_rows(ctx, run, ts, asked, reqs, [(None, i) for i in range(len(asked))], out) if asked else []
        if golden:
            found = [q.gold_id for q, t in zip(questions, gold.texts, strict=True) if t is not None]
            if found:
                rows += [self._row(cfg, run.model, ts.name, "eval", 1, m, v) for m, v in
                         retrieval_scores([[g] for g in found], found, cfg.ks).items()]
        return [{**r, "dim": int(d)} for r in rows for d in run.dims or cfg.dims]

    def _free_rows(self, ctx, run: ModelRun, ts, questions, reqs, where, out) -> list[dict]:
        """f1 / em rows per dim from the answers to `reqs` (`where`: (dim, question index) each)."""
        cfg = ctx.cfg.evaluate
        answers = self._answers(ctx, run.backend, reqs, [None] * len(reqs), out)
        f1: dict = {}
        em: dict = {}
        for (dim, i), a in zip(where, answers, strict=True):
            f1.setdefault(dim, []).append(0.0 if a is None else token_f1(a, questions[i].answers))
            em.setdefault(dim, []).append(0.0 if a is None else exact_match(a, questions[i].answers))
        return ([self._row(cfg, run.model, ts.name, "eval", d or 1, "f1", v) for d, v in f1.items()]
                + [self._row(cfg, run.model, ts.name, "eval", d or 1, "em", v) for d, v in em.items()])

    @staticmethod
    def _cost_rows(cfg, model, dataset, split, dim, cost: dict) -> list[dict]:
        """index_bytes and, when queries were timed, latency p50 / p95; n: the queries timed (for
        index_bytes without timing: the documents searched); no interval."""
        base = {"model": model, "dataset": dataset, "split": split, "dim": int(dim), "ci_low": None,
                "ci_high": None, "protocol": cfg.protocol}
        rows = [{**base, "metric": "index_bytes", "value": float(cost["index_bytes"]),
                  "n": cost["n_timed"] or cost["n_docs"]}] \
            if cost["n_docs"] else []
        if cost["n_timed"]:
            rows += [{**base, "metric": f"latency_ms_{p}", "value": cost[f"{p}_ms"], "n": cost["n_timed"]}
                     for p in ("p50", "p95")]
        return rows

    # -- imported benchmarks (`nyx import`): MMQA, MMEB-eval, FlashRAG sets
    def _benchmark(self, ctx, run: ModelRun, bench: Benchmark, out, notes: list[str]) -> list[dict]:
        """benchmarks.score_benchmark for a retrieving retriever; none / golden answer (F1 / EM
        benchmarks only) from no document / the first gold documents, the same at every dim."""
        cfg = ctx.cfg.evaluate
        docs = Corpus(bench.name, [d.doc_id for d in bench.corpus], [d.text for d in bench.corpus],
                      [[i for i, _ in d.images] for d in bench.corpus],
                      {i: path for x in (*bench.corpus, *bench.queries) for i, path in x.images})
        asking = Answering(cfg.generation, cfg.prompt_version, docs, ctx.cfg.chunk.image_placeholder, cfg.max_images)
        row_of = {d: i for i, d in enumerate(docs.ids)}

        def answer(batch) -> list[str | None]:
            reqs = [asking.request(q.text, [i for i, _ in q.images], [row_of[d.doc_id] for d in top],
                                   protocol=cfg.protocol) for q, top in batch]
            return self._answers(ctx, run.backend, reqs, [None] * len(reqs), out)

        answers = bench.metric == "f1"
        if run.embedder is not None:
            scoring = Scoring(dims=run.dims, ks=cfg.ks, search=cfg.search, n_boot=cfg.bootstrap)
            rows = score_benchmark(bench, run.embedder, run.model, scoring, store=ctx.store,
                                   answer_fn=answer if answers else None)
            return [{**r, "protocol": cfg.protocol} for r in rows]
        if not answers:
            notes.append(f"{run.model} skipped on {bench.name}: its metric ({bench.metric}) ranks candidates")
            return []
        by_id = {d.doc_id: d for d in bench.corpus}
        top = [[] if run.kind == "none" else [by_id[g] for g in q.gold_ids if g in by_id][:bench.context_k]
               for q in bench.queries]
        f1, em = answer_scores(bench, answer(list(zip(bench.queries, top, strict=True))))
        return [self._row(cfg, run.model, bench.name, bench.split, d, m, v)
                for d in run.dims for m, v in (("f1", f1), ("em", em))]

    def _answers(self, ctx, backend, reqs, options, out) -> list[str | None]:
        """Answers in request order; identical requests (the same top-1 at several dims) are sent once.
        Paper protocol: the free-form text (no schema), None only when the request failed."""
        keys = [r.key(backend.model_id) for r in reqs]
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        unique = list(first)
        ctx.log.info("evaluate: %d answer requests (%d distinct) to %s", len(reqs), len(unique), backend.model_id[:80])
        try:
            resps = dict(zip(unique, backend.generate([reqs[first[k]] for k in unique]), strict=True))
        except GenerationError as e:
            raise StageError(f"evaluate: {e}") from e
        out.extra["requests"] += len(unique)
        if ctx.cfg.evaluate.protocol == "paper":
            answers = [free_answer(resps[k]) for k in keys]
        else:
            answers = [parsed_answer(resps[k], opts) for k, opts in zip(keys, options, strict=True)]
        out.extra["unparseable_answers"] += sum(a is None for a in answers)
        return answers

    @staticmethod
    def _row(cfg, model, dataset, split, dim, metric, values) -> dict:
        """A results row, its per-query `values` kept under `PER_QUERY` until `paired_deltas`."""
        agg = aggregate(values)
        lo, hi = bootstrap_ci(values, n_boot=cfg.bootstrap) if cfg.bootstrap else (None, None)
        return {"model": model, "dataset": dataset, "split": split, "dim": int(dim), "metric": metric,
                "value": agg["mean"], "n": agg["n"], "ci_low": lo, "ci_high": hi, "protocol": cfg.protocol,
                PER_QUERY: np.asarray(values, dtype=np.float64)}

    def _report(self, ctx, rows: list[dict], extra_notes=()) -> None:
        rel = f"reports/{run_name(ctx.partition, ctx.key)}"
        local = ctx.store.is_local
        out_dir = Path(ctx.store.path(rel)) if local else Path(tempfile.mkdtemp(prefix="nyx-report-"))
        cfg = ctx.cfg
        protocol = cfg.evaluate.protocol
        notes = [f"partition {ctx.partition}; profile {cfg.profile}; dims {cfg.evaluate.dims}",
                 f"answering VLM: {cfg.evaluate.generation.model} ({cfg.evaluate.generation.backend})",
                 PROTOCOL_NOTES[protocol].format(embedder=union_embedder_cfg(cfg).model, k=cfg.evaluate.union_top_k),
                 "intervals: 95% percentile bootstrap over queries; a difference from the baseline: 95% paired "
                 "bootstrap (the same resampled queries for both retrievers; the results' delta columns)",
                 "retrievers: " + ", ".join(f"{r.name} ({r.kind}{':' + r.stage if r.stage else ''})"
                                            for r in cfg.evaluate.retrievers)
                 + f"; baseline {cfg.evaluate.baseline_name()}; the results' `model` column holds the retriever",
                 *cfg.evaluate.report_notes,
                 *extra_notes]
        rendered = render_report(rows, str(out_dir), f"Nyx evaluation: {ctx.partition}", notes,
                                 baseline=cfg.evaluate.baseline_name(), headline=cfg.evaluate.headline_names())
        if not local:
            ctx.store.fs.put(str(out_dir), ctx.store.path(rel), recursive=True)
        for line in rendered["summary_lines"]:
            ctx.log.info("evaluate: %s", line)
        ctx.log.info("evaluate: report at %s (protocol %s)", ctx.store.url(f"{rel}/{Path(rendered['markdown']).name}"),
                     protocol)

    def finalize(self, ctx: StageContext, manifest: dict) -> None:
        """`report`: the report's path relative to the artifact root (`ctx.store.url(report)` is
        where it is), so a copied or moved root keeps it and a reader never follows a path out."""
        manifest["report"] = f"reports/{run_name(ctx.partition, manifest['key'])}/report.md"
        manifest["protocol"] = ctx.cfg.evaluate.protocol


STAGE = EvaluateStage()

"""`evaluate` (paper: results): NyxQA dev and test, retrieval (recall@1/5/10,
MRR against the positive chunk) and RAG accuracy (retrieve top-1, the VLM
answers the multiple-choice question, constrained to the options), at every
Matryoshka dimension, for the stage-1 and stage-2 models side by side; the
held-out text-only sets by answer F1 / EM after top-1 retrieval. Identical
documents (same text and images) take one rank, and retrieving a copy of the
gold chunk counts as retrieving the gold.

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

from ..answering import ANSWER_PROMPTS, Answering, parsed_answer
from ..artifacts import iter_stage_batches
from ..base import ShardSpec, StageError
from ..checkpoints import stage_checkpoint
from ..embedding import MixedItem
from ..evaluation.metrics import aggregate, bootstrap_ci, retrieval_scores
from ..evaluation.report import render_report
from ..inference import GenerationError, make_backend
from ..judges import exact_match, option_match, token_f1
from ..retrieval import checkpoint_embedder, embed, nyxqa_corpus, search, text_corpus
from ..runner import ShardOutputs, Stage, StageContext
from ..text_sets import fingerprint, read_questions
from .common import GENERATION_TUNING, RETRIEVAL_TUNING, with_prompts
from .train import run_name


@dataclass(frozen=True)
class ModelRun:
    """The model under evaluation (`stage1` / `stage2`), its embedder, and the answering backend."""

    model: str
    embedder: Any
    backend: Any


def content_scores(ids: list[str], gold_of: dict[str, str], ranked, gold_ids: list[str], ks) -> dict:
    """`retrieval_scores` by content: each query's ranked corpus indices (best first, -1 pads) and
    gold chunk id are mapped to their content's first occurrence (`gold_of`, from
    `Corpus.representative_id`), so retrieving a copy of the gold (same text and images) is a hit."""
    ranked_ids = [[gold_of.get(ids[d], ids[d]) for d in row if d >= 0] for row in ranked]
    return retrieval_scores(ranked_ids, [gold_of.get(g, g) for g in gold_ids], ks)


class EvaluateStage(Stage):
    name = "evaluate"
    version = 2  # 2: identical documents take one rank, a copy of the gold counts as a hit
    inputs = ("filter", "chunk", "ingest", "train_stage1", "train_stage2")
    outputs = {"part": "eval_results"}
    execution_only = (*GENERATION_TUNING, *RETRIEVAL_TUNING)
    doc = "Recall@k, MRR and RAG accuracy at every Matryoshka dim, stage 1 vs stage 2; a report with plots."

    def config_payload(self, cfg):
        payload = with_prompts(super().config_payload(cfg), cfg, cfg.evaluate.prompt_version, ANSWER_PROMPTS)
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
        text_sets = [(ts, read_questions(ts, out.drops.drop)) for ts in cfg.text_sets]
        out.rows_in = len(qa) + sum(len(q) for _, q in text_sets)
        if not qa and not any(q for _, q in text_sets):
            raise StageError(f"evaluate: no NyxQA {cfg.splits} items and no text-set questions in partition "
                             f"{ctx.partition!r}; check filter.eval_per_group and evaluate.text_sets.")
        try:
            backend = make_backend(cfg.generation, ctx.store)
        except GenerationError as e:
            raise StageError(f"evaluate: {e}") from e
        corpus = nyxqa_corpus(ctx.store, ctx.partition) if qa else None
        rows: list[dict] = []
        for model in cfg.models:
            ckpt = stage_checkpoint(ctx.store, ctx.partition, f"train_{model}")
            embedder = checkpoint_embedder(cfg.embedder, ckpt, ctx.store)
            too_big = [d for d in cfg.dims if d > embedder.dim]
            if too_big:
                raise StageError(f"evaluate: dims {too_big} exceed the {model} model's {embedder.dim} dims; "
                                 "set evaluate.dims to dims the model has.")
            ctx.log.info("evaluate %s: checkpoint %s (run %s), dims %s", model, ckpt["merged"], ckpt["run"], cfg.dims)
            run = ModelRun(model, embedder, backend)
            if qa:
                rows += self._nyxqa(ctx, run, corpus, qa, out)
            for ts, questions in text_sets:
                if questions:
                    rows += self._text_set(ctx, run, ts, text_corpus(ts, out.drops.drop), questions, out)
        backend.close()
        out.write(rows)
        self._report(ctx, rows)

    # -- NyxQA: retrieval + multiple-choice RAG accuracy, per split and dim
    def _nyxqa(self, ctx, run: ModelRun, corpus, qa, out) -> list[dict]:
        cfg, model, embedder, backend = ctx.cfg.evaluate, run.model, run.embedder, run.backend
        asking = Answering(cfg.generation, cfg.prompt_version, corpus, ctx.cfg.chunk.image_placeholder, cfg.max_images)
        queries = [MixedItem(q["query"], tuple((i, corpus.paths[i]) for i in q["query_image_ids"])) for q in qa]
        d_vecs, q_vecs, n_new = embed(embedder, corpus, queries, ctx.store)
        out.extra[f"{model}_embedded"] += n_new
        distinct = corpus.distinct()  # identical documents take one rank; a copy of the gold is the gold
        gold_of = corpus.representative_id(distinct)
        rows, reqs, where = [], [], []
        for dim in cfg.dims:
            _, ranked = search(q_vecs, d_vecs, max(cfg.ks), cfg.search, dim, distinct)
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
                                               options=qa[i]["options"]))
                    where.append((dim, split, i))
        scores = self._answers(ctx, backend, reqs, [qa[i]["options"] for _, _, i in where], out)
        judged: dict[tuple, list[float]] = {}
        for (dim, split, i), answer in zip(where, scores, strict=True):
            ok = 0.0 if answer is None else option_match(answer, qa[i]["options"], qa[i]["correct_index"])
            judged.setdefault((dim, split), []).append(ok)
        rows += [self._row(cfg, model, "nyxqa", split, dim, "rag_accuracy", v) for (dim, split), v in judged.items()]
        return rows

    # -- text-only sets: top-1 retrieval, free-form answer, F1 / EM
    def _text_set(self, ctx, run: ModelRun, ts, corpus, questions, out) -> list[dict]:
        cfg, model, embedder, backend = ctx.cfg.evaluate, run.model, run.embedder, run.backend
        asking = Answering(cfg.generation, cfg.prompt_version, corpus, ctx.cfg.chunk.image_placeholder, 0)
        d_vecs, q_vecs, _ = embed(embedder, corpus, [MixedItem(q.question) for q in questions], ctx.store)
        distinct = corpus.distinct()
        reqs, where = [], []
        for dim in cfg.dims:
            _, ranked = search(q_vecs, d_vecs, 1, cfg.search, dim, distinct)
            for i, q in enumerate(questions):
                reqs.append(asking.request(q.question, [], [int(ranked[i][0])]))
                where.append((dim, i))
        answers = self._answers(ctx, backend, reqs, [None] * len(reqs), out)
        f1: dict[int, list[float]] = {}
        em: dict[int, list[float]] = {}
        for (dim, i), a in zip(where, answers, strict=True):
            f1.setdefault(dim, []).append(0.0 if a is None else token_f1(a, questions[i].answers))
            em.setdefault(dim, []).append(0.0 if a is None else exact_match(a, questions[i].answers))
        return ([self._row(cfg, model, ts.name, "eval", d, "f1", v) for d, v in f1.items()]
                + [self._row(cfg, model, ts.name, "eval", d, "em", v) for d, v in em.items()])

    def _answers(self, ctx, backend, reqs, options, out) -> list[str | None]:
        """Answers in request order; identical requests (the same top-1 at several dims) are sent once."""
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
        answers = [parsed_answer(resps[k], opts) for k, opts in zip(keys, options, strict=True)]
        out.extra["unparseable_answers"] += sum(a is None for a in answers)
        return answers

    @staticmethod
    def _row(cfg, model, dataset, split, dim, metric, values) -> dict:
        agg = aggregate(values)
        lo, hi = bootstrap_ci(values, n_boot=cfg.bootstrap) if cfg.bootstrap else (None, None)
        return {"model": model, "dataset": dataset, "split": split, "dim": int(dim), "metric": metric,
                "value": agg["mean"], "n": agg["n"], "ci_low": lo, "ci_high": hi}

    def _report(self, ctx, rows: list[dict]) -> None:
        rel = f"reports/{run_name(ctx.partition, ctx.key)}"
        local = ctx.store.is_local
        out_dir = Path(ctx.store.path(rel)) if local else Path(tempfile.mkdtemp(prefix="nyx-report-"))
        cfg = ctx.cfg
        notes = [f"partition {ctx.partition}; profile {cfg.profile}; dims {cfg.evaluate.dims}",
                 f"answering VLM: {cfg.evaluate.generation.model} ({cfg.evaluate.generation.backend})",
                 "RAG accuracy: top-1 retrieved document, answer constrained to the four options",
                 "intervals: 95% percentile bootstrap over queries"]
        rendered = render_report(rows, str(out_dir), f"Nyx evaluation: {ctx.partition}", notes)
        if not local:
            ctx.store.fs.put(str(out_dir), ctx.store.path(rel), recursive=True)
        for line in rendered["summary_lines"]:
            ctx.log.info("evaluate: %s", line)
        ctx.log.info("evaluate: report at %s", ctx.store.url(f"{rel}/{Path(rendered['markdown']).name}"))

    def finalize(self, ctx: StageContext, manifest: dict) -> None:
        """`report`: the report's path relative to the artifact root (`ctx.store.url(report)` is
        where it is), so a copied or moved root keeps it and a reader never follows a path out."""
        manifest["report"] = f"reports/{run_name(ctx.partition, manifest['key'])}/report.md"


STAGE = EvaluateStage()

"""`evaluate` (paper: results): every retriever of `evaluate.retrievers` (evaluation/retrievers.py)
on NyxQA dev / test (evaluation/nyxqa.py), the held-out text-only sets (evaluation/text_qa.py) and
the imported benchmarks (evaluation/imported_sets.py), at every Matryoshka dim, under
`evaluate.protocol` (strict or paper: README, "Evaluation"). Writes the results table (long format,
bootstrap intervals, the paired difference from the baseline retriever) and a report under
`<root>/reports/<partition>-<key>/` (Markdown + plots), whose summary lines also go to the task
log; the manifest's `report` is its path relative to the root.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from nyx_tasks.core.base import ShardSpec, StageError
from nyx_tasks.evaluation.imported_sets import BenchmarkMissing, load_benchmark, score_imported
from nyx_tasks.evaluation.nyxqa import score_nyxqa
from nyx_tasks.evaluation.report import render_report
from nyx_tasks.evaluation.retrievers import DIM_FREE_NOTE, make_retriever, retriever_embedder_cfg
from nyx_tasks.evaluation.run import EvalRun, paired_deltas
from nyx_tasks.evaluation.text_qa import (
    paper_union,
    score_text_set,
    select_questions,
    text_gold,
    union_embedder_cfg,
)
from nyx_tasks.inference import GenerationError, make_backend
from nyx_tasks.retrieval.answering import ANSWER_PROMPTS, PAPER_ANSWER_PROMPTS
from nyx_tasks.retrieval.corpora import checkpoint_embedder_cfg, nyxqa_corpus, text_table
from nyx_tasks.runner import ShardOutputs, Stage, StageContext
from nyx_tasks.sources.text_sets import fingerprint
from nyx_tasks.stages.common import GENERATION_TUNING, RETRIEVAL_TUNING, with_prompts
from nyx_tasks.stages.train import run_name
from nyx_tasks.store.artifacts import iter_stage_batches
from nyx_tasks.store.checkpoints import stage_checkpoint

PAPER_ONLY = ("union_top_k", "union_embedder", "union_questions")  # fields only the paper protocol reads
PROTOCOL_NOTES = {
    "strict": "protocol strict: NyxQA query = the question; RAG accuracy: top-1 retrieved document, answer "
              "constrained to the four options (option match); text-only sets: top-1 over the full corpus, F1 / EM",
    "paper": "protocol paper (the released code's): NyxQA query = question + 'Choices: ' and the option texts; "
             "RAG accuracy: top-1 retrieved document, free-form answer with the choices in the prompt, 1 when it "
             "equals the correct option's text after SQuAD normalisation; text-only sets: top-1 over the union "
             "of {embedder}'s top {k} passages per question, free-form answer, F1 / EM",
}


class EvaluateStage(Stage):
    name = "evaluate"
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
        run = EvalRun(ctx.cfg, ctx.store, backend, out, ctx.log)
        corpus = nyxqa_corpus(ctx.store, ctx.partition) if qa else None
        union = paper_union(run, read) if cfg.protocol == "paper" and any(q for _, q in text_sets) else None
        golds = {ts.name: text_gold(run, ts, questions) for ts, questions in text_sets
                 if questions and ts.gold_id_column}
        rows: list[dict] = []
        notes: list[str] = []
        for r in cfg.retrievers:
            retriever = make_retriever(ctx.cfg, r, ctx.store, ctx.partition, notes, ctx.log)
            if retriever is None:
                continue
            if qa:
                rows += score_nyxqa(run, retriever, corpus, qa)
            for ts, questions in text_sets:
                if not questions:
                    continue
                if retriever.needs_gold and ts.name not in golds:
                    notes.append(f"{retriever.name} skipped on {ts.name}: the set names no gold passage "
                                 "(gold_id_column)")
                    continue
                set_corpus = union if union is not None or retriever.embedder is None else \
                    text_table(ctx.store, ts, out.drops.drop)
                rows += score_text_set(run, retriever, ts, set_corpus, questions, golds.get(ts.name))
            for bench in benches:
                rows += score_imported(run, retriever, bench, notes)
        backend.close()
        rows = paired_deltas(rows, cfg.baseline_name(), cfg.bootstrap)
        out.write(rows)
        if any(r.kind in ("none", "golden") for r in cfg.retrievers):
            notes.append(DIM_FREE_NOTE)
        self._report(ctx, rows, notes)

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

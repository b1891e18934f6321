"""`evaluate` (paper: results): NyxQA dev and test, retrieval (recall@1/5/10,
MRR against the positive chunk) and RAG accuracy (retrieve top-1, the VLM
answers the multiple-choice question, constrained to the options), at every
Matryoshka dimension, for the stage-1 and stage-2 models side by side; the
held-out text-only sets by answer F1 / EM after top-1 retrieval. Identical
documents (same text and images) take one rank, and retrieving a copy of the
gold chunk counts as retrieving the gold.

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

from ..answering import ANSWER_PROMPTS, PAPER_ANSWER_PROMPTS, Answering, free_answer, parsed_answer
from ..artifacts import iter_stage_batches
from ..base import ShardSpec, StageError
from ..checkpoints import stage_checkpoint
from ..embedding import MixedItem, make_embedder
from ..embedding.cache import embed_cached
from ..evaluation.metrics import aggregate, bootstrap_ci, retrieval_scores
from ..evaluation.report import render_report
from ..inference import GenerationError, make_backend
from ..judges import exact_match, option_match, token_f1
from ..retrieval import (
    Corpus,
    checkpoint_embedder,
    embed,
    fetch_rows,
    nyxqa_corpus,
    search,
    search_table,
    text_table,
    union_corpus,
)
from ..runner import ShardOutputs, Stage, StageContext
from ..text_sets import fingerprint, read_questions, sample_questions
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


PAPER_ONLY = ("union_top_k", "union_embedder", "union_questions")  # fields only the paper protocol reads
PROTOCOL_NOTES = {
    "strict": "protocol strict: NyxQA query = the question; RAG accuracy: top-1 retrieved document, answer "
              "constrained to the four options (option match); text-only sets: top-1 over the full corpus, F1 / EM",
    "paper": "protocol paper (the released code's): NyxQA query = question + 'Choices: ' and the option texts; "
             "RAG accuracy: top-1 retrieved document, free-form answer with the choices in the prompt, 1 when it "
             "equals the correct option's text after SQuAD normalisation; text-only sets: top-1 over the union "
             "of {embedder}'s top {k} passages per question, free-form answer, F1 / EM",
}


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
    # their protocol (a `protocol` column)
    version = 3
    inputs = ("filter", "chunk", "ingest", "train_stage1", "train_stage2")
    outputs = {"part": "eval_results"}
    execution_only = (*GENERATION_TUNING, *RETRIEVAL_TUNING)
    doc = "Recall@k, MRR and RAG accuracy at every Matryoshka dim, stage 1 vs stage 2; a report with plots."

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
        out.rows_in = len(qa) + sum(len(q) for _, q in text_sets)
        if not qa and not any(q for _, q in text_sets):
            raise StageError(f"evaluate: no NyxQA {cfg.splits} items and no text-set questions in partition "
                             f"{ctx.partition!r}; check filter.eval_per_group and evaluate.text_sets.")
        try:
            backend = make_backend(cfg.generation, ctx.store)
        except GenerationError as e:
            raise StageError(f"evaluate: {e}") from e
        corpus = nyxqa_corpus(ctx.store, ctx.partition) if qa else None
        union = self._union(ctx, read, out) if cfg.protocol == "paper" and any(q for _, q in text_sets) else None
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
                    set_corpus = union if union is not None else text_table(ctx.store, ts, out.drops.drop)
                    rows += self._text_set(ctx, run, ts, set_corpus, questions, out)
        backend.close()
        out.write(rows)
        self._report(ctx, rows)

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
        cfg, model, embedder, backend = ctx.cfg.evaluate, run.model, run.embedder, run.backend
        paper = cfg.protocol == "paper"
        asking = Answering(cfg.generation, cfg.prompt_version, corpus, ctx.cfg.chunk.image_placeholder, cfg.max_images)
        queries = [MixedItem(paper_query(q["query"], q["options"]) if paper else q["query"],
                             tuple((i, corpus.paths[i]) for i in q["query_image_ids"])) for q in qa]
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
                                               options=qa[i]["options"], protocol=cfg.protocol))
                    where.append((dim, split, i))
        scores = self._answers(ctx, backend, reqs, [qa[i]["options"] for _, _, i in where], out)
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
        rows += [self._row(cfg, model, "nyxqa", split, dim, "rag_accuracy", v) for (dim, split), v in judged.items()]
        return rows

    # -- text-only sets: top-1 retrieval, free-form answer, F1 / EM
    def _text_set(self, ctx, run: ModelRun, ts, corpus, questions, out) -> list[dict]:
        """`corpus`: the paper protocol's union (a small `Corpus`), or the set's full corpus as a table
        (strict), searched over its vector shards under this model; only the retrieved texts are read."""
        cfg, model, embedder, backend = ctx.cfg.evaluate, run.model, run.embedder, run.backend
        queries = [MixedItem(q.question) for q in questions]
        if isinstance(corpus, Corpus):
            d_vecs, q_vecs, _ = embed(embedder, corpus, queries, ctx.store)
            distinct = corpus.distinct()
            by_dim = [search(q_vecs, d_vecs, 1, cfg.search, dim, distinct)[1] for dim in cfg.dims]
        else:
            q_vecs, _ = embed_cached(embedder, queries, "query", ctx.store)
            rows = [search_table(embedder, corpus, q_vecs, 1, cfg.search, dim, ctx.cfg.corpora.shard_rows)[1]
                    for dim in cfg.dims]
            table, (corpus, by_dim) = corpus, fetch_rows(corpus, ts.name, *rows)  # the top-1 passages' texts only
            table.close()
        asking = Answering(cfg.generation, cfg.prompt_version, corpus, ctx.cfg.chunk.image_placeholder, 0)
        reqs, where = [], []
        for dim, ranked in zip(cfg.dims, by_dim, strict=True):
            for i, q in enumerate(questions):
                reqs.append(asking.request(q.question, [], [int(ranked[i][0])], protocol=cfg.protocol))
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
        agg = aggregate(values)
        lo, hi = bootstrap_ci(values, n_boot=cfg.bootstrap) if cfg.bootstrap else (None, None)
        return {"model": model, "dataset": dataset, "split": split, "dim": int(dim), "metric": metric,
                "value": agg["mean"], "n": agg["n"], "ci_low": lo, "ci_high": hi, "protocol": cfg.protocol}

    def _report(self, ctx, rows: list[dict]) -> None:
        rel = f"reports/{run_name(ctx.partition, ctx.key)}"
        local = ctx.store.is_local
        out_dir = Path(ctx.store.path(rel)) if local else Path(tempfile.mkdtemp(prefix="nyx-report-"))
        cfg = ctx.cfg
        protocol = cfg.evaluate.protocol
        notes = [f"partition {ctx.partition}; profile {cfg.profile}; dims {cfg.evaluate.dims}",
                 f"answering VLM: {cfg.evaluate.generation.model} ({cfg.evaluate.generation.backend})",
                 PROTOCOL_NOTES[protocol].format(embedder=union_embedder_cfg(cfg).model, k=cfg.evaluate.union_top_k),
                 "intervals: 95% percentile bootstrap over queries"]
        rendered = render_report(rows, str(out_dir), f"Nyx evaluation: {ctx.partition}", notes)
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

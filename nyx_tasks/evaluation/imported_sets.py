"""Reading and scoring the imported evaluation benchmarks (`nyx import mmqa|mmeb-eval|flashrag`,
importers_eval.py) for the `evaluate` stage, in the results-table shape of evaluation/report.py.

`load_benchmark(store, name)` reads `<root>/benchmarks/<name>/` into a `Benchmark`: its queries
(text with image placeholders + (image_id, path) pairs, gold answers, gold document ids and, for
MMEB, the query's own candidates), its corpus, and the metric its manifest names. For `flashrag`
the corpus is the files the import named (wiki18: 21M passages), read with text_sets.read_corpus;
that only suits a small corpus in one process, and a full wiki18 belongs to evaluate.text_sets
(the manifest's `text_set` block), which embeds it in mapped vector shards.

`score_benchmark(bench, embedder, model, Scoring(...))` embeds queries and corpus once
(`embed(items, role)`), then at each of the `Scoring`'s Matryoshka dims:

- per-query candidates (MMEB-eval): `precision@1`, the share of queries whose positive scores
  above each of its other candidates (MMEB's protocol; a tie is a miss), one row per subset plus the benchmark's row, the
  mean over subsets as MMEB reports its overall score;
- a global corpus (MMQA, FlashRAG): exact inner-product search (search.exact_topk) for the top
  max(ks), then `recall@k` and `mrr` where a hit is any gold document (MMQA: the supporting
  documents) or, with no gold ids (FlashRAG), any document containing a gold answer after SQuAD
  normalisation (FlashRAG's retrieval recall); with `answer_fn(query, docs)`, that function answers
  from the top `context_k` documents (MMQA's released code: 1) and the answers score `f1` / `em`
  (judges.token_f1 / exact_match, the best over the gold answers).

Every value carries a bootstrap interval (evaluation.metrics.bootstrap_ci) except MMEB's mean over
subsets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from nyx_tasks.core.config import SearchConfig, TextSetConfig
from nyx_tasks.core.log import DropCounter, get_logger
from nyx_tasks.embedding.base import MixedItem, matryoshka
from nyx_tasks.embedding.cache import embed_cached
from nyx_tasks.evaluation.judges import exact_match, normalize_answer, token_f1
from nyx_tasks.evaluation.metrics import DEFAULT_KS, bootstrap_ci, retrieval_scores
from nyx_tasks.evaluation.retrievers import Retriever
from nyx_tasks.evaluation.run import EvalRun
from nyx_tasks.retrieval.answering import Answering
from nyx_tasks.retrieval.corpora import Corpus
from nyx_tasks.retrieval.search import exact_topk
from nyx_tasks.sources.importers_eval import bench_rel
from nyx_tasks.sources.text_sets import read_corpus
from nyx_tasks.store.artifacts import ArtifactStore

_HIT = "\x00gold"  # stands for "a gold document" in a ranked list, so one gold id per query suffices


class BenchmarkMissing(FileNotFoundError):
    """No complete import of that name under the artifact root."""


@dataclass(frozen=True)
class BenchQuery:
    qid: str
    text: str
    images: tuple[tuple[str, str], ...]  # (image_id, path relative to the artifact root)
    answers: tuple[str, ...]
    gold_ids: tuple[str, ...]
    candidate_ids: tuple[str, ...] = ()  # MMEB: the query's own candidates, the positive first
    subset: str = ""

    def item(self) -> MixedItem:
        return MixedItem(self.text, self.images)


@dataclass(frozen=True)
class BenchDoc:
    doc_id: str
    text: str
    images: tuple[tuple[str, str], ...] = ()
    kind: str = "text"

    def item(self) -> MixedItem:
        return MixedItem(self.text, self.images)


@dataclass
class Benchmark:
    name: str
    kind: str  # mmqa | mmeb-eval | flashrag
    metric: str  # the headline metric: f1 | precision@1
    split: str
    queries: list[BenchQuery]
    corpus: list[BenchDoc]
    per_query_candidates: bool
    context_k: int = 1
    manifest: dict = field(default_factory=dict, repr=False)


AnswerFn = Callable[[list[tuple[BenchQuery, list[BenchDoc]]]], list[str | None]]  # one batch: (query, top docs) each


def _rows(store: ArtifactStore, manifest: dict, kind: str) -> list[dict]:
    return [r for o in manifest["outputs"].get(kind, []) for b in store.read_parquet(o["path"]) for r in b.to_pylist()]


def load_benchmark(store: ArtifactStore, name: str) -> Benchmark:
    """The imported benchmark `name`; raises BenchmarkMissing when it was never imported (or its
    import did not finish)."""
    manifest = store.read_json(f"{bench_rel(name)}/_MANIFEST.json")
    if not manifest or manifest.get("status") != "complete":
        raise BenchmarkMissing(f"no benchmark {name!r} under {store.url('benchmarks')}; import it first with "
                               "`nyx import mmqa|mmeb-eval|flashrag ... --name " + name + "`")
    b = manifest["benchmark"]
    log = get_logger("benchmarks")
    if b["kind"] == "flashrag":
        ts = manifest["text_set"]
        queries = [BenchQuery(r["id"], r["question"], (), tuple(r["golden_answers"]), ())
                   for r in _rows(store, manifest, "questions")]
        corpus = []
        if ts["corpus"]:
            drops = DropCounter(log)
            cfg = TextSetConfig(name=name, questions=ts["questions"], corpus=ts["corpus"])
            corpus = [BenchDoc(d.doc_id, d.text) for d in read_corpus(cfg, drops.drop)]
            if drops.counts:
                log.info("benchmark %s: corpus drops %s", name, drops.as_dict())
    else:
        paths = {r["image_id"]: r["path"] for r in _rows(store, manifest, "images")}

        def imgs(ids) -> tuple[tuple[str, str], ...]:
            return tuple((i, paths[i]) for i in ids)

        queries = [BenchQuery(r["qid"], r["query"], imgs(r["query_image_ids"]), tuple(r["answers"]),
                              tuple(r["gold_ids"]), tuple(r["candidate_ids"]), r["subset"])
                   for r in _rows(store, manifest, "queries")]
        corpus = [BenchDoc(r["doc_id"], r["text"], imgs(r["image_ids"]), r["kind"])
                  for r in _rows(store, manifest, "corpus")]
    log.info("benchmark %s (%s): %d queries, %d corpus documents, metric %s", name, b["kind"], len(queries),
             len(corpus), b["metric"])
    return Benchmark(name, b["kind"], b["metric"], b["split"], queries, corpus,
                     b["candidates"] == "per_query", int(b.get("generate_top_k", 1)), manifest)


@dataclass(frozen=True)
class Scoring:
    """How score_benchmark scores: the Matryoshka dims (None: the embedder's full dim), the recall@k
    cut-offs, the search backend (search.exact_topk; None: its default), the bootstrap resamples (0:
    no interval) and their seed, and the documents an answer is generated from (None: the
    benchmark's `context_k`, 1 for MMQA)."""

    dims: Sequence[int | None] = (None,)
    ks: Sequence[int] = DEFAULT_KS
    search: SearchConfig | None = None
    n_boot: int = 1000
    seed: int = 0
    context_k: int | None = None


RowKey = tuple[str, str, str, int]  # a result row's (model, dataset, split, dim)


def _row(key: RowKey, metric: str, values: np.ndarray, scoring: Scoring) -> dict:
    model, dataset, split, dim = key
    n_boot = scoring.n_boot
    lo, hi = bootstrap_ci(values, n_boot=n_boot, seed=scoring.seed) if n_boot else (None, None)
    return {"model": model, "dataset": dataset, "split": split, "dim": int(dim), "metric": metric,
            "value": float(np.mean(values)), "n": int(len(values)), "ci_low": lo, "ci_high": hi}


def candidate_hits(bench: Benchmark, q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Per query 1.0 when a gold candidate scores above every other of its own candidates, else
    0.0. A tie at the top is a miss: MMEB's argmax would give it to the positive, listed first,
    which credits a model that cannot tell the candidates apart (a text-only model on image
    candidates with the same instruction text); a real model's scores do not tie."""
    index = {doc.doc_id: i for i, doc in enumerate(bench.corpus)}
    hits = np.zeros(len(bench.queries))
    for i, query in enumerate(bench.queries):
        scores = d[[index[c] for c in query.candidate_ids]] @ q[i]
        gold = np.array([c in query.gold_ids for c in query.candidate_ids])
        others = scores[~gold]
        hits[i] = float(gold.any() and (others.size == 0 or scores[gold].max() > others.max()))
    return hits


def _marked(bench: Benchmark, ranked: np.ndarray) -> list[list[str]]:
    """Each query's ranked ids with its gold documents replaced by _HIT: the supporting documents,
    or (no gold ids: FlashRAG) the documents containing a normalised gold answer."""
    out = []
    for query, row in zip(bench.queries, ranked, strict=True):
        answers = [a for a in (normalize_answer(x) for x in query.answers) if a]
        marks = []
        for j in row:
            if j < 0:
                continue
            doc = bench.corpus[j]
            gold = doc.doc_id in query.gold_ids if query.gold_ids else \
                any(a in normalize_answer(doc.text) for a in answers)
            marks.append(_HIT if gold else doc.doc_id)
        out.append(marks)
    return out


def answer_scores(bench: Benchmark, preds: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """Per-query answer F1 and EM (the best over the gold answers; no answer scores 0)."""
    f1 = np.array([0.0 if p is None else token_f1(p, x.answers) for p, x in zip(preds, bench.queries, strict=True)])
    em = np.array([0.0 if p is None else exact_match(p, x.answers) for p, x in zip(preds, bench.queries, strict=True)])
    return f1, em


def _candidate_rows(bench: Benchmark, key: RowKey, hits: np.ndarray, scoring: Scoring) -> list[dict]:
    """MMEB-eval's precision@1 rows at one dim: one per subset, then the benchmark's, the mean over
    subsets (no interval), as MMEB reports its overall score."""
    model, _, split, size = key
    rows, means = [], []
    for s in dict.fromkeys(x.subset for x in bench.queries):
        mask = np.array([x.subset == s for x in bench.queries])
        rows.append(_row((model, f"{bench.name}/{s}", split, size), "precision@1", hits[mask], scoring))
        means.append(float(hits[mask].mean()))
    rows.append({"model": model, "dataset": bench.name, "split": split, "dim": size, "metric": "precision@1",
                 "value": float(np.mean(means)), "n": len(hits), "ci_low": None, "ci_high": None})
    return rows


def score_benchmark(bench: Benchmark, embedder, model: str, scoring: Scoring | None = None, *,
                    answer_fn: AnswerFn | None = None, store: ArtifactStore | None = None) -> list[dict]:
    """Result rows (evaluation/report.py's RESULT_COLUMNS) of `embedder` on `bench` at each of
    `scoring`'s dims (default Scoring(): the embedder's full dim). `answer_fn([(query, top docs), ...])`
    -> the answers (None: no answer), called once per dim with every query and its top `context_k`
    documents (default: the benchmark's, 1 for MMQA), so a generation backend gets the whole batch.
    With `store`, vectors go through the embedding cache (embedding/cache.py), so a rerun with the
    same model embeds nothing."""
    if not bench.queries:
        raise ValueError(f"benchmark {bench.name!r} has no queries")
    scoring = scoring or Scoring()
    log = get_logger("benchmarks")

    def vectors(items: list[MixedItem], role: str) -> np.ndarray:
        return embed_cached(embedder, items, role, store)[0] if store is not None else embedder.embed(items, role)

    q_all = vectors([q.item() for q in bench.queries], "query")
    d_all = vectors([d.item() for d in bench.corpus], "document") if bench.corpus else None
    rows: list[dict] = []
    sizes: set[int] = set()
    for dim in scoring.dims:
        q = matryoshka(q_all, dim)
        size = int(q.shape[1])
        if size in sizes:  # a dim at or above the embedder's is its full dim, scored once
            continue
        sizes.add(size)
        key = (model, bench.name, bench.split, size)
        if bench.per_query_candidates:
            rows += _candidate_rows(bench, key, candidate_hits(bench, q, matryoshka(d_all, dim)), scoring)
            continue
        ranked = None
        if d_all is not None:
            _, ranked = exact_topk(q, matryoshka(d_all, dim), max(scoring.ks), scoring.search)
            scores = retrieval_scores(_marked(bench, ranked), [_HIT] * len(bench.queries), scoring.ks)
            rows += [_row(key, m, v, scoring) for m, v in scores.items()]
        if answer_fn is not None:
            k = scoring.context_k or bench.context_k
            preds = answer_fn([(x, [bench.corpus[j] for j in ranked[i][:k] if j >= 0] if ranked is not None else [])
                               for i, x in enumerate(bench.queries)])
            f1, em = answer_scores(bench, preds)
            rows += [_row(key, "f1", f1, scoring), _row(key, "em", em, scoring)]
    log.info("benchmark %s, %s: %s", bench.name, model,
             ", ".join(f"{r['dataset']}@{r['dim']} {r['metric']} {r['value']:.4f}" for r in rows))
    return rows


def score_imported(run: EvalRun, retriever: Retriever, bench: Benchmark, notes: list[str]) -> list[dict]:
    """`evaluate`'s rows of an imported benchmark under one retriever:
    `score_benchmark` for a retrieving retriever, its answers asked of the run's reader; none / golden
    answer (F1 / EM benchmarks only) from no document / the first gold documents, the same at every dim."""
    ev = run.ev
    docs = Corpus(bench.name, [d.doc_id for d in bench.corpus], [d.text for d in bench.corpus],
                  [[i for i, _ in d.images] for d in bench.corpus],
                  {i: path for x in (*bench.corpus, *bench.queries) for i, path in x.images})
    asking = Answering(ev.generation, ev.prompt_version, docs, run.cfg.chunk.image_placeholder, ev.max_images)
    row_of = {d: i for i, d in enumerate(docs.ids)}

    def answer(batch) -> list[str | None]:
        reqs = [asking.request(q.text, [i for i, _ in q.images], [row_of[d.doc_id] for d in top],
                               protocol=ev.protocol) for q, top in batch]
        return run.answers(reqs, [None] * len(reqs))

    answers = bench.metric == "f1"
    if retriever.embedder is not None:
        scoring = Scoring(dims=retriever.dims, ks=ev.ks, search=ev.search, n_boot=ev.bootstrap)
        rows = score_benchmark(bench, retriever.embedder, retriever.name, scoring, store=run.store,
                               answer_fn=answer if answers else None)
        return [{**r, "protocol": ev.protocol} for r in rows]
    if not answers:
        notes.append(f"{retriever.name} skipped on {bench.name}: its metric ({bench.metric}) ranks candidates")
        return []
    by_id = {d.doc_id: d for d in bench.corpus}
    top = [retriever.given([by_id[g] for g in q.gold_ids if g in by_id][:bench.context_k]) for q in bench.queries]
    f1, em = answer_scores(bench, answer(list(zip(bench.queries, top, strict=True))))
    return [run.row(retriever.name, bench.name, bench.split, d, m, v) for d in retriever.dims
            for m, v in (("f1", f1), ("em", em))]

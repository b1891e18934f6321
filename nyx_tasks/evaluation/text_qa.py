"""Text-only QA sets under one retriever (`evaluate.text_sets`: HotpotQA-style sets, the demo's
docstrings): top-1 retrieval, the reader's free-form answer scored by F1 / EM, and, when the set
names its gold passage (`gold_id_column`), recall@k and MRR by corpus row; plus the search's cost
rows. The strict protocol searches the set's full corpus (a table read by row id, its vectors
searched shard by shard); the paper protocol one union corpus of every question's top passages.

    questions, everything = select_questions(ts, cfg.evaluate, drop)
    gold = text_gold(run, ts, questions)                      # when ts.gold_id_column
    rows = score_text_set(run, retriever, ts, text_table(store, ts), questions, gold)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nyx_tasks.core.base import StageError
from nyx_tasks.embedding import MixedItem, make_embedder
from nyx_tasks.embedding.cache import embed_cached
from nyx_tasks.evaluation.judges import exact_match, token_f1
from nyx_tasks.evaluation.metrics import retrieval_scores
from nyx_tasks.evaluation.retrievers import Retriever
from nyx_tasks.evaluation.run import EvalRun
from nyx_tasks.retrieval.answering import Answering
from nyx_tasks.retrieval.corpora import (
    Corpus,
    embed,
    fetch_rows,
    rows_of_ids,
    search,
    search_cost,
    search_table,
    text_table,
    union_corpus,
)
from nyx_tasks.retrieval.vector_shards import corpus_vectors
from nyx_tasks.sources.text_sets import read_questions, sample_questions


@dataclass(frozen=True)
class TextGold:
    """A text set's gold passages (`gold_id_column`), per evaluated question: the corpus row of its
    text's first occurrence (-1: the id is not in the corpus) and the passage text (None likewise)."""

    rows: Any
    texts: list


def select_questions(ts, ev, drop):
    """(questions evaluated, every question of the set): the first `max_questions` in file order,
    or with `evaluate.sample_seed` that many drawn at random. The set is read in full only when
    the sample or the paper protocol's union corpus needs every question."""
    paper_all = ev.protocol == "paper" and ev.union_questions == "all"
    if ev.sample_seed is None and not paper_all:
        questions = read_questions(ts, drop)
        return questions, questions
    everything = read_questions(ts, drop, capped=False)
    if ev.sample_seed is not None:
        return sample_questions(everything, ts.max_questions, ev.sample_seed), everything
    return everything[: ts.max_questions] if ts.max_questions else everything, everything


def union_embedder_cfg(cfg):
    """The embedder whose top passages make the paper protocol's text-only corpus."""
    return cfg.evaluate.union_embedder or cfg.mine.text_embedder


def text_gold(run: EvalRun, ts, questions) -> TextGold:
    """The evaluated questions' gold passages; an id missing from the corpus is a named drop
    (`<set>_gold_not_in_corpus`: the question keeps its answer metrics, not its retrieval ones)."""
    table = text_table(run.store, ts)
    rows = rows_of_ids(table, [q.gold_id for q in questions])
    found = rows >= 0
    texts: list = [None] * len(questions)
    for i, t in zip(found.nonzero()[0].tolist(), table.texts(rows[found]), strict=True):
        texts[i] = t
    rows[found] = table.rep(rows[found])
    table.close()
    for q, ok in zip(questions, found.tolist(), strict=True):
        if not ok:
            run.out.drops.drop(f"{ts.name}_gold_not_in_corpus", q.qid)
    run.log.info("evaluate %s: %d of %d questions name a gold passage in the corpus", ts.name,
                 int(found.sum()), len(questions))
    return TextGold(rows, texts)


def paper_union(run: EvalRun, read: list[tuple]) -> Corpus:
    """The paper protocol's one corpus for every text set: each question's top `union_top_k`
    passages from its set's corpus by the union embedder (`read`: (set, evaluated questions, every
    question) each). Sets naming the same corpus files are searched together."""
    ev = run.ev
    pools: dict[tuple, tuple] = {}
    for ts, evaluated, everything in read:
        source = (tuple(ts.corpus), ts.corpus_id_column, ts.corpus_text_column)
        if source not in pools:
            pools[source] = (ts, [])
        pools[source][1].extend(q.question for q in (everything if ev.union_questions == "all" else evaluated))
    emb_cfg = union_embedder_cfg(run.cfg)
    embedder = make_embedder(emb_cfg, run.store)
    union = union_corpus(embedder, [(text_table(run.store, ts, run.out.drops.drop), qs) for ts, qs in pools.values()],
                         ev.union_top_k, ev.search, run.store, shard_rows=run.cfg.corpora.shard_rows)
    n_q = sum(len(qs) for _, qs in pools.values())
    run.log.info("evaluate: text-only union corpus of %d passages: the top %d of %d questions by %s",
                 len(union.ids), ev.union_top_k, n_q, emb_cfg.model)
    run.out.extra["union_passages"] = len(union.ids)
    if not union.ids:
        raise StageError("evaluate: the text-only union corpus is empty; check the text sets' corpus files.")
    return union


def score_text_set(run: EvalRun, retriever: Retriever, ts, corpus, questions, gold: TextGold | None = None
                   ) -> list[dict]:
    """`corpus`: the paper protocol's union (a small `Corpus`), or the set's full corpus as a table
    (strict), searched over its vector shards under this model; only the retrieved texts are read.
    With `gold` (the set's `gold_id_column`), recall@k / MRR over the questions whose gold is in the
    corpus: by row (strict; a copy of the gold's text is the gold) or by text (the union)."""
    if retriever.embedder is None:
        return _given(run, retriever, ts, questions, gold)
    ev, model, embedder, dims = run.ev, retriever.name, retriever.embedder, retriever.dims
    k = max(ev.ks) if gold is not None else 1
    queries = [MixedItem(q.question) for q in questions]
    rows: list[dict] = []
    if isinstance(corpus, Corpus):
        d_vecs, q_vecs, _ = embed(embedder, corpus, queries, run.store)
        distinct = corpus.distinct()
        ranked = top1 = [search(q_vecs, d_vecs, k, ev.search, dim, distinct)[1] for dim in dims]
        costs = [search_cost(q_vecs[: ev.latency_queries], d_vecs, k, ev.search, dim, keep=distinct.keep)
                 for dim in dims]
        if gold is not None:  # the union holds each text once: the gold is its text's index, if there
            at = {t: i for i, t in enumerate(corpus.texts)}
            gold_keys = [at.get(t, -2) if t is not None else -1 for t in gold.texts]
    else:
        q_vecs, _ = embed_cached(embedder, queries, "query", run.store)
        shard_rows = run.cfg.corpora.shard_rows
        ranked = [search_table(embedder, corpus, q_vecs, k, ev.search, dim, shard_rows)[1] for dim in dims]
        vectors = corpus_vectors(embedder, corpus, shard_rows)
        costs = [search_cost(q_vecs[: ev.latency_queries], vectors, k, ev.search, dim,
                             exclude=corpus.repeats()[0]) for dim in dims]
        if gold is not None:
            gold_keys = [int(r) for r in gold.rows]
        table, (corpus, top1) = corpus, fetch_rows(corpus, ts.name, *[r[:, :1] for r in ranked])
        table.close()
    for dim, cost in zip(dims, costs, strict=True):
        rows += run.cost_rows(model, ts.name, "eval", dim, cost)
    if gold is not None:
        has = [i for i, g in enumerate(gold_keys) if g != -1]  # -1: the gold id is not in the corpus
        for d, ranked_d in zip(dims, ranked, strict=True):
            if has:
                scored = retrieval_scores([[str(x) for x in ranked_d[i] if x >= 0] for i in has],
                                          [str(gold_keys[i]) for i in has], ev.ks)
                rows += [run.row(model, ts.name, "eval", d, m, v) for m, v in scored.items()]
    asking = Answering(ev.generation, ev.prompt_version, corpus, run.cfg.chunk.image_placeholder, 0)
    reqs, where = [], []
    for dim, ranked_d in zip(dims, top1, strict=True):  # indices in `corpus`, best first
        for i, q in enumerate(questions[:ts.max_answered]):
            reqs.append(asking.request(q.question, [], [int(ranked_d[i][0])], protocol=ev.protocol))
            where.append((dim, i))
    return rows + _answered(run, model, ts, questions, reqs, where)


def _given(run: EvalRun, retriever, ts, questions, gold: TextGold | None) -> list[dict]:
    """A retriever that gives the reader fixed documents (none: no document; golden: the gold passage,
    over the questions whose gold is in the corpus): asked once, the rows repeated at every dim."""
    ev, golden = run.ev, retriever.needs_gold
    asked = questions[:ts.max_answered]  # answered; golden's recall (1 by construction) counts them all
    if golden:
        keep = [i for i, t in enumerate(gold.texts[:len(asked)]) if t is not None]
        asked = [asked[i] for i in keep]
        docs = Corpus(ts.name, [q.gold_id for q in asked], [gold.texts[i] for i in keep], [[] for _ in keep], {})
    else:
        docs = Corpus(ts.name, [], [], [], {})
    asking = Answering(ev.generation, ev.prompt_version, docs, run.cfg.chunk.image_placeholder, 0)
    reqs = [asking.request(q.question, [], retriever.given([i]), protocol=ev.protocol) for i, q in enumerate(asked)]
    rows = _answered(run, retriever.name, ts, asked, reqs, [(None, i) for i in range(len(asked))]) if asked else []
    if golden:
        found = [q.gold_id for q, t in zip(questions, gold.texts, strict=True) if t is not None]
        if found:
            rows += [run.row(retriever.name, ts.name, "eval", 1, m, v) for m, v in
                     retrieval_scores([[g] for g in found], found, ev.ks).items()]
    return [{**r, "dim": int(d)} for r in rows for d in retriever.dims]


def _answered(run: EvalRun, model: str, ts, questions, reqs: list, where: list) -> list[dict]:
    """f1 / em rows per dim from the answers to `reqs` (`where`: (dim, question index) each)."""
    answers = run.answers(reqs, [None] * len(reqs))
    f1: dict = {}
    em: dict = {}
    for (dim, i), a in zip(where, answers, strict=True):
        f1.setdefault(dim, []).append(0.0 if a is None else token_f1(a, questions[i].answers))
        em.setdefault(dim, []).append(0.0 if a is None else exact_match(a, questions[i].answers))
    return ([run.row(model, ts.name, "eval", d or 1, "f1", v) for d, v in f1.items()]
            + [run.row(model, ts.name, "eval", d or 1, "em", v) for d, v in em.items()])

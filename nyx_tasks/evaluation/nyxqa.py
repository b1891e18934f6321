"""NyxQA dev / test under one retriever: retrieval (recall@k, MRR against the positive chunk, a
copy of it counting as it) and RAG accuracy (the reader answers over the top-1 document), per
split and Matryoshka dim, plus the search's cost rows.

    rows = score_nyxqa(run, retriever, nyxqa_corpus(store, partition), qa_items)
"""

from __future__ import annotations

from nyx_tasks.embedding import MixedItem
from nyx_tasks.evaluation.judges import exact_match, option_match
from nyx_tasks.evaluation.retrievers import Retriever
from nyx_tasks.evaluation.run import EvalRun, content_scores
from nyx_tasks.retrieval.answering import Answering
from nyx_tasks.retrieval.corpora import embed, search, search_cost


def paper_query(question: str, options: list[str]) -> str:
    """The paper protocol's NyxQA retrieval query: the question and its choices (exp1.py; the
    retrieval instruction is the embedder's `query_instruction`)."""
    return f"Question: {question}\nChoices: {', '.join(options)}"


def score_nyxqa(run: EvalRun, retriever: Retriever, corpus, qa: list[dict]) -> list[dict]:
    """Results rows of `qa` (filter's dev / test items) against the partition's chunk `corpus`."""
    if retriever.embedder is None:
        return _given(run, retriever, corpus, qa)
    ev, model = run.ev, retriever.name
    asking = Answering(ev.generation, ev.prompt_version, corpus, run.cfg.chunk.image_placeholder, ev.max_images)
    queries = [MixedItem(paper_query(q["query"], q["options"]) if ev.protocol == "paper" else q["query"],
                         tuple((i, corpus.paths[i]) for i in q["query_image_ids"])) for q in qa]
    d_vecs, q_vecs, n_new = embed(retriever.embedder, corpus, queries, run.store)
    run.out.extra[f"{model}_embedded"] += n_new
    distinct = corpus.distinct()  # identical documents take one rank; a copy of the gold is the gold
    gold_of = corpus.representative_id(distinct)
    rows, reqs, where = [], [], []
    for dim in retriever.dims:
        _, ranked = search(q_vecs, d_vecs, max(ev.ks), ev.search, dim, distinct)
        cost = search_cost(q_vecs[: ev.latency_queries], d_vecs, max(ev.ks), ev.search, dim, keep=distinct.keep)
        rows += run.cost_rows(model, "nyxqa", "all", dim, cost)
        for split in ev.splits:
            idx = [i for i, q in enumerate(qa) if q["split"] == split]
            if not idx:
                continue
            scored = content_scores(corpus.ids, gold_of, [ranked[i] for i in idx],
                                    [qa[i]["pos_chunk_id"] for i in idx], ev.ks)
            rows += [run.row(model, "nyxqa", split, dim, metric, values) for metric, values in scored.items()]
            for i in idx:  # RAG: the reader answers over the top-1 document
                reqs.append(asking.request(qa[i]["query"], qa[i]["query_image_ids"], [int(ranked[i][0])],
                                           options=qa[i]["options"], protocol=ev.protocol))
                where.append((dim, split, i))
    return rows + _judged(run, retriever, qa, reqs, where)


def _given(run: EvalRun, retriever, corpus, qa: list[dict]) -> list[dict]:
    """A retriever that gives the reader fixed documents (none: no document; golden: the positive
    chunk, whose recall is then 1 by construction): asked once, the rows repeated at every dim."""
    ev, model = run.ev, retriever.name
    asking = Answering(ev.generation, ev.prompt_version, corpus, run.cfg.chunk.image_placeholder, ev.max_images)
    index = {cid: i for i, cid in reversed(list(enumerate(corpus.ids)))}  # each id's first row
    gold_of = corpus.representative_id(corpus.distinct())
    rows, reqs, where = [], [], []
    for split in ev.splits:
        idx = [i for i, q in enumerate(qa) if q["split"] == split]
        if not idx:
            continue
        gold = [[index[qa[i]["pos_chunk_id"]]] if qa[i]["pos_chunk_id"] in index else [] for i in idx]
        if retriever.needs_gold:
            scored = content_scores(corpus.ids, gold_of, gold, [qa[i]["pos_chunk_id"] for i in idx], ev.ks)
            rows += [run.row(model, "nyxqa", split, d, m, v) for m, v in scored.items() for d in retriever.dims]
        for i, g in zip(idx, gold, strict=True):
            reqs.append(asking.request(qa[i]["query"], qa[i]["query_image_ids"], retriever.given(g),
                                       options=qa[i]["options"], protocol=ev.protocol))
            where.append((None, split, i))
    judged = _judged(run, retriever, qa, reqs, where)
    return rows + [{**r, "dim": int(d)} for r in judged for d in retriever.dims]


def _judged(run: EvalRun, retriever, qa: list[dict], reqs: list, where: list) -> list[dict]:
    """rag_accuracy rows per (dim, split) from the answers to `reqs` (`where`: (dim, split, qa
    index) each; dim None: one row per split, its dim 1 until the caller sets it)."""
    scores = run.answers(reqs, [qa[i]["options"] for _, _, i in where])
    judged: dict[tuple, list[float]] = {}
    for (dim, split, i), answer in zip(where, scores, strict=True):
        opts, right = qa[i]["options"], qa[i]["correct_index"]
        if answer is None:
            ok = 0.0
        elif run.ev.protocol == "paper":  # eval_utils.py: normalised answer == normalised text of the correct option
            ok = exact_match(answer, [opts[right]])
        else:
            ok = option_match(answer, opts, right)
        judged.setdefault((dim, split), []).append(ok)
    return [run.row(retriever.name, "nyxqa", split, dim or 1, "rag_accuracy", v) for (dim, split), v in judged.items()]

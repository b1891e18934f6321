"""Text-set corpora for `feedback` and `evaluate`: a text set's corpus is a table read by row
id and searched over vector shards (`retrieval.search_table` / `fetch_rows` / `union_corpus`),
never held whole. Every result must equal the in-memory path it replaces (the whole corpus as
a `Corpus`, `embed_cached`, `search` with `distinct`): feedback's windows and triplets,
evaluate's strict and paper rows and the VLM requests behind them, and the paper protocol's
union corpus, on the packaged fixtures and on a copy of one with duplicate passages (a copy
placed before its original, a repeated id, an empty text), in shards small enough that every
search crosses several shard boundaries.

One thing differs by design: documents scoring exactly the same. The in-memory path's FAISS
search returns tied documents in any order (`search.py` says so; here it keeps the higher
rows), the shards' search orders them by the lower row (`vector_shards.search_shards`). The
fixtures' templated passages tie often under a bag-of-words embedder, so the old path is run
here with its ties put in row order (`ties_by_row`: every document scored by the same backend,
then sorted by (score desc, row asc)); the first test checks that this is the only difference."""

import hashlib
import json
import logging
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from nyx_tasks.core.config import TextSetConfig, load_config
from nyx_tasks.core.log import DropCounter
from nyx_tasks.core.paths import resolve_pkgdata
from nyx_tasks.embedding import MixedItem
from nyx_tasks.embedding.cache import embed_cached
from nyx_tasks.evaluation import text_qa
from nyx_tasks.evaluation.retrievers import CheckpointRetriever
from nyx_tasks.evaluation.run import PER_QUERY, EvalRun
from nyx_tasks.inference.base import ChatResponse, text_of
from nyx_tasks.retrieval import corpora as retrieval
from nyx_tasks.retrieval.corpora import (
    Corpus,
    fetch_rows,
    search,
    search_table,
    text_table,
    union_corpus,
)
from nyx_tasks.retrieval.search import exact_topk
from nyx_tasks.sources.text_sets import read_corpus, read_questions
from nyx_tasks.stages import feedback as fb
from nyx_tasks.store.artifacts import ArtifactStore

WIDTH = 128  # the demo's largest evaluate dim
SETS = ("hotpotqa", "2wikimultihopqa", "musique")
SHARD_ROWS = 16  # 56-passage corpora: four shards


class HashingEmbedder:
    """Bag of words hashed into WIDTH features, L2-normalised: every item's vector depends on its
    text only (never on its batch), so the two paths see the same vectors. Counts what it embeds."""

    def __init__(self, name="hash"):
        self.model_id, self.dim, self.calls = f"fake:{name}", WIDTH, Counter()

    def embed(self, items, role):
        out = np.zeros((len(items), WIDTH), np.float32)
        for row, it in enumerate(items):
            for word in re.findall(r"\w+", it.text.lower()):
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "little")
                out[row, h % WIDTH] += 1.0 + (h >> 20) % 3  # a few weights, so scores rarely tie
            out[row] /= max(float(np.linalg.norm(out[row])), 1e-12)
        self.calls[role] += len(items)
        return out


class VLM:
    """Answers with some words of the first document in the prompt (or of the prompt)."""

    model_id, hits = "scripted:vlm", 0

    def __init__(self, free=False):
        self.free, self.seen = free, []

    def generate(self, requests, on_done=None):
        self.seen += requests
        out = []
        for r in requests:
            text = text_of(r.messages[-1]["content"])
            doc = text.split("Document 1:\n", 1)[-1]
            words = " ".join(re.findall(r"\w+", doc)[3:10])  # e.g. "a astronomer born in Quenby in 1904"
            out.append(ChatResponse(text=words if self.free else json.dumps({"answer": words})))
        return out

    def close(self):
        pass


def fixture_set(name, **kw):
    return TextSetConfig(name=name, questions=[f"pkgdata:text_sets/{name}/questions.jsonl"],
                         corpus=[f"pkgdata:text_sets/{name}/corpus.jsonl"], **kw)


def duplicated_set(tmp_path, name="hotpotqa"):
    """A fixture set whose corpus repeats passages: d5's text first under a new id (so the copy is
    the first occurrence), d7 again at the end, d0's id again (dropped) and an empty text (dropped)."""
    src = fixture_set(name)
    lines = [json.loads(x) for x in Path(resolve_pkgdata(src.corpus[0])).read_text().splitlines()]
    rows = [{"id": "copy-of-d5", "contents": lines[5]["contents"]}, *lines,
            {"id": "copy-of-d7", "contents": lines[7]["contents"]},
            {"id": lines[0]["id"], "contents": "another text under a repeated id"},
            {"id": "empty", "contents": "   "},
            {"id": "copy-of-d7-again", "contents": lines[7]["contents"]}]
    path = tmp_path / f"{name}-dup-corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return TextSetConfig(name=name, questions=src.questions, corpus=[str(path)])


def old_text_corpus(ts, drop=lambda *a: None) -> Corpus:
    """The whole corpus in memory, as `retrieval.text_corpus` built it before."""
    docs = read_corpus(ts, drop)
    return Corpus(ts.name, [d.doc_id for d in docs], [d.text for d in docs], [[] for _ in docs], {})


def old_union_corpus(embedder, pools, top_k, search_cfg, store, name="text_union") -> Corpus:
    """`retrieval.union_corpus` as it was: every pool's corpus embedded and searched whole."""
    ids, texts, taken = [], {}, set()
    for corpus, questions in pools:
        if not questions or not corpus.ids:
            continue
        d_vecs, _ = embed_cached(embedder, corpus.items(), "document", store)
        q_vecs, _ = embed_cached(embedder, [MixedItem(q) for q in questions], "query", store)
        _, ranked = search(q_vecs, d_vecs, min(top_k, len(corpus.ids)), search_cfg, None, corpus.distinct())
        for row in ranked:
            for d in row:
                if d < 0 or corpus.texts[d] in texts:
                    continue
                doc_id = corpus.ids[d]
                while doc_id in taken:
                    doc_id = f"{doc_id}#"
                taken.add(doc_id)
                texts[corpus.texts[d]] = len(ids)
                ids.append(doc_id)
    return Corpus(name, ids, list(texts), [[] for _ in ids], {})


def exact_topk_ties_by_row(queries, docs, k, cfg=None, keep=None):
    """`search.exact_topk` with exact ties in row order: every (kept) document scored by the same
    backend, ranked by (score desc, row asc), the first k kept (-1 / -inf pads as before)."""
    n = docs.shape[0] if keep is None else len(keep)
    scores, rows = exact_topk(queries, docs, n, cfg, keep)
    order = np.lexsort((rows, -scores), axis=1)[:, :k]
    scores, rows = np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)
    pad = k - scores.shape[1]
    return (np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf),
            np.pad(rows, ((0, 0), (0, pad)), constant_values=-1))


@pytest.fixture
def ties_by_row(monkeypatch):
    """The in-memory path (`retrieval.search`) with its exact ties in row order."""
    monkeypatch.setattr(retrieval, "exact_topk", exact_topk_ties_by_row)


def scored(row: dict) -> dict:
    """A result row without its per-query scores (numpy arrays the stage keeps while it runs)."""
    return {k: v for k, v in row.items() if k != PER_QUERY}


def make_ctx(root, *overrides):
    cfg = load_config("demo", [f"artifacts.root={root}", "evaluate.bootstrap=0", "evaluate.dims=[128,64,32,16]",
                               "evaluate.untrained_dims=true", f"corpora.shard_rows={SHARD_ROWS}", *overrides])
    return SimpleNamespace(cfg=cfg, store=ArtifactStore(str(root / "root")), log=logging.getLogger("nyx.test"),
                           partition="p", key="k")


def corpora(tmp_path):
    return [fixture_set(n) for n in SETS] + [duplicated_set(tmp_path)]


# ------------------------------------------------------------------ the library pieces
def test_the_table_path_finds_what_the_whole_corpus_finds(tmp_path, monkeypatch):
    ts = duplicated_set(tmp_path)
    store, embedder, cfg = ArtifactStore(str(tmp_path / "root")), HashingEmbedder(), load_config("demo").feedback
    old_drops, new_drops = [], []
    corpus, table = old_text_corpus(ts, lambda *a: old_drops.append(a)), text_table(store, ts,
                                                                                    lambda *a: new_drops.append(a))
    assert sorted(old_drops) == sorted(new_drops) and len(new_drops) == 2  # the repeated id, the empty text
    assert len(table) == len(corpus.ids) and table.doc_ids(range(len(table))) == corpus.ids
    queries = [MixedItem(q.question) for q in read_questions(ts, lambda *a: None, capped=False)]
    q_vecs, _ = embed_cached(embedder, queries, "query", store)
    d_vecs, _ = embed_cached(embedder, corpus.items(), "document", store)
    distinct = corpus.distinct()
    for dim in (None, 64, 16):
        got_s, rows, _ = search_table(embedder, table, q_vecs, 12, cfg.search, dim, SHARD_ROWS)
        # the in-memory FAISS search: the same scores; its rows differ only where scores tie
        faiss_s, faiss_rows = search(q_vecs, d_vecs, 12, cfg.search, dim, distinct)
        assert np.array_equal(got_s, faiss_s)
        for s, a, b in zip(got_s, rows, faiss_rows, strict=True):
            for j in np.flatnonzero(a != b):
                assert np.count_nonzero(s == s[j]) > 1 or s[j] == s[-1]  # a tie (maybe past k): any order
        with monkeypatch.context() as m:  # with its ties by row: equal
            m.setattr(retrieval, "exact_topk", exact_topk_ties_by_row)
            want_s, want = search(q_vecs, d_vecs, 12, cfg.search, dim, distinct)
        assert np.array_equal(rows, want) and np.array_equal(got_s, want_s)
    # identical texts: one rank, at the first occurrence (the copy placed before d5); rep as Distinct.rep
    assert np.array_equal(table.rep(np.arange(len(table))), distinct.rep)
    assert corpus.ids[0] == "copy-of-d5" and 6 not in set(rows.reshape(-1).tolist())
    gold_of = corpus.representative_id(distinct)
    assert gold_of["hotpotqa-d5"] == "copy-of-d5" and gold_of["copy-of-d7"] == "hotpotqa-d7"
    assert [corpus.ids[r] for r in table.rep([1 + 5, len(corpus.ids) - 1]).tolist()] == ["copy-of-d5", "hotpotqa-d7"]
    # only the retrieved rows' texts come back, indexed as the ranking says
    found, (local,) = fetch_rows(table, ts.name, rows)
    assert len(found.ids) == len(np.unique(rows[rows >= 0])) < len(table)
    for r, row in zip(rows.reshape(-1).tolist(), local.reshape(-1).tolist(), strict=True):
        assert (found.ids[row], found.texts[row]) == (corpus.ids[r], corpus.texts[r])


# ------------------------------------------------------------------ feedback
def feedback_rows(ts, n=8):
    qs = read_questions(ts, lambda *a: None)[:n]
    return [{"qa_id": q.qid, "source": ts.name, "query": q.question, "query_image_ids": [],
             "answer": q.answers[0], "answers": q.answers, "split": "train", "modality": "text"} for q in qs]


def run_feedback(ctx, data, monkeypatch, embedder):
    """rank -> window_requests -> ask_vlm -> judge -> select -> triplets, as `process` runs them."""
    monkeypatch.setattr(fb, "stage_checkpoint", lambda *a: {"merged": "x"})
    monkeypatch.setattr(fb, "checkpoint_embedder", lambda *a: embedder)
    vlm = VLM()
    monkeypatch.setattr(fb, "make_backend", lambda *a: vlm)
    cfg, out = ctx.cfg.feedback, SimpleNamespace(extra=Counter(), drops=DropCounter(logging.getLogger("t")))
    ranking = fb.rank(ctx, data, out)
    wins = fb.window_requests(ranking, cfg.window_size, cfg.stride)
    resps = fb.ask_vlm(ctx, data, wins, out)
    scores, window_rows = fb.judge(data, ranking, wins, resps, out.extra)
    picked = fb.select(data, ranking, scores, cfg, out)
    return window_rows, fb.triplets(data, ranking, picked), vlm.seen, out


@pytest.mark.parametrize("mode", ["strict", "paper"])
def test_feedback_text_set_triplets_equal_the_whole_corpus_path(tmp_path, monkeypatch, mode, ties_by_row):
    for i, ts in enumerate(corpora(tmp_path)):
        ctx = make_ctx(tmp_path / f"{mode}{i}", f"feedback.mode={mode}", "feedback.window_size=2")
        rows, emb = feedback_rows(ts), HashingEmbedder()
        old = run_feedback(ctx, fb.FeedbackShard("s", rows, old_text_corpus(ts), {}), monkeypatch, emb)
        table, _ = fb.source_corpus(SimpleNamespace(**{**vars(ctx), "cfg": ctx.cfg.model_copy(
            update={"mine": ctx.cfg.mine.model_copy(update={"text_sets": [ts]})})}), ts.name)
        assert not isinstance(table, Corpus)  # the table, never the whole corpus
        data = fb.FeedbackShard("s", rows, table, {})
        new = run_feedback(ctx, data, monkeypatch, emb)
        assert new[0] == old[0] and new[1] == old[1]  # windows, triplets
        assert [r.messages for r in new[2]] == [r.messages for r in old[2]]  # what the VLM was shown
        assert new[3].drops.counts == old[3].drops.counts and new[1]
        assert len(data.corpus.ids) < len(table)  # only the retrieved passages were read
        extra = {k: v for k, v in new[3].extra.items() if k != "embedded"}
        assert extra == {k: v for k, v in old[3].extra.items() if k != "embedded"}
        again = run_feedback(ctx, fb.FeedbackShard("s", rows, table, {}), monkeypatch, emb)
        assert again[1] == new[1] and again[3].extra["embedded"] == 0  # shards and queries are cached


# ------------------------------------------------------------------ evaluate
def stage1(ctx, embedder):
    return CheckpointRetriever("stage1", tuple(ctx.cfg.evaluate.dims), embedder)


def eval_ctx(root, sets, *overrides):
    ctx = make_ctx(root, *overrides)
    ctx.cfg = ctx.cfg.model_copy(update={"evaluate": ctx.cfg.evaluate.model_copy(update={"text_sets": sets})})
    return ctx


def test_evaluate_strict_text_sets_equal_the_whole_corpus_path(tmp_path, ties_by_row):
    sets = corpora(tmp_path)
    ctx = eval_ctx(tmp_path, sets)
    for ts in sets:
        questions = read_questions(ts, lambda *a: None)
        emb, runs = HashingEmbedder(), []
        for corpus in (old_text_corpus(ts), text_table(ctx.store, ts)):
            vlm = VLM()
            out = SimpleNamespace(extra=Counter(), drops=SimpleNamespace(drop=lambda *a: None))
            rows = text_qa.score_text_set(EvalRun(ctx.cfg, ctx.store, vlm, out, ctx.log), stage1(ctx, emb), ts,
                                          corpus, questions)
            rows = [scored(r) for r in rows if not r["metric"].startswith("latency_ms")]  # timings: machine noise
            runs.append((rows, [r.messages for r in vlm.seen], dict(out.extra)))
        assert runs[1] == runs[0] and len(runs[0][0]) == 3 * len(ctx.cfg.evaluate.dims)  # f1, em, index_bytes


@pytest.mark.parametrize("union_questions", ["all", "evaluated"])
def test_evaluate_paper_union_and_rows_equal_the_whole_corpus_path(tmp_path, monkeypatch, union_questions, ties_by_row):
    # two sets sharing the duplicated corpus (one pool), two fixture sets of their own
    dup = duplicated_set(tmp_path)
    sets = [dup, TextSetConfig(name="bamboogle", questions=fixture_set("musique").questions, corpus=dup.corpus,
                               max_questions=5),
            fixture_set("2wikimultihopqa", max_questions=6), fixture_set("musique")]
    ctx = eval_ctx(tmp_path, sets, "evaluate.protocol=paper", "evaluate.union_top_k=7",
                   f"evaluate.union_questions={union_questions}")
    emb = HashingEmbedder("e5")
    monkeypatch.setattr(text_qa, "make_embedder", lambda cfg, store: emb)
    cfg = ctx.cfg.evaluate
    old_drops, new_drops = [], []
    read = [(ts, *text_qa.select_questions(ts, cfg, lambda *a: None)) for ts in sets]
    out = SimpleNamespace(extra=Counter(), drops=SimpleNamespace(drop=lambda *a: new_drops.append(a)))
    union = text_qa.paper_union(EvalRun(ctx.cfg, ctx.store, None, out, ctx.log), read)
    # the old union over the same pools, each corpus whole
    pools = {}
    for ts, evaluated, everything in read:
        key = (tuple(ts.corpus), ts.corpus_id_column, ts.corpus_text_column)
        pools.setdefault(key, (ts, []))[1].extend(
            q.question for q in (everything if union_questions == "all" else evaluated))
    old = old_union_corpus(emb, [(old_text_corpus(ts, lambda *a: old_drops.append(a)), qs)
                                 for ts, qs in pools.values()], cfg.union_top_k, cfg.search, ctx.store)
    assert (union.ids, union.texts) == (old.ids, old.texts) and sorted(new_drops) == sorted(old_drops)
    assert out.extra["union_passages"] == len(old.ids) > 0
    assert len(set(union.texts)) == len(union.texts)  # a text once, whichever pool found it
    rows, seen = [], []
    for corpus in (union, old):
        vlm = VLM(free=True)
        run = EvalRun(ctx.cfg, ctx.store, vlm, out, ctx.log)
        rows.append([scored(r) for ts, questions, _ in read for r in text_qa.score_text_set(
            run, stage1(ctx, HashingEmbedder("nyx")), ts, corpus, questions)
            if not r["metric"].startswith("latency_ms")])  # timings: machine noise
        seen.append([r.messages for r in vlm.seen])
    assert rows[0] == rows[1] and seen[0] == seen[1]


def test_evaluate_union_reads_only_the_retrieved_texts(tmp_path, monkeypatch):
    """`union_corpus` fetches texts by row for the top-k only: never `iter_texts` over the corpus
    except to embed the shards, and never a second time once they are embedded."""
    from nyx_tasks.sources.corpus_table import CorpusTable

    ts = fixture_set("hotpotqa")
    store, emb = ArtifactStore(str(tmp_path / "root")), HashingEmbedder()
    table = text_table(store, ts)
    qs = [q.question for q in read_questions(ts, lambda *a: None)]
    first = union_corpus(emb, [(table, qs)], 2, None, store, shard_rows=SHARD_ROWS)
    taken = []
    real_take = CorpusTable._take
    monkeypatch.setattr(CorpusTable, "_take", lambda self, rows, col: taken.append(len(rows)) or real_take(self, rows, col))
    monkeypatch.setattr(CorpusTable, "iter_texts", lambda *a, **k: pytest.fail("read the whole corpus"))
    again = union_corpus(emb, [(table, qs)], 2, None, store, shard_rows=SHARD_ROWS)
    assert (again.ids, again.texts) == (first.ids, first.texts)
    assert taken and max(taken) <= 2 * len(qs) < len(table) and emb.calls["document"] == len(table)


def test_mine_takes_the_gold_passage_as_positive_when_the_set_names_it(tmp_path):
    """gold_id_column in mine: the passage a question was written from is its positive (not the
    top-1 retrieved), never one of its negatives; a gold id missing from the corpus is a named drop."""
    from nyx_tasks.stages.mine import mine_text_set

    base = fixture_set("hotpotqa")
    corpus = [json.loads(line) for line in Path(resolve_pkgdata(base.corpus[0])).read_text().splitlines()]
    ids = [c["id"] for c in corpus]
    qs = [{"id": f"q{i}", "question": corpus[i]["contents"][:60], "golden_answers": ["x"],
           "gold": ids[(i + 7) % len(ids)] if i < 5 else "no-such-passage"} for i in range(6)]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qs))
    cfg = load_config("demo", ["mine.range_min=0", "mine.num_negatives=3"]).mine
    rows_of = {}
    for gold in ("gold", None):
        ts = TextSetConfig(name="g", questions=[str(tmp_path / "q.jsonl")], corpus=base.corpus, gold_id_column=gold)
        written, drops = [], Counter()
        out = SimpleNamespace(drops=SimpleNamespace(drop=lambda r, *a, c=drops: c.update([r]), counts=drops),
                              extra=Counter(), rows_in=0, write=written.extend)
        mine_text_set(ArtifactStore(str(tmp_path / "root")), cfg, ts, HashingEmbedder(), SHARD_ROWS, out)
        rows_of[gold] = (written, drops)
    written, drops = rows_of["gold"]
    assert drops["g_gold_not_in_corpus"] == 1 and [r["qa_id"] for r in written] == [f"g:q{i}" for i in range(5)]
    for r, q in zip(written, qs, strict=False):
        assert r["pos_chunk_id"] == q["gold"] and q["gold"] not in r["neg_chunk_ids"] and len(r["neg_chunk_ids"]) == 3
    top1, _ = rows_of[None]  # without the column: the top-1 retrieved, as the paper mines text sets
    assert all(r["pos_rank"] == 0 for r in top1) and len(top1) == 6
    assert [r["pos_chunk_id"] for r in top1[:5]] != [q["gold"] for q in qs[:5]]


def test_evaluate_answers_only_max_answered_questions_and_retrieves_them_all(tmp_path):
    ts = fixture_set("hotpotqa", max_answered=2)
    ctx = eval_ctx(tmp_path, [ts])
    questions = read_questions(ts, lambda *a: None)
    vlm = VLM()
    out = SimpleNamespace(extra=Counter(), drops=SimpleNamespace(drop=lambda *a: None))
    rows = text_qa.score_text_set(EvalRun(ctx.cfg, ctx.store, vlm, out, ctx.log), stage1(ctx, HashingEmbedder()), ts,
                                  text_table(ctx.store, ts), questions)
    dims = ctx.cfg.evaluate.dims
    assert len(questions) > 2 and len(vlm.seen) <= 2 * len(dims)  # distinct requests of 2 questions per dim
    assert {r["n"] for r in rows if r["metric"] in ("f1", "em")} == {2}


def test_the_next_open_of_a_corpus_table_removes_builds_no_manifest_names(tmp_path, caplog):
    """A build that lost the race to another (or was killed) leaves a `b-*` folder no manifest names:
    the next open of that table removes it once nothing changed in it for a lease's lifetime, says so
    in its log, and leaves a fresh one (a builder may still be writing it) and the table's own."""
    import os
    import time

    from nyx_tasks.sources.corpus_table import corpus_key, corpus_table

    store = ArtifactStore(str(tmp_path / "root"))
    ts = fixture_set("hotpotqa")
    table = corpus_table(store, ts)
    rows = len(table)
    table.close()
    key = corpus_key(ts)
    orphan, fresh = tmp_path / f"root/corpora/{key}/b-orphan", tmp_path / f"root/corpora/{key}/b-fresh"
    for folder in (orphan, fresh):
        folder.mkdir()
        (folder / "rows-00000.parquet").write_bytes(b"partial")
    old = time.time() - 3600
    os.utime(orphan / "rows-00000.parquet", (old, old))
    with caplog.at_level("INFO", logger="nyx.corpus"):
        again = corpus_table(store, ts)
    assert len(again) == rows and again.texts([0])  # the table's own build is untouched
    again.close()
    assert not orphan.exists() and fresh.exists()
    assert "removed 1 build folder(s) no manifest names" in caplog.text

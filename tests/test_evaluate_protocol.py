"""`evaluate.protocol`: `paper` follows the released code (NyxQA query with
its choices, a free-form answer scored by normalised exact match with the correct option's text;
text-only sets retrieved over the union of another retriever's top-k passages per question),
`strict` is the stage's own protocol, unchanged. The stage's methods run here with scripted
embedders (a text's vector is fixed by what it contains) and a scripted VLM."""

import json
import logging
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from nyx_tasks.core.config import TextSetConfig, load_config
from nyx_tasks.evaluation import text_qa
from nyx_tasks.evaluation.nyxqa import paper_query, score_nyxqa
from nyx_tasks.evaluation.report import render_report, validate_rows
from nyx_tasks.evaluation.retrievers import CheckpointRetriever
from nyx_tasks.evaluation.run import EvalRun, paired_deltas
from nyx_tasks.evaluation.text_qa import paper_union, score_text_set, select_questions
from nyx_tasks.inference.base import ChatResponse, text_of
from nyx_tasks.retrieval.corpora import Corpus, text_table
from nyx_tasks.sources.text_sets import read_questions
from nyx_tasks.stages.evaluate import STAGE
from nyx_tasks.store.artifacts import ArtifactStore

WIDTH = 128  # the demo's largest evaluate dim; every signal sits in the first 16 features


class Embedder:
    """Each text's vector is the unit vector of the first rule it matches (else feature 15)."""

    def __init__(self, name, rules):
        self.model_id, self.dim, self.rules, self.seen = f"fake:{name}", WIDTH, rules, []

    def embed(self, items, role):
        out = np.zeros((len(items), WIDTH), np.float32)
        for row, it in enumerate(items):
            self.seen.append((role, it.text))
            hit = next((axis for test, axis in self.rules if test(role, it.text)), 15)
            out[row, hit] = 1.0
        return out


class VLM:
    """A scripted answering VLM: `reply(user text)` -> the response text; records requests."""

    model_id = "scripted:answer"

    def __init__(self, reply):
        self.reply, self.seen = reply, []

    def generate(self, requests, on_done=None):
        self.seen += requests
        return [ChatResponse(text=self.reply(text_of(r.messages[-1]["content"]))) for r in requests]


# the stand-in embedders' width; deltas against stage 1 (the demo's baseline is the packaged MiniLM)
DIMS_128 = ("evaluate.dims=[128,64,32,16]", "evaluate.untrained_dims=true", "evaluate.baseline=stage1")


def make_ctx(tmp_path, *overrides):
    cfg = load_config("demo", [f"artifacts.root={tmp_path}", "evaluate.bootstrap=0", *DIMS_128, *overrides])
    return SimpleNamespace(cfg=cfg, store=ArtifactStore(str(tmp_path / "root")), log=logging.getLogger("nyx.test"),
                           partition="p", key="k")


def stage1(ctx, embedder):
    """The retriever under evaluation: a checkpoint called stage1, at every evaluated dim."""
    return CheckpointRetriever("stage1", tuple(ctx.cfg.evaluate.dims), embedder)


def eval_run(ctx, vlm, out):
    return EvalRun(ctx.cfg, ctx.store, vlm, out, ctx.log)


def make_out():
    dropped = []
    return SimpleNamespace(extra=Counter(), drops=SimpleNamespace(drop=lambda *a: dropped.append(a)), dropped=dropped)


# ------------------------------------------------------------------ NyxQA
OPTIONS = ["Paris", "London", "Rome", "Berlin"]  # options[0] is right


def nyxqa():
    corpus = Corpus("nyxqa", ["c0", "c1", "c2"], ["The capital is Paris.", "London calling.", "Rome sweet home."],
                    [[], [], []], {})
    qa = [{"query": f"Where is the tower {i}?", "query_image_ids": [], "options": OPTIONS, "correct_index": 0,
           "pos_chunk_id": "c0", "split": "dev"} for i in range(3)]
    # a query that carries its choices finds the gold c0; the bare question finds c1
    embedder = Embedder("nyx", [(lambda role, t: role == "document" and "Paris" in t, 0),
                                (lambda role, t: role == "document" and "London" in t, 1),
                                (lambda role, t: role == "document", 2),
                                (lambda role, t: "Choices:" in t, 0),
                                (lambda role, t: True, 1)])
    return corpus, qa, embedder


def paper_reply(text):  # free-form: right in other words, the correct option's letter, a wrong option
    if "tower 0" in text:
        return "  the paris. "
    return "A" if "tower 1" in text else "London"


def strict_reply(text):
    return json.dumps({"answer": "Paris" if "tower 0" in text else "London"})


def rows_by_metric(rows, dim=128):
    return {r["metric"]: r for r in rows if r["dim"] == dim}


def test_paper_nyxqa_queries_carry_the_choices_and_free_answers_are_judged_by_option_text(tmp_path):
    ctx, out = make_ctx(tmp_path, "evaluate.protocol=paper"), make_out()
    corpus, qa, embedder = nyxqa()
    vlm = VLM(paper_reply)
    rows = score_nyxqa(eval_run(ctx, vlm, out), stage1(ctx, embedder), corpus, qa)
    queries = [t for role, t in embedder.seen if role == "query"]
    assert queries == [paper_query(q["query"], OPTIONS) for q in qa]
    assert queries[0] == "Question: Where is the tower 0?\nChoices: Paris, London, Rome, Berlin"  # exp1.py
    got = rows_by_metric(rows)
    assert got["recall@1"]["value"] == 1.0  # the choices lead the query to the gold
    # "the paris." names the right option's text; the letter "A" alone and a wrong option do not
    assert got["rag_accuracy"]["value"] == pytest.approx(1 / 3) and got["rag_accuracy"]["n"] == 3
    assert {r["protocol"] for r in rows} == {"paper"}
    r = vlm.seen[0]
    assert r.json_schema is None  # free-form: nothing constrains the answer
    assert [m["role"] for m in r.messages] == ["system", "user"]
    assert r.messages[0]["content"].startswith("Answer the question based on the given documents. Only give me "
                                               "the answer and do not output any other words.")
    user = text_of(r.messages[1]["content"])
    assert user == "The capital is Paris.\n\nQuestion: Where is the tower 0?\nChoices: Paris, London, Rome, Berlin"
    assert out.extra["unparseable_answers"] == 0


def test_strict_nyxqa_is_unchanged(tmp_path):
    ctx, out = make_ctx(tmp_path), make_out()
    assert ctx.cfg.evaluate.protocol == "strict"  # the default
    corpus, qa, embedder = nyxqa()
    vlm = VLM(strict_reply)
    rows = score_nyxqa(eval_run(ctx, vlm, out), stage1(ctx, embedder), corpus, qa)
    assert [t for role, t in embedder.seen if role == "query"] == [q["query"] for q in qa]  # the bare question
    got = rows_by_metric(rows)
    assert got["recall@1"]["value"] == 0.0 and got["recall@5"]["value"] == 1.0  # c1 first, the gold below
    assert got["rag_accuracy"]["value"] == pytest.approx(1 / 3)  # option match on the constrained answer
    assert {r["protocol"] for r in rows} == {"strict"}
    r = vlm.seen[0]
    assert r.json_schema["properties"]["answer"] == {"enum": OPTIONS}
    assert [m["role"] for m in r.messages] == ["user"]
    text = text_of(r.messages[0]["content"])
    assert text.startswith("Answer the question using the documents below.\n\nDocument 1:\nLondon calling.")
    assert "Options:\n- Paris\n- London" in text


def test_paper_answer_with_images_keeps_them_where_the_placeholders_stood(tmp_path):
    ctx = make_ctx(tmp_path, "evaluate.protocol=paper")
    from nyx_tasks.retrieval.answering import Answering

    corpus = Corpus("nyxqa", ["c0"], ["A map <image> of Paris."], [["i0"]], {"i0": "images/i0.png", "q0": "q.png"})
    asking = Answering(ctx.cfg.evaluate.generation, "v1", corpus, "<image>", 5)
    r = asking.request("What is in <image>?", ["q0"], [0], options=OPTIONS, protocol="paper")
    parts = r.messages[1]["content"]
    kinds = [p.get("image_id") or p["text"] for p in parts]
    assert kinds == ["A map ", "i0", " of Paris.", "\n\n", "Question: ", "What is in ", "q0", "?",
                     "\nChoices: Paris, London, Rome, Berlin"]


# ------------------------------------------------------------------ text-only sets
def write_set(folder, name, questions, corpus):
    folder.mkdir(parents=True, exist_ok=True)
    q, c = folder / f"{name}-questions.jsonl", folder / "corpus.jsonl"
    q.write_text("".join(json.dumps({"id": i, "question": t, "golden_answers": [a]}) + "\n"
                         for i, (t, a) in enumerate(questions)))
    c.write_text("".join(json.dumps({"id": f"d{i}", "contents": t}) + "\n" for i, t in enumerate(corpus)))
    return str(q), str(c)


CORPUS = ["Ada was born in Estmark.", "Bo was born in Quenby.", "Cy was born in Orlen.",
          "Ada was born in Estmark.",  # a copy of d0: one passage in the union
          "Dee was born in Varn.", "Everything about everyone, born anywhere."]


def text_sets(tmp_path, max_questions=None):
    hq, corpus = write_set(tmp_path / "sets", "hotpotqa", [("Where was Ada born?", "Estmark"),
                                                           ("Where was Bo born?", "Quenby")], CORPUS)
    bq, _ = write_set(tmp_path / "sets", "bamboogle", [("Where was Cy born?", "Orlen")], CORPUS)
    return [TextSetConfig(name="hotpotqa", questions=[hq], corpus=[corpus], max_questions=max_questions),
            TextSetConfig(name="bamboogle", questions=[bq], corpus=[corpus])]


def union_retriever():  # E5's part: each question's top passage is the one about its person
    return Embedder("e5", [(lambda role, t, w=w: w in t and "Everything" not in t, axis)
                           for axis, w in enumerate(["Ada", "Bo", "Cy", "Dee"])])


def nyx_text_model():  # the model under evaluation prefers the catch-all passage d5 to any other
    return Embedder("nyx", [(lambda role, t: "Everything" in t, 4), (lambda role, t: role == "query", 4),
                            (lambda role, t: "Ada" in t, 0), (lambda role, t: True, 5)])


def run_text_sets(ctx, monkeypatch, sets):
    monkeypatch.setattr(text_qa, "make_embedder", lambda cfg, store: union_retriever())
    out = make_out()
    cfg = ctx.cfg.evaluate.model_copy(update={"text_sets": sets})
    ctx.cfg = ctx.cfg.model_copy(update={"evaluate": cfg})
    vlm, rows = VLM(lambda text: "Orlen"), []
    run = eval_run(ctx, vlm, out)
    read = [(ts, *select_questions(ts, cfg, out.drops.drop)) for ts in sets]
    union = paper_union(run, read) if cfg.protocol == "paper" else None
    for ts, questions, _ in read:
        corpus = union if union is not None else text_table(ctx.store, ts, out.drops.drop)
        rows += score_text_set(run, stage1(ctx, nyx_text_model()), ts, corpus, questions)
    return union, vlm, rows, out


def retrieved_docs(vlm):
    return [text_of(r.messages[-1]["content"]).split("\n\n")[0] for r in vlm.seen]


def test_paper_text_sets_retrieve_only_over_the_union_of_top_k(tmp_path, monkeypatch):
    ctx = make_ctx(tmp_path, "evaluate.protocol=paper", "evaluate.union_top_k=1")
    union, vlm, rows, out = run_text_sets(ctx, monkeypatch, text_sets(tmp_path))
    # every question's top-1 by the union retriever, from both sets (one shared corpus), copies once
    assert union.texts == [CORPUS[0], CORPUS[1], CORPUS[2]] and union.ids == ["d0", "d1", "d2"]
    assert out.extra["union_passages"] == 3
    docs = retrieved_docs(vlm)
    assert docs and CORPUS[5] not in docs and set(docs) <= set(union.texts)  # d5 is in no top-k
    assert all(r.json_schema is None and r.messages[0]["role"] == "system" for r in vlm.seen)
    assert text_of(vlm.seen[0].messages[-1]["content"]).endswith("\n\nQuestion: Where was Ada born?")
    em = {(r["dataset"], r["dim"]): r["value"] for r in rows if r["metric"] == "em"}
    assert em[("bamboogle", 128)] == 1.0 and em[("hotpotqa", 128)] == 0.0  # "Orlen" answers bamboogle only
    assert {r["protocol"] for r in rows} == {"paper"}
    # a larger k takes each question's next passages too (here ties)
    ctx2 = make_ctx(tmp_path / "k4", "evaluate.protocol=paper", "evaluate.union_top_k=4")
    union4, _, _, _ = run_text_sets(ctx2, monkeypatch, text_sets(tmp_path))
    assert set(union4.texts) == {*union.texts, CORPUS[4]} and len(union4.texts) == 4


def test_paper_union_takes_every_question_or_only_the_evaluated(tmp_path, monkeypatch):
    sets = text_sets(tmp_path, max_questions=1)  # hotpotqa evaluates its first question only
    union, _, rows, _ = run_text_sets(make_ctx(tmp_path, "evaluate.protocol=paper", "evaluate.union_top_k=1"),
                                      monkeypatch, sets)
    assert CORPUS[1] in union.texts  # Bo's passage: the question is not evaluated but feeds the union
    assert {r["n"] for r in rows if r["dataset"] == "hotpotqa"} == {1}
    only, _, _, _ = run_text_sets(make_ctx(tmp_path / "ev", "evaluate.protocol=paper", "evaluate.union_top_k=1",
                                           "evaluate.union_questions=evaluated"), monkeypatch, sets)
    assert only.texts == [CORPUS[0], CORPUS[2]]


def test_strict_text_sets_search_the_full_corpus(tmp_path, monkeypatch):
    ctx = make_ctx(tmp_path)
    union, vlm, rows, _ = run_text_sets(ctx, monkeypatch, text_sets(tmp_path))
    assert union is None
    assert all(f"Document 1:\n{CORPUS[5]}\n\n" in text_of(r.messages[0]["content"]) for r in vlm.seen)  # d5 wins
    assert all(r.json_schema is not None for r in vlm.seen)
    assert {r["protocol"] for r in rows} == {"strict"}


def test_sample_seed_draws_max_questions_at_random_in_file_order(tmp_path):
    qs = [(f"Question {i}?", str(i)) for i in range(30)]
    q, c = write_set(tmp_path, "big", qs, ["a passage"])
    ts = TextSetConfig(name="big", questions=[q], corpus=[c], max_questions=5)
    cfg = load_config("demo").evaluate
    first, everything = select_questions(ts, cfg, lambda *a: None)
    assert [x.question for x in first] == [f"Question {i}?" for i in range(5)] and everything == first
    seeded = cfg.model_copy(update={"sample_seed": 7})
    drawn, everything = select_questions(ts, seeded, lambda *a: None)
    again, _ = select_questions(ts, seeded, lambda *a: None)
    assert len(everything) == 30 and len(drawn) == 5 and [x.qid for x in drawn] == [x.qid for x in again]
    order = [everything.index(x) for x in drawn]
    assert order == sorted(order) and order != list(range(5))
    assert read_questions(ts, lambda *a: None) == first  # mining's reader: unchanged


# ------------------------------------------------------------------ config hash, report
def test_the_protocol_and_its_settings_are_in_the_config_hash_where_they_matter():
    strict, paper = load_config("demo"), load_config("demo", ["evaluate.protocol=paper"])
    p_strict, p_paper = STAGE.config_payload(strict), STAGE.config_payload(paper)
    assert p_strict != p_paper and "union" not in p_strict and "union_top_k" not in p_strict
    assert set(p_strict["prompts"]) == {"answer_mc.jinja", "answer_free.jinja"}
    assert set(p_paper["prompts"]) == {"answer_paper_mc.jinja", "answer_paper_free.jinja"}
    # union settings move strict's hash not at all, paper's always, wherever the embedder is configured
    assert STAGE.config_payload(load_config("demo", ["evaluate.union_top_k=5"])) == p_strict
    assert STAGE.config_payload(load_config("demo", ["evaluate.protocol=paper", "evaluate.union_top_k=5"])) != p_paper
    moved = load_config("demo", ["evaluate.protocol=paper", 'mine.text_embedder.query_prefix="query: "'])
    assert STAGE.config_payload(moved)["union"]["embedder"]["query_prefix"] == "query: "
    tuned = load_config("demo", ["evaluate.protocol=paper", "mine.text_embedder.batch_size=3"])
    assert STAGE.config_payload(tuned) == p_paper


def test_the_report_and_its_summary_lines_name_the_protocol(tmp_path, caplog):
    ctx = make_ctx(tmp_path, "evaluate.protocol=paper")
    rows = [{"model": m, "dataset": "nyxqa", "split": "dev", "dim": 128, "metric": "rag_accuracy", "value": v,
             "n": 3, "ci_low": None, "ci_high": None, "protocol": "paper"} for m, v in (("stage1", 0.3), ("stage2", 0.6))]
    with caplog.at_level("INFO"):
        STAGE._report(ctx, rows)
    text = (tmp_path / "root" / "reports").rglob("report.md").__next__().read_text()
    assert "**Protocol: paper**" in text and "protocol paper (the released code's)" in text
    assert "evaluate: nyxqa/dev stage2 (protocol paper, n=3)" in caplog.text
    assert "stage2-stage1 (protocol paper)" in caplog.text and "(protocol paper)" in caplog.text.split("report at")[1]
    # rows without a protocol render as before; a table mixing protocols is refused
    plain = [{k: v for k, v in r.items() if k != "protocol"} for r in rows]
    md = render_report(plain, str(tmp_path / "plain"), "t")
    assert "Protocol" not in Path(md["markdown"]).read_text() and md["summary_lines"][0].startswith("nyxqa/dev stage1 (n=3)")
    with pytest.raises(ValueError, match="one protocol per table"):
        validate_rows([rows[0], {**rows[1], "protocol": "strict"}])


def test_results_rows_fit_the_table_schema():
    from nyx_tasks.core.schema import EVAL_RESULTS, to_table

    run = EvalRun(load_config("demo", ["evaluate.protocol=paper", "evaluate.bootstrap=0"]), None, None, None, None)
    rows = paired_deltas([run.row(m, "bamboogle", "eval", 128, "em", v)
                          for m, v in (("stage1", [1.0, 0.0]), ("stage2", [1.0, 1.0]))], "stage1", 0)
    table = to_table(rows, EVAL_RESULTS, "eval_results")
    assert table.column("protocol").to_pylist() == ["paper"] * 2 and all(set(r) == set(EVAL_RESULTS.names) for r in rows)
    assert table.column("delta").to_pylist() == [None, 0.5] and table.column("baseline").to_pylist() == [None, "stage1"]
    assert table.column("delta_ci_low").to_pylist() == [None, None]  # no bootstrap: no interval


def test_paired_deltas_pair_only_the_same_queries():
    run = EvalRun(load_config("demo", ["evaluate.bootstrap=50"]), None, None, None, None)
    a, b = [1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0]
    rows = [run.row("base", "docs", "eval", 16, "recall@1", b),  # before its baseline: order is kept
            run.row("stage1", "docs", "eval", 16, "recall@1", a),
            run.row("none", "docs", "eval", 16, "recall@1", [1.0, 0.0]),  # other queries (n = 2)
            run.row("base", "docs", "eval", 32, "recall@1", b),  # no baseline row at dim 32
            {**run.row("base", "docs", "eval", 16, "index_bytes", [8.0]), "ci_low": None, "ci_high": None}]
    out = paired_deltas(rows, "stage1", 50)
    assert [r["model"] for r in out] == ["base", "stage1", "none", "base", "base"]
    assert out[0]["baseline"] == "stage1" and out[0]["delta"] == 0.25
    assert 0.0 <= out[0]["delta_ci_low"] <= 0.25 <= out[0]["delta_ci_high"] <= 1.0
    assert all(r["delta"] is None and r["baseline"] is None for r in out[1:])
    assert not any("_values" in r for r in out)


def test_headline_sets_name_evaluated_datasets():
    cfg = load_config("demo").evaluate
    assert cfg.headline_sets == [] and cfg.headline_names() == ["docstrings_eval"]  # the set naming its gold
    assert load_config("demo", ["evaluate.headline_sets=[nyxqa, hotpotqa]"]).evaluate.headline_names() == \
        ["nyxqa", "hotpotqa"]
    with pytest.raises(ValueError, match="evaluate.headline_sets names \\['nope'\\]"):
        load_config("demo", ["evaluate.headline_sets=[nope]"])

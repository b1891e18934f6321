"""`evaluate.retrievers`: the config (defaults from `models`, a
contradiction refused in one line, unique names, mine's embedders by name, the hash), and the
stage's methods with scripted embedders and a scripted VLM (tests/test_evaluate_protocol.py's):
dims above an embedder's width skipped with a note, none / golden answered once and written at
every dim, cost rows per dim, and a text set's retrieval metrics by its gold passage."""

import json

import pytest

from nyx_tasks.core.config import ConfigError, TextSetConfig, load_config
from nyx_tasks.evaluation import retrievers
from nyx_tasks.evaluation import text_qa as tq
from nyx_tasks.evaluation.nyxqa import score_nyxqa
from nyx_tasks.evaluation.retrievers import (
    EmbedderRetriever,
    GoldDocument,
    NoDocument,
    make_retriever,
    retriever_embedder_cfg,
)
from nyx_tasks.inference.base import text_of
from nyx_tasks.retrieval.corpora import text_table
from nyx_tasks.stages.evaluate import STAGE
from tests.test_evaluate_protocol import (
    VLM,
    Embedder,
    eval_run,
    make_ctx,
    make_out,
    nyxqa,
    strict_reply,
)

RETRIEVERS = ("evaluate.retrievers=[{name: s1, kind: checkpoint, stage: stage1}, {name: e5, kind: embedder, "
              "embedder: mine.text_embedder}, {name: none, kind: none}, {name: golden, kind: golden}]")


# ------------------------------------------------------------------ config
def test_retrievers_default_to_the_models_and_models_keeps_working():
    cfg = load_config("demo", ["evaluate.retrievers=null", "evaluate.models=[stage2]"]).evaluate
    assert [(r.name, r.kind, r.stage) for r in cfg.retrievers] == [("stage2", "checkpoint", "stage2")]
    # with retrievers configured, models keeps the checkpoint retrievers of its stages only
    cfg = load_config("demo", ["evaluate.models=[stage2]"]).evaluate
    assert [r.name for r in cfg.retrievers] == ["base", "stage2", "none", "golden"] and cfg.models == ["stage2"]
    # unset models: the checkpoint retrievers' stages (what the stage reads as inputs)
    assert load_config("demo", [RETRIEVERS]).evaluate.models == ["stage1"]
    assert load_config("demo").evaluate.baseline_name() == "base"  # the first: the packaged MiniLM


@pytest.mark.parametrize(("overrides", "message"), [
    ([RETRIEVERS, "evaluate.models=[stage2]"], "evaluate.models names ['stage2'], which no checkpoint retriever"),
    (["evaluate.retrievers=[{name: a, kind: none}, {name: a, kind: golden}]"], "names must be unique, ['a'] repeat"),
    (["evaluate.retrievers=[{name: a, kind: embedder}]"], "`embedder` is for kind embedder, which needs it"),
    (["evaluate.retrievers=[{name: a, kind: none, stage: stage1}]"], "`stage` is for kind checkpoint"),
    ([RETRIEVERS, "evaluate.baseline=stage2"], "evaluate.baseline 'stage2' is not a retriever's name"),
    (["evaluate.retrievers=[]"], "evaluate.retrievers"),
])
def test_contradictions_are_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config("demo", overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_retrievers_are_in_the_config_hash_with_mines_embedders_resolved():
    base, other = load_config("demo"), load_config("demo", [RETRIEVERS])
    assert STAGE.config_payload(base) != STAGE.config_payload(other)
    e5 = STAGE.config_payload(other)["retrievers"][1]["embedder"]
    assert e5["model"] == other.mine.text_embedder.model and "batch_size" not in e5
    moved = load_config("demo", [RETRIEVERS, 'mine.text_embedder.query_prefix="query: "'])
    assert STAGE.config_payload(moved) != STAGE.config_payload(other)  # the named embedder changed
    assert STAGE.config_payload(load_config("demo", [RETRIEVERS, "mine.text_embedder.batch_size=3"])) == \
        STAGE.config_payload(other)
    paper = load_config("paper").evaluate
    assert [r.name for r in paper.retrievers] == ["stage1", "stage2", "mme5", "e5", "none", "golden"]
    assert retriever_embedder_cfg(load_config("paper"), paper.retrievers[2]).model == \
        "intfloat/mmE5-mllama-11b-instruct"


# ------------------------------------------------------------------ stage methods
class Narrow(Embedder):
    def __init__(self, name, rules, dim):
        super().__init__(name, rules)
        self.dim = dim


def test_dims_above_an_embedders_width_are_skipped_with_a_note(tmp_path, monkeypatch):
    ctx = make_ctx(tmp_path, RETRIEVERS, "evaluate.baseline=s1")
    monkeypatch.setattr(retrievers, "make_embedder", lambda cfg, store: Narrow("e5", [], 32))
    notes = []
    e5 = ctx.cfg.evaluate.retrievers[1]
    got = make_retriever(ctx.cfg, e5, ctx.store, ctx.partition, notes, ctx.log)
    assert isinstance(got, EmbedderRetriever) and got.kind == "embedder"
    assert got.dims == (32, 16) and notes == ["e5: dims [128, 64] skipped, above its 32 dims"]
    monkeypatch.setattr(retrievers, "make_embedder", lambda cfg, store: Narrow("e5", [], 8))
    assert make_retriever(ctx.cfg, e5, ctx.store, ctx.partition, notes, ctx.log) is None
    assert notes[-1] == "e5: dims [128, 64, 32, 16] skipped, above its 8 dims"


def test_nyxqa_cost_rows_per_dim(tmp_path):
    ctx, out = make_ctx(tmp_path, "evaluate.latency_queries=2"), make_out()
    corpus, qa, embedder = nyxqa()
    rows = score_nyxqa(eval_run(ctx, VLM(strict_reply), out), EmbedderRetriever("s1", (128, 16), embedder), corpus, qa)
    cost = {(r["dim"], r["metric"]): r for r in rows if r["split"] == "all"}
    assert set(cost) == {(d, m) for d in (128, 16) for m in ("index_bytes", "latency_ms_p50", "latency_ms_p95")}
    assert cost[(128, "index_bytes")]["value"] == 3 * 128 * 4 and cost[(16, "index_bytes")]["value"] == 3 * 16 * 4
    assert all(r["n"] == 2 and r["ci_low"] is None for r in cost.values())  # 2 queries timed, no interval
    assert all(cost[(d, "latency_ms_p50")]["value"] <= cost[(d, "latency_ms_p95")]["value"] for d in (128, 16))
    assert {r["dim"] for r in rows if r["metric"] == "rag_accuracy"} == {128, 16}


def test_none_and_golden_are_asked_once_and_written_at_every_dim(tmp_path):
    ctx = make_ctx(tmp_path)
    corpus, qa, _ = nyxqa()
    dims = tuple(ctx.cfg.evaluate.dims)
    got = {}
    for kind, cls in (("none", NoDocument), ("golden", GoldDocument)):
        vlm, out = VLM(strict_reply), make_out()
        rows = score_nyxqa(eval_run(ctx, vlm, out), cls(kind, dims), corpus, qa)
        assert len(vlm.seen) == len(qa)  # one request per question, whatever the dims
        got[kind] = (rows, [text_of(r.messages[0]["content"]) for r in vlm.seen])
        acc = [r for r in rows if r["metric"] == "rag_accuracy"]
        assert sorted(r["dim"] for r in acc) == sorted(dims) and len({r["value"] for r in acc}) == 1
    none_rows, none_asked = got["none"]
    assert not any("Document 1:" in t for t in none_asked)  # no document at all
    assert {r["metric"] for r in none_rows} == {"rag_accuracy"}
    golden_rows, golden_asked = got["golden"]
    assert all("Document 1:\nThe capital is Paris." in t for t in golden_asked)  # the gold chunk c0
    recall = [r for r in golden_rows if r["metric"] == "recall@1"]
    assert {r["dim"] for r in recall} == set(dims) and {r["value"] for r in recall} == {1.0}
    assert not any(r["metric"] in ("index_bytes", "latency_ms_p50") for r in golden_rows + none_rows)


PASSAGES = ["Ada was born in Estmark.", "Bo was born in Quenby.", "Ada was born in Estmark.",  # d2 copies d0
            "Everything about everyone."]


def gold_set(tmp_path):
    folder = tmp_path / "gold"
    folder.mkdir()
    q = [("Where was Ada born?", "Estmark", "d2"), ("Where was Bo born?", "Quenby", "d1"),
         ("Where was Cy born?", "Orlen", "d9")]  # d9: not in the corpus, a named drop
    (folder / "q.jsonl").write_text("".join(json.dumps({"id": i, "question": t, "golden_answers": [a], "gold": g})
                                            + "\n" for i, (t, a, g) in enumerate(q)))
    (folder / "c.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "contents": t}) + "\n"
                                            for i, t in enumerate(PASSAGES)))
    return TextSetConfig(name="docs", questions=[str(folder / "q.jsonl")], corpus=[str(folder / "c.jsonl")],
                         gold_id_column="gold")


def test_a_text_set_with_gold_passages_gets_retrieval_metrics_and_golden(tmp_path):
    ctx, out = make_ctx(tmp_path), make_out()
    ts = gold_set(tmp_path)
    questions, _ = tq.select_questions(ts, ctx.cfg.evaluate, out.drops.drop)
    assert [q.gold_id for q in questions] == ["d2", "d1", "d9"]
    gold = tq.text_gold(eval_run(ctx, None, out), ts, questions)
    assert gold.rows.tolist() == [0, 1, -1] and gold.texts == [PASSAGES[2], PASSAGES[1], None]  # d2 -> row 0
    assert out.dropped == [("docs_gold_not_in_corpus", "docs:2")]
    # Ada's query finds her passage (d0, the same text as the gold d2: a hit); Bo's finds the catch-all
    model = Embedder("nyx", [(lambda role, t: "Ada" in t, 0), (lambda role, t: "Everything" in t, 1),
                             (lambda role, t: role == "query", 1), (lambda role, t: True, 2)])
    vlm = VLM(lambda text: json.dumps({"answer": "Estmark"}))
    table = text_table(ctx.store, ts)
    rows = tq.score_text_set(eval_run(ctx, vlm, out), EmbedderRetriever("m", (128, 16), model), ts, table, questions,
                             gold)
    r1 = {(r["dim"], r["metric"]): r for r in rows}
    assert r1[(128, "recall@1")]["value"] == 0.5 and r1[(128, "recall@1")]["n"] == 2  # d9's question left out
    assert r1[(16, "mrr")]["n"] == 2 and r1[(128, "em")]["n"] == 3
    assert r1[(128, "index_bytes")]["value"] == 3 * 128 * 4  # 4 rows, the copy searched once
    # golden: the gold passage as the top-1 for the questions that have one, recall 1, at every dim
    vlm = VLM(lambda text: json.dumps({"answer": "Quenby"}))
    rows = tq.score_text_set(eval_run(ctx, vlm, out), GoldDocument("golden", (128, 16)), ts, None, questions, gold)
    assert [text_of(r.messages[0]["content"]).split("Document 1:\n")[1].split("\n")[0] for r in vlm.seen] == \
        [PASSAGES[2], PASSAGES[1]]
    g = {(r["dim"], r["metric"]): r["value"] for r in rows}
    assert g[(128, "recall@1")] == g[(16, "recall@1")] == 1.0 and g[(128, "em")] == g[(16, "em")] == 0.5


def test_the_paper_protocols_union_scores_a_gold_passage_by_its_text(tmp_path, monkeypatch):
    ctx, out = make_ctx(tmp_path, "evaluate.protocol=paper", "evaluate.union_top_k=1"), make_out()
    ts = gold_set(tmp_path)
    # the union retriever finds each person's passage: the union holds Ada's (once) and Bo's, not the catch-all
    monkeypatch.setattr(tq, "make_embedder", lambda cfg, store: Embedder("e5", [
        (lambda role, t: "Ada" in t, 0), (lambda role, t: "Bo" in t, 1), (lambda role, t: role == "document", 3),
        (lambda role, t: True, 2)]))  # Cy's question ties everywhere: the first row, Ada's again
    read = [(ts, *tq.select_questions(ts, ctx.cfg.evaluate, out.drops.drop))]
    union = tq.paper_union(eval_run(ctx, None, out), read)
    assert union.texts == [PASSAGES[0], PASSAGES[1]]
    questions = read[0][1]
    gold = tq.text_gold(eval_run(ctx, None, out), ts, questions)
    model = Embedder("nyx", [(lambda role, t: "Bo" in t, 1), (lambda role, t: True, 0)])  # everything -> Ada's
    vlm = VLM(lambda text: "Estmark")
    rows = tq.score_text_set(eval_run(ctx, vlm, out), EmbedderRetriever("m", (128,), model), ts, union, questions, gold)
    got = {r["metric"]: r for r in rows}
    assert got["recall@1"]["value"] == 1.0 and got["recall@1"]["n"] == 2  # Ada's by text (gold d2 = d0's text)
    assert got["index_bytes"]["value"] == 2 * 128 * 4 and got["em"]["n"] == 3

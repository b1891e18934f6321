"""Stage 2 on the demo: feedback with the tiny VLM constrained to the options
(right about one time in four), stage-2 training from the stage-1 model, and
the evaluation report with stage 1 vs stage 2 at every dim."""

import shutil

import pytest

from nyx_tasks.runner import run_stage
from nyx_tasks.stages import get_stage
from nyx_tasks.stages.feedback import select_feedback
from nyx_tasks.store.artifacts import ArtifactStore, read_stage_table
from tests.conftest import VLM_TRAIN, demo_cfg

FAST = (*VLM_TRAIN, "train_stage1.max_steps=3", "train_stage2.max_steps=3", "feedback.top_k=6",
        "feedback.max_queries_per_source=4", "evaluate.splits=[train]", "evaluate.bootstrap=50",
        "evaluate.retrievers=null", "train_stage2.keep_checkpoints=true")  # stage 1 vs stage 2 only (tests/stages/test_evaluate_stage.py: the others)


@pytest.fixture(scope="module")
def stage2(built, tmp_path_factory):
    root = tmp_path_factory.mktemp("stage2") / "artifacts"
    shutil.copytree(built, root)
    cfg = demo_cfg(root, *FAST)
    store = ArtifactStore(cfg.artifact_root())
    results = {s: run_stage(get_stage(s), cfg, store) for s in ("train_stage1", "feedback", "train_stage2")}
    return cfg, store, results


def test_feedback_positives_follow_the_rule_over_the_stored_windows(stage2):
    cfg, store, results = stage2
    m = results["feedback"].manifest
    windows = read_stage_table(store, cfg.partition, "feedback", kind="windows").to_pylist()
    triplets = {r["qa_id"]: r for r in read_stage_table(store, cfg.partition, "feedback").to_pylist()}
    nyxqa = [w for w in windows if w["source"] == "nyxqa"]
    assert nyxqa and all(w["judge"] == "option_match" and w["score"] in (0.0, 1.0) for w in nyxqa)
    assert any(w["score"] == 1.0 for w in nyxqa)  # four options: the constrained random VLM is sometimes right
    assert all(w["judge"] == "token_f1" for w in windows if w["source"] != "nyxqa")
    by_query: dict[str, list[dict]] = {}
    for w in windows:
        by_query.setdefault(w["qa_id"], []).append(w)
    assert m["rows_in"] == len(by_query) == m["rows_out"] + m["drops"].get("no_helpful_window", 0)
    assert triplets and sum(v for k, v in m["extra"].items() if k.startswith("positive_rank_")) == len(triplets)
    for qa_id, ws in by_query.items():
        ws.sort(key=lambda w: w["window"])
        assert [w["window"] for w in ws] == list(range(cfg.feedback.top_k))  # windows of 1, stride 1
        ranked = [w["doc_ids"][0] for w in ws]
        pos, negs = select_feedback(ranked, [w["score"] for w in ws], 1, 1, cfg.feedback.num_negatives)
        if pos is None:
            assert qa_id not in triplets
        else:
            t = triplets[qa_id]
            assert (t["pos_chunk_id"], t["neg_chunk_ids"]) == (pos, negs)
            assert t["pos_rank"] == ranked.index(pos) and t["miner_id"].startswith("feedback:nyx:")
            helpful = {w["doc_ids"][0] for w in ws if w["score"] > 0}
            assert not helpful & set(t["neg_chunk_ids"])  # strict mode: no negative ever helped the VLM


def test_stage2_starts_from_stage1_and_publishes_its_checkpoint(stage2):
    import json

    from nyx_tasks.store.checkpoints import latest_checkpoint

    cfg, store, results = stage2
    ckpt = results["train_stage2"].manifest["checkpoint"]
    s1 = results["train_stage1"].manifest["checkpoint"]
    spec = json.loads(store.fs.open(store.path(f"models/{ckpt['run']}/train_stage2/run_spec.json")).read())
    assert spec["init_adapter"] == s1["adapter"] and ckpt["stage"] == "train_stage2"
    assert results["train_stage2"].manifest["inputs"]["feedback"] == results["feedback"].manifest["output_hash"]
    assert latest_checkpoint(store)["stage"] == "train_stage2"  # what re-mining uses next


def test_published_runs_drop_their_step_checkpoints_unless_kept(stage2):
    """Step checkpoints only resume an unfinished run: removed when the stage commits (stage 1, the
    default), kept with keep_checkpoints (stage 2 here); the published weights stay either way."""
    cfg, store, results = stage2
    s1, s2 = (results[s].manifest["checkpoint"] for s in ("train_stage1", "train_stage2"))
    for ckpt in (s1, s2):
        assert store.exists(f"models/{ckpt['run']}/{ckpt['stage']}/merged/config.json")
    assert not store.exists(f"models/{s1['run']}/train_stage1/checkpoints")
    kept = store.listdir(f"models/{s2['run']}/train_stage2/checkpoints")
    assert kept == ["checkpoint-3"], kept  # max_steps=3: the save at the end of training


def test_evaluate_reports_stage1_vs_stage2_at_every_dim(stage2, caplog):
    cfg, store, _ = stage2
    with caplog.at_level("INFO"):
        m = run_stage(get_stage("evaluate"), cfg, store).manifest
    rows = read_stage_table(store, cfg.partition, "evaluate").to_pylist()
    got = {(r["model"], r["dataset"], r["dim"], r["metric"]) for r in rows}
    for model in ("stage1", "stage2"):
        for dim in cfg.evaluate.dims:
            for metric in ("recall@1", "recall@5", "recall@10", "mrr", "rag_accuracy"):
                assert (model, "nyxqa", dim, metric) in got
            assert {(model, "hotpotqa", dim, "f1"), (model, "hotpotqa", dim, "em")} <= got
    assert all(0.0 <= r["value"] <= 1.0 for r in rows if not r["metric"].startswith(("index_bytes", "latency_ms")))
    recall = {(r["model"], r["dim"], r["metric"]): r["value"] for r in rows if r["dataset"] == "nyxqa"}
    for model in ("stage1", "stage2"):  # recall@k cannot fall as k grows
        for dim in cfg.evaluate.dims:
            assert recall[(model, dim, "recall@1")] <= recall[(model, dim, "recall@5")] <= recall[(model, dim, "recall@10")]
    from pathlib import Path

    assert m["report"].startswith("reports/") and not Path(m["report"]).is_absolute()  # relative to the root
    text = Path(store.path(m["report"])).read_text()
    assert "**vs stage1**" in text and "| rag_accuracy | stage2 |" in text and "nyxqa-train-accuracy_vs_dim.png" in text
    assert "evaluate: nyxqa/train stage2" in caplog.text and "report at" in caplog.text

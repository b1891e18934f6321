"""The real thing: `airflow dags test nyxqa_to_model` on the demo profile, in a fresh SQLite Airflow
home, twice (the second redoes one stage and finds every other complete), the shipped ablations over
that partition, plus a trigger with a bad param that must be refused before anything runs."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nyx_tasks.core.config import load_config
from nyx_tasks.experiments import check_variants, expand
from nyx_tasks.stages import STAGE_NAMES
from tests.conftest import REPO, removed_unless_failed

pytestmark = pytest.mark.airflow
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory, request):
    with removed_unless_failed(request, tmp_path_factory.mktemp("airflow_home")) as home:
        yield _migrated(home)


def _migrated(home: Path) -> dict:
    env = {**os.environ, "AIRFLOW_HOME": str(home),
           "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
           "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "NYX_ARTIFACTS_ROOT": str(home / "artifacts"),
           "NYX_CONFIG_DIR": str(REPO / "configs")}
    out = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return env


def dags_test(env, conf: dict) -> subprocess.CompletedProcess:
    return subprocess.run([AIRFLOW, "dags", "test", "nyxqa_to_model", "-c", json.dumps(conf)],
                          env=env, capture_output=True, text=True, timeout=900)


def test_full_dag_runs_under_airflow_and_a_redo_recomputes_one_stage(airflow_env):
    root = Path(airflow_env["NYX_ARTIFACTS_ROOT"])
    first = dags_test(airflow_env, {"partition": "e2e"})
    log = first.stdout + first.stderr
    assert first.returncode == 0, log[-5000:]
    assert "successful" in log and "failed" not in log.lower().replace("failed_", "")
    manifests = {s: json.loads((root / "partitions/e2e" / s / "_MANIFEST.json").read_text()) for s in STAGE_NAMES}
    ingest, chunk, sample = (manifests[s] for s in ("ingest", "chunk", "sample"))
    assert ingest["rows_out"] >= 40 and ingest["drops"]["image_not_found"] == 1
    assert len(ingest["shards"]) == 3  # three sample files, three shards, run as two tasks (max_shard_tasks: 2)
    assert chunk["inputs"] == {"ingest": ingest["output_hash"]}
    assert sample["inputs"] == {"chunk": chunk["output_hash"]}
    from nyx_tasks.stages.sample import GROUPS, group_targets

    targets = group_targets(60, (0.6329, 0.2985, 1 - 0.6329 - 0.2985))  # the demo asks for 60
    x = sample["extra"]
    assert sample["rows_out"] == sum(min(targets[g], x[f"available_{g}"]) for g in GROUPS)
    assert "rendered_map_index='obelics-00000.jsonl .. obelics-00001.jsonl (2 shards)'" in log  # named in the UI
    assert "rendered_map_index='obelics-00002.parquet'" in log
    synth, filt = manifests["synthesize"], manifests["filter"]
    assert synth["inputs"]["sample"] == sample["output_hash"] and synth["rows_in"] == sample["rows_out"]
    assert synth["extra"]["requests_qa"] >= synth["rows_in"]  # the tiny VLM answered through the hf backend
    assert filt["inputs"] == {"synthesize": synth["output_hash"]}
    assert filt["rows_in"] == synth["rows_out"] == filt["rows_out"] + sum(filt["drops"].values())
    skipped = " ".join(re.findall(r"Skipping tasks \[[^\n]*", log))
    for stage in ("synthesize", "train_stage1"):  # hf backend / num_gpus 0: default queue, no gpu variant runs
        assert all(f"('{stage}.shard_gpu{n}', -1)" in skipped for n in (1, 2, 4, 8)), (stage, skipped)
    mine, train = manifests["mine"], manifests["train_stage1"]
    assert {s["name"] for s in mine["shards"]} == {"nyxqa", "text:hotpotqa", "text:2wikimultihopqa", "text:musique",
                                                  "text:docstrings_train"}
    assert mine["rows_out"] > 0 and train["inputs"] == {"mine": mine["output_hash"]}
    assert train["rows_out"] == train["extra"]["steps"] > 0 and train["checkpoint"]["merged"]
    assert "train_stage1: launching" in log and "nyx.train: step 1/" in log  # the trainer's lines, streamed
    assert train["checkpoint"]["family"] == "encoder" and train["extra"]["steps"] >= 30  # MiniLM, all 2,046 pairs

    events = asset_events(airflow_env)
    assert events["nyx_checkpoint"] == 2 and all(events[f"nyx_{s}"] == 1 for s in STAGE_NAMES), events

    # redo: exactly the named stage recomputes (chunk: a second); its output hash is the same, so every
    # other stage is a no-op (found complete, nothing rewritten); only the redone stage's asset fires
    again = dags_test(airflow_env, {"partition": "e2e", "redo": ["chunk"]})
    log2 = again.stdout + again.stderr
    assert again.returncode == 0, log2[-5000:]
    assert log2.count("already complete") == len(STAGE_NAMES) - 1
    assert "chunk: recomputing partition e2e (force)" in log2
    after = {s: json.loads((root / "partitions/e2e" / s / "_MANIFEST.json").read_text()) for s in STAGE_NAMES}
    assert {s: m for s, m in after.items() if s != "chunk"} == {s: m for s, m in manifests.items() if s != "chunk"}
    assert after["chunk"]["attempt"] != chunk["attempt"] and after["chunk"]["output_hash"] == chunk["output_hash"]
    assert asset_events(airflow_env) == {**events, "nyx_chunk": 2}


def asset_events(env) -> dict[str, int]:
    """Asset events recorded per asset name in the Airflow home's metadata DB."""
    import sqlite3

    db = sqlite3.connect(f"file:{Path(env['AIRFLOW_HOME']) / 'airflow.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT a.name, COUNT(e.id) FROM asset a LEFT JOIN asset_event e ON e.asset_id = a.id "
                          "GROUP BY a.name").fetchall()
    finally:
        db.close()
    return {name: n for name, n in rows if name.startswith("nyx_")}


def test_bad_trigger_param_is_refused_before_anything_runs(airflow_env):
    root = Path(airflow_env["NYX_ARTIFACTS_ROOT"])
    out = dags_test(airflow_env, {"partition": "refused", "every_nth": 0})
    assert out.returncode != 0
    assert "refused: every_nth = 0 is out of range: it must be 1 or more" in out.stdout + out.stderr
    assert not (root / "partitions/refused").exists()
    # an unknown key ("sample-size") is refused by the same gate task through the same check
    # (nyx_airflow.params.check_conf): tests/dags/test_dag_integrity.py names the nearest key for it


def test_the_shipped_ablations_run_as_an_experiment_and_share_the_base(airflow_env):
    """nyx_experiments over the partition the full-DAG test computed, with the demo's ablations file
    (configs/experiments/demo-ablations.yaml): `recipe` (no override) adopts every stage of the base;
    `in-batch-only` and `single-dim` recompute from train_stage1 on, `threshold-0.5` its feedback, and
    stage 2 and evaluate only if the threshold changed the positives (same inputs: adopted); each in its
    own partition, the base untouched; one report compares them with intervals. A grid with a bad
    value is refused before anything runs."""
    import yaml

    root = Path(airflow_env["NYX_ARTIFACTS_ROOT"])
    base_dir = root / "partitions/e2e"
    if not (base_dir / "evaluate/_MANIFEST.json").exists():  # run alone: the base first, as the module does
        assert dags_test(airflow_env, {"partition": "e2e"}).returncode == 0
    before = {s: json.loads((base_dir / s / "_MANIFEST.json").read_text()) for s in STAGE_NAMES}
    shipped = yaml.safe_load((REPO / "configs/experiments/demo-ablations.yaml").read_text())["variants"]
    # every shipped variant resolves against the base config; one of the two that retrain stage 1
    # (in-batch-only) is left out of the run: single-dim takes the same path (a stage-1 override, all
    # later stages recomputed), and each such variant costs the suite a full stage 1 -> evaluate
    check_variants(load_config("demo", [f"artifacts.root={root}"]), expand(variants=shipped))
    variants = {k: v for k, v in shipped.items() if k != "in-batch-only"}
    conf = {"partition": "e2e", "experiment": "demo-ablations", "grid": {}, "variants": variants}  # no example grid
    out = subprocess.run([AIRFLOW, "dags", "test", "nyx_experiments", "-c", json.dumps(conf)],
                         env=airflow_env, capture_output=True, text=True, timeout=1800)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-5000:]
    assert all(f"rendered_map_index='{v}'" in log for v in variants)
    # the base: every stage found complete by the base task, none recomputed, nothing rewritten
    assert {s: json.loads((base_dir / s / "_MANIFEST.json").read_text()) for s in STAGE_NAMES} == before
    first_own = {"recipe": None, "single-dim": "train_stage1", "threshold-0.5": "feedback"}
    adopted = 0
    for variant, own_from in first_own.items():
        ms = {s: json.loads((root / f"partitions/e2e--{variant}" / s / "_MANIFEST.json").read_text())
              for s in STAGE_NAMES}
        # computed: the stage its overrides change, and every stage whose inputs then differ from the base's;
        # the rest adopted (same config, same inputs: the base's outputs, not recomputed)
        own = [s for s in STAGE_NAMES if s == own_from or ms[s]["inputs"] != before[s]["inputs"]]
        for s in STAGE_NAMES:
            m = ms[s]
            if s in own:  # computed in the variant's own partition
                assert "adopted_from" not in m, (variant, s)
                assert all(f"partitions/e2e--{variant}/{s}/attempts/" in e["path"] for e in m["outputs"]["part"])
            else:
                assert m["adopted_from"]["partition"] == "e2e" and m["outputs"] == before[s]["outputs"], (variant, s)
        adopted += len(STAGE_NAMES) - len(own)
        if own_from == "train_stage1":  # a new stage-1 model: everything after it is recomputed
            assert own == list(STAGE_NAMES[STAGE_NAMES.index("train_stage1"):]), (variant, own)
        if variant == "threshold-0.5":  # stage 2 on is recomputed exactly when the threshold changed the positives
            same = ms["feedback"]["output_hash"] == before["feedback"]["output_hash"]
            assert own == (["feedback"] if same else list(STAGE_NAMES[STAGE_NAMES.index("feedback"):])), own
    assert log.count("adopted base partition e2e's snapshot") == adopted
    single = json.loads((root / "partitions/e2e--single-dim/train_stage1/_MANIFEST.json").read_text())
    assert single["config"]["loss"]["dims"] == [384]
    report = (root / "reports/experiments/demo-ablations/report.md").read_text()
    assert "| single-dim | `e2e--single-dim` | `train_stage1.loss.dims: [384]`" in report, report[:3000]
    header = next(line for line in report.splitlines() if line.startswith("| model |"))
    assert "| recipe | single-dim | threshold-0.5 |" in header, header
    assert re.search(r"\| stage1 \| docstrings_eval \| eval \| 384 \| mrr \| strict \| 0\.\d+ \[0\.\d+, 0\.\d+\] "
                     r"\(n=957\) \|", report)
    assert list((root / "reports/experiments/demo-ablations").glob("*.png"))

    bad = {"partition": "e2e", "experiment": "demo-ablations", "grid": {"feedback.threshold": [0.5, 1.5]}}
    refused = subprocess.run([AIRFLOW, "dags", "test", "nyx_experiments", "-c", json.dumps(bad)],
                             env=airflow_env, capture_output=True, text=True, timeout=900)
    assert refused.returncode != 0
    assert ("refused: variant 'threshold=1.5': feedback.threshold: Input should be less than 1"
            in refused.stdout + refused.stderr)
    assert not (root / "partitions/e2e--threshold=0.5").exists()

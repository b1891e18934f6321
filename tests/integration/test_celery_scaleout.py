"""Scale-out on real components: `nyxqa_to_model` under Airflow's CeleryExecutor
with Postgres and Redis on loopback, a `default` and a `gpu` Celery worker
(tests/integration/celery_cluster.py; `bash scripts/celery_env.sh` installs what it needs).

1. A clean run: every stage's manifest is written and every task ran on the
   default-queue worker (the demo profile skips the `shard_gpu*` variants and
   the two `gpu` workers receive nothing).
2. A worker dies mid-task: `nyx_stage_train_stage1` redoes stage 1 of the clean
   run's partition (the stage DAG a user backfills with, `redo: [train_stage1]`: a
   fresh training run from step 0); while its `train_stage1.shard` is training (just
   after its first checkpoint), the default worker's whole process tree is SIGKILLed
   and the worker restarted. The scheduler finds the silent task through its
   heartbeat timeout, retries it (try 2 resumes from the checkpoint) and the run
   succeeds with the same training log as the clean run.
3. Embedding shards spread over the gpu queue: `nyx_stage_mine` on a
   generated 6,000-passage text set in 4 shards of 1,500 rows, routed to the `gpu`
   queue (`corpora.queue: gpu`, the embedder itself on the CPU here) that two
   workers consume: both run shards, one is SIGKILLed mid-shard, and that shard
   alone runs again; `mine` then finds every shard embedded and embeds nothing.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from nyx_tasks.stages import STAGE_NAMES
from tests.conftest import small_demo_configs
from tests.integration.celery_cluster import CeleryCluster, missing_requirements

pytestmark = [pytest.mark.airflow,
              pytest.mark.skipif(missing_requirements() is not None, reason=str(missing_requirements()))]

DAG = "nyxqa_to_model"
RUN_TIMEOUT = 480  # one run of the cluster's demo DAG: ~2 min on a quiet 2-core machine
FAULT_DAG = "nyx_stage_train_stage1"  # the fault run: stage 1 alone, redone
VICTIM = "train_stage1.shard"  # runs the training subprocess for a while, saving checkpoints


# The cluster's `demo`: the demo on its stand-in text sets (tests.conftest.small_demo_configs), with a
# stage 1 long enough to be killed between checkpoints (84 small steps, a checkpoint every 12).
SAVE_STEPS = 12
SMALL_DEMO = ("train_stage1.per_device_batch_size=4", "train_stage1.epochs=12", f"train_stage1.save_steps={SAVE_STEPS}")


RUNS: dict[str, str] = {}  # partition -> run id of the runs that succeeded


SCALE_PROFILE = "celery-scale"
SCALE_PASSAGES, SCALE_SHARD = 6_000, 1_500


def scale_configs(folder: Path) -> Path:
    """The repo's profiles (`demo` on the stand-in text sets: SMALL_DEMO) plus `celery-scale`: the demo
    with a generated text set whose corpus embeds in 4 shards, each its own task on the gpu queue."""
    configs = small_demo_configs(folder, *SMALL_DEMO)
    data = folder / "scale_set"
    data.mkdir()
    words = ["river", "mountain", "city", "history", "music", "science", "garden", "library", "station", "harbor",
             "theatre", "museum", "bridge", "forest", "island", "valley", "market", "castle", "temple", "festival"]
    with open(data / "corpus.jsonl", "w") as f:
        for i in range(SCALE_PASSAGES):
            text = " ".join(words[(i * k + k * k) % len(words)] for k in range(1, 40))
            f.write(json.dumps({"id": f"p{i}", "contents": f"passage {i}: {text}"}) + "\n")
    with open(data / "questions.jsonl", "w") as f:
        for i in range(24):
            f.write(json.dumps({"id": f"q{i}", "question": f"what is passage {i * 97} about?",
                                "golden_answers": [words[i % len(words)]]}) + "\n")
    (configs / f"{SCALE_PROFILE}.yaml").write_text(
        "extends: demo\n"
        "mine:\n  text_sets:\n"
        f"    - {{name: scale, questions: [{data / 'questions.jsonl'}], corpus: [{data / 'corpus.jsonl'}]}}\n"
        f"corpora: {{shard_rows: {SCALE_SHARD}, queue: gpu}}\n"
        "airflow: {max_shard_tasks: null}\n")
    return configs


@pytest.fixture(scope="module")
def cluster():
    started = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="nyx-celery-configs-"))
    env = {"NYX_CONFIG_DIR": str(scale_configs(folder))}
    with CeleryCluster(heartbeat_timeout=15, gpu_workers=2, extra_env=env) as c:
        c.wait_for_dag(DAG)
        c.unpause(DAG)
        c.timings["cluster ready"] = time.monotonic() - started
        yield c
    shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def logs_on_failure(c: CeleryCluster):
    """On a failure, print the tail of every component's log (pytest shows it with the failure)."""
    try:
        yield
    except BaseException:
        c.dump_logs()
        raise
    finally:
        print(f"[celery] timings (s): {json.dumps({k: round(v, 1) for k, v in c.timings.items()})}")


def manifests(c: CeleryCluster, partition: str) -> dict[str, dict]:
    out = {}
    for stage in STAGE_NAMES:
        path = c.artifacts / "partitions" / partition / stage / "_MANIFEST.json"
        assert path.exists(), f"{stage}: no manifest at {path}"
        out[stage] = json.loads(path.read_text())
    return out


def test_clean_run_on_celery_workers(cluster):
    with logs_on_failure(cluster):
        clean_run(cluster)


def clean_run(c: CeleryCluster):
    t0 = time.monotonic()
    run_id = c.trigger(DAG, {"partition": "celery"})
    state = c.wait_for_run(DAG, run_id, RUN_TIMEOUT)
    c.timings["clean run"] = time.monotonic() - t0
    tis = c.task_instances(DAG, run_id)
    if state != "success":
        pytest.fail(f"clean run ended {state}: " + ", ".join(
            f"{t['task_id']}[{t['map_index']}]={t['state']}" for t in tis if t["state"] != "success"))
    manifests(c, "celery")  # every stage wrote its manifest under the cluster's artifact root

    ran = [t for t in tis if t["state"] == "success"]
    skipped = {t["task_id"] for t in tis if t["state"] == "skipped"}
    assert {f"{s}.commit" for s in STAGE_NAMES} <= {t["task_id"] for t in ran}
    # Every task went through Celery to the default-queue worker (its hostname_callable names it),
    # first try: no false heartbeat timeouts under load.
    assert {t["executor"] for t in ran} <= {"CeleryExecutor", None}
    wrong = [(t["task_id"], t["hostname"], t["queue"]) for t in ran
             if t["hostname"] != "nyx-worker-default" or t["queue"] != "default"]
    assert not wrong, wrong
    assert all(t["try_number"] == 1 for t in ran), [(t["task_id"], t["try_number"]) for t in ran]
    # The demo profile runs on CPU: the GPU variants are routed around, and the gpu worker,
    # up and consuming queue `gpu`, receives nothing.
    assert {f"train_stage1.shard_gpu{n}" for n in (1, 2, 4, 8)} <= skipped
    assert all(t["queue"] == "gpu" for t in tis if "shard_gpu" in t["task_id"])
    worker_log = c.log_path("worker-default").read_text(errors="replace")
    for t in ran:
        assert f"task_id='{t['task_id']}'" in worker_log, f"{t['task_id']} not in the default worker's log"
    for name in c.gpu_names:
        gpu_log = c.log_path(name).read_text(errors="replace")
        assert ".> gpu " in gpu_log and "Executing workload" not in gpu_log, name
    RUNS["celery"] = run_id


def test_worker_killed_mid_task_is_retried_and_output_matches(cluster):
    if "celery" not in RUNS:
        pytest.skip("needs the clean run of test_clean_run_on_celery_workers")
    with logs_on_failure(cluster):
        fault_run(cluster)


def fault_run(c: CeleryCluster):
    from nyx_tasks.store.artifacts import ArtifactStore, read_stage_table

    store = ArtifactStore(str(c.artifacts))
    clean = read_stage_table(store, "celery", "train_stage1").to_pylist()  # before the redo replaces it
    t0 = time.monotonic()
    c.unpause(FAULT_DAG)  # its gate skips the daily run that unpausing fires
    run_id = c.trigger(FAULT_DAG, {"partition": "celery", "redo": ["train_stage1"]})
    log1 = c.task_log(FAULT_DAG, run_id, VICTIM, map_index=0, attempt=1)

    # Wait until the victim is training on the default worker and has saved its first checkpoint.
    save_steps = SAVE_STEPS
    kill_after = f"checkpoint saved at step {save_steps} "
    deadline = time.monotonic() + RUN_TIMEOUT
    while not (log1.exists() and kill_after in log1.read_text(errors="replace")):
        if c.run_state(FAULT_DAG, run_id) in ("success", "failed") or time.monotonic() > deadline:
            pytest.fail(f"never saw {kill_after!r} in {log1}")
        time.sleep(0.2)
    ti = c.api("GET", f"/api/v2/dags/{FAULT_DAG}/dagRuns/{run_id}/taskInstances/{VICTIM}/0")
    assert ti["state"] == "running" and ti["try_number"] == 1 and ti["hostname"] == "nyx-worker-default", ti
    assert "training done" not in log1.read_text(errors="replace")  # really mid-task

    killed_at = time.monotonic()
    pids = c.kill_worker("worker-default")
    c.timings["killed worker processes"] = len(pids)
    assert ti["pid"] in pids  # the task runner was part of what died
    c.restart("worker-default")
    c.timings["worker restart"] = time.monotonic() - killed_at

    # The scheduler notices the silent task (no heartbeat for `heartbeat_timeout` s) and fails
    # the try into up_for_retry; the restarted worker runs try 2.
    detected = None
    while time.monotonic() - killed_at < 120:
        now = c.api("GET", f"/api/v2/dags/{FAULT_DAG}/dagRuns/{run_id}/taskInstances/{VICTIM}/0")
        if now["try_number"] > 1 or now["state"] != "running":
            detected = time.monotonic() - killed_at
            break
        time.sleep(0.5)
    assert detected is not None, "the killed task was never detected"
    c.timings["kill -> detected"] = detected
    assert detected < c.heartbeat_timeout + 30, detected
    assert "training done" not in log1.read_text(errors="replace")  # attempt 1 died mid-training

    state = c.wait_for_run(FAULT_DAG, run_id, RUN_TIMEOUT)
    c.timings["fault run"] = time.monotonic() - t0
    final = c.api("GET", f"/api/v2/dags/{FAULT_DAG}/dagRuns/{run_id}/taskInstances/{VICTIM}/0")
    if state != "success":
        pytest.fail(f"fault run ended {state}; {VICTIM}: {final}")
    assert final["state"] == "success" and final["try_number"] == 2, final
    assert final["hostname"] == "nyx-worker-default" and final["pid"] not in pids
    tries = {t["try_number"]: t for t in c.tries(FAULT_DAG, run_id, VICTIM, 0)}
    assert tries[1]["state"] in ("failed", "up_for_retry"), tries[1]
    scheduler_log = c.log_path("scheduler").read_text(errors="replace")
    assert "Detected a task instance without a heartbeat" in scheduler_log
    log2 = c.task_log(FAULT_DAG, run_id, VICTIM, map_index=0, attempt=2).read_text(errors="replace")
    assert "resuming from" in log2 and f"checkpoint-{save_steps}" in log2, log2[-3000:]  # not from scratch
    others = [t for t in c.task_instances(FAULT_DAG, run_id)
              if t["state"] == "success" and t["task_id"] != VICTIM]
    assert all(t["try_number"] == 1 for t in others), [(t["task_id"], t["try_number"]) for t in others]

    # The output equals the clean run's: the training log to a tolerance (the `run` column names the
    # training run: the redo's is a fresh one, `<partition>-<key>-f<nonce>`).
    fault = read_stage_table(store, "celery", "train_stage1").to_pylist()
    assert [r["step"] for r in fault] == [r["step"] for r in clean] == list(range(1, len(clean) + 1))
    assert len(clean) > save_steps  # the kill came before the end of training
    for a, b in zip(clean, fault, strict=True):
        assert b["epoch"] == pytest.approx(a["epoch"]) and b["learning_rate"] == pytest.approx(a["learning_rate"])
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3, abs=1e-4), (a, b)
        assert dict(b["loss_per_dim"]) == pytest.approx(dict(a["loss_per_dim"]), rel=1e-3, abs=1e-4)
        assert a["run"].startswith("celery-") and b["run"].startswith(a["run"] + "-f"), (a["run"], b["run"])


STAGE_DAG, VECTORS = "nyx_stage_mine", "mine.vectors_gpu"


def test_embedding_shards_spread_over_the_gpu_queue_and_a_kill_costs_one_shard(cluster):
    if "celery" not in RUNS:
        pytest.skip("needs the partition of test_clean_run_on_celery_workers")
    with logs_on_failure(cluster):
        vectors_run(cluster)


def wait_for_both_gpu_workers(c: CeleryCluster, run_id: str) -> dict:
    """The shard task worker-gpu-2 runs while worker-gpu runs another: the kill's victim."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        running = [t for t in c.task_instances(STAGE_DAG, run_id) if t["task_id"] == VECTORS
                   and t["state"] == "running"]
        hosts = {t["hostname"] for t in running}
        if {"nyx-worker-gpu", "nyx-worker-gpu-2"} <= hosts:
            return next(t for t in running if t["hostname"] == "nyx-worker-gpu-2")
        if c.run_state(STAGE_DAG, run_id) in ("success", "failed"):
            break
        time.sleep(0.3)
    pytest.fail("never saw both gpu workers embedding a shard at once")


def vectors_run(c: CeleryCluster):
    t0 = time.monotonic()
    c.unpause(STAGE_DAG)  # its gate skips the daily run that unpausing fires
    run_id = c.trigger(STAGE_DAG, {"profile": SCALE_PROFILE, "partition": "celery"})
    victim = wait_for_both_gpu_workers(c, run_id)
    shard = victim["map_index"]  # one job per task, shards in order: map index = shard
    vector_dirs = list(c.artifacts.glob(f"cache/vectors/*/*/s{SCALE_SHARD}"))
    assert not any((d / f"shard-{shard:05d}.npy").exists() for d in vector_dirs)  # really mid-shard
    pids = c.kill_worker("worker-gpu-2")
    c.timings["vectors: killed mid-shard after"] = time.monotonic() - t0
    c.restart("worker-gpu-2")
    state = c.wait_for_run(STAGE_DAG, run_id, RUN_TIMEOUT)
    c.timings["vectors run"] = time.monotonic() - t0
    tis = c.task_instances(STAGE_DAG, run_id)
    if state != "success":
        pytest.fail(f"vectors run ended {state}: " + ", ".join(
            f"{t['task_id']}[{t['map_index']}]={t['state']}" for t in tis if t["state"] != "success"))
    shards = sorted((t for t in tis if t["task_id"] == VECTORS), key=lambda t: t["map_index"])
    assert len(shards) == SCALE_PASSAGES // SCALE_SHARD and all(t["state"] == "success" for t in shards)
    # the killed shard alone ran twice; every other shard once, on one of the two gpu workers
    assert [t["map_index"] for t in shards if t["try_number"] > 1] == [shard], [
        (t["map_index"], t["try_number"], t["hostname"]) for t in shards]
    first_tries = [c.tries(STAGE_DAG, run_id, VECTORS, t["map_index"])[0] for t in shards]
    assert {t["hostname"] for t in first_tries} == {"nyx-worker-gpu", "nyx-worker-gpu-2"}
    assert all(t["queue"] == "gpu" and t["pool"] == "gpu" for t in shards)
    assert victim["pid"] in pids
    # each shard embedded once into its file; the killed try left no shard behind
    embedded = {}
    for t in shards:
        text = c.task_log(STAGE_DAG, run_id, VECTORS, t["map_index"], t["try_number"]).read_text(errors="replace")
        embedded[t["map_index"]] = f"{SCALE_SHARD} rows embedded" in text
    assert all(embedded.values()), embedded
    (folder,) = vector_dirs or list(c.artifacts.glob(f"cache/vectors/*/*/s{SCALE_SHARD}"))
    assert sorted(p.name for p in folder.glob("shard-*.npy")) == [f"shard-{i:05d}.npy" for i in range(len(shards))]
    # mine found every shard and embedded no document itself
    m = json.loads((c.artifacts / "partitions" / "celery" / "mine" / "_MANIFEST.json").read_text())
    assert m["config"]["text_sets"][0]["name"] == "scale"
    assert m["extra"].get("scale_embedded_documents", 0) == 0, m["extra"]
    assert m["rows_out"] > 0

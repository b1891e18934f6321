"""Scale-out on real components: `nyxqa_to_model` under Airflow's CeleryExecutor
with Postgres and Redis on loopback, a `default` and a `gpu` Celery worker
(tests/integration/celery_cluster.py; `bash scripts/celery_env.sh` installs what it needs).

1. A clean run: every stage's manifest is written and every task ran on the
   default-queue worker (the demo profile skips the `shard_gpu*` variants).
2. A worker dies mid-task: while `train_stage1.shard` of a second partition is
   training (just after its first checkpoint), the default worker's whole process
   tree is SIGKILLed and the worker restarted. The scheduler finds the silent
   task through its heartbeat timeout, retries it (try 2 resumes from the
   checkpoint) and the run succeeds with the same training log as the clean run.
"""

from __future__ import annotations

import contextlib
import json
import time

import pytest

from nyx_tasks.stages import STAGE_NAMES
from tests.integration.celery_cluster import CeleryCluster, missing_requirements

pytestmark = [pytest.mark.airflow,
              pytest.mark.skipif(missing_requirements() is not None, reason=str(missing_requirements()))]

DAG = "nyxqa_to_model"
RUN_TIMEOUT = 480  # one run of the demo DAG: ~2 min on a quiet 2-core machine
VICTIM = "train_stage1.shard"  # runs the training subprocess for a while, saving checkpoints


def demo_save_steps() -> int:
    """Steps between checkpoints of the demo's stage-1 training."""
    from nyx_tasks.config import load_config

    return load_config("demo").train_stage1.save_steps


RUNS: dict[str, str] = {}  # partition -> run id of the runs that succeeded


@pytest.fixture(scope="module")
def cluster():
    started = time.monotonic()
    with CeleryCluster(heartbeat_timeout=15) as c:
        c.wait_for_dag(DAG)
        c.unpause(DAG)
        c.timings["cluster ready"] = time.monotonic() - started
        yield c


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
    gpu_log = c.log_path("worker-gpu").read_text(errors="replace")
    assert ".> gpu " in gpu_log and "Executing workload" not in gpu_log
    RUNS["celery"] = run_id


def test_worker_killed_mid_task_is_retried_and_output_matches(cluster):
    if "celery" not in RUNS:
        pytest.skip("needs the clean run of test_clean_run_on_celery_workers")
    with logs_on_failure(cluster):
        fault_run(cluster)


def fault_run(c: CeleryCluster):
    from nyx_tasks.artifacts import ArtifactStore, read_stage_table

    t0 = time.monotonic()
    run_id = c.trigger(DAG, {"partition": "fault"})
    log1 = c.task_log(DAG, run_id, VICTIM, map_index=0, attempt=1)

    # Wait until the victim is training on the default worker and has saved its first checkpoint.
    save_steps = demo_save_steps()
    kill_after = f"checkpoint saved at step {save_steps} "
    deadline = time.monotonic() + RUN_TIMEOUT
    while not (log1.exists() and kill_after in log1.read_text(errors="replace")):
        if c.run_state(DAG, run_id) in ("success", "failed") or time.monotonic() > deadline:
            pytest.fail(f"never saw {kill_after!r} in {log1}")
        time.sleep(0.2)
    ti = c.api("GET", f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/{VICTIM}/0")
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
        now = c.api("GET", f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/{VICTIM}/0")
        if now["try_number"] > 1 or now["state"] != "running":
            detected = time.monotonic() - killed_at
            break
        time.sleep(0.5)
    assert detected is not None, "the killed task was never detected"
    c.timings["kill -> detected"] = detected
    assert detected < c.heartbeat_timeout + 30, detected
    assert "training done" not in log1.read_text(errors="replace")  # attempt 1 died mid-training

    state = c.wait_for_run(DAG, run_id, RUN_TIMEOUT)
    c.timings["fault run"] = time.monotonic() - t0
    final = c.api("GET", f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/{VICTIM}/0")
    if state != "success":
        pytest.fail(f"fault run ended {state}; {VICTIM}: {final}")
    assert final["state"] == "success" and final["try_number"] == 2, final
    assert final["hostname"] == "nyx-worker-default" and final["pid"] not in pids
    tries = {t["try_number"]: t for t in c.tries(DAG, run_id, VICTIM, 0)}
    assert tries[1]["state"] in ("failed", "up_for_retry"), tries[1]
    scheduler_log = c.log_path("scheduler").read_text(errors="replace")
    assert "Detected a task instance without a heartbeat" in scheduler_log
    log2 = c.task_log(DAG, run_id, VICTIM, map_index=0, attempt=2).read_text(errors="replace")
    assert "resuming from" in log2 and f"checkpoint-{save_steps}" in log2, log2[-3000:]  # not from scratch
    others = [t for t in c.task_instances(DAG, run_id)
              if t["state"] == "success" and t["task_id"] != VICTIM]
    assert all(t["try_number"] == 1 for t in others), [(t["task_id"], t["try_number"]) for t in others]

    # The output equals the clean run's: the mined triplets exactly, the training log to a tolerance
    # (the `run` column names the partition).
    manifests(c, "fault")
    store = ArtifactStore(str(c.artifacts))
    for stage in ("mine",):
        a = read_stage_table(store, "celery", stage).to_pylist()
        b = read_stage_table(store, "fault", stage).to_pylist()
        assert a == b and a, stage
    clean = read_stage_table(store, "celery", "train_stage1").to_pylist()
    fault = read_stage_table(store, "fault", "train_stage1").to_pylist()
    assert [r["step"] for r in fault] == [r["step"] for r in clean] == list(range(1, len(clean) + 1))
    assert len(clean) > save_steps  # the kill came before the end of training
    for a, b in zip(clean, fault, strict=True):
        assert b["epoch"] == pytest.approx(a["epoch"]) and b["learning_rate"] == pytest.approx(a["learning_rate"])
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3, abs=1e-4), (a, b)
        assert dict(b["loss_per_dim"]) == pytest.approx(dict(a["loss_per_dim"]), rel=1e-3, abs=1e-4)
        assert a["run"].startswith("celery-") and b["run"].startswith("fault-")

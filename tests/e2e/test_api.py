"""End to end through the REST API of a real `airflow standalone`: a token from
/auth/token, nyxqa_to_model triggered with a conf and run to success by the
scheduler, a task's log read back with the stage's counts in it, and a
backfill of one stage DAG that runs that stage only. On the run's shared standalone
(tests/e2e/conftest.py): partition `api`, backfill dates no other module uses."""

import json
import re

import pytest

from nyx_tasks.stages import STAGE_NAMES

pytestmark = pytest.mark.airflow
DAYS = ("2026-02-01", "2026-02-02")  # this module's backfill dates (the UI test's are in January)


@pytest.fixture
def server(airflow):
    return airflow


def dag_ready(server, dag_id):
    return server.api("GET", f"/dags/{dag_id}").status_code == 200


def run_state(server, dag_id, run_id):
    r = server.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
    return r.json()["state"] if r.status_code == 200 else None


def test_unauthenticated_calls_are_refused(server):
    import httpx

    assert httpx.get(f"{server.base}/api/v2/dags", timeout=30).status_code in (401, 403)
    bad = httpx.post(f"{server.base}/auth/token", json={"username": "admin", "password": "wrong"}, timeout=30)
    assert bad.status_code in (401, 403)


def test_trigger_run_read_log_and_backfill_one_stage(server):
    root = server.home / "artifacts"
    before = {p.name for p in (root / "partitions").iterdir()} if (root / "partitions").exists() else set()
    server.wait_for("the DAGs parsed", lambda: dag_ready(server, "nyxqa_to_model") and
                    dag_ready(server, "nyx_stage_ingest"), 180)
    assert server.api("PATCH", "/dags/nyxqa_to_model", json={"is_paused": False}).status_code == 200
    r = server.api("POST", "/dags/nyxqa_to_model/dagRuns", json={"logical_date": None, "conf": {
        "partition": "api", "sample_size": 30, "train_steps": 2, "feedback_top_k": 3}})  # every stage, less work
    assert r.status_code in (200, 201), r.text
    run_id = r.json()["dag_run_id"]
    state = server.wait_for("the run finished", lambda: run_state(server, "nyxqa_to_model", run_id)
                            in ("success", "failed") and run_state(server, "nyxqa_to_model", run_id), 1800, every=5)
    assert state == "success", server.tail()
    started = server.log.read_text()  # the WarmLocalExecutor imported the task modules before forking
    assert re.search(r"preloaded (\d+) of \1 modules for the task processes", started), started[-3000:]
    for stage in STAGE_NAMES:
        assert (root / "partitions/api" / stage / "_MANIFEST.json").exists(), stage

    # the filter commit's log, through the API, carries the stage's counts
    manifest = json.loads((root / "partitions/api/filter/_MANIFEST.json").read_text())
    ti = server.api("GET", f"/dags/nyxqa_to_model/dagRuns/{run_id}/taskInstances/filter.commit").json()
    log = server.api("GET", f"/dags/nyxqa_to_model/dagRuns/{run_id}/taskInstances/filter.commit/logs/{ti['try_number']}",
                     headers={"Accept": "application/json"})
    assert log.status_code == 200, log.text
    text = json.dumps(log.json())
    expected = f"filter: partition api complete: {manifest['rows_in']} in, {manifest['rows_out']} out"
    assert expected in text, text[-3000:]

    # clear one stage with its downstream in the full DAG: those tasks run again (as no-ops: complete and
    # unchanged), nothing upstream does, and the run succeeds again
    r = server.api("POST", "/dags/nyxqa_to_model/clearTaskInstances", json={
        "dry_run": False, "dag_run_id": run_id, "task_ids": ["train_stage2.plan"], "include_downstream": True,
        "include_upstream": False, "only_failed": False, "reset_dag_runs": True})
    assert r.status_code == 200, r.text
    cleared = {t["task_id"] for t in r.json()["task_instances"]}
    assert "train_stage2.plan" in cleared and "evaluate.commit" in cleared and not any(
        t.startswith(("feedback.", "mine.", "ingest.")) for t in cleared)
    server.wait_for("the cleared run finished", lambda: run_state(server, "nyxqa_to_model", run_id) == "success", 900)
    tis = server.api("GET", f"/dags/nyxqa_to_model/dagRuns/{run_id}/taskInstances", params={"limit": 500}).json()
    tries = {t["task_id"]: t["try_number"] for t in tis["task_instances"] if t["state"] == "success"}
    assert tries["evaluate.plan"] == tries["train_stage2.plan"] == 2 and tries["feedback.plan"] == 1
    again = server.api("GET", f"/dags/nyxqa_to_model/dagRuns/{run_id}/taskInstances/evaluate.plan/logs/2",
                       headers={"Accept": "application/json"})
    assert "already complete" in json.dumps(again.json())

    # a backfill of one stage DAG: exactly that stage runs, for each date's partition. Backfill runs
    # need the DAG unpaused; the daily run that unpausing fires is skipped by the gate.
    assert server.api("PATCH", "/dags/nyx_stage_ingest", json={"is_paused": False}).status_code == 200

    r = server.api("POST", "/backfills", json={"dag_id": "nyx_stage_ingest", "from_date": f"{DAYS[0]}T00:00:00Z",
                                               "to_date": f"{DAYS[1]}T00:00:00Z", "max_active_runs": 2,
                                               "dag_run_conf": {}, "reprocess_behavior": "none"})
    assert r.status_code in (200, 201), r.text
    backfill_id = r.json()["id"]

    def backfill_runs():
        runs = server.api("GET", "/dags/nyx_stage_ingest/dagRuns", params={"limit": 100}).json()["dag_runs"]
        mine = [x for x in runs if x.get("run_type") == "backfill"]
        return mine if len(mine) == 2 and all(x["state"] in ("success", "failed") for x in mine) else None

    runs = server.wait_for(f"backfill {backfill_id} finished", backfill_runs, 600, every=5)
    assert {x["state"] for x in runs} == {"success"}, server.tail()
    for run in runs:
        tis = server.api("GET", f"/dags/nyx_stage_ingest/dagRuns/{run['dag_run_id']}/taskInstances").json()
        assert {t["task_id"].split(".")[0] for t in tis["task_instances"]} == {"gate", "check", "ingest"}
        assert all(t["state"] == "success" for t in tis["task_instances"] if t["task_id"] != "ingest.shard")
    for day in DAYS:  # the logical date names the partition
        assert (root / f"partitions/{day}/ingest/_MANIFEST.json").exists()
        assert not (root / f"partitions/{day}/chunk").exists()  # nothing downstream ran
    scheduled = [x for x in server.api("GET", "/dags/nyx_stage_ingest/dagRuns").json()["dag_runs"]
                 if x["run_type"] == "scheduled"]
    for run in scheduled:  # the gate skipped the schedule's own run: no partition was touched
        tis = server.api("GET", f"/dags/nyx_stage_ingest/dagRuns/{run['dag_run_id']}/taskInstances").json()
        assert {t["state"] for t in tis["task_instances"] if t["task_id"] != "gate"} <= {"skipped", None}
    assert {p.name for p in (root / "partitions").iterdir()} - before == {*DAYS, "api"}

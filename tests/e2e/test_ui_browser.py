"""The user's path through the Airflow UI, in a real browser (Debian's chromium driven by
Playwright) against a real `airflow standalone` (scheduler + LocalExecutor; the one the e2e
modules share, whose `demo` profile runs on the stand-in text sets: tests/e2e/conftest.py):

1. log in, open `nyxqa_to_model`'s trigger form and submit it as it opens (every field at its
   default, "unpause on trigger" ticked): the run succeeds and writes the partition of its
   logical date;
2. open a shard's log in the UI: it starts with the stage, partition, config hash and the
   resolved config's path, and holds no ERROR or WARNING line;
3. open `nyx_stage_chunk`'s Backfill tab, pick two dates with the partition left empty and run
   it: each date gets its own chunk partition.

Screenshots: under the test's tmp dir and /tmp/nyx-ui-*.png (look at them). Needs
`bash scripts/browser_env.sh` (chromium + playwright); skipped without them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.e2e.airflow_server import PASSWORD, USER
from tests.e2e.conftest import login

pytestmark = pytest.mark.airflow
BACKFILL_DATES = ("2026-01-01", "2026-01-02")


@pytest.fixture
def server(airflow):
    return airflow  # the run's shared standalone (tests/e2e/conftest.py), its demo on the stand-in sets


def shot(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"nyx-ui-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    shutil.copyfile(path, Path("/tmp") / path.name)


def runs(server, dag_id: str) -> list[dict]:
    return server.api("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100}).json()["dag_runs"]


def finished(server, dag_id: str, n: int, run_type: str, before: frozenset = frozenset()):
    """The runs of `run_type` not in `before` (other modules' runs on the shared server), once n finished."""
    mine = [r for r in runs(server, dag_id) if r["run_type"] == run_type and r["dag_run_id"] not in before]
    return mine if len(mine) >= n and all(r["state"] in ("success", "failed") for r in mine) else None


def idle_while_it_runs(page, server, dag_id: str, run_type: str, before: frozenset) -> None:
    """Once the click's runs exist and its "unpause on trigger" took effect (both requests done),
    leave the page blank while they run: the UI re-renders its grid every few seconds, and Chromium
    took about a third of a core doing it through the waits, CPU the runs (and the suite's other
    lanes) need. The test opens the pages it reads afterwards."""
    def sent() -> bool:
        made = [r for r in runs(server, dag_id) if r["run_type"] == run_type and r["dag_run_id"] not in before]
        return bool(made) and server.api("GET", f"/dags/{dag_id}").json().get("is_paused") is False

    server.wait_for(f"the {run_type} run of {dag_id} created and the DAG unpaused", sent, 120, every=1)
    page.goto("about:blank")


def where_runs_stand(server, dag_id: str) -> str:
    lines = [f"{dag_id} paused: {server.api('GET', f'/dags/{dag_id}').json().get('is_paused')}"]
    for r in runs(server, dag_id):
        tis = server.api("GET", f"/dags/{dag_id}/dagRuns/{r['dag_run_id']}/taskInstances").json()
        states = {t["task_id"]: t["state"] for t in tis.get("task_instances", [])}
        lines.append(f"{r['dag_run_id']} ({r['run_type']}): {r['state']} {states}")
    return "\n".join(lines)


def test_trigger_with_defaults_read_a_shard_log_and_backfill_two_dates(browser, server, tmp_path):
    root = server.home / "artifacts"
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.set_default_timeout(60_000)
    login(page, server.base, USER, PASSWORD)

    # 1. the trigger form, submitted as it opens
    page.goto(f"{server.base}/dags/nyxqa_to_model")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Single Run", exact=True).wait_for()
    unpause = dialog.get_by_role("checkbox", name="Unpause nyxqa_to_model on trigger")
    if unpause.count() and not unpause.is_checked():
        unpause.check(force=True)
    for section in ("Data", "Models", "Training", "Run"):  # open each section (Run last): nothing red or required
        dialog.get_by_role("button", name=section, exact=True).click()
    dialog.locator("#element_partition").wait_for()
    assert dialog.locator("#element_partition").input_value() == ""
    submit = dialog.get_by_role("button", name="Trigger", exact=True)
    assert submit.is_enabled(), "the form cannot be submitted with its defaults"
    assert dialog.get_by_text("This field is required").count() == 0
    assert dialog.get_by_text("null", exact=True).count() == 0  # the backend dropdown names its empty choice
    shot(page, tmp_path, "trigger-form")
    before = frozenset(r["dag_run_id"] for r in runs(server, "nyxqa_to_model"))
    submit.click()
    idle_while_it_runs(page, server, "nyxqa_to_model", "manual", before)
    done = server.wait_for("the triggered run finished",
                           lambda: finished(server, "nyxqa_to_model", 1, "manual", before), 1200, every=5)
    (run,) = done
    assert run["state"] == "success", server.tail()
    partition = (run.get("logical_date") or run["run_after"])[:10]
    assert (root / "partitions" / partition / "evaluate" / "_MANIFEST.json").exists()

    # 2. a shard's log in the UI
    run_id = run["dag_run_id"]
    page.goto(f"{server.base}/dags/nyxqa_to_model/runs/{run_id}/tasks/mine.shard/mapped/0")
    page.get_by_text("config_hash=").first.wait_for(timeout=120_000)
    text = page.locator("body").inner_text()
    assert f"mine shard nyxqa: partition={partition} config_hash=" in text
    assert "_configs/" in text and ".yaml" in text
    shot(page, tmp_path, "shard-log")
    # no task of the successful run logged a WARNING or ERROR line
    tis = server.api("GET", f"/dags/nyxqa_to_model/dagRuns/{run_id}/taskInstances", params={"limit": 500}).json()
    ran = [t for t in tis["task_instances"] if t["state"] == "success"]
    assert len(ran) > 30
    loud = []
    for t in ran:
        log = server.api("GET", f"/dags/nyxqa_to_model/dagRuns/{run_id}/taskInstances/{t['task_id']}/logs/"
                         f"{t['try_number']}", params={"map_index": t["map_index"]},
                         headers={"Accept": "application/json"}).json()
        entries = [e for e in log["content"] if isinstance(e, dict) and e.get("level")]
        assert entries, t["task_id"]
        loud += [(t["task_id"], e["level"], e.get("event", "")[:120]) for e in entries
                 if e["level"] in ("error", "warning", "critical")]
    assert not loud, loud

    # 3. a backfill of one stage over two dates, partition left empty
    for day in BACKFILL_DATES:  # chunk reads each date's ingest output
        out = subprocess.run([sys.executable, "-m", "nyx_tasks", "ingest", "--partition", day, "--root", str(root)],
                             capture_output=True, text=True, cwd=REPO, timeout=300,
                             env={**os.environ, "NYX_CONFIG_DIR": server.env["NYX_CONFIG_DIR"]})
        assert out.returncode == 0, out.stderr[-3000:]
    page.goto(f"{server.base}/dags/nyx_stage_chunk")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Backfill", exact=True).click()
    for i, day in enumerate(BACKFILL_DATES):  # the From / To pickers: a date and a time field each
        dialog.locator("[data-testid=datetime-input]").nth(i).click()
        page.get_by_placeholder("YYYY/MM/DD").last.fill(day.replace("-", "/"))
        page.get_by_placeholder("HH:mm").last.fill("00:00")
        page.keyboard.press("Enter")
    dialog.get_by_text("2 runs will be triggered").wait_for()
    unpause = dialog.get_by_role("checkbox", name="Unpause nyx_stage_chunk on trigger")  # backfill runs need it
    if unpause.count() and not unpause.is_checked():
        unpause.check(force=True)
    dialog.get_by_role("button", name="Run", exact=True).click()
    assert dialog.locator("#element_partition").input_value() == ""  # each date names its own partition
    run_backfill = dialog.get_by_role("button", name="Run Backfill")
    before = frozenset(r["dag_run_id"] for r in runs(server, "nyx_stage_chunk"))
    assert run_backfill.is_enabled()
    shot(page, tmp_path, "backfill-form")
    run_backfill.click()
    idle_while_it_runs(page, server, "nyx_stage_chunk", "backfill", before)
    try:
        backfilled = server.wait_for("the backfill finished",
                                     lambda: finished(server, "nyx_stage_chunk", 2, "backfill", before), 600, every=5)
    except TimeoutError as e:  # say what the DAG, its runs and their tasks were doing
        raise AssertionError(f"{e}\n{where_runs_stand(server, 'nyx_stage_chunk')}") from None
    assert {r["state"] for r in backfilled} == {"success"}, server.tail()
    for day in BACKFILL_DATES:  # one partition per date
        manifest = json.loads((root / "partitions" / day / "chunk" / "_MANIFEST.json").read_text())
        assert manifest["partition"] == day and manifest["rows_out"] > 0
    page.goto(f"{server.base}/dags/nyx_stage_chunk")
    shot(page, tmp_path, "backfill-runs")

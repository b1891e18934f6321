"""`bash scripts/ui.sh`'s metadata database, its own Postgres under $AIRFLOW_HOME/pg, holds the
UI's first clicks: two fresh UIs, one after the other, each sent what the Run Backfill dialog
sends (unpause the DAG and create its backfill, at the same moment) for seven stage DAGs at once
as soon as the DAGs are listed; on the first UI one of the seven goes through the dialog itself in
Chromium (when `bash scripts/browser_env.sh` installed it). No write may fail (on SQLite these
answered 503 "Database is locked": benchmarks/ui_backfill_burst.py). The Postgres has no TCP
socket, only its Unix socket, and SIGTERM to ui.sh stops it. A second, cheap test drives
scripts/ui_postgres.sh alone: the cluster is made once and reused, and what a killed run leaves
(a postgres still running, a postmaster.pid naming another live process) does not block a start.
Network traffic stays on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from importlib.util import find_spec
from pathlib import Path

import httpx
import psutil
import pytest

from benchmarks.ui_backfill_burst import dialog_burst, failed, login, stage_dags
from tests.conftest import REPO
from tests.e2e import conftest as e2e
from tests.e2e.airflow_server import free_port
from tests.e2e.test_ui_script import READY, clean_env, read_line, start_ui, stop, tree
from tests.postgres import postgres_bindir

pytestmark = pytest.mark.airflow
STARTS, DAGS_PER_START, DAY = 2, 7, "2026-01-01"


def postgres_of(home: Path) -> list[psutil.Process]:
    """The live processes of the cluster under this AIRFLOW_HOME: the postmaster and its children."""
    data = f"-D {home}/pg/data "
    for p in psutil.process_iter(["cmdline", "status"]):
        if p.info["status"] != psutil.STATUS_ZOMBIE and data in " ".join(p.info["cmdline"] or []) + " ":
            with contextlib.suppress(psutil.NoSuchProcess):
                return [p, *p.children(recursive=True)]
    return []


def groups(procs: list[psutil.Process]) -> set[int]:
    out = set()
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            out.add(os.getpgid(p.pid))
    return out


def assert_unix_socket_only(home: Path) -> None:
    procs = postgres_of(home)
    assert procs, f"no postgres runs on {home}/pg/data"
    inet = [(p.pid, c.laddr) for p in procs for c in p.net_connections(kind="inet")]
    assert not inet, f"postgres has TCP/UDP sockets: {inet}"
    sock = f"{home}/pg/run/.s.PGSQL.5432"
    assert any(c.laddr == sock for c in procs[0].net_connections(kind="unix")), f"postgres does not listen on {sock}"


def have_browser() -> bool:
    return Path(e2e.CHROMIUM).exists() and find_spec("playwright") is not None


@contextlib.contextmanager
def chromium_page(base: str, password: str):
    """A logged-in Chromium page on the UI."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=e2e.CHROMIUM, args=e2e.CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(120_000)
            e2e.login(page, base, "admin", password)
            yield page
        finally:
            browser.close()


def open_backfill_dialog(page, base: str, dag_id: str):
    """The Trigger dialog's Backfill form for one date, "unpause on trigger" ticked."""
    page.goto(f"{base}/dags/{dag_id}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Backfill", exact=True).click()
    for i in range(2):  # the From / To pickers: a date and a time field each
        dialog.locator("[data-testid=datetime-input]").nth(i).click()
        page.get_by_placeholder("YYYY/MM/DD").last.fill(DAY.replace("-", "/"))
        page.get_by_placeholder("HH:mm").last.fill("00:00")
        page.keyboard.press("Enter")
    dialog.get_by_text("1 run will be triggered").wait_for()
    unpause = dialog.get_by_role("checkbox", name=f"Unpause {dag_id} on trigger")
    if not unpause.is_checked():
        unpause.check(force=True)
    return dialog


def click_run_backfill_during_burst(page, base: str, headers: dict, dag_ids: list[str]) -> list:
    """The dialog for dag_ids[0], clicked while the API sends the others' dialog requests."""
    dialog = open_backfill_dialog(page, base, dag_ids[0])
    seen = []
    page.on("response", lambda r: seen.append(r) if r.request.method in ("POST", "PATCH") and (
        r.url.endswith("/api/v2/backfills") or r.url.endswith(f"/api/v2/dags/{dag_ids[0]}")) else None)
    results: list = []
    burst = threading.Thread(target=lambda: results.extend(dialog_burst(base, headers, dag_ids[1:], DAY)))
    burst.start()
    dialog.get_by_role("button", name="Run Backfill").click()
    deadline = time.monotonic() + 120
    while len(seen) < 2 and time.monotonic() < deadline:  # the dialog's PATCH (unpause) and POST (backfill)
        page.wait_for_timeout(200)
    burst.join()
    assert {r.request.method for r in seen} == {"POST", "PATCH"}, [(r.request.method, r.url) for r in seen]
    return [(f"browser {r.request.method} {dag_ids[0]}", r.status, r.text()) for r in seen] + results


def submit(base: str, password: str, browser: bool) -> list[tuple[str, int | None, str]]:
    headers = login(base, password)
    dags = stage_dags(base, headers, DAGS_PER_START)
    if browser and have_browser():
        with chromium_page(base, password) as page:
            return click_run_backfill_during_burst(page, base, headers, dags)
    return dialog_burst(base, headers, dags, DAY)


def created(base: str, password: str, dag_ids: list[str]) -> dict[str, int]:
    """How many backfills each DAG has, and the DAGs still paused."""
    headers = login(base, password)
    out = {}
    for d in dag_ids:
        r = httpx.get(f"{base}/api/v2/backfills", params={"dag_id": d}, headers=headers, timeout=60)
        out[d] = r.json()["total_entries"]
        if httpx.get(f"{base}/api/v2/dags/{d}", headers=headers, timeout=60).json()["is_paused"]:
            out[f"{d} paused"] = 1
    return out


def one_ui(tmp: Path, browser: bool) -> list[tuple[str, int | None, str]]:
    """A fresh ui.sh: the dialog burst, the socket check, SIGTERM; what each write answered."""
    port, err = free_port(), tmp / "ui.stderr"
    home = tmp / "airflow-home"
    proc = start_ui(clean_env(tmp, port), err)
    pgids = {proc.pid}
    try:
        line = read_line(proc, 600)
        m = READY.match(line)
        assert m, f"{line!r}\n{err.read_text()}"
        base, password = f"http://127.0.0.1:{port}", m.group(2)
        results = submit(base, password, browser)
        dags = sorted({w.split()[-1] for w, _, _ in results})
        assert created(base, password, dags) == dict.fromkeys(dags, 1), results
        assert_unix_socket_only(home)
        pg = postgres_of(home)
        pgids |= groups([*pg, *tree(proc)])
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        psutil.wait_procs(pg, timeout=30)
        assert not postgres_of(home), "postgres outlived ui.sh"
        assert not Path(f"{home}/pg/run/.s.PGSQL.5432").exists()  # a clean shutdown removes it
        assert "[ui] stopped" in err.read_text()
        return results
    finally:
        stop(proc, pgids | groups(postgres_of(home)))


def test_backfills_right_after_unpausing_on_two_fresh_uis(ui_tmp):
    results = []
    for i in range(STARTS):
        (ui_tmp / f"ui{i}").mkdir()
        results += one_ui(ui_tmp / f"ui{i}", browser=i == 0)
    backfills = [r for r in results if "POST" in r[0] or r[0].startswith("backfill")]
    assert len(backfills) >= STARTS * DAGS_PER_START - 1, results  # all but the dialog's (in Chromium)
    # the first UI's first DAG went through the dialog in Chromium (scripts/browser_env.sh installs it)
    assert not have_browser() or sum(r[0].startswith("browser") for r in results) == 2, results
    assert not [r for r in results if failed(r[1], r[2])], results
    assert {r[1] for r in results} == {200}, results


PG_SCRIPT = r"""
set -euo pipefail
die() { echo "[ui] FAILED: $*" >&2; ui_pg_stop; exit 1; }
source scripts/ui_postgres.sh
ui_pg_start
echo "pid $UI_PG_PID"
echo "url $AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"
case "$1" in
  orphan) exec sleep 600 ;;  # killed by the test: its postgres is left running
  kill)  # the postmaster only; a later start comes after its children have noticed and gone
    children="$(pgrep -P "$UI_PG_PID" | tr '\n' ' ')"
    kill -KILL "$UI_PG_PID"; wait "$UI_PG_PID" || true
    for pid in $children; do while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done; done ;;
  stop) ui_pg_stop ;;
esac
"""


def run_pg(home: Path, what: str, **kw) -> subprocess.Popen:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "AIRFLOW_HOME": str(home)}
    return subprocess.Popen(["bash", "-c", PG_SCRIPT, "ui_postgres", what], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, **kw)


def pg_lines(proc: subprocess.Popen) -> dict[str, str]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return {k: v for k, _, v in (line.partition(" ") for line in out.splitlines())} | {"stderr": err}


def test_ui_postgres_is_made_once_and_starts_after_a_killed_run(ui_tmp):
    if postgres_bindir() is None or shutil.which("setpriv") is None:
        pytest.skip("no PostgreSQL server binaries: run `bash scripts/postgres_env.sh`")
    home = ui_tmp / "airflow-home"
    home.mkdir()
    first = pg_lines(run_pg(home, "kill"))  # initdb, start, then postgres is SIGKILLed: pid file stays
    assert "initdb" in first["stderr"] and first["url"].startswith("postgresql+psycopg2://airflow@/airflow?host=")
    pid_file = home / "pg" / "data" / "postmaster.pid"
    assert pid_file.exists()
    with subprocess.Popen(["sleep", "600"]) as other:  # a live process that is not this cluster's postgres
        try:
            lines = pid_file.read_text().splitlines()
            pid_file.write_text("\n".join([str(other.pid), *lines[1:]]) + "\n")
            orphaning = run_pg(home, "orphan")
            assert orphaning.stdout.readline().startswith("pid ")
        finally:
            other.kill()
    orphan = postgres_of(home)
    assert orphan, "the second start did not come up"
    os.killpg(orphaning.pid, signal.SIGKILL)  # its ui.sh is gone; its postgres runs on
    orphaning.wait(30)
    last = pg_lines(run_pg(home, "stop"))  # stops the orphan, starts, stops
    assert "initdb" not in last["stderr"] and "a killed scripts/ui.sh left running" in last["stderr"]
    assert not postgres_of(home) and not any(p.is_running() for p in orphan)

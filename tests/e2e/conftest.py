"""What the end-to-end modules share: one `airflow standalone` for the whole pytest run (the UI,
API and explorer modules; each keeps to its own partitions, backfill dates and runs), Debian's
chromium driven by Playwright, and Airflow's login page."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.conftest import small_demo_configs
from tests.e2e.airflow_server import AirflowServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


SHARED_DAGS = ("nyxqa_to_model", "nyx_stage_ingest", "nyx_stage_chunk")


@pytest.fixture(scope="session")
def airflow(tmp_path_factory):
    """One real `airflow standalone` (api-server, scheduler, dag-processor, triggerer; PostgreSQL,
    this project's WarmLocalExecutor) per pytest run, started on first use and stopped at the end.
    Its `demo` profile is the demo on the stand-in text sets (tests.conftest.small_demo_configs):
    the full demo runs once, under `airflow dags test` (test_airflow_dags_test.py); here every form,
    DAG and stage runs on less data. Users: admin (Admin) and nyx (Viewer)."""
    folder = tmp_path_factory.mktemp("airflow-shared")
    configs = small_demo_configs(folder)
    with AirflowServer(folder / "home", extra_env={"NYX_CONFIG_DIR": str(configs)}) as s:
        s.wait_for("the DAGs parsed", lambda: all(s.api("GET", f"/dags/{d}").status_code == 200
                                                  for d in SHARED_DAGS), 240)
        yield s


@pytest.fixture(scope="module")  # playwright's sync API runs an event loop in this thread while it lives
def browser():
    """Chromium (`bash scripts/browser_env.sh` installs it and playwright); the test is skipped without them."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: run `bash scripts/browser_env.sh` (Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing: run `bash scripts/browser_env.sh`")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def login(page, base: str, user: str, password: str) -> None:
    """Through Airflow's own login page (simple auth manager)."""
    page.goto(f"{base}/")
    page.wait_for_url("**/auth/login**")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button:has-text('Sign in')")
    page.wait_for_url(lambda url: "/auth/" not in url)


@pytest.fixture
def ui_tmp():
    """A temp dir for `bash scripts/ui.sh`'s AIRFLOW_HOME that others can search (0755): run as
    root, ui.sh runs its Postgres as the `postgres` user, which cannot reach pytest's tmp_path
    (its parents are 0700). Removed at the end."""
    path = Path(tempfile.mkdtemp(prefix="nyx-ui-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)

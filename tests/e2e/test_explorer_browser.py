"""The NyxQA explorer in a real browser: a real `airflow api-server` (fresh SQLite home, this
project's dags/ and plugins/ folders, a known simple-auth-manager user) on a free loopback port,
Debian's chromium driven by Playwright. Log in through Airflow's login page, open the explorer
from the nav entry, open the QA items and check that a question, its options and its image
render; a browser with no login is sent to the login page. Screenshot: under the test's tmp dir
and /tmp/nyx-explorer-screenshot.png.

Needs `bash scripts/browser_env.sh` (chromium + playwright); skipped without them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.e2e.conftest import login

pytestmark = pytest.mark.airflow
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
USER, PASSWORD = "nyx", "nyx-explorer-test"
SCREENSHOT_COPY = Path("/tmp/nyx-explorer-screenshot.png")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(proc: subprocess.Popen, url: str, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"airflow api-server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5) as r:
            if r.status == 200:
                return
        time.sleep(1)
    pytest.fail(f"airflow api-server not healthy after {timeout}s:\n{log.read_text()[-4000:]}")


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (it forks workers), SIGKILL what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group, even if the leader is gone
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


@pytest.fixture
def api_server(built, tmp_path):
    """`airflow api-server` on 127.0.0.1:<free port> over the `built` artifact root; yields its URL."""
    home = tmp_path / "airflow_home"
    home.mkdir()
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({USER: PASSWORD}))
    env = {**os.environ, "AIRFLOW_HOME": str(home),
           "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
           "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:viewer",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
           "AIRFLOW__API_AUTH__JWT_SECRET": os.urandom(48).hex(),
           "NYX_ARTIFACTS_ROOT": str(built),
           "NYX_CONFIG_DIR": str(REPO / "configs")}
    out = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    port = free_port()
    log = tmp_path / "api-server.log"
    with open(log, "wb") as log_f:
        proc = subprocess.Popen([AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                env=env, stdout=log_f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(proc, f"{base}/api/v2/monitor/health", log)
        yield base
    finally:
        stop_group(proc)


def test_explorer_in_the_airflow_ui_shows_qa_items_with_images(browser, api_server, built, tmp_path):
    partition = next(p.name for p in (built / "partitions").iterdir())
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)

    # Airflow's own login page, then the nav entry the plugin adds
    login(page, api_server, USER, PASSWORD)
    page.get_by_role("link", name="NyxQA explorer").click()
    page.wait_for_url("**/plugin/nyx-explorer**")
    frame = page.frame_locator("iframe[title='NyxQA explorer']")
    frame.get_by_role("link", name=partition, exact=True).click()
    frame.locator("table#stages").wait_for()
    frame.get_by_role("link", name="QA items").click()

    item = frame.locator(".qa-item:has(.question img.thumb)").first
    item.wait_for()
    question = item.locator(".question")
    assert question.inner_text().strip().endswith("?")
    options = item.locator("ol.options li")
    assert options.count() == 4
    assert item.locator("ol.options li.correct").count() == 1
    img = question.locator("img.thumb").first
    img.scroll_into_view_if_needed()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle())
    assert img.evaluate("img => img.naturalWidth") > 0
    assert "/plugin/nyx-explorer/nyx/p/" in page.url  # the UI tracks the explorer's page in its own URL

    shot = tmp_path / "nyx-explorer.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    shutil.copyfile(shot, SCREENSHOT_COPY)

    # a browser that never logged in: sent to the login page, no QA item, and no image bytes
    fresh = browser.new_context()
    try:
        anon = fresh.new_page()
        anon.goto(f"{api_server}/nyx/p/{partition}/qa")
        anon.wait_for_url("**/auth/login**")
        assert anon.locator(".qa-item").count() == 0
        src = img.get_attribute("src")
        assert fresh.request.get(f"{api_server}{src}").status == 401
    finally:
        fresh.close()

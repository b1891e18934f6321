"""`bash scripts/ui.sh` exactly as the README says, from a shell without the
venv: it prints one `[ui] http://127.0.0.1:PORT  admin / <password>` line once
Airflow is healthy, that password logs in through /auth/token and the REST API
lists this project's DAGs, everything it started listens on 127.0.0.1 only, and
SIGTERM stops the whole process tree. A taken port fails fast with one clear
line. Network traffic stays on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import REPO
from tests.e2e.airflow_server import free_port

pytestmark = pytest.mark.airflow

READY = re.compile(r"^\[ui\] http://127\.0\.0\.1:(\d+)  admin / (\S+)$")


def clean_env(tmp: Path, port: int) -> dict[str, str]:
    """A fresh login shell's environment: no venv on PATH, no VIRTUAL_ENV, no Airflow settings."""
    return {
        "HOME": os.environ.get("HOME", str(tmp)), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
        "AIRFLOW_HOME": str(tmp / "airflow-home"), "NYX_ARTIFACTS_ROOT": str(tmp / "artifacts"),
        "NYX_UI_PORT": str(port),
    }


def start_ui(env: dict[str, str], out: Path) -> subprocess.Popen:
    return subprocess.Popen(["bash", "scripts/ui.sh"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=out.open("w"), text=True, start_new_session=True)


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    """The first stdout line, or fail with stderr if the script exits or the timeout passes."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        raise TimeoutError(f"no [ui] line after {timeout}s")
    return proc.stdout.readline().rstrip("\n")


def tree(proc: subprocess.Popen) -> list[psutil.Process]:
    root = psutil.Process(proc.pid)
    return [root, *root.children(recursive=True)]


def listening(procs: list[psutil.Process]) -> list[tuple[str, str, int]]:
    out = []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            out += [(p.name(), c.laddr.ip, c.laddr.port) for c in p.net_connections(kind="tcp")
                    if c.status == psutil.CONN_LISTEN]
    return out


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def stop(proc: subprocess.Popen, pgids: set[int]) -> None:
    """Whatever happened: ui.sh gets SIGTERM (it stops its standalone), then every group seen is killed."""
    with contextlib.suppress(psutil.NoSuchProcess):
        pgids |= {_pgid(p.pid) for p in tree(proc)} - {None}
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(60)
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def test_ui_script_from_a_clean_shell(ui_tmp):
    port = free_port()
    err = ui_tmp / "ui.stderr"
    proc = start_ui(clean_env(ui_tmp, port), err)
    pgids = {proc.pid}
    try:
        line = read_line(proc, 600)
        m = READY.match(line)
        assert m, f"{line!r}\n{err.read_text()}"
        assert int(m.group(1)) == port
        password = m.group(2)
        assert not password.startswith("{"), line  # the value, not the JSON file

        base = f"http://127.0.0.1:{port}"
        r = httpx.post(f"{base}/auth/token", json={"username": "admin", "password": password}, timeout=30)
        assert r.status_code in (200, 201), r.text
        headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
        deadline, dags = time.monotonic() + 300, []
        while "nyxqa_to_model" not in dags and time.monotonic() < deadline:
            r = httpx.get(f"{base}/api/v2/dags", headers=headers, params={"limit": 100}, timeout=30)
            assert r.status_code == 200, r.text
            dags = [d["dag_id"] for d in r.json()["dags"]]
            time.sleep(3)
        assert "nyxqa_to_model" in dags, dags

        procs = tree(proc)
        socks = listening(procs)
        assert ("127.0.0.1", port) in {(ip, p) for _, ip, p in socks}, socks
        assert all(ip == "127.0.0.1" for _, ip, _ in socks), socks
        pgids |= {_pgid(p.pid) for p in procs} - {None}

        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        _, alive = psutil.wait_procs([p for p in procs if p.is_running()], timeout=30)
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, [(p.pid, p.cmdline()) for p in alive]
        stragglers = [p.pid for p in psutil.process_iter(["status"])
                      if _pgid(p.pid) in pgids and p.info["status"] != psutil.STATUS_ZOMBIE]
        assert not stragglers, stragglers
        assert "[ui] stopped" in err.read_text()
    finally:
        stop(proc, pgids)


def test_ui_script_fails_fast_when_the_port_is_taken(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = tmp_path / "ui.stderr"
        started = time.monotonic()
        proc = start_ui(clean_env(tmp_path, port), err)
        try:
            out, _ = proc.communicate(timeout=120)
        finally:
            stop(proc, {proc.pid})
        assert proc.returncode != 0
        assert out == ""
        msg = err.read_text().strip().splitlines()
        assert msg and msg[-1].startswith("[ui] FAILED:") and f"127.0.0.1:{port} is already in use" in msg[-1], msg
        assert "NYX_UI_PORT" in msg[-1]
        assert time.monotonic() - started < 60
        assert not (tmp_path / "airflow-home" / "standalone.log").exists()  # nothing was started

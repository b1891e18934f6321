"""A real `airflow standalone` (api-server, scheduler, dag-processor,
triggerer; SQLite, LocalExecutor) for end-to-end tests: this project's DAGs and
plugins, on a free loopback port, with a known admin password; stopped (its
whole process group) on exit. Talks to the REST API (`/api/v2`) with a token
from `/auth/token`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import REPO

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
USER, PASSWORD = "admin", "nyx-e2e-password"
VIEWER, VIEWER_PASSWORD = "nyx", "nyx-e2e-viewer"  # the Viewer role: reads DAGs, runs, logs and plugins


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AirflowServer:
    def __init__(self, home: Path, extra_env: dict[str, str] | None = None):
        self.home, self.port = home, free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        home.mkdir(parents=True, exist_ok=True)
        passwords = home / "passwords.json"
        passwords.write_text(json.dumps({USER: PASSWORD, VIEWER: VIEWER_PASSWORD}))
        self.env = {
            **os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin,{VIEWER}:viewer",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5", "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "5",
            "NYX_CONFIG_DIR": str(REPO / "configs"), "NYX_ARTIFACTS_ROOT": str(home / "artifacts"),
            "AIRFLOW__CORE__PARALLELISM": str(os.cpu_count() or 1),  # as scripts/airflow_env.sh sets them
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db?timeout=30",
            "AIRFLOW__CORE__EXECUTOR": "nyx_executor.WarmLocalExecutor",
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
            "PYTHONHASHSEED": "0", "PATH": f"{Path(AIRFLOW).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            **(extra_env or {}),
        }
        self.proc: subprocess.Popen | None = None
        self.log = home / "standalone.log"
        self._token: str | None = None

    def __enter__(self) -> AirflowServer:
        out = subprocess.run([AIRFLOW, "db", "migrate"], env=self.env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        subprocess.run([sys.executable, "-m", "nyx_tasks", "airflow", "init"], env=self.env, check=True,
                       capture_output=True, timeout=300, cwd=REPO)
        self.proc = subprocess.Popen([AIRFLOW, "standalone"], env=self.env, stdout=self.log.open("w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_healthy(240)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"airflow standalone exited:\n{self.tail()}"
            try:
                r = httpx.get(f"{self.base}/api/v2/monitor/health", timeout=5)
                health = r.json() if r.status_code == 200 else {}
                if all(health.get(c, {}).get("status") == "healthy" for c in ("metadatabase", "scheduler")):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(2)
        raise TimeoutError(f"airflow standalone not healthy after {timeout}s:\n{self.tail()}")

    # -- REST API
    def token(self) -> str:
        if self._token is None:
            r = httpx.post(f"{self.base}/auth/token", json={"username": USER, "password": PASSWORD}, timeout=30)
            assert r.status_code in (200, 201), r.text
            self._token = r.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, headers: dict | None = None, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token()}", **(headers or {})}
        return httpx.request(method, f"{self.base}/api/v2{path}", headers=headers, timeout=60, **kw)

    def wait_for(self, what: str, check, timeout: float, every: float = 3.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = check()
            if got:
                return got
            time.sleep(every)
        raise TimeoutError(f"{what} not reached after {timeout}s:\n{self.tail()}")

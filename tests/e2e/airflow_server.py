"""A real `airflow standalone` (api-server, scheduler, dag-processor,
triggerer; PostgreSQL as scripts/ui.sh gives the user's UI, this project's
WarmLocalExecutor) for end-to-end tests: this project's DAGs and
plugins, on a free loopback port, with a known admin password; stopped (its
whole process group) on exit. Talks to the REST API (`/api/v2`) with a token
from `/auth/token`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import REPO
from tests.postgres import Postgres, free_port

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
USER, PASSWORD = "admin", "nyx-e2e-password"
VIEWER, VIEWER_PASSWORD = "nyx", "nyx-e2e-viewer"  # the Viewer role: reads DAGs, runs, logs and plugins


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
            "AIRFLOW__CORE__EXECUTOR": "nyx_executor.WarmLocalExecutor",
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
            "PYTHONHASHSEED": "0", "PATH": f"{Path(AIRFLOW).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            **(extra_env or {}),
        }
        self.proc: subprocess.Popen | None = None
        self.postgres = Postgres(home / "postgres.log")
        self.log = home / "standalone.log"
        self._token: str | None = None

    def __enter__(self) -> AirflowServer:
        # PostgreSQL, not SQLite: on SQLite the UI's backfill dialog (unpause + create, at once) met
        # "database is locked" under load, and a DAG left paused never starts its backfill runs.
        self.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = self.postgres.__enter__().url
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        out = subprocess.run([AIRFLOW, "db", "migrate"], env=self.env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        subprocess.run([sys.executable, "-m", "nyx_tasks", "airflow", "init"], env=self.env, check=True,
                       capture_output=True, timeout=300, cwd=REPO)
        self.proc = subprocess.Popen([AIRFLOW, "standalone"], env=self.env, stdout=self.log.open("w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_healthy(240)

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
        self.postgres.__exit__(None, None, None)

    def tail(self, n: int = 4000) -> str:
        """The end of the standalone's log without the api-server's access lines (a polling test's own
        requests would fill it)."""
        if not self.log.exists():
            return ""
        lines = [x for x in self.log.read_text(errors="replace").splitlines() if "[http.access]" not in x]
        return "\n".join(lines)[-n:]

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

"""A throwaway PostgreSQL cluster on loopback: Airflow's metadata database for the test
deployments (the shared `airflow standalone` of the end-to-end modules, the Celery cluster),
as `scripts/ui.sh` gives the user's UI one (SQLite answered concurrent UI clicks with
"database is locked").

    with Postgres(log=path) as pg:      # initdb, start, CREATE DATABASE airflow
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = pg.url

Its folder is a temp dir of its own, searchable by others (0755): run as root, initdb and
postgres run as the `postgres` user (both refuse root), which cannot reach pytest's tmp_path.
Durability is off (fsync, full-page writes): a test cluster. Stopped with a fast shutdown
(SIGINT), then SIGKILL to its process group; the folder is removed.

Stdlib only at import time (the Celery workers import their module, which imports this one).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def postgres_bindir() -> str | None:
    """Where initdb / postgres are: on PATH, else Debian's /usr/lib/postgresql/<v>/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("postgres"):
        return str(Path(found).resolve().parent)
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    return next((d for d in reversed(dirs) if os.access(f"{d}/initdb", os.X_OK)), None)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    def __init__(self, log: Path, env: dict | None = None):
        self.log, self.env = log, {**(env or os.environ), "LC_ALL": "C"}
        self.user = "postgres" if os.geteuid() == 0 else None
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://airflow@127.0.0.1:{self.port}/airflow"

    def _as_owner(self) -> dict:
        return {"user": self.user, "extra_groups": []} if self.user else {}

    def __enter__(self) -> Postgres:
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, postgres) are missing: "
                               "run `bash scripts/postgres_env.sh`")
        self.dir = Path(tempfile.mkdtemp(prefix="nyx-pg-"))
        self.dir.chmod(0o755)
        data, sock = self.dir / "data", self.dir / "run"
        for d in (data, sock):
            d.mkdir(mode=0o700)
            if self.user:
                shutil.chown(d, self.user, self.user)
        try:
            self._start(bindir, data, sock)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self, bindir: str, data: Path, sock: Path) -> None:
        init = subprocess.run([f"{bindir}/initdb", "-D", str(data), "-U", "airflow", "--auth=trust", "-E", "UTF8",
                               "--locale=C", "--no-sync", "--no-instructions"],
                              env=self.env, capture_output=True, text=True, timeout=120, cwd="/", **self._as_owner())
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{init.stdout[-3000:]}\n{init.stderr[-3000:]}")
        self.port = free_port()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [f"{bindir}/postgres", "-D", str(data), "-p", str(self.port), "-k", str(sock),
                 "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200", "-c", "fsync=off",
                 "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "shared_buffers=64MB"],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd="/", **self._as_owner())
        deadline = time.monotonic() + 60
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not start; its log {self.log}:\n"
                                   f"{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.3)
        import psycopg2  # reason: Celery workers import this module, and only the test process needs the driver

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="airflow", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE airflow")
        conn.close()

    def _ready(self) -> bool:
        import psycopg2  # reason: as in _start

        try:
            psycopg2.connect(host="127.0.0.1", port=self.port, user="airflow", dbname="postgres",
                             connect_timeout=2).close()
            return True
        except psycopg2.OperationalError:
            return False

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGINT)  # fast shutdown: ends the sessions, then exits
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(30)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

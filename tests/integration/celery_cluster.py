"""A throwaway Airflow CeleryExecutor deployment on loopback, for tests.

    with CeleryCluster() as cluster:          # Postgres, Redis, api-server, scheduler,
        cluster.unpause("nyxqa_to_model")     # dag-processor, a `default` and a `gpu` worker
        run_id = cluster.trigger("nyxqa_to_model", {"partition": "p"})
        cluster.wait_for_run("nyxqa_to_model", run_id, timeout=300)

Everything but the Postgres cluster (tests/postgres.py) lives in one temp dir: Redis
(no persistence), AIRFLOW_HOME, the artifact root, and one log file per component. Every component is started
in its own process group and carries a marker variable in its environment; on
exit each group is stopped (SIGTERM, then SIGKILL), then every process still
carrying the marker (task runners and training subprocesses live in process
groups of their own, and outlive a killed worker as orphans) is killed, and the
temp dir is removed. On an error inside the `with` block the tail of every
component's log is printed first.

Stdlib only at import time: the workers import `worker_hostname` from here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.postgres import Postgres, free_port, postgres_bindir

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
MARKER = "NYX_CELERY_CLUSTER_ID"  # in the environment of every process the cluster starts
WORKER_NAME = "NYX_CELERY_WORKER_NAME"


def worker_hostname() -> str:
    """`[core] hostname_callable` of the workers: both run on this machine, so the
    FQDN would not tell them apart in a task instance's `hostname`."""
    return os.environ.get(WORKER_NAME) or socket.getfqdn()


def missing_requirements() -> str | None:
    """Why the cluster cannot start here (None when it can)."""
    needs = []
    if postgres_bindir() is None:
        needs.append("PostgreSQL server binaries (initdb, postgres)")
    if shutil.which("redis-server") is None:
        needs.append("redis-server")
    from importlib.metadata import PackageNotFoundError, version
    from importlib.util import find_spec

    try:  # by metadata: importing the provider would import (and configure) Airflow in this process
        version("apache-airflow-providers-celery")
    except PackageNotFoundError:
        needs.append("apache-airflow-providers-celery")
    needs += [f"python module {m}" for m in ("celery", "psycopg2", "asyncpg") if find_spec(m) is None]
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            needs.append("a `postgres` user to run initdb as (initdb refuses root)")
    return ("missing " + ", ".join(needs) + "; run `bash scripts/celery_env.sh`") if needs else None


def tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"<{e}>"
    return "\n".join(text[-lines:])


@dataclass
class Component:
    name: str
    cmd: list[str]
    env: dict
    log: Path
    user: str | None = None  # run as this user (postgres, when we are root)
    stop_signal: int = signal.SIGTERM
    proc: subprocess.Popen | None = None
    starts: int = 0
    history: list[int] = field(default_factory=list)  # pids of earlier incarnations

    def start(self) -> Component:
        self.starts += 1
        with open(self.log, "ab") as out:
            out.write(f"\n===== start #{self.starts}: {' '.join(self.cmd)}\n".encode())
            out.flush()
            kw = {"user": self.user, "extra_groups": []} if self.user else {}
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True, cwd=str(REPO), **kw)
        self.history.append(self.proc.pid)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        """Ask the leader to stop, give it `grace` seconds, then SIGKILL its whole process group."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the group id is the leader's pid
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, self.stop_signal)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


def process_tree(pid: int) -> list:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def marked_processes(marker_value: str) -> list:
    """Every live process whose environment carries this cluster's marker (orphans included)."""
    import psutil

    found = []
    for p in psutil.process_iter(["pid"]):
        if p.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error):
            if p.environ().get(MARKER) == marker_value:
                found.append(p)
    return found


class CeleryCluster:
    """Postgres + Redis + Airflow (CeleryExecutor) with a `default` worker and `gpu_workers` `gpu` workers."""

    def __init__(self, *, heartbeat_timeout: int = 15, default_concurrency: int = 2, gpu_concurrency: int = 1,
                 gpu_pool_slots: int = 2, gpu_workers: int = 1, extra_env: dict | None = None,
                 keep: bool | None = None):
        self.heartbeat_timeout = heartbeat_timeout
        self.default_concurrency = default_concurrency
        self.gpu_concurrency = gpu_concurrency
        self.gpu_pool_slots = gpu_pool_slots
        # the gpu queue's workers: worker-gpu, worker-gpu-2, ... (a GPU queue with several machines)
        self.gpu_names = ["worker-gpu"] + [f"worker-gpu-{n}" for n in range(2, gpu_workers + 1)]
        self.extra_env = extra_env or {}
        self.keep = os.environ.get("NYX_CELERY_KEEP") == "1" if keep is None else keep
        self.id = uuid.uuid4().hex
        self.components: dict[str, Component] = {}
        self.dir: Path | None = None
        self.timings: dict[str, float] = {}
        self.postgres: Postgres | None = None

    # ------------------------------------------------------------------ layout
    def _paths(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="nyx-celery-"))
        self.logs = self.dir / "logs"
        self.redis_dir = self.dir / "redis"
        self.home = self.dir / "airflow"
        self.artifacts = self.dir / "artifacts"
        for d in (self.logs, self.redis_dir, self.home, self.artifacts):
            d.mkdir()

    def log_path(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    # ------------------------------------------------------------------ start
    def __enter__(self) -> CeleryCluster:
        try:
            self.start()
        except BaseException:
            self.dump_logs()
            self.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.dump_logs()
        self.close()

    def start(self) -> None:
        t0 = time.monotonic()
        self._paths()
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
        self.base_env[MARKER] = self.id
        self._start_postgres()
        self._start_redis()
        self.timings["postgres+redis"] = time.monotonic() - t0
        self.env = self._airflow_env()
        t1 = time.monotonic()
        self.airflow_cli("db", "migrate", timeout=300)
        self.airflow_cli("pools", "set", "gpu", str(self.gpu_pool_slots), "GPU slots for Nyx GPU tasks")
        self.timings["db migrate+pools"] = time.monotonic() - t1
        t2 = time.monotonic()
        self._add("api-server", [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(self.api_port),
                                 "--workers", "1"]).start()
        self._add("scheduler", [AIRFLOW, "scheduler"]).start()
        self._add("dag-processor", [AIRFLOW, "dag-processor"]).start()
        for name, queue, conc in (("worker-default", "default", self.default_concurrency),
                                  *((g, "gpu", self.gpu_concurrency) for g in self.gpu_names)):
            # Threads per task so that `conc` tasks at once fit the cores (torch would start one
            # thread per core in every task, and its OpenMP threads spin when oversubscribed).
            threads = str(max(1, (os.cpu_count() or 1) // conc))
            env = {**self.env, WORKER_NAME: f"nyx-{name}", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                   "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.integration.celery_cluster.worker_hostname"}
            self._add(name, [AIRFLOW, "celery", "worker", "--queues", queue, "--concurrency", str(conc),
                             "--celery-hostname", f"{name}@%h", "--skip-serve-logs",
                             "--without-gossip", "--without-mingle"], env=env).start()
        self.wait_ready(timeout=240)
        self.timings["airflow up"] = time.monotonic() - t2

    def _add(self, name: str, cmd: list[str], env: dict | None = None, **kw) -> Component:
        comp = Component(name, cmd, env or self.env, self.log_path(name), **kw)
        self.components[name] = comp
        return comp

    def _start_postgres(self) -> None:
        self.postgres = Postgres(self.log_path("postgres"), env=self.base_env).__enter__()  # stopped in close()
        self.pg_port = self.postgres.port

    def _start_redis(self) -> None:
        self.redis_port = free_port()
        redis = self._add("redis", [shutil.which("redis-server"), "--bind", "127.0.0.1", "--port",
                                    str(self.redis_port), "--save", "", "--appendonly", "no",
                                    "--dir", str(self.redis_dir), "--daemonize", "no"], env=self.base_env)
        redis.start()

        def ping() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.redis_port), timeout=2) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        self._wait(ping, 30, "redis PONG", redis)

    def _airflow_env(self) -> dict:
        self.api_port = free_port()
        db = f"postgresql+psycopg2://airflow@127.0.0.1:{self.pg_port}/airflow"
        hb = self.heartbeat_timeout
        return {
            **self.base_env,
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db,
            "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://airflow@127.0.0.1:{self.pg_port}/airflow",
            "AIRFLOW__CELERY__SYNC_PARALLELISM": "1",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            # Airflow 3: workers run tasks through the api-server's execution API, authenticated
            # by JWTs that the scheduler signs and the api-server checks: one shared secret.
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.api_port}/execution/",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{self.api_port}",
            "AIRFLOW__API_AUTH__JWT_SECRET": uuid.uuid4().hex + uuid.uuid4().hex,
            "AIRFLOW__CORE__FERNET_KEY": "",
            "AIRFLOW__CORE__AUTH_MANAGER":
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",  # REST calls need no login
            # A dead worker's task is found within seconds, not the default 5 minutes: the worker-side
            # supervisor heartbeats every `min_heartbeat_interval` s; the scheduler looks every
            # `..._detection_interval` s for running tasks silent for `task_instance_heartbeat_timeout` s.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(hb),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "2",
            # Parse the DAG files once and then rarely: parsing costs CPU this 2-core machine needs.
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "600",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "NYX_ARTIFACTS_ROOT": str(self.artifacts),
            "NYX_CONFIG_DIR": os.environ.get("NYX_CONFIG_DIR", str(REPO / "configs")),
            "PYTHONHASHSEED": "0",
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
            **self.extra_env,
        }

    def airflow_cli(self, *args: str, timeout: float = 180) -> str:
        out = subprocess.run([AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                             cwd=str(REPO))
        with open(self.log_path("cli"), "a") as f:
            f.write(f"\n===== airflow {' '.join(args)} -> {out.returncode}\n{out.stdout}\n{out.stderr}\n")
        if out.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed ({out.returncode}):\n"
                               f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        return out.stdout

    # ------------------------------------------------------------------ readiness
    def _wait(self, check, timeout: float, what: str, *watch: Component, every: float = 0.5) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for comp in watch:
                if not comp.alive():
                    raise RuntimeError(f"{comp.name} exited ({comp.proc.returncode}) while waiting for {what}; "
                                       f"log {comp.log}:\n{tail(comp.log)}")
            if check():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(every)

    def worker_ready(self, name: str, since_start: int | None = None) -> bool:
        """The worker's log says `celery@... ready.` (for its latest start, by default)."""
        comp = self.components[name]
        text = comp.log.read_text(errors="replace")
        marker = f"===== start #{since_start or comp.starts}:"
        return " ready." in text.split(marker)[-1]

    def wait_ready(self, timeout: float = 240) -> None:
        comps = list(self.components.values())
        self._wait(lambda: self._api_ok("/api/v2/version"), timeout, "the api-server", *comps, every=1)
        self._wait(lambda: all(self.worker_ready(w) for w in ("worker-default", *self.gpu_names)), timeout,
                   "every Celery worker ready", *comps, every=1)

    def _api_ok(self, path: str) -> bool:
        import httpx

        try:
            return httpx.get(self.url(path), timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    # ------------------------------------------------------------------ REST
    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.api_port}{path}"

    def api(self, method: str, path: str, **kw) -> dict:
        import httpx

        resp = httpx.request(method, self.url(path), timeout=30, **kw)
        if resp.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {resp.status_code} {resp.text[:2000]}")
        return resp.json() if resp.content else {}

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> None:
        self._wait(lambda: self._api_ok(f"/api/v2/dags/{dag_id}"), timeout, f"DAG {dag_id} parsed",
                   *self.components.values(), every=1)

    def unpause(self, dag_id: str) -> None:
        self.api("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict, run_id: str | None = None) -> str:
        body = {"logical_date": None, "conf": conf, **({"dag_run_id": run_id} if run_id else {})}
        return self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body)["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances",
                        params={"limit": 1000})["task_instances"]

    def tries(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> list[dict]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
        path += f"/{map_index}/tries" if map_index >= 0 else "/tries"
        return self.api("GET", path)["task_instances"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float, essential: list[str] | None = None) -> str:
        """Poll until the run ends; its final state. Fails fast if one of the `essential`
        components (default: all) dies."""
        ends = {"success", "failed"}
        state = {"v": None}

        def done() -> bool:
            state["v"] = self.run_state(dag_id, run_id)
            return state["v"] in ends

        watch = [self.components[n] for n in (essential or self.components)]
        self._wait(done, timeout, f"run {run_id} to finish", *watch, every=2)
        return state["v"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1, attempt: int = 1) -> Path:
        """Where a worker writes a task's log (the default `[logging] log_filename_template`)."""
        p = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        if map_index >= 0:
            p = p / f"map_index={map_index}"
        return p / f"attempt={attempt}.log"

    # ------------------------------------------------------------------ faults
    def kill_worker(self, name: str) -> list[int]:
        """SIGKILL a worker as if its machine died: its process group and the group of every
        process below it (the task supervisor puts each task runner, and so its training
        subprocess, in a process group of its own). Returns the pids that were running."""
        comp = self.components[name]
        procs = process_tree(comp.pid)
        groups = {comp.pid}
        for p in procs:
            with contextlib.suppress(Exception):
                groups.add(os.getpgid(p.pid))
        for g in [comp.pid, *sorted(groups - {comp.pid})]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(g, signal.SIGKILL)
        import psutil

        _, alive = psutil.wait_procs(procs, timeout=10)
        with contextlib.suppress(subprocess.TimeoutExpired):
            comp.proc.wait(5)
        if alive:
            raise RuntimeError(f"still alive after SIGKILL: {[p.pid for p in alive]}")
        return [p.pid for p in procs]

    def restart(self, name: str, timeout: float = 120) -> None:
        comp = self.components[name]
        if comp.alive():
            raise RuntimeError(f"{name} is still running")
        comp.start()
        self._wait(lambda: self.worker_ready(name), timeout, f"{name} ready again", comp, every=0.5)

    # ------------------------------------------------------------------ teardown
    def dump_logs(self, lines: int = 60) -> None:
        if self.dir is None:
            return
        out = [f"\n######## Celery cluster logs ({self.dir}), last {lines} lines each"]
        for f in sorted(self.logs.glob("*.log")):
            out.append(f"\n======== {f.name}\n{tail(f, lines)}")
        print("\n".join(out), file=sys.stderr)

    def close(self) -> None:
        # Airflow first (workers before the api-server they report to), the databases last.
        order = ["worker-default", *self.gpu_names, "scheduler", "dag-processor", "api-server", "redis"]
        for name in order + [n for n in self.components if n not in order]:
            comp = self.components.get(name)
            if comp is None:
                continue
            groups = set()
            for p in process_tree(comp.pid) if comp.alive() else []:
                with contextlib.suppress(Exception):
                    groups.add(os.getpgid(p.pid))
            comp.stop(grace=8)
            for g in groups - {comp.pid}:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(g, signal.SIGKILL)
        if self.postgres is not None:
            self.postgres.__exit__(None, None, None)
        with contextlib.suppress(ImportError):
            import psutil

            left = marked_processes(self.id)
            for p in left:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            psutil.wait_procs(left, timeout=10)
        if self.dir is not None and not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

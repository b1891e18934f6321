"""Does the UI's first "Run Backfill" hold on a freshly started `bash scripts/ui.sh`?

Starts `bash scripts/ui.sh` `--starts` times, each in a fresh AIRFLOW_HOME (a temp dir,
removed after), and as soon as the stage DAGs are listed sends, for `--dags` of them at
once, what the UI's Run Backfill dialog sends with "unpause" ticked: PATCH the DAG
unpaused and, at the same moment, POST /api/v2/backfills (one date). Counts the failed
writes: a 5xx answer or "database is locked" in the body, of either request. Prints one
line per start and the total; exits 1 if any write failed.

    python benchmarks/ui_backfill_burst.py [--starts 3] [--dags 7]

ui.sh runs from a clean environment (no venv on PATH) on a free loopback port; the
caller's NYX_UI_DB and AIRFLOW__DATABASE__SQL_ALCHEMY_CONN, if set, are passed on.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
READY = re.compile(r"^\[ui\] http://127\.0\.0\.1:(\d+)  admin / (\S+)$")
PASSED_ON = ("NYX_UI_DB", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ui_env(home: Path, port: int) -> dict[str, str]:
    env = {"HOME": os.environ.get("HOME", str(home)), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
           "AIRFLOW_HOME": str(home / "airflow-home"), "NYX_ARTIFACTS_ROOT": str(home / "artifacts"),
           "NYX_UI_PORT": str(port)}
    return env | {k: os.environ[k] for k in PASSED_ON if k in os.environ}


def failed(status: int | None, body: str) -> bool:
    """A write that did not happen: an error answer (5xx, "database is locked"), or no answer (None)."""
    return status is None or status >= 500 or "database is locked" in body.lower()


def backfill_body(dag_id: str, day: str) -> dict:
    """The body the Run Backfill dialog posts (its defaults, one date)."""
    return {"dag_id": dag_id, "from_date": f"{day}T00:00:00Z", "to_date": f"{day}T00:00:00Z",
            "max_active_runs": 1, "reprocess_behavior": "none", "run_backwards": False,
            "run_on_latest_version": True, "dag_run_conf": {}}


def dialog_burst(base: str, headers: dict, dag_ids: list[str], day: str) -> list[tuple[str, int | None, str]]:
    """For every DAG at once: PATCH is_paused=false and POST its backfill, as the dialog does.
    Returns (what, status or None when no answer came, body or error) per request, backfills first."""
    jobs = [(f"backfill {d}", "POST", "/api/v2/backfills", backfill_body(d, day)) for d in dag_ids]
    jobs += [(f"unpause {d}", "PATCH", f"/api/v2/dags/{d}", {"is_paused": False}) for d in dag_ids]
    results: list = [None] * len(jobs)
    go = threading.Barrier(len(jobs))

    def send(i: int) -> None:
        what, method, path, body = jobs[i]
        with httpx.Client(base_url=base, headers=headers, timeout=120) as c:
            go.wait()
            try:
                r = c.request(method, path, json=body)
                results[i] = (what, r.status_code, r.text)
            except httpx.HTTPError as e:
                results[i] = (what, None, repr(e))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def login(base: str, password: str) -> dict:
    r = httpx.post(f"{base}/auth/token", json={"username": "admin", "password": password}, timeout=60)
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def stage_dags(base: str, headers: dict, n: int, timeout: float = 300) -> list[str]:
    """The first n `nyx_stage_*` DAGs, once the dag-processor has listed at least n of them."""
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(f"{base}/api/v2/dags", headers=headers, timeout=60,
                      params={"dag_id_pattern": "nyx_stage_%", "limit": 100})
        dags = sorted(d["dag_id"] for d in r.json().get("dags", [])) if r.status_code == 200 else []
        if len(dags) >= n:
            return dags[:n]
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {dags} listed after {timeout}s")
        time.sleep(1)


def read_ready(proc: subprocess.Popen, err: Path, timeout: float) -> re.Match:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    line = proc.stdout.readline().rstrip("\n") if sel.select(timeout) else ""
    m = READY.match(line)
    if not m:
        raise RuntimeError(f"ui.sh did not come up ({line!r}):\n{err.read_text()[-3000:]}")
    return m


def one_start(home: Path, n_dags: int, day: str) -> list[tuple[str, int | None, str]]:
    port = free_port()
    err = home / "ui.stderr"
    proc = subprocess.Popen(["bash", "scripts/ui.sh"], cwd=REPO, env=ui_env(home, port), stdout=subprocess.PIPE,
                            stderr=err.open("w"), text=True, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        headers = login(base, read_ready(proc, err, 600).group(2))
        return dialog_burst(base, headers, stage_dags(base, headers, n_dags), day)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--starts", type=int, default=3, help="fresh ui.sh starts, one after the other")
    ap.add_argument("--dags", type=int, default=7, help="stage DAGs backfilled at once on each")
    ap.add_argument("--day", default="2026-01-01", help="the one date each backfill covers")
    args = ap.parse_args()
    total = bad = 0
    for i in range(1, args.starts + 1):
        home = Path(tempfile.mkdtemp(prefix="nyx-ui-burst-"))
        home.chmod(0o755)  # the postgres user (ui.sh as root) must reach its data dir inside
        try:
            t0 = time.monotonic()
            results = one_start(home, args.dags, args.day)
        finally:
            shutil.rmtree(home, ignore_errors=True)
        backfills = [r for r in results if r[0].startswith("backfill")]
        fails = [r for r in results if failed(r[1], r[2])]
        total, bad = total + len(backfills), bad + len(fails)
        codes = sorted({str(status) for _, status, _ in results})
        print(f"start {i}: {len(backfills)} backfills + {len(results) - len(backfills)} unpauses, "
              f"{len(fails)} failed writes (answers: {codes}; {time.monotonic() - t0:.0f}s)", flush=True)
        for what, status, body in fails:
            print(f"  {what}: {status} {body[:160]}", flush=True)
    print(f"total: {bad} failed writes of {total} backfill submissions (and as many unpauses)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

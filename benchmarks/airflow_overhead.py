"""What Airflow costs on top of the work: the full demo pipeline (ten stages)
through the path users take — a running `airflow standalone` (scheduler +
LocalExecutor, parallelism = the machine's cores), the run triggered over the
REST API and timed from the trigger to the run's success — and through
`airflow dags test nyxqa_to_model`, each against the same stages through
`nyx run`, side by side in one process, each from an empty artifact root (its
own embedding and request caches), alternating, best of `--repeats`.
Goal: scheduler path / nyx run <= 1.5.

    python benchmarks/airflow_overhead.py [--repeats 2] [--skip-dags-test]

All sides share the tiny offline models (built once beforehand); the
standalone server is started (and its DAGs parsed) before any timing, as a
deployment would be, and stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BIN = Path(sys.executable).parent


def timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])} failed:\n{(out.stdout + out.stderr)[-4000:]}")
    return seconds


def scheduler_run(server, conf: dict) -> float:
    """Trigger nyxqa_to_model over the REST API; seconds from the trigger to the run's success."""
    t0 = time.perf_counter()
    r = server.api("POST", "/dags/nyxqa_to_model/dagRuns", json={"logical_date": None, "conf": conf})
    if r.status_code not in (200, 201):
        sys.exit(f"trigger refused: {r.status_code} {r.text}")
    run_id = r.json()["dag_run_id"]

    def finished():
        state = server.api("GET", f"/dags/nyxqa_to_model/dagRuns/{run_id}").json()["state"]
        return state if state in ("success", "failed") else None

    state = server.wait_for(f"run {run_id}", finished, 1800, every=1.0)
    seconds = time.perf_counter() - t0
    if state != "success":
        sys.exit(f"run {run_id} {state}:\n{server.tail()}")
    breakdown(server, run_id)
    return seconds


def breakdown(server, run_id: str) -> None:
    """Where the scheduler path's time went, per stage: each step's duration and the wait before it
    (from the previous step's end to this one's start: scheduling, process start, DAG parse)."""
    from datetime import datetime

    tis = server.api("GET", f"/dags/nyxqa_to_model/dagRuns/{run_id}/taskInstances",
                     params={"limit": 500}).json()["task_instances"]
    ran = [t for t in tis if t["start_date"] and t["end_date"] and t["state"] == "success"]

    def ts(x: str) -> float:
        return datetime.fromisoformat(x.replace("Z", "+00:00")).timestamp()

    steps: dict[str, list[dict]] = {}
    for t in ran:
        steps.setdefault(t["task_id"], []).append(t)
    first = {k: min(v, key=lambda t: ts(t["start_date"])) for k, v in steps.items()}
    order = sorted(steps, key=lambda k: ts(first[k]["start_date"]))
    prev_end = ts(first[order[0]]["start_date"])
    waits = busy = 0.0
    print(f"    {'task':28s} {'wait':>6s} {'sched':>6s} {'queue':>6s} {'slot':>6s} {'run':>6s}")
    for k in order:
        t = first[k]
        start, end = ts(t["start_date"]), max(ts(x["end_date"]) for x in steps[k])
        sched, queued = (ts(t[f]) if t.get(f) else start for f in ("scheduled_when", "queued_when"))
        wait = max(0.0, start - prev_end)
        waits, busy = waits + wait, busy + (end - start)
        print(f"    {k:28s} {wait:6.1f} {max(0.0, sched - prev_end):6.1f} {queued - sched:6.1f} {start - queued:6.1f} "
              f"{end - start:6.1f}" + (f"  ({len(steps[k])} tasks)" if len(steps[k]) > 1 else ""))
        prev_end = max(prev_end, end)
    print(f"    waits between steps {waits:.1f} s (sched: the previous step's end to scheduled; queue: to queued; "
          f"slot: to started), steps running {busy:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--skip-dags-test", action="store_true", help="time only the scheduler path and nyx run")
    ap.add_argument("--scheduler-only", action="store_true", help="only the scheduler path, with its breakdown "
                    "(no ratio): for looking into where its time goes")
    args = ap.parse_args()
    from tests.e2e.airflow_server import AirflowServer

    work = Path(tempfile.mkdtemp(prefix="nyx-overhead-"))
    cores = os.cpu_count() or 1
    env = {**os.environ, "PYTHONHASHSEED": "0", "AIRFLOW_HOME": str(work / "airflow"),
           "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"), "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "NYX_CONFIG_DIR": str(REPO / "configs")}
    env.pop("NYX_ARTIFACTS_ROOT", None)  # each run's artifacts_root (conf / --root) must hold: the env would win
    sides = ["scheduler"] if args.scheduler_only else (
        ["nyx run", "scheduler"] + ([] if args.skip_dags_test else ["dags test"]))
    try:
        subprocess.run([str(BIN / "nyx"), "models", "build-tiny", str(work / "unused")], env=env, check=True,
                       capture_output=True)  # warms the shared tiny-model cache
        subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True)
        print(f"starting airflow standalone (LocalExecutor, parallelism {cores}) ...", flush=True)
        with AirflowServer(work / "standalone", extra_env={"AIRFLOW__CORE__PARALLELISM": str(cores),
                                                           "NYX_ARTIFACTS_ROOT": ""}) as server:
            server.wait_for("nyxqa_to_model parsed",
                            lambda: server.api("GET", "/dags/nyxqa_to_model").status_code == 200, 300)
            assert server.api("PATCH", "/dags/nyxqa_to_model", json={"is_paused": False}).status_code == 200
            best = dict.fromkeys(sides, float("inf"))
            for r in range(args.repeats):
                for side in sides if r % 2 == 0 else sides[::-1]:
                    root = work / f"art-{side.replace(' ', '-')}-{r}"
                    conf = {"partition": "bench", "artifacts_root": str(root)}
                    if side == "nyx run":
                        seconds = timed([str(BIN / "nyx"), "run", "--profile", "demo", "--root", str(root),
                                         "--partition", "bench"], env)
                    elif side == "dags test":
                        seconds = timed([str(BIN / "airflow"), "dags", "test", "nyxqa_to_model", "-c",
                                         json.dumps(conf)], env)
                    else:
                        seconds = scheduler_run(server, conf)
                    best[side] = min(best[side], seconds)
                    print(f"  run {r + 1} {side:9s} {seconds:7.1f} s", flush=True)
        if args.scheduler_only:
            return
        base = best["nyx run"]
        print(f"demo pipeline, 10 stages, best of {args.repeats}, {cores} cores: nyx run {base:.1f} s")
        print(f"  scheduler path (standalone + LocalExecutor, REST trigger): {best['scheduler']:.1f} s: "
              f"ratio {best['scheduler'] / base:.2f}   (goal <= 1.5)")
        if "dags test" in best:
            print(f"  airflow dags test: {best['dags test']:.1f} s: ratio {best['dags test'] / base:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

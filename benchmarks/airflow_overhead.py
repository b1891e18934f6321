"""What Airflow costs on top of the work: the full demo pipeline (ten stages)
through `airflow dags test nyxqa_to_model` vs the same stages through
`nyx run`, side by side, each from an empty artifact root (its own embedding
and request caches), alternating, best of `--repeats`. Goal: ratio <= 1.5.

    python benchmarks/airflow_overhead.py [--repeats 2]

Both sides share the tiny offline models (built once beforehand) and a
migrated SQLite Airflow home, so neither pays for set-up the other skips.
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
BIN = Path(sys.executable).parent


def timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])} failed:\n{(out.stdout + out.stderr)[-4000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nyx-overhead-"))
    env = {**os.environ, "PYTHONHASHSEED": "0", "AIRFLOW_HOME": str(work / "airflow"),
           "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"), "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "NYX_CONFIG_DIR": str(REPO / "configs")}
    env.pop("NYX_ARTIFACTS_ROOT", None)
    try:
        subprocess.run([str(BIN / "nyx"), "models", "build-tiny", str(work / "unused")], env=env, check=True,
                       capture_output=True)  # warms the shared tiny-model cache
        subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True)
        best = {"airflow": float("inf"), "nyx run": float("inf")}
        for r in range(args.repeats):
            for side in (("nyx run", "airflow") if r % 2 == 0 else ("airflow", "nyx run")):
                root = work / f"art-{side.replace(' ', '-')}-{r}"
                if side == "nyx run":
                    cmd = [str(BIN / "nyx"), "run", "--profile", "demo", "--root", str(root), "--partition", "bench"]
                else:
                    cmd = [str(BIN / "airflow"), "dags", "test", "nyxqa_to_model", "-c",
                           json.dumps({"partition": "bench", "artifacts_root": str(root)})]
                seconds = timed(cmd, env)
                best[side] = min(best[side], seconds)
                print(f"  run {r + 1} {side:8s} {seconds:7.1f} s", flush=True)
        ratio = best["airflow"] / best["nyx run"]
        print(f"demo pipeline, 10 stages: airflow dags test {best['airflow']:.1f} s vs nyx run {best['nyx run']:.1f} s "
              f"(best of {args.repeats}): ratio {ratio:.2f}   (goal <= 1.5)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

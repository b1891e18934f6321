"""benchmarks/gpu_check.py --cpu-smoke: the GPU check's code paths (torch search, the mmE5
embedder around an in-memory model, stage-1 training through the real trainer) at tiny shapes,
so the script is known to run before a GPU session spends its minutes on it."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_smoke_runs_every_path_and_prints_figures():
    out = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--cpu-smoke"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = {m.group(1): m.group(2) for m in re.finditer(r"^\[gpu_check\] (\w+): (.*)$", out.stdout, re.M)}
    assert set(lines) >= {"search", "mme5", "train"}
    assert "3/3 checks passed" in out.stdout
    assert float(re.search(r"agreement with fp32: ([\d.]+)", lines["search"]).group(1)) == 1.0
    assert float(re.search(r"([\d.]+) items/s", lines["mme5"]).group(1)) > 0
    assert "vectors finite: True" in lines["mme5"]
    assert float(re.search(r"([\d.]+) samples/s", lines["train"]).group(1)) > 0


def test_gpu_check_refuses_an_unknown_check_by_name():
    out = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--cpu-smoke", "--only", "serch"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "serch" in out.stderr

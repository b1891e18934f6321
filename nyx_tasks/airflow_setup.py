"""`nyx airflow init`: what a deployment needs in Airflow before the first run,
made from the environment: the `gpu` pool (its slots are the GPUs of the gpu
workers: `shard_gpu<N>` tasks take N) and the `nyx_vllm` connection to an
OpenAI-compatible vLLM server. The `gpu` queue is the Celery queue the GPU
worker listens on (`airflow celery worker --queues gpu`); it exists as soon as
that worker runs.

It drives the `airflow` CLI of this environment in subprocesses, so the
library never imports Airflow; re-running it updates both in place. The API key
goes to the connection's password, never to the command line of a logged
process or to the output.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

POOL, CONNECTION = "gpu", "nyx_vllm"


def airflow_bin() -> str:
    here = Path(sys.executable).with_name("airflow")
    found = str(here) if here.exists() else shutil.which("airflow")
    if not found:
        raise RuntimeError("the `airflow` command is not installed in this environment")
    return found


def _airflow(*args: str) -> str:
    out = subprocess.run([airflow_bin(), *args], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"airflow {' '.join(args[:2])} failed: {(out.stderr or out.stdout).strip()[-500:]}")
    return out.stdout


def init(env: dict[str, str] | None = None) -> dict:
    """Create or update the pool and (when NYX_VLLM_URL is set) the connection.
    Environment: NYX_GPU_SLOTS (default 1), NYX_VLLM_URL, NYX_VLLM_API_KEY."""
    env = dict(os.environ if env is None else env)
    slots = int(env.get("NYX_GPU_SLOTS", "1"))
    if slots < 1:
        raise ValueError(f"NYX_GPU_SLOTS must be >= 1, got {slots}")
    _airflow("pools", "set", POOL, str(slots), "GPU slots of the gpu-queue workers (a task on N GPUs takes N)")
    done = {"pool": {"name": POOL, "slots": slots}, "queue": POOL, "connection": None}
    url = env.get("NYX_VLLM_URL", "").strip()
    if url:
        conn = {CONNECTION: {"conn_type": "http", "host": url, "password": env.get("NYX_VLLM_API_KEY") or None,
                             "description": "OpenAI-compatible vLLM server for the openai backend"}}
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(conn, f)  # a file, not argv: the key never shows in a process list
        try:
            _airflow("connections", "import", "--overwrite", f.name)
        finally:
            os.unlink(f.name)
        done["connection"] = {"conn_id": CONNECTION, "host": url, "password_set": bool(env.get("NYX_VLLM_API_KEY"))}
    return done

"""`nyx airflow init` against a real Airflow metadata database (SQLite in a
temp AIRFLOW_HOME): the gpu pool and the nyx_vllm connection from the
environment; re-running updates in place; the key never reaches the output."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.airflow


def run(env, *args):
    return subprocess.run([sys.executable, "-m", "nyx_tasks", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=300)


def airflow(env, *args):
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "airflow"), *args], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_init_creates_pool_and_connection_from_the_environment(tmp_path):
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "home"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "NYX_GPU_SLOTS": "4", "NYX_VLLM_URL": "http://127.0.0.1:8000/v1", "NYX_VLLM_API_KEY": "s3cret-key"}
    airflow(env, "db", "migrate")
    out = run(env, "airflow", "init")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "s3cret-key" not in out.stdout + out.stderr
    assert json.loads(out.stdout)["connection"]["password_set"] is True
    pools = json.loads(airflow(env, "pools", "get", "gpu", "--output", "json"))
    assert pools[0]["slots"] in (4, "4")
    conn = json.loads(airflow(env, "connections", "get", "nyx_vllm", "--output", "json"))[0]
    assert conn["host"] == "http://127.0.0.1:8000/v1" and conn["conn_type"] == "http"
    # again with other values: updated in place
    out = run({**env, "NYX_GPU_SLOTS": "8", "NYX_VLLM_URL": "http://127.0.0.1:9000/v1"}, "airflow", "init")
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(airflow(env, "pools", "get", "gpu", "--output", "json"))[0]["slots"] in (8, "8")
    assert json.loads(airflow(env, "connections", "get", "nyx_vllm", "--output", "json"))[0]["host"].endswith(":9000/v1")
    bad = run({**env, "NYX_GPU_SLOTS": "0"}, "airflow", "init")
    assert bad.returncode == 1 and "NYX_GPU_SLOTS must be >= 1" in bad.stderr

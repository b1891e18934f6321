"""docker-compose.yaml validated against the official Compose schema (no engine
runs here), after Compose-style variable interpolation; plus the services,
queues, GPU reservations, health checks and shared secret that matter."""

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.conftest import REPO

SCHEMA = REPO.parent / "shared" / "schemas" / "compose-spec.json"
VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?([-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} (and $$ escapes)."""
    def sub(m):
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name in env:
            return env[name]
        if op == "?":
            raise KeyError(f"{name} is required: {arg}")
        return arg or ""
    return VAR.sub(sub, text.replace("$$", "\0")).replace("\0", "$")


@pytest.fixture(scope="module")
def compose():
    raw = (REPO / "docker-compose.yaml").read_text()
    with pytest.raises(KeyError, match="NYX_JWT_SECRET"):
        interpolate(raw, {"NYX_VLLM_API_KEY": "k"})  # the shared secret must be given, never defaulted
    with pytest.raises(KeyError, match="NYX_VLLM_API_KEY"):
        interpolate(raw, {"NYX_JWT_SECRET": "s"})  # so must the vLLM key
    return yaml.safe_load(interpolate(raw, {"NYX_JWT_SECRET": "test-secret", "NYX_VLLM_API_KEY": "test-key"}))


@pytest.mark.skipif(not SCHEMA.exists(), reason="shared/schemas not present")
def test_valid_against_the_official_compose_schema(compose):
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator(schema).validate(compose)


def test_services_queues_and_health(compose):
    s = compose["services"]
    assert {"postgres", "redis", "airflow-init", "airflow-apiserver", "airflow-scheduler",
            "airflow-dag-processor", "airflow-triggerer", "airflow-worker", "airflow-worker-gpu", "vllm"} <= set(s)
    for name in ("postgres", "redis", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                 "airflow-triggerer", "airflow-worker", "airflow-worker-gpu", "vllm"):
        assert "test" in s[name]["healthcheck"], name
    assert "--queues gpu" in " ".join(s["airflow-worker-gpu"]["command"])
    assert "--queues default" in s["airflow-worker"]["command"]
    for name in ("airflow-worker-gpu", "vllm"):
        devices = s[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
    vllm = s["vllm"]["command"]
    assert vllm[vllm.index("--tensor-parallel-size") + 1] == "4"
    assert "InternVL3" in vllm[vllm.index("--model") + 1]
    airflow = [n for n in s if n.startswith("airflow-")]
    secrets = {s[n]["environment"]["AIRFLOW__API_AUTH__JWT_SECRET"] for n in airflow}
    assert secrets == {"test-secret"}  # one shared JWT secret
    assert all(s[n]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor" for n in airflow)
    assert all("artifacts:/artifacts" in s[n]["volumes"] for n in airflow)
    assert all("models:/models" in s[n]["volumes"] for n in airflow) and "models:/models" in s["vllm"]["volumes"]
    # the init service makes the gpu pool and the nyx_vllm connection; workers and vLLM share one key
    assert "nyx airflow init" in " ".join(s["airflow-init"]["command"])
    assert {s[n]["environment"]["NYX_VLLM_API_KEY"] for n in airflow} == {"test-key"}
    assert vllm[vllm.index("--api-key") + 1] == "test-key"
    assert s["vllm"]["healthcheck"]["test"][-1].endswith("/health")


def test_dockerfiles_install_this_project():
    for name in ("airflow.Dockerfile", "gpu-worker.Dockerfile"):
        text = Path(REPO / "docker" / name).read_text()
        assert "COPY nyx_tasks" in text.replace("--chown=airflow:root ", "")
        assert re.search(r'-e "?\.', text), name
    assert "apache/airflow:3.3" in (REPO / "docker" / "airflow.Dockerfile").read_text()
    gpu = (REPO / "docker" / "gpu-worker.Dockerfile").read_text()
    # torch before DeepSpeed, whose sdist build imports it; then vLLM, faiss-gpu through the gpu extra
    assert gpu.index('"torch==') < gpu.index("--no-build-isolation \"deepspeed") < gpu.index('".[gpu]"')
    assert "nvidia/cuda:" in gpu and "--queues\", \"gpu\"" in gpu

"""docker-compose.yaml as Compose reads it (no engine runs here): the YAML parsed first,
then Compose-style variable interpolation of its values (Compose parses before it
interpolates, so a value that only reads as YAML after interpolation is refused by the
real client), validated against the official Compose schema vendored in
tests/data/schemas (see its README for the version); plus the services, queues, GPU
reservations, health checks and shared secret that matter."""

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.conftest import REPO

SCHEMA = REPO / "tests" / "data" / "schemas" / "compose-spec.json"
VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?([-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} (and $$ escapes) in one string value."""
    def sub(m):
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name in env:
            return env[name]
        if op == "?":
            raise KeyError(f"{name} is required: {arg}")
        return arg or ""
    return VAR.sub(sub, text.replace("$$", "\0")).replace("\0", "$")


def interpolate_tree(node, env: dict[str, str]):
    """Interpolate every string value of a parsed Compose file, as Compose does after parsing."""
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(v, env) for v in node]
    return interpolate(node, env) if isinstance(node, str) else node


@pytest.fixture(scope="module")
def parsed():
    return yaml.safe_load((REPO / "docker-compose.yaml").read_text())  # the YAML must parse as written


@pytest.fixture(scope="module")
def compose(parsed):
    with pytest.raises(KeyError, match="NYX_JWT_SECRET"):
        interpolate_tree(parsed, {"NYX_VLLM_API_KEY": "k"})  # the shared secret must be given, never defaulted
    with pytest.raises(KeyError, match="NYX_VLLM_API_KEY"):
        interpolate_tree(parsed, {"NYX_JWT_SECRET": "s"})  # so must the vLLM key
    return interpolate_tree(parsed, {"NYX_JWT_SECRET": "test-secret", "NYX_VLLM_API_KEY": "test-key"})


def test_valid_against_the_official_compose_schema(parsed, compose):
    schema = json.loads(SCHEMA.read_text())
    assert schema["$id"] == "compose_spec.json" and schema["title"] == "Compose Specification"
    validator = jsonschema.Draft7Validator(schema)
    validator.validate(parsed)  # as written (interpolation placeholders are strings the schema allows)
    validator.validate(compose)
    broken = json.loads(json.dumps(compose))
    broken["services"]["vllm"]["healthcheck"]["interval"] = {"not": "a duration"}
    assert not validator.is_valid(broken)  # the schema checks what the services say


def test_an_unquoted_colon_in_a_value_is_what_compose_refuses():
    """The bug this file had: `KEY: ${VAR:?text: more}` is a YAML error before any interpolation."""
    with pytest.raises(yaml.YAMLError, match="mapping values are not allowed"):
        yaml.safe_load("x:\n  KEY: ${VAR:?set VAR: the reason}\n")
    assert yaml.safe_load('x:\n  KEY: "${VAR:?set VAR: the reason}"\n')["x"]["KEY"].startswith("${VAR")


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

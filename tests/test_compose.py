"""docker-compose.yaml as Compose reads it (no engine runs here): the YAML parsed first,
then Compose-style variable interpolation of its values (Compose parses before it
interpolates, so a value that only reads as YAML after interpolation is refused by the
real client), validated against the official Compose schema vendored in
tests/data/schemas (see its README for the version); plus the services, queues, GPU
reservations, health checks and shared secret that matter; and Debian's own client,
`docker-compose config` (1.29, installed by scripts/celery_env.sh), on the same file."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.conftest import REPO

SCHEMA = REPO / "tests" / "data" / "schemas" / "compose-spec.json"
DOCKER_COMPOSE = shutil.which("docker-compose")
REQUIRED = {"NYX_JWT_SECRET": "test-secret", "NYX_VLLM_API_KEY": "test-key"}  # the file's ${VAR:?...}
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


def test_the_vllm_server_runs_the_vllm_the_gpu_worker_pins(compose):
    pin = re.search(r"^ARG VLLM_VERSION=(\S+)$", (REPO / "docker" / "gpu-worker.Dockerfile").read_text(), re.M)
    assert compose["services"]["vllm"]["image"] == f"vllm/vllm-openai:v{pin.group(1)}"


needs_client = pytest.mark.skipif(
    DOCKER_COMPOSE is None, reason="no docker-compose on PATH (scripts/celery_env.sh installs Debian's)")


def docker_compose_config(compose_file: Path, env: dict[str, str], tmp_path: Path, *args: str):
    """`docker-compose config`: parse, interpolate, validate and print the resolved file; no engine.
    Only PATH and HOME come from the caller's environment and the .env file is an empty one,
    so the defaults in the file are what resolves."""
    env_file = tmp_path / "empty.env"
    env_file.touch()
    return subprocess.run(
        [DOCKER_COMPOSE, "--env-file", str(env_file), "--project-directory", str(REPO),
         "-f", str(compose_file), *args, "config"],
        cwd=REPO, env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"), **env},
        capture_output=True, text=True, timeout=60)


@needs_client
def test_debian_docker_compose_refuses_only_the_top_level_name(tmp_path):
    """Debian bookworm's docker-compose 1.29.2 validates against a Compose schema older than the
    top-level `name:` (the project name; valid Compose spec, see the schema test, which stays
    the gate). Asserting that exact refusal notices a client that accepts the file as it is:
    then drop the copy without `name:` below and check the file itself."""
    r = docker_compose_config(REPO / "docker-compose.yaml", REQUIRED, tmp_path)
    assert r.returncode != 0
    assert "'name' does not match any of the regexes: '^x-'" in r.stderr, r.stderr


@needs_client
def test_debian_docker_compose_resolves_the_file(parsed, compose, tmp_path):
    """Everything but the top-level `name:`, through the real client: the file, minus that one
    line, with the name given as `-p` instead (what `name:` sets), resolves; its services are
    the file's, and the client's interpolation agrees with this module's."""
    text = (REPO / "docker-compose.yaml").read_text()
    name = re.findall(r"^name: (\S+)\n", text, re.M)
    assert name == [parsed["name"]]
    copy = tmp_path / "docker-compose.yaml"
    copy.write_text(re.sub(r"^name: \S+\n", "", text, flags=re.M))
    r = docker_compose_config(copy, REQUIRED, tmp_path, "-p", name[0])
    assert r.returncode == 0, r.stderr
    resolved = yaml.safe_load(r.stdout)
    assert set(resolved["services"]) == set(parsed["services"])
    assert set(resolved["volumes"]) == set(parsed["volumes"])
    for service, mine in compose["services"].items():
        theirs = resolved["services"][service]
        assert theirs.get("environment") == mine.get("environment"), service
        assert theirs.get("command") == mine.get("command"), service
        assert theirs["image"] == mine["image"], service
        assert ("build" in theirs) == ("build" in mine), service
        if "build" in mine:  # relative to the project directory: the repo, where docker/*.Dockerfile are
            assert theirs["build"] == {"context": str(REPO), "dockerfile": mine["build"]["dockerfile"]}, service
    assert resolved["services"]["vllm"]["deploy"]["resources"]["reservations"]["devices"][0]["count"] in (4, "4")


@needs_client
@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_debian_docker_compose_refuses_a_missing_required_variable(missing, tmp_path):
    # interpolation comes before validation, so the file as it is reaches this error
    env = {k: v for k, v in REQUIRED.items() if k != missing}
    r = docker_compose_config(REPO / "docker-compose.yaml", env, tmp_path)
    assert r.returncode != 0
    assert "Missing mandatory value" in r.stderr and missing in r.stderr, r.stderr

"""The GPU image's install set resolves (docker/gpu-worker.Dockerfile).

vLLM pins torch exactly, DeepSpeed is built (sdist, no build isolation) against whatever torch
is installed first, and this project's `gpu` extra joins them with Airflow's Celery worker: a
pin that disagrees with another only shows when pip resolves the lot. So this test reads the
Dockerfile itself — its ARG pins, its `pip install` commands and the project files it COPYs —
and has pip resolve exactly that set against PyPI for the image's platform (its Python, glibc
and x86_64), then checks that the resolved torch is the one vLLM requires and the one the
DeepSpeed step pins. It needs PyPI (skipped, with the reason, only when PyPI is unreachable).
The offline tests check the order of the pip commands and that pyproject.toml's torch range
admits both the CPU set-up's pin (scripts/cpu-constraints.txt) and the image's torch.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import REPO

DOCKERFILE = REPO / "docker" / "gpu-worker.Dockerfile"
CPU_PINS = REPO / "scripts" / "cpu-constraints.txt"
INDEX = "https://pypi.org/simple"
# glibc of each base image's distribution: pip may only take wheels whose manylinux tag it meets
GLIBC = {"ubuntu22.04": 35, "ubuntu24.04": 39}
PIP_OPTIONS_WITH_VALUE = {"-e", "--editable"}
PIP_FLAGS = {"--no-build-isolation"}


@dataclass
class PipStep:
    env: dict[str, str]
    reqs: list[str]
    editables: list[str] = field(default_factory=list)
    flags: set[str] = field(default_factory=set)

    def names(self) -> set[str]:
        return {canonicalize_name(Requirement(r).name) for r in self.reqs}

    def pin(self, name: str) -> str | None:
        """The exact version this step pins `name` to (None when it does not name it)."""
        for r in self.reqs:
            req = Requirement(r)
            if canonicalize_name(req.name) == canonicalize_name(name):
                (spec,) = req.specifier  # exactly one clause
                assert spec.operator == "==", f"{r}: the image pins exact versions"
                return spec.version
        return None


@dataclass
class Image:
    base: str
    python: str
    workdir: str
    args: dict[str, str]
    copies: list[tuple[str, str]]
    steps: list[PipStep]  # every `pip install` but pip's own upgrade


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comment lines dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        if line.strip().startswith("#") or (not buf and not line.strip()):
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        keyword, _, rest = buf.strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
        buf = ""
    return out


def _expand(text: str, args: dict[str, str]) -> str:
    def sub(m):
        name = m.group(1) or m.group(2)
        assert name in args, f"${name} in a pip command is no ARG with a default in {DOCKERFILE.name}"
        return args[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, text)


def _pip_step(tokens: list[str]) -> PipStep | None:
    env = {}
    while tokens and re.fullmatch(r"\w+=.*", tokens[0]):
        k, _, v = tokens.pop(0).partition("=")
        env[k] = v
    if tokens[:2] != ["pip", "install"]:
        return None
    step, rest = PipStep(env=env, reqs=[]), tokens[2:]
    while rest:
        tok = rest.pop(0)
        if tok in PIP_OPTIONS_WITH_VALUE:
            step.editables.append(rest.pop(0))
        elif tok in PIP_FLAGS:
            step.flags.add(tok)
        elif tok.startswith("-"):
            raise AssertionError(
                f"pip option {tok!r} in {DOCKERFILE.name}: tests/integration/test_gpu_install.py does not pass "
                "it to its resolver yet; teach it (PIP_FLAGS / PIP_OPTIONS_WITH_VALUE) first")
        else:
            step.reqs.append(tok)
    return step


@cache
def image() -> Image:
    text = DOCKERFILE.read_text()
    args, copies, steps = {}, [], []
    base = workdir = python = None
    for keyword, rest in _instructions(text):
        if keyword == "FROM":
            base = rest.split()[0]
        elif keyword == "ARG" and "=" in rest:
            k, _, v = rest.partition("=")
            args[k.strip()] = v.strip().strip('"')
        elif keyword == "WORKDIR":
            workdir = rest
        elif keyword == "COPY":
            *srcs, dest = shlex.split(rest)
            copies += [(s, dest) for s in srcs if not s.startswith("--")]
        elif keyword == "RUN":
            if m := re.search(r"\bpython(3\.\d+) -m venv\b", rest):
                python = m.group(1)
            segments, current = [], []
            for tok in shlex.split(_expand(rest, args)):
                if tok in ("&&", ";"):
                    segments.append(current)
                    current = []
                else:
                    current.append(tok)
            segments.append(current)
            for seg in segments:
                step = _pip_step(seg)
                if step and step.names() != {"pip"}:
                    steps.append(step)
    assert base and python and workdir, "FROM, WORKDIR and a `python3.X -m venv` expected"
    return Image(base, python, workdir, args, copies, steps)


def test_torch_first_then_deepspeed_built_against_it_then_the_rest():
    img = image()
    torch, vision = img.args["TORCH_VERSION"], img.args["TORCHVISION_VERSION"]
    first = img.steps[0]
    assert first.names() == {"torch", "torchvision"}, "the first pip command installs torch alone"
    assert (first.pin("torch"), first.pin("torchvision")) == (torch, vision)
    ds = [s for s in img.steps if "deepspeed" in s.names()]
    assert ds and img.steps.index(ds[0]) > 0, "DeepSpeed after torch"
    assert "--no-build-isolation" in ds[0].flags, "an isolated build would compile against another torch"
    assert ds[0].env.get("DS_BUILD_OPS") == "0"
    assert ds[0].pin("deepspeed") == img.args["DEEPSPEED_VERSION"]
    # no pip command may move torch: each one that installs anything repeats its pin
    for step in img.steps:
        assert step.pin("torch") == torch, f"a pip command without torch=={torch}: {step.reqs}"
    last = img.steps[-1]
    assert last.pin("vllm") == img.args["VLLM_VERSION"]
    assert last.pin("faiss-gpu") == img.args["FAISS_GPU_VERSION"]
    assert last.editables == [".[gpu]"]


def test_pyproject_torch_range_admits_the_cpu_pin_and_the_image_torch():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = {canonicalize_name(Requirement(d).name): Requirement(d) for d in meta["dependencies"]}
    gpu = {canonicalize_name(Requirement(d).name): Requirement(d) for d in meta["optional-dependencies"]["gpu"]}
    cpu = {}
    for line in CPU_PINS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            cpu[canonicalize_name(req.name)] = next(iter(req.specifier)).version
    args = image().args
    for name, gpu_version in (("torch", args["TORCH_VERSION"]), ("torchvision", args["TORCHVISION_VERSION"])):
        spec = deps[name].specifier
        assert spec.contains(cpu[name]), f"{name} {spec}: the CPU set-up's {cpu[name]}"
        assert spec.contains(gpu_version), f"{name} {spec}: the GPU image's {gpu_version}"
    for name, arg in (("vllm", "VLLM_VERSION"), ("deepspeed", "DEEPSPEED_VERSION"), ("faiss-gpu", "FAISS_GPU_VERSION")):
        assert gpu[name].specifier.contains(args[arg]), f"the gpu extra's {gpu[name]} vs the image's {args[arg]}"


def _pip_env() -> dict[str, str]:
    """pip as a clean image has it: PyPI only, none of this machine's pip.conf (local indexes, caps)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_DEFAULT_TIMEOUT="60")
    return env


def _pip(*argv: str, cwd: Path, env: dict[str, str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, (
        f"pip {' '.join(argv[:3])} … failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")


@pytest.fixture(scope="module")
def pypi():
    for url in (f"{INDEX}/pip/", "https://files.pythonhosted.org/"):
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5).close()
        except urllib.error.HTTPError:
            pass  # the host answered
        except (OSError, ValueError) as e:
            pytest.skip(f"PyPI is unreachable from here ({url}: {e}); the GPU install set needs it")


def test_gpu_image_install_set_resolves(pypi, tmp_path):
    img = image()
    torch, vision = img.args["TORCH_VERSION"], img.args["TORCHVISION_VERSION"]
    # the project as the image has it: what its COPY lines put under WORKDIR (Docker's rules:
    # a directory's contents go to the destination; a file goes into a destination ending in /)
    workdir = tmp_path / "image" / img.workdir.lstrip("/")
    for src, dest in img.copies:
        target = workdir / dest
        if (REPO / src).is_dir():
            shutil.copytree(REPO / src, target, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            target = target / Path(src).name if dest.endswith("/") else target
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / src, target)
    env = _pip_env()

    # DeepSpeed is an sdist, which a resolve for another platform may not build: build its wheel
    # here as the image builds it (no isolation, DS_BUILD_OPS=0; pure Python, so it fits any
    # platform) and let the resolve find it there, next to PyPI.
    ds_step = next(s for s in img.steps if "deepspeed" in s.names())
    ds_req = next(r for r in ds_step.reqs if canonicalize_name(Requirement(r).name) == "deepspeed")
    _pip("wheel", "--no-deps", "--no-build-isolation", "-q", "--index-url", INDEX,
         "-w", str(tmp_path / "wheels"), ds_req, cwd=tmp_path, env={**env, **ds_step.env})

    reqs = [r for step in img.steps for r in step.reqs]
    editables = [str(workdir / e) for step in img.steps for e in step.editables]
    glibc = GLIBC[img.base.rsplit("-", 1)[-1]]
    platforms = [f"manylinux_2_{m}_x86_64" for m in range(glibc, 4, -1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    report = tmp_path / "report.json"
    _pip("install", "--dry-run", "--ignore-installed", "--index-url", INDEX,
         "--use-feature=fast-deps",  # metadata by HTTP range requests: no multi-GB download
         "--python-version", img.python, "--implementation", "cp",
         "--abi", f"cp{img.python.replace('.', '')}", *[a for p in platforms for a in ("--platform", p)],
         "--only-binary=:all:", "--find-links", str(tmp_path / "wheels"), "--report", str(report),
         *reqs, *[a for e in editables for a in ("-e", e)],
         cwd=workdir, env=env)
    installed = {canonicalize_name(i["metadata"]["name"]): i["metadata"]
                 for i in json.loads(report.read_text())["install"]}

    assert installed["torch"]["version"] == torch and installed["torchvision"]["version"] == vision
    assert installed["deepspeed"]["version"] == img.args["DEEPSPEED_VERSION"]
    assert installed["vllm"]["version"] == img.args["VLLM_VERSION"]
    assert installed["faiss-gpu"]["version"] == img.args["FAISS_GPU_VERSION"]
    assert "nyx-pipeline" in installed
    # the torch (and torchvision) that vLLM's own metadata pins is the image's ...
    target = {"python_version": img.python, "python_full_version": f"{img.python}.0",
              "platform_machine": "x86_64", "sys_platform": "linux", "platform_system": "Linux",
              "os_name": "posix", "implementation_name": "cpython", "extra": ""}
    vllm_pins = {canonicalize_name(r.name): str(r.specifier)
                 for r in map(Requirement, installed["vllm"]["requires_dist"])
                 if r.marker is None or r.marker.evaluate(target)}
    assert vllm_pins["torch"] == f"=={torch}", f"vllm {img.args['VLLM_VERSION']} wants torch{vllm_pins['torch']}"
    assert vllm_pins["torchvision"] == f"=={vision}"
    # ... and the one DeepSpeed's step builds it against (that step pins it; DeepSpeed accepts it)
    assert ds_step.pin("torch") == torch
    ds_torch = next(r for r in map(Requirement, installed["deepspeed"]["requires_dist"])
                    if canonicalize_name(r.name) == "torch" and r.marker is None)
    assert ds_torch.specifier.contains(Version(torch)), f"deepspeed needs {ds_torch}"

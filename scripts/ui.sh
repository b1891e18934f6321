#!/usr/bin/env bash
# The Airflow UI for this checkout: `airflow standalone` (api-server, scheduler,
# dag-processor, triggerer; SQLite) on http://127.0.0.1:${NYX_UI_PORT:-8080},
# with the gpu pool made by `nyx airflow init`. Log in as `admin`; the password
# is printed below (Airflow generates it once, under $AIRFLOW_HOME).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/airflow_env.sh
PORT="${NYX_UI_PORT:-8080}"
export AIRFLOW__API__HOST=127.0.0.1 AIRFLOW__API__PORT="$PORT"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$PORT/execution/"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS:-admin:admin}"
mkdir -p "$AIRFLOW_HOME"
.venv/bin/airflow db migrate > "$AIRFLOW_HOME/db-migrate.log" 2>&1 || { cat "$AIRFLOW_HOME/db-migrate.log" >&2; exit 1; }
.venv/bin/nyx airflow init > /dev/null
PASSWORDS="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
( for _ in $(seq 120); do [ -s "$PASSWORDS" ] && break; sleep 1; done
  echo "[ui] http://127.0.0.1:$PORT  user admin, password: $(cat "$PASSWORDS" 2>/dev/null)" >&2 ) &
exec .venv/bin/airflow standalone

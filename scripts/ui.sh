#!/usr/bin/env bash
# The Airflow UI for this checkout: `airflow standalone` (api-server, scheduler,
# dag-processor, triggerer) on http://127.0.0.1:${NYX_UI_PORT:-8080}, with the
# gpu pool made by `nyx airflow init`. Everything listens on 127.0.0.1.
# Its metadata database: by default a PostgreSQL cluster of its own under
# $AIRFLOW_HOME/pg (scripts/ui_postgres.sh: made once and reused, Unix socket
# only, started before Airflow and stopped after it; Debian's PostgreSQL and the
# drivers are installed by scripts/postgres_env.sh when missing). SQLite takes one
# writer at a time and refused the UI's Run Backfill while the scheduler wrote.
# AIRFLOW__DATABASE__SQL_ALCHEMY_CONN set: that database, and no Postgres is
# started; NYX_UI_DB=sqlite: SQLite under $AIRFLOW_HOME (the old default).
# When all four components are healthy it prints one line,
#   [ui] http://127.0.0.1:8080  admin / <password>
# (Airflow generates the password once, under $AIRFLOW_HOME), and runs until
# Ctrl-C or SIGTERM, which stop the whole standalone process group, then its
# Postgres. If a component (or the Postgres) dies, or the UI is not healthy within
# NYX_UI_TIMEOUT seconds (300), it says so in one line, names the log to read,
# stops it all and exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
USER_CONN="${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-}"  # before airflow_env.sh sets its default
source scripts/airflow_env.sh
# A shell that sourced airflow_env.sh before exports one of its defaults: not a database of the user's.
case "$USER_CONN" in "$NYX_SQLITE_URL"|"$NYX_UI_PG_URL") USER_CONN="" ;; esac
PORT="${NYX_UI_PORT:-8080}"
TIMEOUT="${NYX_UI_TIMEOUT:-300}"
PY="$PWD/.venv/bin/python"
# `airflow standalone` starts its components as `airflow <component>` from PATH.
export PATH="$PWD/.venv/bin:$PATH"
export AIRFLOW__API__PORT="$PORT"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$PORT/execution/"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS:-admin:admin}"
PASSWORDS="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated}"
LOG="$AIRFLOW_HOME/standalone.log"
SPID=""
# The standalone's whole process group (its own session), then the Postgres: Airflow's components
# end their database sessions before the database goes away.
stop() {
  if [ -n "$SPID" ] && kill -TERM -- "-$SPID" 2>/dev/null; then
    for _ in $(seq 60); do kill -0 -- "-$SPID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$SPID" 2>/dev/null || true
  fi
  [ "$(type -t ui_pg_stop)" != function ] || ui_pg_stop
}
trap 'trap - INT TERM EXIT; stop; echo "[ui] stopped" >&2; exit 130' INT
trap 'trap - INT TERM EXIT; stop; echo "[ui] stopped" >&2; exit 143' TERM
trap 'rc=$?; trap - INT TERM EXIT; stop; exit "$rc"' EXIT  # a command that failed under set -e
die() { trap - INT TERM EXIT; echo "[ui] FAILED: $*" >&2; stop; exit 1; }

# Refuse a taken port now, not after a minute of start-up (SO_REUSEADDR as the api-server: a
# previous run's TIME_WAIT connections do not count).
"$PY" - "$PORT" <<'EOF' || die "127.0.0.1:$PORT is already in use; stop what listens there or pick another port with NYX_UI_PORT=<port>"
import socket, sys
with socket.socket() as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", int(sys.argv[1])))
    except OSError:
        sys.exit(1)
EOF

mkdir -p "$AIRFLOW_HOME"
if [ -n "$USER_CONN" ]; then
  echo "[ui] metadata database: AIRFLOW__DATABASE__SQL_ALCHEMY_CONN (yours; no Postgres started)" >&2
else
  case "${NYX_UI_DB:-postgres}" in
    postgres)
      bash scripts/postgres_env.sh || die "could not install PostgreSQL or its drivers (scripts/postgres_env.sh); or run with NYX_UI_DB=sqlite"
      source scripts/ui_postgres.sh
      ui_pg_start ;;
    sqlite) echo "[ui] metadata database: SQLite ($AIRFLOW_HOME/airflow.db; one writer at a time)" >&2 ;;
    *) die "NYX_UI_DB=$NYX_UI_DB: use postgres (the default) or sqlite" ;;
  esac
fi
airflow db migrate > "$AIRFLOW_HOME/db-migrate.log" 2>&1 || { cat "$AIRFLOW_HOME/db-migrate.log" >&2; die "airflow db migrate; read $AIRFLOW_HOME/db-migrate.log"; }
nyx airflow init > /dev/null

# The scheduler and the triggerer start log servers on 0.0.0.0 (Airflow 3.3 hard-codes the host:
# airflow/utils/serve_logs/core.py); `--skip-serve-logs` is the supported way to not start them, and
# nothing needs them here: tasks run on this machine and the api-server reads their logs from
# $AIRFLOW_HOME/logs. A shim first on PATH adds the flag, and notes any component that exits.
SHIM_DIR="$AIRFLOW_HOME/ui-bin" EXITS="$AIRFLOW_HOME/ui-exits"
mkdir -p "$SHIM_DIR"
: > "$EXITS"
{ printf '#!/usr/bin/env bash\n# Written by scripts/ui.sh (see there).\nAIRFLOW=%q EXITS=%q\n' "$PWD/.venv/bin/airflow" "$EXITS"
  cat <<'EOF'
case "${1:-}" in
  scheduler|triggerer) set -- "$@" --skip-serve-logs ;;
  dag-processor|api-server) ;;
  *) exec "$AIRFLOW" "$@" ;;
esac
"$AIRFLOW" "$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM INT
while wait "$child"; rc=$?; kill -0 "$child" 2>/dev/null; do :; done
echo "$1 $rc" >> "$EXITS"
exit "$rc"
EOF
} > "$SHIM_DIR/airflow"
chmod +x "$SHIM_DIR/airflow"
export PATH="$SHIM_DIR:$PATH"

STARTED="$(date -u +%Y-%m-%dT%H:%M:%S+00:00)"
# Its own session, so its process group is all of it (components, their children).
setsid "$PWD/.venv/bin/airflow" standalone > "$LOG" 2>&1 < /dev/null &
SPID=$!
check_alive() {
  kill -0 "$SPID" 2>/dev/null || die "airflow standalone exited; read $LOG"
  if [ -n "${UI_PG_PID:-}" ] && ! kill -0 "$UI_PG_PID" 2>/dev/null; then
    die "postgres exited; read $UI_PG_LOG"
  fi
  if [ -s "$EXITS" ]; then
    read -r name rc < "$EXITS"
    die "the $name exited (status $rc); read $LOG"
  fi
}
# Healthy = the metadatabase, and a scheduler, triggerer and dag-processor heartbeating since this start
# (a previous run's jobs in the same database do not count). Prints what is not healthy yet.
health() {
  "$PY" - "$PORT" "$STARTED" <<'EOF'
import json, sys, urllib.request
from datetime import datetime, timezone
def utc(iso):
    t = datetime.fromisoformat(iso)
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)
port, started = sys.argv[1], utc(sys.argv[2])
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=5) as r:
        h = json.load(r)
except Exception as e:
    sys.exit(f"api-server: {e}")
bad = [] if h.get("metadatabase", {}).get("status") == "healthy" else ["metadatabase"]
for c in ("scheduler", "triggerer", "dag_processor"):
    beat = (h.get(c) or {}).get(f"latest_{c}_heartbeat")
    if (h.get(c) or {}).get("status") != "healthy" or not beat or utc(beat) < started:
        bad.append(c)
sys.exit(", ".join(bad) + " not healthy" if bad else 0)
EOF
}

echo "[ui] starting airflow standalone on 127.0.0.1:$PORT (log: $LOG)" >&2
deadline=$((SECONDS + TIMEOUT))
until why="$(health 2>&1)"; do
  check_alive
  [ "$SECONDS" -lt "$deadline" ] || die "not healthy after ${TIMEOUT}s ($why); read $LOG"
  sleep 2 & wait $!
done
password="$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1])).get("admin", ""))' "$PASSWORDS" 2>/dev/null || true)"
if [ -n "$password" ]; then
  echo "[ui] http://127.0.0.1:$PORT  admin / $password"
else
  echo "[ui] http://127.0.0.1:$PORT  users: $AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS (passwords in $PASSWORDS)"
fi
while :; do
  check_alive
  sleep 2 & wait $!
done

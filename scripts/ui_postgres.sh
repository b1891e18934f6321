# Sourced by scripts/ui.sh: the UI's own PostgreSQL cluster, the embedded Airflow's
# metadata database. Everything is under $AIRFLOW_HOME/pg: the cluster (data/, made
# once by initdb and reused), the Unix socket (run/, mode 0700) and no TCP listener
# at all (listen_addresses=''); trust authentication, for local connections only, by
# the user that owns the socket (root, or the `postgres` user when ui.sh runs as
# root: initdb and postgres refuse root). Its log: $AIRFLOW_HOME/postgres.log.
#
#   ui_pg_start   initdb once, start postgres in a session of its own, wait until it
#                 accepts connections, create the `airflow` database once, and export
#                 AIRFLOW__DATABASE__SQL_ALCHEMY_CONN; UI_PG_PID is its pid.
#   ui_pg_stop    fast shutdown (SIGINT), SIGKILL after 30 s; a no-op when not started.
#   ui_pg_url     the URL of the cluster under $AIRFLOW_HOME (`postgresql+psycopg2://`
#                 over the socket; Airflow derives the asyncpg one from it).
#
# A postmaster.pid left by a killed run does not block the next start: a postgres still
# running on this cluster whose parent is not a live scripts/ui.sh (its ui.sh was killed)
# is stopped first, and a pid file naming no postgres of this cluster is removed.
# Failures go to `die` (ui.sh's: one line, stop everything, exit 1).

UI_PG_DIR="$AIRFLOW_HOME/pg"
UI_PG_DATA="$UI_PG_DIR/data"
UI_PG_SOCK="$UI_PG_DIR/run"
UI_PG_PORT=5432  # names the socket file only (.s.PGSQL.5432); nothing listens on a TCP port
UI_PG_LOG="$AIRFLOW_HOME/postgres.log"
UI_PG_PID=""

# (scripts/airflow_env.sh spells the same URL: NYX_UI_PG_URL, for the CLI while the UI runs.)
ui_pg_url() { echo "postgresql+psycopg2://airflow@/airflow?host=$UI_PG_SOCK&port=$UI_PG_PORT"; }

# initdb / postgres: on PATH, else Debian's /usr/lib/postgresql/<v>/bin (the newest). An existing
# cluster needs the binaries of its own major version.
ui_pg_bindir() {
  local want found
  want="$(cat "$UI_PG_DATA/PG_VERSION" 2>/dev/null || true)"
  if [ -n "$want" ]; then
    [ -x "/usr/lib/postgresql/$want/bin/postgres" ] && { echo "/usr/lib/postgresql/$want/bin"; return; }
  fi
  found="$(command -v initdb || true)"
  if [ -n "$found" ] && command -v postgres > /dev/null; then
    dirname "$(readlink -f "$found")"
    return
  fi
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

# Runs a command as the cluster's owner: `postgres` when we are root, else ourselves.
ui_pg_as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    setpriv --reuid=postgres --regid=postgres --clear-groups -- "$@"
  else
    "$@"
  fi
}

# The pid of a live postgres running on this cluster, from its postmaster.pid (none: empty).
ui_pg_running() {
  local pid
  pid="$(head -n 1 "$UI_PG_DATA/postmaster.pid" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-D $UI_PG_DATA " && echo "$pid"
  return 0
}

ui_pg_clear_stale() {
  local pid parent
  pid="$(ui_pg_running)"
  if [ -n "$pid" ]; then
    parent="$(awk '/^PPid:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)"
    if tr '\0' ' ' < "/proc/$parent/cmdline" 2>/dev/null | grep -q "scripts/ui.sh"; then
      die "another scripts/ui.sh (pid $parent) runs on $AIRFLOW_HOME; stop it first or pick another AIRFLOW_HOME"
    fi
    echo "[ui] stopping the postgres (pid $pid) a killed scripts/ui.sh left running on $UI_PG_DATA" >&2
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    [ -z "$(ui_pg_running)" ] || die "postgres (pid $pid) on $UI_PG_DATA does not stop; stop it and start again"
  fi
  rm -f "$UI_PG_DATA/postmaster.pid"
}

ui_pg_init() {
  local bindir="$1"
  [ -s "$UI_PG_DATA/PG_VERSION" ] && return 0
  echo "[ui] initdb: a PostgreSQL cluster for the metadata database in $UI_PG_DATA" >&2
  rm -rf "$UI_PG_DIR/data.init"
  mkdir -p "$UI_PG_DIR/data.init"
  [ "$(id -u)" -ne 0 ] || chown postgres:postgres "$UI_PG_DIR/data.init"
  # Made aside and renamed when complete: an interrupted initdb leaves no half cluster behind.
  (cd / && ui_pg_as_owner env LC_ALL=C "$bindir/initdb" -D "$UI_PG_DIR/data.init" -U airflow \
    --auth-local=trust --auth-host=reject -E UTF8 --locale=C --no-instructions) >> "$UI_PG_LOG" 2>&1 \
    || die "initdb failed; read $UI_PG_LOG"
  mv "$UI_PG_DIR/data.init" "$UI_PG_DATA"
}

ui_pg_prepare_dirs() {
  mkdir -p "$UI_PG_DIR" "$UI_PG_SOCK"
  chmod 0700 "$UI_PG_SOCK"
  if [ "$(id -u)" -eq 0 ]; then
    id postgres > /dev/null 2>&1 || die "running as root, the embedded Postgres needs a \`postgres\` user (initdb refuses root): run \`bash scripts/postgres_env.sh\`"
    chown postgres:postgres "$UI_PG_DIR" "$UI_PG_SOCK"
    [ ! -d "$UI_PG_DATA" ] || chown -R postgres:postgres "$UI_PG_DATA"
    ui_pg_as_owner test -w "$UI_PG_DIR" \
      || die "the postgres user cannot reach $UI_PG_DIR (a folder above it is not searchable by others: chmod o+x it, or use another AIRFLOW_HOME)"
  fi
  touch "$UI_PG_LOG"
  local sock="$UI_PG_SOCK/.s.PGSQL.$UI_PG_PORT"
  [ "${#sock}" -le 107 ] || die "the Postgres socket path $sock is longer than Unix sockets allow (107); use a shorter AIRFLOW_HOME"
}

ui_pg_wait_ready() {
  local bindir="$1" deadline=$((SECONDS + 60))
  until "$bindir/pg_isready" -q -h "$UI_PG_SOCK" -p "$UI_PG_PORT" -U airflow -d postgres; do
    kill -0 "$UI_PG_PID" 2>/dev/null || die "postgres exited; read $UI_PG_LOG"
    [ "$SECONDS" -lt "$deadline" ] || die "postgres does not accept connections after 60s; read $UI_PG_LOG"
    sleep 0.5
  done
}

ui_pg_start() {
  local bindir sql
  bindir="$(ui_pg_bindir)"
  [ -n "$bindir" ] && [ -x "$bindir/postgres" ] || die "no PostgreSQL server binaries (initdb, postgres): run \`bash scripts/postgres_env.sh\`"
  ui_pg_prepare_dirs
  ui_pg_init "$bindir"
  ui_pg_clear_stale
  local cmd=("$bindir/postgres" -D "$UI_PG_DATA" -k "$UI_PG_SOCK" -p "$UI_PG_PORT" -c "listen_addresses="
             -c unix_socket_permissions=0700 -c max_connections=200)
  [ "$(id -u)" -ne 0 ] || cmd=(setpriv --reuid=postgres --regid=postgres --clear-groups -- "${cmd[@]}")
  echo "[ui] postgres on $UI_PG_SOCK (Unix socket only; log: $UI_PG_LOG)" >&2
  # Its own session: Ctrl-C in the terminal reaches ui.sh, which stops Airflow first, then postgres.
  (cd / && exec setsid "${cmd[@]}") >> "$UI_PG_LOG" 2>&1 < /dev/null &
  UI_PG_PID=$!
  ui_pg_wait_ready "$bindir"
  sql=("$bindir/psql" -X -q -h "$UI_PG_SOCK" -p "$UI_PG_PORT" -U airflow -d postgres -v ON_ERROR_STOP=1)
  if [ "$("${sql[@]}" -Atc "SELECT 1 FROM pg_database WHERE datname = 'airflow'")" != 1 ]; then
    "${sql[@]}" -c "CREATE DATABASE airflow" >> "$UI_PG_LOG" 2>&1 || die "could not create the airflow database; read $UI_PG_LOG"
  fi
  export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN
  AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="$(ui_pg_url)"
}

ui_pg_stop() {
  [ -n "$UI_PG_PID" ] || return 0
  if kill -INT "$UI_PG_PID" 2>/dev/null; then  # fast shutdown: ends the sessions, then exits
    for _ in $(seq 60); do kill -0 "$UI_PG_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$UI_PG_PID" 2>/dev/null || true
  fi
  wait "$UI_PG_PID" 2>/dev/null || true
  UI_PG_PID=""
}

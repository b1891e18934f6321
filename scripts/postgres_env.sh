#!/usr/bin/env bash
# What a metadata database on PostgreSQL needs beside .venv: Debian's PostgreSQL
# server binaries (initdb, postgres; `postgresql`) and in .venv the two drivers
# Airflow 3.3 uses, psycopg2 for `postgresql+psycopg2://` and asyncpg for the
# async engine it derives from that URL (`postgresql+asyncpg://`). Used by
# scripts/ui.sh (its embedded Postgres) and scripts/celery_env.sh.
# Installs only what is missing and starts nothing. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
# pip warns about every missing local index folder of this machine's pip.conf; keep real errors only.
quiet() { "$@" 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2); }

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
if [ -z "$(pg_bin)" ] || [ ! -x "$(pg_bin)/initdb" ]; then
    echo "[postgres-env] apt-get install postgresql" >&2
    bash scripts/apt_install.sh postgresql
fi
[ -x .venv/bin/python ] || bash scripts/setup.sh
if ! .venv/bin/python -c "import psycopg2, asyncpg" > /dev/null 2>&1; then
    echo "[postgres-env] pip install psycopg2-binary asyncpg into .venv" >&2
    quiet .venv/bin/python -m pip install -q "psycopg2-binary>=2.9" "asyncpg>=0.29"
    .venv/bin/python -c "import psycopg2, asyncpg" || { echo "[postgres-env] the drivers still do not import" >&2; exit 1; }
fi

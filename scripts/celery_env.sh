#!/usr/bin/env bash
# What the Celery scale-out test (tests/integration/test_celery_scaleout.py)
# needs beside .venv: Debian's PostgreSQL and Redis servers, and in .venv the
# Celery provider (Celery + the redis client) and the two Postgres drivers
# Airflow 3.3 uses: psycopg2 for `postgresql+psycopg2://` and asyncpg for the
# async engine it derives from that URL (`postgresql+asyncpg://`).
# Also Debian's docker-compose, for tests/test_compose.py.
# Installs only what is missing and starts nothing (the test starts its own
# throwaway servers on loopback). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
# pip warns about every missing local index folder of this machine's pip.conf; keep real errors only.
quiet() { "$@" 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2); }

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
bash scripts/setup.sh   # .venv with the project (a no-op when up to date)
bash scripts/postgres_env.sh   # Debian's PostgreSQL, psycopg2 and asyncpg in .venv
apt_pkgs=()
command -v redis-server > /dev/null || apt_pkgs+=(redis-server)
# Debian's docker-compose (1.29, the Python client; no engine needed): tests/test_compose.py runs
# its `config` on docker-compose.yaml, the deployment these servers stand in for.
command -v docker-compose > /dev/null || apt_pkgs+=(docker-compose)
if [ "${#apt_pkgs[@]}" -gt 0 ]; then
    echo "[celery-env] apt-get install ${apt_pkgs[*]}" >&2
    bash scripts/apt_install.sh "${apt_pkgs[@]}"  # without starting their services: the test runs its own
fi

# celery 5.7 dropped `celery.backends.database.retry`, which the provider (3.26) still imports:
# keep celery below 5.7 until a provider release stops needing it. The check imports the
# executor module itself, so a broken combination is re-installed.
ok() {
    local home rc=0
    home="$(mktemp -d)"
    AIRFLOW_HOME="$home" .venv/bin/python -c "import psycopg2, asyncpg, redis
from airflow.providers.celery.executors import celery_executor_utils" > /dev/null 2>&1 || rc=$?
    rm -rf "$home"
    return "$rc"
}
if ! ok; then
    echo "[celery-env] pip install apache-airflow-providers-celery psycopg2-binary asyncpg into .venv" >&2
    quiet .venv/bin/python -m pip install -q "apache-airflow-providers-celery>=3.10" \
        "celery[redis]>=5.5,<5.7" "psycopg2-binary>=2.9" "asyncpg>=0.29"
    ok || { echo "[celery-env] the Celery executor still does not import" >&2; exit 1; }
fi
.venv/bin/python -c "import celery, airflow.providers.celery as p; print('[celery-env] celery', celery.__version__, 'provider', p.__version__)" >&2
echo "[celery-env] postgres: $(pg_bin)  redis: $(command -v redis-server)" >&2

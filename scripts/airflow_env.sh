# Sourced by the scripts: an embedded Airflow for this checkout (SQLite, local
# artifacts). Everything is under the project directory; nothing global changes.
NYX_PROJECT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$NYX_PROJECT/.airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$NYX_PROJECT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$NYX_PROJECT/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__UNIT_TEST_MODE=False
export AIRFLOW__LOGGING__LOGGING_LEVEL="${AIRFLOW__LOGGING__LOGGING_LEVEL:-INFO}"
export NYX_ARTIFACTS_ROOT="${NYX_ARTIFACTS_ROOT:-$NYX_PROJECT/artifacts}"

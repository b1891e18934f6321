#!/usr/bin/env bash
# The main command: set up, then run the full nyxqa_to_model DAG under a real
# (embedded: SQLite, or the UI's Postgres while scripts/ui.sh runs) Airflow on the
# bundled sample corpus, and print where the artifacts are and each stage's
# manifest summary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/airflow_env.sh
PARTITION="${NYX_PARTITION:-demo}"
mkdir -p "$AIRFLOW_HOME"
echo "[demo] airflow db migrate (AIRFLOW_HOME=$AIRFLOW_HOME)" >&2
.venv/bin/airflow db migrate > "$AIRFLOW_HOME/db-migrate.log" 2>&1 || { cat "$AIRFLOW_HOME/db-migrate.log" >&2; exit 1; }
.venv/bin/nyx airflow init > /dev/null   # the gpu pool (NYX_GPU_SLOTS) and, with NYX_VLLM_URL, the nyx_vllm connection
echo "[demo] airflow dags test nyxqa_to_model (partition=$PARTITION, artifacts=$NYX_ARTIFACTS_ROOT)" >&2
.venv/bin/airflow dags test nyxqa_to_model -c "{\"partition\": \"$PARTITION\"}" "$@" 2>&1 | tee "$AIRFLOW_HOME/dags-test.log" | grep -E "nyx\.|ERROR|Marking run|failed" >&2 || true
.venv/bin/nyx status --partition "$PARTITION"
if ! .venv/bin/python - "$PARTITION" <<'PY'
import sys
from nyx_tasks.core.config import load_config
from nyx_tasks.store.artifacts import ArtifactStore
from nyx_tasks.stages import STAGE_NAMES
cfg = load_config("demo", [f"partition={sys.argv[1]}"])
store = ArtifactStore(cfg.artifact_root())
missing = [s for s in STAGE_NAMES if store.read_json(f"partitions/{cfg.partition}/{s}/_MANIFEST.json") is None]
if missing:
    sys.exit(f"[demo] stages without a manifest: {missing}; full log: .airflow/dags-test.log")
report = store.read_json(f"partitions/{cfg.partition}/evaluate/_MANIFEST.json")["report"]  # relative to the root
print(f"[demo] evaluation report (the packaged MiniLM vs stage 1 and stage 2, paired, at every Matryoshka dim): {store.url(report)}", file=sys.stderr)
PY
then exit 1; fi
echo "[demo] done: full Airflow log in $AIRFLOW_HOME/dags-test.log" >&2

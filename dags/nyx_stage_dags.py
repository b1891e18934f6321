"""One DAG per pipeline stage, `nyx_stage_<stage>`, for backfills.

Generated from the same stage registry and task-group factory as
`nyxqa_to_model` (no copy-pasted DAG files). Airflow 3 backfills only DAGs with
a time-based schedule, so each has a daily one; they are paused on creation and
never catch up, so nothing runs until someone backfills or triggers them. The
run's logical date names the partition (as in `nyxqa_to_model` with an empty
partition param), so

    airflow backfill create --dag-id nyx_stage_chunk --from-date 2026-01-01 --to-date 2026-01-03

re-runs exactly `chunk` for the partitions 2026-01-01..2026-01-03 (a no-op
where the stage is complete and unchanged; `--dag-run-conf '{"force": true}'`
recomputes).
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG
from nyx_airflow.params import trigger_params
from nyx_airflow.stage_group import stage_group

from nyx_tasks.stages import STAGE_NAMES

DOC = """
# nyx_stage_{stage}

Runs only the `{stage}` stage of the Nyx pipeline for one partition: the run's
logical date (YYYY-MM-DD) unless the `partition` param names one. Made for
backfills over past partitions after changing the stage:

```
airflow backfill create --dag-id nyx_stage_{stage} --from-date 2026-01-01 --to-date 2026-01-07
```

Paused on creation, daily schedule, no catch-up. The full pipeline is `nyxqa_to_model`.
"""


def stage_dag(stage: str) -> DAG:
    with DAG(
        dag_id=f"nyx_stage_{stage}",
        schedule="@daily",
        start_date=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
        catchup=False,
        is_paused_upon_creation=True,
        max_active_runs=4,
        doc_md=DOC.format(stage=stage),
        tags=["nyx", "stage", stage],
        params=trigger_params(),
        default_args={"retries": 2, "retry_delay": dt.timedelta(seconds=30),
                      "retry_exponential_backoff": True, "owner": "nyx"},
    ) as dag:
        stage_group(stage)
    return dag


for _stage in STAGE_NAMES:
    globals()[f"nyx_stage_{_stage}"] = stage_dag(_stage)

"""One DAG per pipeline stage, `nyx_stage_<stage>`, for backfills.

Generated from the same stage registry and task-group factory as
`nyxqa_to_model` (no copy-pasted DAG files). Airflow 3 backfills only DAGs with
a time-based schedule, so each has a daily one; they are paused on creation and
never catch up. A backfill's runs need the DAG unpaused, and unpausing also
fires the latest daily run, so a first `gate` task lets only backfill and
manual runs through (scheduled runs skip, saying why). The run's logical date
names the partition (as in `nyxqa_to_model` with an empty partition param), so

    airflow dags unpause nyx_stage_chunk
    airflow backfill create --dag-id nyx_stage_chunk --from-date 2026-01-01 --to-date 2026-01-03

re-runs exactly `chunk` for the partitions 2026-01-01..2026-01-03 (a no-op
where the stage is complete and unchanged; `--dag-run-conf '{"redo": ["chunk"]}'`
recomputes). From the UI: the DAG's Trigger button, Backfill tab, a date range,
the partition left empty.
"""

from __future__ import annotations

from airflow.sdk import DAG, get_current_context, task
from nyx_airflow.defaults import DEFAULT_ARGS, START_DATE
from nyx_airflow.params import trigger_params
from nyx_airflow.stage_group import check_task, stage_group

from nyx_tasks.core.log import get_logger
from nyx_tasks.stages import STAGE_NAMES, get_stage

DOC = """
# nyx_stage_{stage}

{doc}

Runs only the `{stage}` stage of the Nyx pipeline for one partition: the run's
logical date (YYYY-MM-DD) unless the `partition` param names one. Made for
backfills over past partitions after changing the stage. From the UI: *Trigger*
→ *Backfill*, pick the date range, leave *Partition* empty (each date writes
its own partition) and tick `{stage}` under *Redo stages* to recompute
partitions that are already complete. From the CLI:

```
airflow dags unpause nyx_stage_{stage}
airflow backfill create --dag-id nyx_stage_{stage} --from-date 2026-01-01 --to-date 2026-01-07
```

Paused on creation, daily schedule, no catch-up; the `gate` task skips the
schedule's own runs, so unpausing (which backfills need) runs nothing by itself. The full pipeline is `nyxqa_to_model`.
"""


def stage_dag(stage: str) -> DAG:
    with DAG(
        dag_id=f"nyx_stage_{stage}",
        schedule="@daily",
        start_date=START_DATE,
        catchup=False,
        is_paused_upon_creation=True,
        max_active_runs=4,
        doc_md=DOC.format(stage=stage, doc=get_stage(stage).doc),
        tags=["nyx", "stage", stage],
        params=trigger_params(),
        default_args=DEFAULT_ARGS,
    ) as dag:
        gate() >> check_task() >> stage_group(stage, get_stage(stage).doc)
    return dag


@task.short_circuit(task_id="gate", doc_md="Backfill and manual runs go on; the daily schedule itself does nothing.")
def gate() -> bool:
    """The schedule exists only so Airflow can backfill this DAG, and a backfill's
    runs need the DAG unpaused; unpausing then also fires the latest daily run.
    That run must not touch a partition nobody asked for, so it skips here."""
    run = get_current_context()["dag_run"]
    if run.run_type in ("backfill", "manual"):
        return True
    get_logger("dag").info("%s run %s: only backfills and manual runs run this stage; skipping",
                           run.run_type, run.run_id)
    return False


for _stage in STAGE_NAMES:
    globals()[f"nyx_stage_{_stage}"] = stage_dag(_stage)

"""nyx_remine_negatives: re-mine NyxQA hard negatives with the newest retriever.

Runs weekly and whenever a new retriever checkpoint asset appears
(AssetOrTimeSchedule). Each run writes a new versioned negatives artifact
(`partitions/<p>/negatives/<miner hash>/`), never touching earlier ones, and
emits the `nyx_negatives` asset with counts, version and miner, so training
can pick the newest.

Its form is the Run section of the pipeline's (`run_params`: profile,
partition, artifact root, force; no redo, as its one task is no registry
stage), with the partition `demo` by default, since the weekly and the
checkpoint-triggered runs re-mine a fixed partition rather than one named by
their date. `force` re-mines even when this miner's version exists. A bad value
(a partition name, an unknown conf key) is refused in one line before anything
is embedded.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import (
    Asset,
    AssetOrTimeSchedule,
    CronTriggerTimetable,
    dag,
    get_current_context,
    task,
)
from nyx_airflow.defaults import DEFAULT_ARGS, START_DATE
from nyx_airflow.params import run_params
from nyx_airflow.stage_group import (
    CHECKPOINT_ASSET,
    config_from_context,
    run_options,
    wait_for_lease,
)

from nyx_tasks.stages.mine import remine as run_remine

NEGATIVES_ASSET = Asset(name="nyx_negatives", uri="x-nyx://negatives", group="nyx")


@dag(
    dag_id="nyx_remine_negatives",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 3 * * 0", timezone="UTC"), assets=[CHECKPOINT_ASSET]),
    start_date=START_DATE,
    catchup=False,
    is_paused_upon_creation=True,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["nyx", "mining"],
    params=run_params(partition="demo", redo=False),
    # Override: one task that loads a miner onto a GPU; a flat minute between tries (no backoff)
    # gives a GPU worker or the gpu pool time to free up, as before the defaults were shared.
    default_args={**DEFAULT_ARGS, "retry_delay": dt.timedelta(minutes=1), "retry_exponential_backoff": 0},
)
def nyx_remine_negatives():
    @task(outlets=[NEGATIVES_ASSET], queue="gpu", pool="gpu",
          doc_md="Embed with the newest checkpoint (or the configured miner), search, select, write a new version.")
    def remine() -> dict:
        from airflow.sdk.exceptions import AirflowFailException
        from nyx_airflow.params import ConfError, check_conf

        ctx = get_current_context()
        try:  # the schema checks only types; names and unknown conf keys are refused here, not retried
            check_conf(ctx["params"], ctx["dag_run"].conf, known=set(ctx["dag"].params))
        except ConfError as e:
            raise AirflowFailException(f"refused: {e}") from None
        with wait_for_lease("remine"):
            result, version, ckpt = run_remine(config_from_context(), opts=run_options())
        summary = {**result.summary(), "version": version,
                   "checkpoint": (ckpt or {}).get("run"), "miner_hash": version}
        get_current_context()["outlet_events"][NEGATIVES_ASSET].extra = summary
        return summary

    remine()


nyx_remine_negatives()

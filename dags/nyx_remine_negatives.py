"""nyx_remine_negatives: re-mine NyxQA hard negatives with the newest retriever.

Runs weekly and whenever a new retriever checkpoint asset appears
(AssetOrTimeSchedule). Each run writes a new versioned negatives artifact
(`partitions/<p>/negatives/<miner hash>/`), never touching earlier ones, and
emits the `nyx_negatives` asset with counts, version and miner, so training
can pick the newest.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import (
    Asset,
    AssetOrTimeSchedule,
    CronTriggerTimetable,
    Param,
    dag,
    get_current_context,
    task,
)
from nyx_airflow.stage_group import CHECKPOINT_ASSET, config_from_context

from nyx_tasks.config import list_profiles

NEGATIVES_ASSET = Asset(name="nyx_negatives", uri="x-nyx://negatives", group="nyx")


@dag(
    dag_id="nyx_remine_negatives",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 3 * * 0", timezone="UTC"), assets=[CHECKPOINT_ASSET]),
    start_date=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["nyx", "mining"],
    params={
        "profile": Param("demo", type="string", enum=list_profiles(), title="Profile"),
        "partition": Param("demo", type="string", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.=-]{0,63}$",
                           title="Partition", description="The NyxQA partition whose negatives are re-mined."),
        "artifacts_root": Param("", type="string", title="Artifact root"),
        "force": Param(False, type="boolean", title="Force"),
    },
    default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=1), "owner": "nyx"},
)
def nyx_remine_negatives():
    @task(outlets=[NEGATIVES_ASSET], queue="gpu", pool="gpu",
          doc_md="Embed with the newest checkpoint (or the configured miner), search, select, write a new version.")
    def remine() -> dict:
        from nyx_tasks.stages.mine import remine as run_remine

        result, version, ckpt = run_remine(config_from_context())
        summary = {**result.summary(), "version": version,
                   "checkpoint": (ckpt or {}).get("run"), "miner_hash": version}
        get_current_context()["outlet_events"][NEGATIVES_ASSET].extra = summary
        return summary

    remine()


nyx_remine_negatives()

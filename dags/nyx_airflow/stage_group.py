"""A registry stage as an Airflow task group: plan -> shard (mapped) -> commit.

Each task builds the config from the run's params and calls one runner
function; XCom carries shard specs and counts, never data.
"""

from __future__ import annotations

from airflow.sdk import Asset, TaskGroup, get_current_context, task

from .params import overrides_from_params


def stage_asset(stage: str) -> Asset:
    return Asset(name=f"nyx_{stage}", uri=f"x-nyx://partitions/{stage}", group="nyx")


def config_from_context():
    from nyx_tasks.config import load_config

    ctx = get_current_context()
    params = ctx["params"]
    ds = ctx.get("ds") or (ctx["logical_date"].strftime("%Y-%m-%d") if ctx.get("logical_date") else None)
    return load_config(params.get("profile", "demo"), overrides_from_params(params, ds))


def stage_group(stage_name: str, doc: str = "") -> TaskGroup:
    """Build the task group for `stage_name`; returns it (chain groups with >>)."""
    with TaskGroup(group_id=stage_name, tooltip=doc) as group:

        @task(task_id="plan", doc_md=f"Plan the `{stage_name}` shards (a no-op when complete and unchanged).")
        def plan() -> list[dict]:
            from nyx_tasks.log import get_logger
            from nyx_tasks.runner import plan_stage
            from nyx_tasks.stages import get_stage

            cfg = config_from_context()
            get_logger(stage_name).info("%s: profile=%s partition=%s root=%s force=%s",
                                        stage_name, cfg.profile, cfg.partition, cfg.artifact_root(), cfg.force)
            return plan_stage(get_stage(stage_name), cfg)

        @task(task_id="shard", map_index_template="{{ shard_name }}",
              doc_md=f"Process one `{stage_name}` shard (skipped when its marker says done).")
        def shard(spec: dict) -> dict:
            from nyx_tasks.runner import run_shard
            from nyx_tasks.stages import get_stage

            get_current_context()["shard_name"] = str(spec.get("name", spec["shard"]))
            m = run_shard(get_stage(stage_name), config_from_context(), spec)
            return {k: m[k] for k in ("shard", "rows_in", "rows_out", "drops")}

        @task(task_id="commit", trigger_rule="none_failed", outlets=[stage_asset(stage_name)],
              doc_md=f"Check all `{stage_name}` shards finished and write the manifest last.")
        def commit() -> dict:
            from nyx_tasks.runner import commit_stage
            from nyx_tasks.stages import get_stage

            result = commit_stage(get_stage(stage_name), config_from_context())
            summary = result.summary()
            get_current_context()["outlet_events"][stage_asset(stage_name)].extra = summary
            return summary

        shards = plan()
        shard.expand(spec=shards) >> commit()
    return group

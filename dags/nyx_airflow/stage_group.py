"""A registry stage as an Airflow task group: plan -> shard (mapped) -> commit.

Each task builds the config from the run's params and calls one runner
function; XCom carries shard specs and counts, never data.
"""

from __future__ import annotations

import contextlib
import datetime as dt

from airflow.sdk import Asset, AssetAlias, TaskGroup, get_current_context, task
from airflow.sdk.exceptions import AirflowRescheduleException

from nyx_tasks.core.base import ShardSpec
from nyx_tasks.core.config import load_config
from nyx_tasks.core.log import get_logger, prepare_task_process
from nyx_tasks.retrieval.corpus_jobs import embeds_on_gpu, plan_vector_jobs, run_vector_job
from nyx_tasks.runner import RunOptions, commit_stage, plan_stage, run_shard, write_resolved_config
from nyx_tasks.stages import STAGE_NAMES, get_stage
from nyx_tasks.store.artifacts import ArtifactStore
from nyx_tasks.store.lease import Lease, LeaseHeld, stage_leases

from .params import ConfError, check_conf, overrides_from_params

# Emitted by the training stages when a retriever checkpoint is written;
# the re-mining DAG is scheduled on it.
CHECKPOINT_ASSET = Asset(name="nyx_checkpoint", uri="x-nyx://models/checkpoint", group="nyx")


def stage_asset(stage: str) -> Asset:
    return Asset(name=f"nyx_{stage}", uri=f"x-nyx://partitions/{stage}", group="nyx")


def commit_alias(stage: str) -> AssetAlias:
    """The commit task's outlet: events are added through the alias only when the commit wrote a
    new snapshot, so a no-op run (already complete) emits nothing, and `nyx_checkpoint` (which
    schedules re-mining) fires only when a checkpoint was written."""
    return AssetAlias(name=f"nyx_{stage}_commits", group="nyx")


# The corpus everything starts from; ingest reads it (the asset graph's root).
OBELICS_ASSET = Asset(name="obelics", uri="hf://datasets/HuggingFaceM4/OBELICS", group="nyx")


def stage_inlets(stage_name: str) -> list[Asset]:
    """What a stage reads, as assets: the lineage the UI's asset graph draws."""
    inputs = get_stage(stage_name).inputs
    return [stage_asset(s) for s in inputs] if inputs else [OBELICS_ASSET]


# A GPU-routed stage (`Stage.gpu_routed`) says how many GPUs a shard needs under the
# resolved config (`Stage.gpus`; 0: the CPU path on the default queue). A branch picks, at
# run time, the mapped shard task whose `pool_slots` is that count: pool slots are fixed
# when the DAG is parsed and cannot be mapped, so there is one GPU variant per supported
# count. What else the group needs (a checkpoint asset, corpora embedded first, a vLLM
# connection) is declared on the stage too: no list of stage names here.
GPU_COUNTS = (1, 2, 4, 8)


def gpu_variant(n: int) -> int:
    """The smallest supported GPU count that holds `n` GPUs."""
    fits = [c for c in GPU_COUNTS if c >= n]
    if not fits:
        raise ValueError(f"{n} GPUs per task: at most {GPU_COUNTS[-1]} are supported on one worker")
    return fits[0]


LEASE_RESCHEDULE = dt.timedelta(seconds=30)


def run_options() -> RunOptions:
    """How this run writes a stage: the lease's owner is the Airflow run, so its plan, shard and
    commit tasks share the stage's lease. Any other run (the full DAG, a per-stage backfill, a
    second trigger) writing the same stage of the same partition is refused the lease; its plan
    task then waits (`plan_or_reschedule`)."""
    ctx = get_current_context()
    return RunOptions(owner=f"airflow:{ctx['dag'].dag_id}/{ctx['run_id']}")


def release_run_leases(context) -> None:
    """`on_failure_callback` of every task (DEFAULT_ARGS): a task that failed for good (its retries
    spent) releases every stage lease its run holds, in any partition, so another run (a re-trigger,
    a backfill) starts at once instead of waiting out the lease. The run's other tasks still writing
    that stage lose the lease and stop at their next renewal; finished shards are kept. Never raises:
    a lease it cannot release still expires on its own."""
    log = get_logger("run")
    try:
        params = context["params"]
        cfg = load_config(params.get("profile", "demo"), overrides_from_params(params, run_date(context), None))
        store = ArtifactStore(cfg.artifact_root())
        owner = f"airflow:{context['dag'].dag_id}/{context['run_id']}"
        released = []
        for rel, record in stage_leases(store):
            if record.get("owner") == owner:
                Lease(store, rel, owner).release()  # only if still ours
                released.append(rel)
        if released:
            log.info("run %s failed: released its lease(s) on %s", context["run_id"], ", ".join(released))
    except Exception as e:  # the failure being reported matters more than this clean-up
        log.warning("could not release the run's leases (they expire on their own): %s: %s", type(e).__name__, e)


@contextlib.contextmanager
def wait_for_lease(stage_name: str):
    """While another run holds the stage's lease, reschedule this task (state up_for_reschedule,
    every 30 s) instead of failing it, so the waiting run holds no worker slot the holder needs."""
    try:
        yield
    except LeaseHeld as e:
        get_logger(stage_name).info("%s: waiting for the lease: %s; trying again in %ds", stage_name, e,
                                    LEASE_RESCHEDULE.seconds)
        raise AirflowRescheduleException(dt.datetime.now(dt.UTC) + LEASE_RESCHEDULE) from None


def plan_or_reschedule(stage_name: str, cfg) -> list[ShardSpec]:
    """Plan the stage, waiting (rescheduled) while another run writes it."""
    with wait_for_lease(stage_name):
        return plan_stage(get_stage(stage_name), cfg, opts=run_options())


def config_from_context(stage: str | None = None):
    """The run's config from its params (for `stage`: force when the run redoes it), in a
    task process prepared for the heavy libraries (`prepare_task_process`)."""
    prepare_task_process()
    ctx = get_current_context()
    params = ctx["params"]
    cfg = load_config(params.get("profile", "demo"), overrides_from_params(params, run_date(ctx), stage))
    return apply_vllm_connection(cfg)


def run_date(ctx) -> str | None:
    """The date that names the partition when the form leaves it empty: the run's logical date,
    or, for a run triggered without one (Airflow 3 allows it), the date it was asked to run."""
    when = ctx.get("logical_date") or getattr(ctx.get("dag_run"), "run_after", None)
    return ctx.get("ds") or (when.strftime("%Y-%m-%d") if when else None)


def apply_vllm_connection(cfg):
    """With the openai backend, the `nyx_vllm` connection (when defined) gives the server URL
    and key to every generation config (synthesize, feedback, evaluate); the key goes to the
    environment variable the backend reads, never into the config, XCom or the log."""
    import os

    generating = {name: gen for name in STAGE_NAMES if (gen := get_stage(name).generation(cfg)) is not None}
    if not any(gen.backend == "openai" for gen in generating.values()):
        return cfg
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = BaseHook.get_connection("nyx_vllm")
    except AirflowNotFoundException:
        return cfg
    url = conn.host if "://" in (conn.host or "") else f"{conn.schema or 'http'}://{conn.host}:{conn.port or 8000}/v1"
    update = {}
    for name, gen in generating.items():
        if gen.backend != "openai":
            continue
        key = get_stage(name).config_key or name  # the stage's config section
        if conn.password:
            os.environ[gen.api_key_env] = conn.password
        update[key] = getattr(cfg, key).model_copy(update={"generation": gen.model_copy(update={"base_url": url})})
    return cfg.model_copy(update=update)


def check_task():
    """The run's first task: refuse bad trigger values in one line before any stage runs,
    then write the full resolved config (the path every task log names)."""
    @task(task_id="check", retries=0, doc_md="Check the trigger values (unknown keys, ranges, names, redo "
          "stages) and the resolved config; refuse a bad one in one line before any stage runs.")
    def check() -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        ctx = get_current_context()
        run = ctx["dag_run"]
        try:
            check_conf(ctx["params"], run.conf, run.run_type, known=set(ctx["dag"].params))  # declared, not merged
            cfg = config_from_context()
        except ConfError as e:
            raise AirflowFailException(f"refused: {e}") from None
        except Exception as e:  # a config the profile and these values cannot make
            first = str(e).strip().splitlines()
            raise AirflowFailException(f"refused: {type(e).__name__}: {' '.join(first[:3])[:400]}") from None
        url = write_resolved_config(cfg, ArtifactStore(cfg.artifact_root()))
        get_logger("run").info("run %s: profile=%s partition=%s force=%s redo=%s config=%s", run.run_id,
                               cfg.profile, cfg.partition, cfg.force, ctx["params"].get("redo") or "-", url)
        return {"partition": cfg.partition, "config": url}

    return check()


def group_shards(shards: list[ShardSpec], max_tasks: int | None) -> list[list[ShardSpec]]:
    """The plan's shards as the mapped tasks' inputs: one shard per task, or, with `max_tasks`,
    at most that many tasks, each holding a contiguous run of shards."""
    if not max_tasks or len(shards) <= max_tasks:
        return [[s] for s in shards]
    size = -(-len(shards) // max_tasks)
    return [shards[i:i + size] for i in range(0, len(shards), size)]


def group_name(group: list[ShardSpec]) -> str:
    """The mapped task's name in the UI: its shard's name, or the first and last of its shards."""
    names = [s["name"] for s in group]
    return names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]} ({len(names)} shards)"


def stage_group(stage_name: str, doc: str = "") -> TaskGroup:
    """Build the task group for `stage_name`; returns it (chain groups with >>)."""
    with TaskGroup(group_id=stage_name, tooltip=doc) as group:

        stage = get_stage(stage_name)
        vectors = vector_tasks(stage_name) if stage.embeds_corpora else None

        # after the embedding shards, one of whose two routes is always skipped
        @task(task_id="plan", inlets=stage_inlets(stage_name), trigger_rule="none_failed" if vectors else "all_success",
              doc_md=f"Plan the `{stage_name}` shards (a no-op when complete and unchanged).")
        def plan() -> list[list[ShardSpec]]:
            cfg = config_from_context(stage_name)
            return group_shards(plan_or_reschedule(stage_name, cfg), cfg.airflow.max_shard_tasks)

        @task(task_id="shard", map_index_template="{{ shard_name }}",
              doc_md=f"Process one group of `{stage_name}` shards, one after another (each skipped when its "
                     "marker says done).")
        def shard(spec: list[ShardSpec]) -> list[dict]:
            get_current_context()["shard_name"] = group_name(spec)
            stage, cfg = get_stage(stage_name), config_from_context(stage_name)
            return [{k: m[k] for k in ("shard", "rows_in", "rows_out", "drops")}
                    for m in (run_shard(stage, cfg, one, opts=run_options()) for one in spec)]

        alias = commit_alias(stage_name)

        @task(task_id="commit", trigger_rule="none_failed", outlets=[alias],
              doc_md=f"Check all `{stage_name}` shards finished and write the manifest last; emits "
                     f"`nyx_{stage_name}` only when a new snapshot was written.")
        def commit() -> dict:
            result = commit_stage(get_stage(stage_name), config_from_context(stage_name), opts=run_options())
            summary = result.summary()
            if result.status != "computed":
                get_logger(stage_name).info("%s: no asset event (nothing new was committed)", stage_name)
                return summary
            events = get_current_context()["outlet_events"][alias]
            events.add(stage_asset(stage_name), extra=summary)
            if stage.publishes_checkpoint:  # the re-mining DAG listens to this one
                events.add(CHECKPOINT_ASSET, extra={**summary, "checkpoint": result.manifest.get("checkpoint")})
            return summary

        shards = plan()
        if vectors:
            vectors >> shards
        done = commit()
        if stage.gpu_routed:
            routed_shards(stage_name, shard, shards, done)
        else:
            shard.expand(spec=shards) >> done
    return group


def vector_tasks(stage_name: str) -> list:
    """vectors_plan -> vectors_route -> (vectors | vectors_gpu, mapped over embedding shards): the
    stage's corpora embedded one shard per task before it plans (`nyx_tasks.retrieval.corpus_jobs`)."""
    @task(task_id="vectors_plan", doc_md=f"Plan the embedding shards of the corpora `{stage_name}` searches "
          "(builds a corpus's row table the first time; embeds nothing).")
    def vectors_plan() -> list[list[dict]]:
        cfg = config_from_context(stage_name)
        jobs = plan_vector_jobs(get_stage(stage_name), cfg, ArtifactStore(cfg.artifact_root()))
        return group_shards(jobs, cfg.airflow.max_shard_tasks)

    @task(task_id="vectors", map_index_template="{{ shard_name }}",
          doc_md="Embed one group of embedding shards into their vector files (a shard whose file exists is skipped).")
    def vectors(spec: list[dict]) -> list[dict]:
        get_current_context()["shard_name"] = group_name(spec)
        cfg = config_from_context(stage_name)
        store = ArtifactStore(cfg.artifact_root())
        return [run_vector_job(get_stage(stage_name), cfg, store, job) for job in spec]

    @task.branch(task_id="vectors_route", doc_md="Embed on the `gpu` queue (one `gpu` pool slot per shard task) "
                 "when the corpus embedder is set to a CUDA device; else on the default queue.")
    def vectors_route() -> str:
        cfg = config_from_context()
        on_gpu = embeds_on_gpu(get_stage(stage_name), cfg, ArtifactStore(cfg.artifact_root()))
        return f"{stage_name}.vectors_gpu" if on_gpu else f"{stage_name}.vectors"

    jobs = vectors_plan()
    cpu = vectors.expand(spec=jobs)
    gpu = vectors.override(task_id="vectors_gpu", queue="gpu", pool="gpu", pool_slots=1).expand(spec=jobs)
    chosen = vectors_route()
    jobs >> chosen >> [cpu, gpu]
    return [cpu, gpu]


def routed_shards(stage_name: str, shard, shards, done) -> None:
    """plan -> route -> (shard on the default queue | shard_gpu<N> on the `gpu` queue) -> commit."""
    @task.branch(task_id="route", doc_md="Send the shards to the `gpu` queue, holding as many `gpu` pool "
                 "slots as the run needs GPUs, when the stage runs on GPUs; else to the default queue.")
    def route() -> str:
        n = get_stage(stage_name).gpus(config_from_context())
        return f"{stage_name}.shard_gpu{gpu_variant(n)}" if n else f"{stage_name}.shard"

    variants = [shard.override(task_id=f"shard_gpu{n}", queue="gpu", pool="gpu", pool_slots=n)
                .expand(spec=shards) for n in GPU_COUNTS]
    chosen = route()
    shards >> chosen
    chosen >> [shard.expand(spec=shards), *variants] >> done

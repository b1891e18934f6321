"""The engine: plan, shard and commit for any stage, owning idempotency, resumability, leases,
attempt folders and the manifest written last. The same three calls are what the Airflow DAG maps
over and what `nyx <stage>` runs (`run_stage`)."""

from __future__ import annotations

import contextlib
import time
import uuid

from nyx_tasks.core.base import ShardSpec, StageError, check_shard_specs
from nyx_tasks.core.config import NyxConfig
from nyx_tasks.core.hashing import stable_hash
from nyx_tasks.core.log import drop_lines, get_logger
from nyx_tasks.runner.adoption import adopt_from_base
from nyx_tasks.runner.contract import (
    PLAN,
    RunOptions,
    ShardOutputs,
    Stage,
    StageContext,
    StageResult,
    marker_rel,
    now,
    shard_done,
    stage_config_hash,
)
from nyx_tasks.runner.manifest import build_manifest, check_usable
from nyx_tasks.store.artifacts import (
    MANIFEST,
    ArtifactStore,
    SnapshotError,
    missing_files,
    read_manifest,
    snapshot_problems,
)
from nyx_tasks.store.attempts import remove_dead_attempts, write_attempt_owner
from nyx_tasks.store.lease import Lease, LeaseHeld


def write_resolved_config(cfg: NyxConfig, store: ArtifactStore) -> str:
    """Write the run's full resolved config once (YAML), content-addressed, so every task of a run
    (and every run with the same config) names the same file; returns its URL for the log line."""
    import yaml

    data = cfg.model_dump(mode="json")
    rel = f"partitions/{cfg.partition}/_configs/{stable_hash(data)}.yaml"
    if not store.exists(rel):
        store.write_bytes_atomic(rel, yaml.safe_dump(data, sort_keys=False).encode())
    return store.url(rel)

def log_context(stage: Stage, cfg: NyxConfig, store: ArtifactStore, step: str) -> str:
    """The first line of every task log: stage, step, partition, config hash, resolved config.
    Returns the stage's config hash."""
    config_hash = stage_config_hash(stage, cfg)
    get_logger(stage.name).info("%s %s: partition=%s config_hash=%s force=%s config=%s", stage.name, step,
                                cfg.partition, config_hash, cfg.force, write_resolved_config(cfg, store))
    return config_hash

@contextlib.contextmanager
def failure_line(stage: str, step: str, partition: str):
    """On failure, one line saying what went wrong and what to do, before the traceback."""
    try:
        yield
    except LeaseHeld as e:  # not a failure of this stage: another run is writing it
        get_logger(stage).warning("%s (%s, partition %s): %s", stage, step, partition, e)
        raise
    except StageError as e:
        get_logger(stage).error("%s FAILED (%s, partition %s): %s", stage, step, partition, e)
        raise
    except Exception as e:
        advice = ("nothing was written; fix the cause and clear the task (or re-run `nyx %s --partition %s`)"
                  if step == "plan" else "Finished shards are kept; fix the cause and clear the task "
                  "(or re-run `nyx %s --partition %s`) to resume")
        get_logger(stage).error("%s FAILED (%s, partition %s): %s: %s. " + advice + ". The traceback follows in "
                                "a task log (on the command line: --debug).",
                                stage, step, partition, type(e).__name__, str(e)[:500], stage, partition)
        raise

def stage_context(stage: Stage, cfg: NyxConfig, store: ArtifactStore | None) -> StageContext:
    store = store or ArtifactStore(cfg.artifact_root())
    return StageContext(cfg=cfg, store=store, stage=stage, partition=cfg.partition)

def stage_lease(ctx: StageContext, opts: RunOptions) -> Lease:
    return Lease(ctx.store, ctx.stage_rel(), opts.owner, opts.lease_ttl,
                 what=f"{ctx.stage.name} (partition {ctx.partition})")

def committed_manifest(ctx: StageContext) -> dict | None:
    """The committed manifest, None when there is none or it is unreadable (then the stage recomputes)."""
    try:
        return read_manifest(ctx.store, ctx.partition, ctx.stage.output, missing_ok=True)
    except SnapshotError as e:
        ctx.log.warning("%s; recomputing", e)
        return None

def verify_inputs(ctx: StageContext, inputs: dict[str, str], sha: bool) -> None:
    """Refuse an input snapshot (a stage of this partition the fingerprint names) that does not
    match its manifest, in one line naming the file and the repairing command."""
    for name in inputs:
        manifest = None if ":" in name else read_manifest(ctx.store, ctx.partition, name, missing_ok=True)
        if manifest is None:
            continue  # a text set, a dataset, a checkpoint: not a stage snapshot
        problems = snapshot_problems(ctx.store, manifest, sha)
        if problems:
            raise SnapshotError(f"{ctx.stage.name}: input {name!r} of partition {ctx.partition} does not match "
                                f"its manifest: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1
                                                                 else "")
                                + f"; re-run `nyx {manifest.get('stage', name)} --partition {ctx.partition} --force`")

def plan_stage(stage: Stage, cfg: NyxConfig, store: ArtifactStore | None = None,
               opts: RunOptions | None = None) -> list[ShardSpec]:
    """Decide what to do, holding the stage's lease. Returns the shard specs (empty when the stage
    is complete and unchanged). A changed config/input or `force` starts a new attempt folder;
    the committed snapshot stays readable until the new one is committed."""
    opts = opts or RunOptions()
    with failure_line(stage.name, "plan", cfg.partition):
        ctx = stage_context(stage, cfg, store)
        config_hash = log_context(stage, cfg, ctx.store, "plan")
        lease = stage_lease(ctx, opts)
        lease.acquire(wait=opts.wait)
        with released_on_failure(lease), lease:  # the heartbeat stops before the release
            inputs = stage.input_fingerprint(ctx)
            verify_inputs(ctx, inputs, opts.verify)
            key = stable_hash({"config": config_hash, "inputs": inputs})
            ctx.log.info("%s: root=%s inputs=%s", stage.name, ctx.store.root, inputs or "-")
            if already_complete(ctx, key) or adopt_from_base(ctx, key):
                return []
            ctx.key, ctx.inputs = key, inputs
            ctx.attempt = f"{key}-{uuid.uuid4().hex[:8]}" if cfg.force else key
            shards = stage.plan_shards(ctx)
            check_shard_specs(stage.name, shards)
            if not shards:
                raise StageError(f"{stage.name}: nothing to process for partition {ctx.partition} "
                                 "(the input has no shards); check the source configuration.")
            write_attempt_owner(ctx.store, ctx.rel(), opts.owner)
            ctx.store.write_json_atomic(ctx.stage_rel(PLAN), {
                "stage": stage.name, "partition": ctx.partition, "key": key, "attempt": ctx.attempt,
                "owner": opts.owner, "config_hash": config_hash, "inputs": inputs,
                "config": stage.config_payload(cfg), "shards": shards, "planned_at": now(),
            })
            done = sum(1 for s in shards if shard_done(ctx, s, key))
            ctx.log.info("%s: %d shard(s) planned in attempt %s, %d already finished from an earlier attempt",
                         stage.name, len(shards), ctx.attempt, done)
            return shards

def already_complete(ctx: StageContext, key: str) -> bool:
    """True (and logged) when the committed snapshot has this key and force is off; a plan left
    by an abandoned attempt is dropped then, so the commit step finds nothing to do."""
    manifest = committed_manifest(ctx)
    stage = ctx.stage.name
    if manifest and manifest.get("adopted_from") and (gone := missing_files(ctx.store, manifest)):
        ctx.log.warning("%s: the snapshot partition %s adopted from %s lost %d file(s) (e.g. %s: the base was "
                        "recomputed since); adopting again or recomputing", stage, ctx.partition,
                        manifest["adopted_from"].get("partition"), len(gone), gone[0])
        manifest = None
    if manifest and manifest.get("key") == key and not ctx.cfg.force:
        ctx.log.info("%s: already complete for partition %s with the same config and inputs "
                     "(key %s, %s rows); nothing to do. Use --force to recompute.",
                     stage, ctx.partition, key, manifest["rows_out"])
        plan = ctx.store.read_json(ctx.stage_rel(PLAN))
        if plan and plan.get("attempt", "") != manifest.get("attempt", ""):
            ctx.store.remove(ctx.stage_rel(PLAN))
        return True
    if manifest:
        why = "force" if ctx.cfg.force else "config or inputs changed"
        ctx.log.info("%s: recomputing partition %s (%s): previous key %s, new key %s; the committed snapshot "
                     "stays readable until the new one is committed", stage, ctx.partition, why,
                     manifest.get("key"), key)
    return False

def read_plan(ctx: StageContext, owner: str) -> dict:
    """The current attempt's plan, which must be this run's; sets the context's key, inputs and
    attempt from it."""
    plan = ctx.store.read_json(ctx.stage_rel(PLAN))
    if plan is None:
        raise StageError(f"{ctx.stage.name}: no plan for partition {ctx.partition}; run the plan step first")
    if plan.get("owner", owner) != owner:
        raise LeaseHeld(f"{ctx.stage.name}: the plan of partition {ctx.partition} is now run {plan['owner']}'s "
                        "(this run's lease expired and another run took the stage); re-run this run's plan step")
    ctx.key, ctx.inputs, ctx.attempt = plan["key"], plan["inputs"], plan.get("attempt", "")
    return plan

def run_shard(stage: Stage, cfg: NyxConfig, shard: ShardSpec, store: ArtifactStore | None = None,
              opts: RunOptions | None = None) -> dict:
    """Process one shard unless its marker says it is done. Returns the marker."""
    opts = opts or RunOptions()
    name = shard["name"]
    with failure_line(stage.name, f"shard {name}", cfg.partition):
        ctx = stage_context(stage, cfg, store)
        log_context(stage, cfg, ctx.store, f"shard {name}")
        read_plan(ctx, opts.owner)
        marker = shard_done(ctx, shard, ctx.key)
        if marker:
            ctx.log.info("%s: shard %s already finished (%s rows); skipping",
                         stage.name, name, marker["rows_out"])
            return marker
        lease = stage_lease(ctx, opts)
        lease.acquire(wait=opts.wait)  # this run's plan took it: a renewal; another run's: refused
        with lease:
            return process_shard(ctx, shard, lease)

def process_shard(ctx: StageContext, shard: ShardSpec, lease: Lease) -> dict:
    stage, name = ctx.stage, shard["name"]
    t0 = time.monotonic()
    ctx.log.info("%s: shard %s starting", stage.name, name)
    out = ShardOutputs(ctx, shard)
    try:
        stage.process(ctx, shard, out)
        files = out.close()
    except BaseException:
        out.abort()
        raise
    seconds = time.monotonic() - t0
    marker = {
        "shard": int(shard["shard"]), "name": name, "key": ctx.key, "outputs": files,
        "rows_in": out.rows_in, "rows_out": files["part"]["rows"] if "part" in files else 0,
        "drops": out.drops.as_dict(), "extra": dict(out.extra), "seconds": round(seconds, 3),
        "finished_at": now(),
    }
    lease.renew()  # still ours: a run that lost its lease records nothing
    # The marker is written only after every output file is closed and in place.
    ctx.store.write_json_atomic(marker_rel(ctx, shard), marker)
    ctx.log.info("%s: shard %s done: %d in, %d out, %d dropped in %.1fs (%.1f rows/s)",
                 stage.name, name, marker["rows_in"], marker["rows_out"], sum(marker["drops"].values()),
                 seconds, marker["rows_in"] / max(seconds, 1e-9))
    return marker

def commit_stage(stage: Stage, cfg: NyxConfig, store: ArtifactStore | None = None,
                 opts: RunOptions | None = None) -> StageResult:
    """Check every planned shard finished, then write the manifest last and release the lease."""
    opts = opts or RunOptions()
    with failure_line(stage.name, "commit", cfg.partition):
        ctx = stage_context(stage, cfg, store)
        log_context(stage, cfg, ctx.store, "commit")
        lease = stage_lease(ctx, opts)
        existing = committed_manifest(ctx)
        plan = ctx.store.read_json(ctx.stage_rel(PLAN))
        if existing and (plan is None or (plan.get("attempt", "") == existing.get("attempt", "")
                                          and not existing.get("adopted_from"))):  # adopted: the base's attempt
            ctx.log.info("%s: partition %s unchanged since its last commit; nothing committed", stage.name, ctx.partition)
            lease.release()
            return StageResult(stage.name, ctx.partition, "skipped", existing)
        lease.acquire(wait=opts.wait)
        with lease:
            plan = read_plan(ctx, opts.owner)
            manifest = build_manifest(ctx, plan)
            check_usable(ctx, manifest)
            stage.finalize(ctx, manifest)
            lease.renew()
            ctx.store.write_json_atomic(ctx.stage_rel(MANIFEST), manifest)
        remove_dead_attempts(ctx.store, ctx.stage_rel(), ctx.attempt, opts.owner, opts.lease_ttl, ctx.log)
        lease.release()
        ctx.log.info("%s: partition %s complete: %d in, %d out, %d dropped -> %s", stage.name, ctx.partition,
                     manifest["rows_in"], manifest["rows_out"], sum(manifest["drops"].values()), manifest["location"])
        for line in drop_lines(manifest["drops"], manifest["rows_out"]):  # one log line per reason reads well
            ctx.log.info("%s: drops  %s", stage.name, line)
        return StageResult(stage.name, ctx.partition, "computed", manifest)

@contextlib.contextmanager
def released_on_failure(lease: Lease):
    """Give the lease back when the step fails: nothing of this run is left to finish or retry."""
    try:
        yield
    except BaseException:
        lease.release()
        raise

def run_stage(stage: Stage, cfg: NyxConfig, store: ArtifactStore | None = None,
              opts: RunOptions | None = None) -> StageResult:
    """plan -> every shard -> commit, in this process (the CLI path). A failure gives the lease back:
    the next run resumes the finished shards of the same attempt."""
    store = store or ArtifactStore(cfg.artifact_root())
    opts = opts or RunOptions()
    shards = plan_stage(stage, cfg, store, opts)
    ctx = stage_context(stage, cfg, store)
    with released_on_failure(stage_lease(ctx, opts)):
        for shard in shards:
            run_shard(stage, cfg, shard, store, opts)
        return commit_stage(stage, cfg, store, opts)

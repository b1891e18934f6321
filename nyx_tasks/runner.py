"""The stage runner: owns idempotency, resumability, snapshots and manifests.

A stage only says how to plan its shards and how to process one; the runner
decides whether work is needed, holds the stage's lease (one writer at a time,
`lease.py`), writes each attempt under its own folder, skips finished shards,
and writes the `_MANIFEST.json` last, naming exactly the snapshot's files. The
same three calls (`plan_stage`, `run_shard`, `commit_stage`) are what the
Airflow DAG maps over and what `nyx <stage>` runs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .artifacts import (
    MANIFEST,
    ArtifactStore,
    SnapshotError,
    adopted_manifest,
    experiment_base,
    missing_files,
    read_manifest,
    snapshot_problems,
)
from .attempts import attempt_rel, remove_dead_attempts, write_attempt_owner
from .base import ShardSpec, StageError, check_shard_specs, code_version
from .config import NyxConfig
from .hashing import stable_hash
from .lease import DEFAULT_TTL, Lease, LeaseHeld, process_owner
from .log import DropCounter, drop_lines, get_logger

PLAN = "_PLAN.json"
SHARDS_DIR = "_shards"
DROPS_DIR = "_drops"
DROPS_KIND = "drops"  # the manifest's output kind of the drop record


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass
class RunOptions:
    """Who writes and how. `owner` names the run holding the stage's lease (every task of one
    Airflow run shares it; the CLI uses one per process); `wait`: wait for another run's lease
    instead of refusing; `verify`: check the inputs' sha256 too, not only file list, bytes, rows."""

    owner: str = field(default_factory=process_owner)
    wait: bool = False
    verify: bool = False
    lease_ttl: float = DEFAULT_TTL


@dataclass
class StageContext:
    cfg: NyxConfig
    store: ArtifactStore
    stage: Stage
    partition: str
    key: str = ""
    inputs: dict[str, str] = field(default_factory=dict)
    attempt: str = ""  # the attempt folder's name ("" on a root written before attempts existed)

    @property
    def log(self):
        return get_logger(self.stage.name)

    def stage_rel(self, name: str = "") -> str:
        """The stage output's directory (manifest, lease, plan)."""
        base = ArtifactStore.stage_rel(self.partition, self.stage.output)
        return f"{base}/{name}" if name else base

    def rel(self, name: str = "") -> str:
        """Where this attempt writes its files: `<stage dir>/attempts/<attempt>/<name>`."""
        base = attempt_rel(self.stage_rel(), self.attempt)
        return f"{base}/{name}" if name else base

    def input_manifest(self, stage: str) -> dict:
        m = read_manifest(self.store, self.partition, stage, missing_ok=True)
        if m is None:
            raise StageError(
                f"{self.stage.name}: input stage {stage!r} is not complete for partition "
                f"{self.partition!r} (no manifest under {self.store.url(ArtifactStore.stage_rel(self.partition, stage))}). "
                f"Run `nyx {stage} --partition {self.partition}` first."
            )
        return m


class ShardOutputs:
    """What one shard writes: one Parquet file per output kind, drops, counters."""

    def __init__(self, ctx: StageContext, shard: ShardSpec):
        self.ctx, self.shard = ctx, shard
        self.drops = DropCounter(ctx.log)
        self.rows_in = 0
        self.extra: Counter[str] = Counter()
        idx = int(shard["shard"])
        from .schema import SCHEMAS  # pyarrow, only once rows are written

        self.writers = {
            kind: ctx.store.parquet_writer(
                ctx.rel(ArtifactStore.shard_file(kind, idx)), SCHEMAS[schema], f"{ctx.stage.name}/{kind}"
            )
            for kind, schema in ctx.stage.outputs.items()
        }

    def write(self, rows: list[dict], kind: str = "part") -> None:
        self.writers[kind].write_rows(rows)

    def write_table(self, table, kind: str = "part") -> None:
        self.writers[kind].write_table(table)

    def close(self) -> dict[str, dict]:
        from .schema import SCHEMAS  # pyarrow, only once rows are written

        files = {kind: w.close() for kind, w in self.writers.items()}
        if self.drops.records:  # the drop record, committed with the snapshot (not part of output_hash)
            rel = self.ctx.rel(f"{DROPS_DIR}/{ArtifactStore.shard_file('part', int(self.shard['shard']))}")
            with self.ctx.store.parquet_writer(rel, SCHEMAS["drops"], f"{self.ctx.stage.name}/drops") as w:
                w.write_rows([{"shard": self.shard["name"], **r} for r in self.drops.records])
                files[DROPS_KIND] = w.close()
        return files

    def abort(self) -> None:
        for w in self.writers.values():
            w.abort()


class Stage:
    """A pipeline stage. Subclasses set the class attributes and implement
    `plan_shards` and `process`; everything else is the runner's.

    `name` is the stage's identity: its log lines, its `nyx <name>` command, its config
    section (unless `config_key` names another). Its output lands under
    `partitions/<p>/<output>/`, which is the name unless a stage declares another
    (re-mining writes `negatives/<version>`)."""

    name: ClassVar[str]
    version: ClassVar[int] = 1  # bump when the output for the same config changes
    inputs: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[dict[str, str]] = {"part": "documents"}  # kind -> schema name
    doc: ClassVar[str] = ""

    # Dotted config fields that change how, not what, a stage computes (batch
    # sizes, concurrency): left out of the config hash so tuning them never
    # triggers a recompute.
    execution_only: ClassVar[tuple[str, ...]] = ()

    config_key: ClassVar[str | None] = None  # the config section; None: the stage's name

    # What the stage needs from an executor: the Airflow task-group builder
    # (dags/nyx_airflow/stage_group.py) reads these, and knows no stage by name.
    gpu_routed: ClassVar[bool] = False  # its shards may run on GPUs (`gpus`): a route task picks the queue
    publishes_checkpoint: ClassVar[bool] = False  # its commit also publishes a retriever checkpoint
    embeds_corpora: ClassVar[bool] = False  # text-set corpora embedded in mapped shards before it plans
    # what its manifest counts, in words, for the explorer: rows_in ("in"), rows_out ("out"), named drops
    flow: ClassVar[dict[str, str]] = {}

    def corpora(self, cfg: NyxConfig, store: ArtifactStore | None = None) -> list[tuple]:
        """(embedder config, text set) pairs whose whole corpora it searches: with
        `embeds_corpora`, embedded in mapped shards before it plans (`nyx_tasks.corpus_jobs`)."""
        return []

    def generation(self, cfg: NyxConfig) -> Any:
        """The generation settings its model calls use (a vLLM server connection applies to
        them): its config section's `generation` block, or None when it has none."""
        return getattr(getattr(cfg, self.config_key or self.name), "generation", None)

    def gpus(self, cfg: NyxConfig) -> int:
        """GPUs one shard task holds under `cfg` (0: the default queue). Default: an in-process
        vLLM engine's tensor-parallel GPUs; hf and openai generation run on the default queue."""
        gen = self.generation(cfg)
        return gen.tensor_parallel_size if gen is not None and gen.backend == "vllm" else 0

    @property
    def output(self) -> str:
        """The stage's directory under `partitions/<p>/`; downstream stages read it by this name."""
        return self.name

    def config_payload(self, cfg: NyxConfig) -> Any:
        payload = getattr(cfg, self.config_key or self.name).model_dump(mode="json")
        for dotted in self.execution_only:
            *parents, leaf = dotted.split(".")
            node = payload
            for p in parents:
                node = node[p]
            del node[leaf]
        return payload

    def input_fingerprint(self, ctx: StageContext) -> dict[str, str]:
        """Hashes of what this stage reads; a change re-computes. Default: upstream outputs."""
        return {s: ctx.input_manifest(s)["output_hash"] for s in self.inputs}

    def plan_shards(self, ctx: StageContext) -> list[ShardSpec]:
        raise NotImplementedError

    def process(self, ctx: StageContext, shard: ShardSpec, out: ShardOutputs) -> None:
        raise NotImplementedError

    def finalize(self, ctx: StageContext, manifest: dict) -> None:
        """Hook to add stage-level facts to the manifest before it is written."""


@dataclass
class StageResult:
    stage: str
    partition: str
    status: str  # "computed" | "skipped"
    manifest: dict

    def summary(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "stage": self.stage, "partition": self.partition, "status": self.status,
            "rows_in": m["rows_in"], "rows_out": m["rows_out"], "drops": m["drops"],
            "path": m["location"],
        }


def write_resolved_config(cfg: NyxConfig, store: ArtifactStore) -> str:
    """Write the run's full resolved config once (YAML), content-addressed, so every task of a run
    (and every run with the same config) names the same file; returns its URL for the log line."""
    import yaml

    data = cfg.model_dump(mode="json")
    rel = f"partitions/{cfg.partition}/_configs/{stable_hash(data)}.yaml"
    if not store.exists(rel):
        store.write_bytes_atomic(rel, yaml.safe_dump(data, sort_keys=False).encode())
    return store.url(rel)


def stage_config_hash(stage: Stage, cfg: NyxConfig) -> str:
    """The hash the manifest records as `config_hash`: the stage's own config payload, keyed by
    the output it writes (for every stage but re-mining that is its name)."""
    return stable_hash({"stage": stage.output, "version": stage.version, "config": stage.config_payload(cfg)})


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



def _context(stage: Stage, cfg: NyxConfig, store: ArtifactStore | None) -> StageContext:
    store = store or ArtifactStore(cfg.artifact_root())
    return StageContext(cfg=cfg, store=store, stage=stage, partition=cfg.partition)


def _lease(ctx: StageContext, opts: RunOptions) -> Lease:
    return Lease(ctx.store, ctx.stage_rel(), opts.owner, opts.lease_ttl,
                 what=f"{ctx.stage.name} (partition {ctx.partition})")


def _committed(ctx: StageContext) -> dict | None:
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
        ctx = _context(stage, cfg, store)
        config_hash = log_context(stage, cfg, ctx.store, "plan")
        lease = _lease(ctx, opts)
        lease.acquire(wait=opts.wait)
        with _released_on_failure(lease), lease:  # the heartbeat stops before the release
            inputs = stage.input_fingerprint(ctx)
            verify_inputs(ctx, inputs, opts.verify)
            key = stable_hash({"config": config_hash, "inputs": inputs})
            ctx.log.info("%s: root=%s inputs=%s", stage.name, ctx.store.root, inputs or "-")
            if _complete(ctx, key) or _adopted(ctx, key):
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
                "config": stage.config_payload(cfg), "shards": shards, "planned_at": _now(),
            })
            done = sum(1 for s in shards if _shard_done(ctx, s, key))
            ctx.log.info("%s: %d shard(s) planned in attempt %s, %d already finished from an earlier attempt",
                         stage.name, len(shards), ctx.attempt, done)
            return shards


def _complete(ctx: StageContext, key: str) -> bool:
    """True (and logged) when the committed snapshot has this key and force is off; a plan left
    by an abandoned attempt is dropped then, so the commit step finds nothing to do."""
    manifest = _committed(ctx)
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


def _adopted(ctx: StageContext, key: str) -> bool:
    """In an experiment's variant partition (`_EXPERIMENT.json` names its base): when the base
    partition's committed snapshot has this very key (same config hash, same input hashes), write a
    manifest here that adopts it by reference (`artifacts.adopted_manifest`) instead of recomputing.
    Nothing is written under the base; force never adopts."""
    base = None if ctx.cfg.force else experiment_base(ctx.store, ctx.partition)
    if not base or base == ctx.partition:
        return False
    stage = ctx.stage.name
    try:
        found = read_manifest(ctx.store, base, ctx.stage.output, missing_ok=True)
    except SnapshotError as e:
        ctx.log.warning("%s: base partition %s: %s; computing in %s", stage, base, e, ctx.partition)
        return False
    if not found or found.get("key") != key or missing_files(ctx.store, found):
        ctx.log.info("%s: computing in variant partition %s: base partition %s has %s", stage, ctx.partition, base,
                     "no snapshot" if not found else f"key {found.get('key')} (this variant's is {key})"
                     if found.get("key") != key else "lost files of its snapshot")
        return False
    ctx.store.write_json_atomic(ctx.stage_rel(MANIFEST), adopted_manifest(found, ctx.partition, _now()))
    ctx.store.remove(ctx.stage_rel(PLAN))  # an abandoned attempt's plan: the commit finds nothing to do
    ctx.log.info("%s: adopted base partition %s's snapshot (key %s, %s rows, %s) into partition %s; nothing "
                 "recomputed", stage, base, key, found["rows_out"], found.get("location", ""), ctx.partition)
    return True


def _marker_rel(ctx: StageContext, shard: ShardSpec) -> str:
    return ctx.rel(f"{SHARDS_DIR}/{int(shard['shard']):05d}.json")


def _shard_done(ctx: StageContext, shard: ShardSpec, key: str) -> dict | None:
    marker = ctx.store.read_json(_marker_rel(ctx, shard))
    return marker if marker and marker.get("key") == key else None


def _read_plan(ctx: StageContext, owner: str) -> dict:
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
        ctx = _context(stage, cfg, store)
        log_context(stage, cfg, ctx.store, f"shard {name}")
        _read_plan(ctx, opts.owner)
        marker = _shard_done(ctx, shard, ctx.key)
        if marker:
            ctx.log.info("%s: shard %s already finished (%s rows); skipping",
                         stage.name, name, marker["rows_out"])
            return marker
        lease = _lease(ctx, opts)
        lease.acquire(wait=opts.wait)  # this run's plan took it: a renewal; another run's: refused
        with lease:
            return _process_shard(ctx, shard, lease)


def _process_shard(ctx: StageContext, shard: ShardSpec, lease: Lease) -> dict:
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
        "finished_at": _now(),
    }
    lease.renew()  # still ours: a run that lost its lease records nothing
    # The marker is written only after every output file is closed and in place.
    ctx.store.write_json_atomic(_marker_rel(ctx, shard), marker)
    ctx.log.info("%s: shard %s done: %d in, %d out, %d dropped in %.1fs (%.1f rows/s)",
                 stage.name, name, marker["rows_in"], marker["rows_out"], sum(marker["drops"].values()),
                 seconds, marker["rows_in"] / max(seconds, 1e-9))
    return marker


def commit_stage(stage: Stage, cfg: NyxConfig, store: ArtifactStore | None = None,
                 opts: RunOptions | None = None) -> StageResult:
    """Check every planned shard finished, then write the manifest last and release the lease."""
    opts = opts or RunOptions()
    with failure_line(stage.name, "commit", cfg.partition):
        ctx = _context(stage, cfg, store)
        log_context(stage, cfg, ctx.store, "commit")
        lease = _lease(ctx, opts)
        existing = _committed(ctx)
        plan = ctx.store.read_json(ctx.stage_rel(PLAN))
        if existing and (plan is None or (plan.get("attempt", "") == existing.get("attempt", "")
                                          and not existing.get("adopted_from"))):  # adopted: the base's attempt
            ctx.log.info("%s: partition %s unchanged since its last commit; nothing committed", stage.name, ctx.partition)
            lease.release()
            return StageResult(stage.name, ctx.partition, "skipped", existing)
        lease.acquire(wait=opts.wait)
        with lease:
            plan = _read_plan(ctx, opts.owner)
            manifest = _manifest(ctx, plan)
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


# Drops whose cause is outside the data: a dependency that is down or too slow, not a bad record.
DEPENDENCY_REASON = re.compile(r"(connection_error|timeout|deadline|http_5\d\d|unavailable)$")


def check_usable(ctx: StageContext, manifest: dict) -> None:
    """Refuse to commit what no one can use: rows read but none kept, or more of the input lost to
    a dependency (connection refused, timeouts, 5xx) than `checks.max_dependency_failure_share`."""
    checks, name = ctx.cfg.checks, ctx.stage.name
    rows_in, rows_out, drops = manifest["rows_in"], manifest["rows_out"], manifest["drops"]
    top = ", ".join(f"{r}={n}" for r, n in sorted(drops.items(), key=lambda kv: -kv[1])[:3]) or "none"
    failed = sum(n for r, n in drops.items() if DEPENDENCY_REASON.search(r))
    if rows_in and checks.max_dependency_failure_share < 1.0 and failed > checks.max_dependency_failure_share * rows_in:
        reasons = ", ".join(f"{r}={n}" for r, n in drops.items() if DEPENDENCY_REASON.search(r))
        raise StageError(f"{name}: {failed} drops for {rows_in} rows read came from a dependency, not the data "
                         f"({reasons}), over checks.max_dependency_failure_share={checks.max_dependency_failure_share}; "
                         "nothing was committed. Check that the servers it reaches are up, then re-run with --force "
                         "(the finished shards hold the failed requests).")
    if checks.fail_when_nothing_kept and rows_in > 0 and rows_out == 0:
        raise StageError(f"{name}: read {rows_in} rows of partition {ctx.partition} and kept none (drops: {top}); "
                         "nothing was committed. Check the input and the drop reasons (nyx status --drops REASON); "
                         "checks.fail_when_nothing_kept=false commits an empty snapshot.")


def _manifest(ctx: StageContext, plan: dict) -> dict:
    """The snapshot's manifest from the attempt's shard markers (refuses when one is missing)."""
    stage = ctx.stage
    markers, missing = [], []
    for s in plan["shards"]:
        m = _shard_done(ctx, s, plan["key"])
        (markers.append(m) if m else missing.append(s["name"]))
    if missing:
        raise StageError(f"{stage.name}: shard(s) {missing} of partition {ctx.partition} did not "
                         "finish; re-run the stage (finished shards are kept).")
    drops: Counter[str] = Counter()
    extra: Counter[str] = Counter()
    outputs: dict[str, list[dict]] = {k: [] for k in (*stage.outputs, DROPS_KIND)}
    for m in markers:
        drops.update(m["drops"])
        extra.update(m["extra"])
        for kind, f in m["outputs"].items():
            outputs[kind].append(f)
    return {
        "stage": stage.name, "partition": ctx.partition, "status": "complete",
        "stage_version": stage.version, "code_version": code_version(),
        "key": plan["key"], "attempt": ctx.attempt, "config_hash": plan["config_hash"], "config": plan["config"],
        "inputs": plan["inputs"], "rows_in": sum(m["rows_in"] for m in markers),
        "rows_out": sum(m["rows_out"] for m in markers),
        "drops": dict(sorted(drops.items())), "extra": dict(sorted(extra.items())),
        "outputs": outputs, "schemas": {**stage.outputs, DROPS_KIND: "drops"},
        "output_hash": stable_hash([(k, f["path"].rsplit("/", 1)[-1], f["sha256"])
                                    for k, fs in outputs.items() if k != DROPS_KIND for f in fs], 32),
        "location": ctx.store.url(ctx.stage_rel()),
        "shards": [{k: m[k] for k in ("shard", "name", "rows_in", "rows_out", "drops", "seconds")} for m in markers],
        "timings": {"planned_at": plan["planned_at"], "finished_at": _now(),
                    "shard_seconds": round(sum(m["seconds"] for m in markers), 3)},
    }


@contextlib.contextmanager
def _released_on_failure(lease: Lease):
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
    ctx = _context(stage, cfg, store)
    with _released_on_failure(_lease(ctx, opts)):
        for shard in shards:
            run_shard(stage, cfg, shard, store, opts)
        return commit_stage(stage, cfg, store, opts)

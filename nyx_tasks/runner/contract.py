"""The stage contract: what a stage declares and implements (`Stage`), what it is handed
(`StageContext`, `ShardOutputs`), how a run is asked for (`RunOptions`) and what it returns
(`StageResult`); the attempt's file names and the stage's config hash."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

from nyx_tasks.core.base import ShardSpec, StageError
from nyx_tasks.core.config import NyxConfig
from nyx_tasks.core.hashing import stable_hash
from nyx_tasks.core.log import DropCounter, get_logger
from nyx_tasks.store.artifacts import ArtifactStore, read_manifest
from nyx_tasks.store.attempts import attempt_rel
from nyx_tasks.store.lease import DEFAULT_TTL, process_owner

PLAN = "_PLAN.json"
SHARDS_DIR = "_shards"
DROPS_DIR = "_drops"
DROPS_KIND = "drops"  # the manifest's output kind of the drop record


def now() -> str:
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
        from nyx_tasks.core.schema import SCHEMAS  # pyarrow, only once rows are written

        self.writers = {}
        try:
            for kind, schema in ctx.stage.outputs.items():
                self.writers[kind] = ctx.store.parquet_writer(
                    ctx.rel(ArtifactStore.shard_file(kind, idx)), SCHEMAS[schema], f"{ctx.stage.name}/{kind}")
        except BaseException:
            self.abort()  # the kinds opened before the one that failed
            raise

    def write(self, rows: list[dict], kind: str = "part") -> None:
        self.writers[kind].write_rows(rows)

    def write_table(self, table, kind: str = "part") -> None:
        self.writers[kind].write_table(table)

    def close(self) -> dict[str, dict]:
        from nyx_tasks.core.schema import SCHEMAS  # pyarrow, only once rows are written

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
        `embeds_corpora`, embedded in mapped shards before it plans (`nyx_tasks.retrieval.corpus_jobs`)."""
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
            node.pop(leaf, None)  # absent: a field left out of the dump at its default (`exclude_if`)
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

def stage_config_hash(stage: Stage, cfg: NyxConfig) -> str:
    """The hash the manifest records as `config_hash`: the stage's own config payload, keyed by
    the output it writes (for every stage but re-mining that is its name)."""
    return stable_hash({"stage": stage.output, "version": stage.version, "config": stage.config_payload(cfg)})

def marker_rel(ctx: StageContext, shard: ShardSpec) -> str:
    return ctx.rel(f"{SHARDS_DIR}/{int(shard['shard']):05d}.json")

def shard_done(ctx: StageContext, shard: ShardSpec, key: str) -> dict | None:
    marker = ctx.store.read_json(marker_rel(ctx, shard))
    return marker if marker and marker.get("key") == key else None

"""`train_stage1` / `train_stage2` (paper: stage-1 contrastive pre-training,
stage-2 fine-tuning on VLM feedback): launch the training driver as a
subprocess (`python -m nyx_tasks.training.driver` on a CPU, `torchrun` over
`num_gpus` GPUs), stream its log lines, then publish the checkpoint.

    <root>/models/<run>/<stage>/checkpoints/checkpoint-N/   model, optimizer, scheduler, rng, step, config,
                                                             nyx_complete.json last (see nyx_tasks.store.checkpoints);
                                                             removed when the stage commits (keep_checkpoints)
    <root>/models/<run>/<stage>/adapter/  merged/  tensorboard/  metrics.json
    <root>/models/<run>/<stage>/_CHECKPOINT.json            written last (see nyx_tasks.store.checkpoints)

`<run>` is `<partition>-<stage key>`: a retried attempt of the same config and
inputs lands in the same folder and resumes from its newest complete
checkpoint; a changed config trains a new run beside the old one. Under
`force` the run is `<partition>-<stage key>-f<the plan's nonce>`: a fresh
folder, trained from step 0, the earlier runs left as they are; a retry
of the same plan (an Airflow retry of the shard task) resumes it, a new forced
plan starts another. The stage's Parquet output is the training log (one row
per logging step).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path

from nyx_tasks.core.base import ShardSpec, StageError
from nyx_tasks.runner import ShardOutputs, Stage, StageContext
from nyx_tasks.store.checkpoints import read_checkpoint_marker, write_checkpoint_marker
from nyx_tasks.training.data import newest_negatives
from nyx_tasks.training.deepspeed_config import launch_env


def run_name(partition: str, key: str, fresh: str = "") -> str:
    """`<partition>-<key[:12]>`, plus `-f<fresh>` for a forced run (`planned_run`)."""
    return f"{partition}-{key[:12]}" + (f"-f{fresh}" if fresh else "")


def planned_run(ctx: StageContext, key: str) -> str:
    """The run folder this plan trains in: the key's own, resumed by every attempt; under
    `force` one of its own (`run_name(..., fresh)`), so a forced run starts from step 0 and
    every step of that plan (a shard retry, the commit) finds the same folder."""
    if not ctx.cfg.force:
        return run_name(ctx.partition, key)
    return run_name(ctx.partition, key, _fresh_tag(ctx, key))


def _fresh_tag(ctx: StageContext, key: str) -> str:
    """What tells one forced plan from the next: the nonce of the runner's attempt, which is
    `<key>-<nonce>` under force and comes from the plan in every step of it."""
    if not ctx.attempt.startswith(f"{key}-"):
        raise StageError(f"{ctx.stage.name}: force is set but the plan's attempt {ctx.attempt!r} is not a forced "
                         f"attempt of key {key}; run the plan step again.")
    return ctx.attempt[len(key) + 1:]


def retry_note(ctx: StageContext, run: str, rel: str) -> str:
    """What a retry does after a failed training attempt, for the failure message."""
    where = f"Complete checkpoints under {ctx.store.url(rel)}/checkpoints are kept (an unfinished save is not resumed)"
    if not ctx.cfg.force:
        return (f"{where}: a retry (an Airflow retry, or `nyx {ctx.stage.name}` again) resumes run {run} from its "
                "newest complete checkpoint, or from step 0 if none completed; --force trains a new run from step 0.")
    return (f"{where}: an Airflow retry of this task (the same plan) resumes this forced run {run} from its newest "
            f"complete checkpoint, or from step 0 if none completed; `nyx {ctx.stage.name} --force` again plans "
            "another run, from step 0.")


def launch_command(num_gpus: int, spec_path: str) -> list[str]:
    if num_gpus > 0:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={num_gpus}",
                "-m", "nyx_tasks.training.driver", spec_path]
    return [sys.executable, "-m", "nyx_tasks.training.driver", spec_path]


def stream_subprocess(cmd: list[str], log, env: dict | None = None, keep: int = 30) -> tuple[int, list[str]]:
    """Run `cmd`, forwarding each output line to `log` as it comes; (exit code, last lines)."""
    tail: deque[str] = deque(maxlen=keep)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           "TRANSFORMERS_VERBOSITY": "warning", **(env or {})}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                          env=env) as proc:
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                tail.append(line)
                log.info("%s", line)
        return proc.wait(), list(tail)


class TrainStage(Stage):
    version = 1
    inputs = ("mine",)
    outputs = {"part": "train_log"}
    execution_only = ("dataloader_workers", "vision_attention", "checkpoint_layers", "compile_layers", "save_steps", "save_total_limit", "keep_checkpoints", "logging_steps")
    gpu_routed = True
    publishes_checkpoint = True

    def gpus(self, cfg) -> int:
        return cfg.stage_config(self.name).num_gpus

    def input_fingerprint(self, ctx: StageContext) -> dict[str, str]:
        found = super().input_fingerprint(ctx)
        for src in ctx.cfg.stage_config(self.name).sources:  # imported datasets and re-mined negatives
            if src.kind == "dataset":
                m = ctx.store.read_json(f"datasets/{src.dataset}/_MANIFEST.json")
                if m is None:
                    raise StageError(f"{self.name}: dataset {src.dataset!r} (source {src.name!r}) is not imported "
                                     f"under {ctx.store.url('datasets')}; run `nyx import ... --name {src.dataset}`.")
                found[f"dataset:{src.dataset}"] = m["output_hash"]
            elif src.kind == "negatives":

                found[f"negatives:{src.name}"] = newest_negatives(ctx.store, ctx.partition) or "-"
        return found

    def plan_shards(self, ctx: StageContext) -> list[ShardSpec]:
        return [{"shard": 0, "name": "train"}]

    def init_adapter(self, ctx: StageContext) -> str | None:
        """An adapter to fold in before training (stage 2 from the stage-1 model)."""
        return None

    def init_model(self, ctx: StageContext) -> str | None:
        """Weights to start from instead of `base_model` (stage 2 from a fully fine-tuned stage 1)."""
        return None

    def process(self, ctx: StageContext, shard: ShardSpec, out: ShardOutputs) -> None:
        cfg = ctx.cfg.stage_config(self.name)
        run = planned_run(ctx, ctx.key)
        rel = f"models/{run}/{self.name}"
        local = ctx.store.is_local
        out_dir = Path(ctx.store.path(rel)) if local else Path(tempfile.gettempdir()) / "nyx-runs" / run / self.name
        out_dir.mkdir(parents=True, exist_ok=True)
        spec = {"stage": self.name, "partition": ctx.partition, "root": ctx.store.root, "run": run,
                "out_dir": str(out_dir), "train": cfg.model_dump(mode="json"), "init_adapter": self.init_adapter(ctx),
                "init_model": self.init_model(ctx)}
        spec_path = out_dir / "run_spec.json"
        spec_path.write_text(json.dumps(spec, indent=1))
        cmd = launch_command(cfg.num_gpus, str(spec_path))
        ctx.log.info("%s: run %s, base %s (%s), %s, %s, loss dims %s, batch %d x %d accum, lr %g -> %s",
                     self.name, run, cfg.base_model, cfg.family, f"{cfg.num_gpus} GPU(s)" if cfg.num_gpus else "CPU",
                     f"LoRA r={cfg.lora.r}" if cfg.lora.enabled else "full fine-tuning", cfg.loss.dims, cfg.per_device_batch_size, cfg.accumulation,
                     cfg.learning_rate, ctx.store.url(rel))
        ctx.log.info("%s: launching %s", self.name, " ".join(cmd))
        code, tail = stream_subprocess(cmd, ctx.log, env=launch_env(os.environ))
        if code != 0:
            raise StageError(f"{self.name}: training exited with code {code}; last line: {tail[-1] if tail else '-'}. "
                             + retry_note(ctx, run, rel))
        metrics = json.loads((out_dir / "metrics.json").read_text())
        if not local:  # train on local disk, then publish to the remote root
            if not cfg.keep_checkpoints:  # they resume this worker's unfinished run only: not published
                shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
            ctx.store.fs.put(str(out_dir), ctx.store.path(rel), recursive=True)
        hist = [h for h in metrics["log_history"] if "loss" in h and "step" in h]
        out.rows_in = metrics["examples"]
        out.extra["steps"] = metrics["total_steps"]
        for source, counts in metrics["mix"].items():  # what the training mix kept and dropped, in the manifest
            out.extra["rows_with_images"] += counts.get("rows_with_images", 0)
            out.extra["image_negatives_left_out"] += counts.get("image_negatives_left_out", 0)
            for subset, n in counts.get("subsets", {}).items():
                out.extra[f"rows:{source}:{subset}"] = n
            for reason, n in counts["dropped"].items():
                out.drops.drop(reason, n=n)
        out.write([{"step": h["step"], "epoch": float(h.get("epoch", 0.0)), "loss": float(h["loss"]),
                    "loss_per_dim": [(int(k.split("@")[1]), float(v)) for k, v in h.items() if k.startswith("loss@")],
                    "learning_rate": float(h.get("learning_rate", 0.0)),
                    "grad_norm": float(h["grad_norm"]) if h.get("grad_norm") is not None else None, "run": run}
                   for h in hist])
        final = {"train_loss": metrics["train"].get("train_loss"), "first_loss": hist[0]["loss"] if hist else None,
                 "last_loss": hist[-1]["loss"] if hist else None, "steps": metrics["total_steps"],
                 "samples_per_second": metrics["train"].get("train_samples_per_second")}
        write_checkpoint_marker(ctx.store, rel, base_model=cfg.base_model, stage=self.name, run=run,
                                partition=ctx.partition, metrics={**final, "recipe": metrics.get("recipe")})

    def finalize(self, ctx: StageContext, manifest: dict) -> None:
        rel = f"models/{planned_run(ctx, manifest['key'])}/{self.name}"
        manifest["checkpoint"] = read_checkpoint_marker(ctx.store, rel)
        if not ctx.cfg.stage_config(self.name).keep_checkpoints:
            drop_step_checkpoints(ctx, f"{rel}/checkpoints")


def drop_step_checkpoints(ctx: StageContext, rel: str) -> None:
    """Remove a published run's step checkpoints: the shard is committed (a retry never trains again), so
    they could only resume a run that is finished. Here, not in the shard: a failure between the marker and
    the shard's commit still resumes from them."""
    if not ctx.store.exists(rel):
        return
    size = sum(ctx.store.fs.du(ctx.store.path(rel), total=False).values()) if ctx.store.is_local else None
    ctx.store.remove(rel)
    ctx.log.info("%s: removed the step checkpoints under %s%s (the run is published; keep_checkpoints: true "
                 "keeps them)", ctx.stage.name, ctx.store.url(rel), f", {size / 2**20:.0f} MiB" if size else "")

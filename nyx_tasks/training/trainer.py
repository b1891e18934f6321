"""The transformers `Trainer` for Nyx: `compute_loss` encodes queries and
documents and calls the Matryoshka InfoNCE loss; the data order is the
TrainingMix's own (sequential sampler: deterministic, and what a resumed run
skips through); every log line carries the loss per dimension, the learning
rate and samples/s. A checkpoint counts once `CompleteCheckpoints` has marked it
(see nyx_tasks.store.checkpoints): the marker is the last thing written to it.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import torch.distributed as dist
from transformers import Trainer, TrainerCallback

from nyx_tasks.core.config import LossSettings
from nyx_tasks.core.log import get_logger
from nyx_tasks.store.checkpoints import mark_step_complete, rotate_step_checkpoints
from nyx_tasks.training.collator import split_docs
from nyx_tasks.training.loss import mrl_infonce_losses
from nyx_tasks.training.model import Backbone


class NyxTrainer(Trainer):
    def __init__(self, *args, loss_cfg: LossSettings, backbone: Backbone, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_cfg, self.backbone = loss_cfg, backbone
        self._dim_sums: dict[int, float] = defaultdict(float)
        self._dim_calls = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        q = self.backbone.encode(model, inputs["query"])  # (B, D)
        docs = self.backbone.encode(model, inputs["docs"])  # (B + real negatives, D): positives first
        mask = inputs["negative_mask"]  # (B, K): which negative slots are real
        positives, negatives = split_docs(docs, mask)
        k = mask.shape[1]
        c = self.loss_cfg
        total, per_dim = mrl_infonce_losses(q, positives, negatives, c.dims, c.weights, c.temperature,
                                            c.share_negatives, c.gather_across_devices,
                                            mask if k else None,  # every rank passes one (a collective)
                                            normalize_weights=c.normalize_weights)
        for d, v in per_dim.items():
            self._dim_sums[d] += float(v.detach())
        self._dim_calls += 1
        return (total, {"per_dim": per_dim}) if return_outputs else total

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._dim_calls and "loss" in logs:
            logs.update({f"loss@{d}": round(s / self._dim_calls, 4) for d, s in self._dim_sums.items()})
            self._dim_sums.clear()
            self._dim_calls = 0
        super().log(logs, start_time)

    def _get_train_sampler(self, train_dataset=None):
        from torch.utils.data import SequentialSampler

        return SequentialSampler(train_dataset or self.train_dataset)  # the mix already shuffled, per epoch


class LogLines(TrainerCallback):
    """One readable line per logging step (these stream into the Airflow task log)."""

    def __init__(self, global_batch: int):
        self.global_batch, self.log = global_batch, get_logger("train")
        self._t, self._step = time.monotonic(), 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        now = time.monotonic()
        rate = (state.global_step - self._step) * self.global_batch / max(now - self._t, 1e-9)
        self._t, self._step = now, state.global_step
        if "loss" in logs:
            dims = " ".join(f"{k}={v:.4f}" for k, v in logs.items() if k.startswith("loss@"))
            self.log.info("step %d/%d epoch %.2f loss %.4f [%s] lr %.3g grad_norm %s %.2f samples/s",
                          state.global_step, state.max_steps, logs.get("epoch", 0.0), logs["loss"], dims,
                          logs.get("learning_rate", 0.0), f"{logs['grad_norm']:.3f}" if "grad_norm" in logs else "-",
                          rate)
        elif "train_runtime" in logs:
            self.log.info("training done: %d steps in %.1fs (%.2f samples/s), mean loss %.4f", state.global_step,
                          logs["train_runtime"], logs.get("train_samples_per_second", 0.0), logs.get("train_loss", 0.0))


class SaveSpec(TrainerCallback):
    """Each checkpoint also carries the run's spec (`nyx_run.json`): what it was trained with."""

    def __init__(self, ckpt_dir: Path, spec: dict):
        self.ckpt_dir, self.spec = ckpt_dir, spec

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            (self.ckpt_dir / f"checkpoint-{state.global_step}" / "nyx_run.json").write_text(json.dumps(self.spec, indent=1))


def barrier() -> None:
    """Wait for every rank (torchrun); nothing to wait for in one process."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class CompleteCheckpoints(TrainerCallback):
    """The last `on_save` callback: once every rank has written checkpoint-N (the Trainer's files,
    then `nyx_run.json`), rank 0 writes its completion marker, then rotates. `save_total_limit`
    is applied here and counts complete checkpoints only; the Trainer's own rotation (off in
    `training_args`) runs before the marker exists and could delete the last complete one."""

    def __init__(self, ckpt_dir: Path, keep: int | None):
        self.ckpt_dir, self.keep, self.log = ckpt_dir, keep, get_logger("train")

    def on_save(self, args, state, control, **kwargs):
        barrier()  # every rank's optimizer shard and rng state are on disk
        if not state.is_world_process_zero:
            return
        folder = self.ckpt_dir / f"checkpoint-{state.global_step}"
        mark_step_complete(folder, state.global_step)
        gone = rotate_step_checkpoints(self.ckpt_dir, self.keep)
        self.log.info("checkpoint saved at step %d (model, optimizer, scheduler, rng, step) under %s, marked "
                      "complete%s", state.global_step, folder,
                      f"; removed the older {', '.join(p.name for p in gone)}" if gone else "")

"""The DeepSpeed ZeRO-2 config of a training run (paper: DeepSpeed ZeRO-2, bf16).

Every value is concrete (no "auto"): the same dict is what the HF Trainer's
DeepSpeed integration gets and what `deepspeed.runtime.config.DeepSpeedConfig`
validates in the tests. AdamW and a warm-up-then-decay schedule live here, so
DeepSpeed owns optimizer and scheduler states in checkpoints.
"""

from __future__ import annotations

import math
import re

from nyx_tasks.core.config import TrainConfig


def zero2_config(cfg: TrainConfig, total_steps: int, world_size: int) -> dict:
    """ZeRO stage 2 (optimizer states and gradients partitioned), bf16, AdamW,
    linear warm-up then linear decay to 0 over `total_steps`, gradient clipping."""
    warmup = math.ceil(cfg.warmup_ratio * total_steps)  # as TrainingArguments computes it: HF checks they match
    micro = cfg.per_device_batch_size
    return {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": cfg.accumulation,
        "train_batch_size": micro * cfg.accumulation * world_size,
        "gradient_clipping": cfg.max_grad_norm,
        "bf16": {"enabled": True},
        "zero_optimization": {
            "stage": 2,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_scatter": True,
            "allgather_partitions": True,
            "allgather_bucket_size": 200_000_000,
            "reduce_bucket_size": 200_000_000,
        },
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": cfg.learning_rate, "betas": [0.9, 0.999], "eps": 1e-8,
                       "weight_decay": cfg.weight_decay},
        },
        "scheduler": {
            "type": "WarmupDecayLR",
            "params": {"warmup_min_lr": 0.0, "warmup_max_lr": cfg.learning_rate,
                       "warmup_num_steps": warmup, "total_num_steps": max(total_steps, warmup + 1),
                       "warmup_type": "linear"},
        },
        "steps_per_print": cfg.logging_steps,
        "wall_clock_breakdown": False,
    }


def deepspeed_arch_list(value: str) -> str:
    """TORCH_CUDA_ARCH_LIST as DeepSpeed's JIT op builder (FusedAdam) can read it: it parses each
    entry as numbers and fails on the arch suffixes of NVIDIA's Hopper/Blackwell images (`9.0a`,
    `10.0f`: "invalid literal for int() ... '0a'", seen on an H200). The suffix only selects
    arch-specific instructions that FusedAdam does not use; `+PTX` is kept."""
    return re.sub(r"(\d+\.\d+)[a-z]+", r"\1", value)


def launch_env(environ: dict) -> dict:
    """Environment overrides for a DeepSpeed training process started from `environ`."""
    arch = environ.get("TORCH_CUDA_ARCH_LIST")
    return {"TORCH_CUDA_ARCH_LIST": deepspeed_arch_list(arch)} if arch else {}

"""The training driver, one recipe read top to bottom (paper: stage 1 / stage 2):
data mix -> model (+ LoRA) -> Trainer -> resume from the newest complete
checkpoint -> train -> adapter + merged export + metrics.

    python -m nyx_tasks.training.driver RUN_SPEC.json                     # CPU, one process
    torchrun --standalone --nproc-per-node 8 -m nyx_tasks.training.driver RUN_SPEC.json

The run spec (written by the train stage) holds the TrainConfig, the artifact
root, the partition, the output dir and an optional adapter to start from.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from unittest import mock

from nyx_tasks.core.config import TrainConfig
from nyx_tasks.core.log import get_logger
from nyx_tasks.embedding import resolve_model_path
from nyx_tasks.embedding.vlm import use_bf16
from nyx_tasks.store.artifacts import ArtifactStore
from nyx_tasks.store.checkpoints import resume_checkpoint
from nyx_tasks.training.collator import TripletCollator
from nyx_tasks.training.data import TrainingMix, group_by_length, image_index, load_sources
from nyx_tasks.training.deepspeed_config import zero2_config
from nyx_tasks.training.model import Backbone, export_merged, load_trainable, resolve_pooling


def _world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def run(spec: dict, callbacks: tuple = ()) -> dict:
    """Train as `spec` says; returns the metrics. `callbacks`: extra TrainerCallbacks (tests)."""
    import torch
    from transformers import PrinterCallback, set_seed

    from nyx_tasks.training.data import (  # a torch Dataset subclass, built on first use
        ExampleDataset,
    )
    from nyx_tasks.training.trainer import (  # torch, transformers, peft
        CompleteCheckpoints,
        LogLines,
        NyxTrainer,
        SaveSpec,
    )

    cfg = TrainConfig.model_validate(spec["train"])
    _, world = _world()
    log = get_logger("train")
    out = Path(spec["out_dir"])
    set_seed(cfg.seed)
    store = ArtifactStore(spec["root"])
    plan = plan_data(store, spec["partition"], cfg, world, log)

    on_gpu = torch.cuda.is_available() and cfg.num_gpus > 0
    bf16 = use_bf16(cfg.bf16, on_gpu)  # on a CPU: autocast (the Trainer's), fp32 weights and optimizer
    path = resolve_model_path(spec.get("init_model") or cfg.base_model)
    model, processor = load_trainable(path, cfg, bf16 and on_gpu, spec.get("init_adapter"))
    cfg, recipe = with_recipe(cfg, path, processor)
    log.info("backbone %s (%s), pooling %s%s", cfg.base_model, cfg.family, recipe["pooling"],
             f", {cfg.max_length} tokens per text in training, {recipe['max_seq_length']} in the export"
             if cfg.family == "encoder" else "")

    ckpt_dir = out / "checkpoints"  # every save_steps: model (adapter), optimizer, scheduler, rng and step
    # transformers 5's TensorBoard callback reads its folder from the environment when the Trainer builds
    # it: set for that moment only (a caller in this process keeps its environment)
    with mock.patch.dict(os.environ, {"TENSORBOARD_LOGGING_DIR": str(out / "tensorboard")}):
        trainer = NyxTrainer(model=model, args=training_args(cfg, ckpt_dir, plan["total_steps"], world, on_gpu, bf16),
                             train_dataset=ExampleDataset(plan["examples"]),
                             data_collator=TripletCollator(processor, cfg, store), loss_cfg=cfg.loss,
                             backbone=Backbone(cfg.family, recipe["pooling"]),
                             callbacks=[LogLines(plan["global_batch"]), SaveSpec(ckpt_dir, spec), *callbacks,
                                        CompleteCheckpoints(ckpt_dir, cfg.save_total_limit)])  # last: marks the save
    trainer.remove_callback(PrinterCallback)  # LogLines says it once, readably
    last = resume_point(ckpt_dir, trainer.is_world_process_zero(), log)
    result = trainer.train(resume_from_checkpoint=str(last) if last else None)

    metrics = {"train": result.metrics, "total_steps": plan["total_steps"], "examples": len(plan["examples"]),
               "mix": plan["mix"].counts, "log_history": trainer.state.log_history, "world_size": world, "bf16": bf16,
               "recipe": recipe}
    if trainer.is_world_process_zero():
        publish(model, processor, out, metrics, log)
    return metrics


def with_recipe(cfg: TrainConfig, path: str, processor) -> tuple[TrainConfig, dict]:
    """The embedding recipe the checkpoint carries (family, pooling, prefixes, max length) and the
    config with an encoder's max length resolved: `max_length`, else the sentence-transformers
    folder's `max_seq_length`, else the tokenizer's limit."""
    recipe = {"family": cfg.family, "pooling": resolve_pooling(cfg, path), "dims": list(cfg.loss.dims)}
    if cfg.family != "encoder":
        return cfg, recipe
    st = Path(path) / "sentence_bert_config.json"
    own = json.loads(st.read_text()).get("max_seq_length") if st.is_file() else None
    # sentence-transformers 6 keeps the limit as the tokenizer's model_max_length (our own exports too)
    own = own or (processor.model_max_length if processor.model_max_length < 100_000 else 512)
    max_length = cfg.max_length or own
    recipe.update(max_seq_length=own, query_prefix=cfg.query_prefix,
                  document_prefix=cfg.document_prefix)
    return cfg.model_copy(update={"max_length": max_length}), recipe


def resume_point(ckpt_dir: Path, main: bool, log) -> Path | None:
    """The newest complete checkpoint of this run folder, or None (from scratch). Rank 0 removes
    the incomplete ones (an interrupted save); the other ranks wait for it before training."""
    from nyx_tasks.training.trainer import barrier  # torch.distributed

    last = resume_checkpoint(ckpt_dir, remove_incomplete=main, log=log if main else None)
    barrier()
    if last:
        log.info("resuming from %s, the newest complete checkpoint (a retried attempt continues from there)", last)
    else:
        log.info("no complete checkpoint under %s: training from step 0", ckpt_dir)
    return last


def plan_data(store, partition: str, cfg, world: int, log) -> dict:
    """The mix, in the order every rank and every resumed attempt sees, and the steps it makes."""
    mix = TrainingMix(load_sources(store, partition, cfg, log), cfg, image_index(store, partition, cfg))
    per_epoch = len(mix.epoch(0))
    if per_epoch == 0:
        raise SystemExit("train: the training mix is empty; check train sources (select, split, max_rows)")
    n_examples = max(1, int(round(cfg.epochs * per_epoch)))
    examples = mix.examples(math.ceil(cfg.epochs))[:n_examples]
    global_batch = cfg.per_device_batch_size * cfg.accumulation * world
    if cfg.length_grouping:
        examples = group_by_length(examples, cfg.per_device_batch_size, cfg.length_grouping * global_batch,
                                   f"{cfg.seed}")
    total_steps = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(n_examples / global_batch))
    log.info("data: %s; %d examples per epoch, %d to train on, global batch %d -> %d steps",
             json.dumps(mix.counts, sort_keys=True), per_epoch, n_examples, global_batch, total_steps)
    return {"mix": mix, "examples": examples, "global_batch": global_batch, "total_steps": total_steps}


def training_args(cfg, ckpt_dir: Path, total_steps: int, world: int, on_gpu: bool, bf16: bool):
    """The Trainer's arguments: checkpoints every save_steps, ZeRO-2 through DeepSpeed on GPUs."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(ckpt_dir), max_steps=total_steps, per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.accumulation, learning_rate=cfg.learning_rate,
        warmup_steps=math.ceil(cfg.warmup_ratio * total_steps), lr_scheduler_type=cfg.lr_scheduler,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, bf16=bf16,
        logging_steps=cfg.logging_steps, report_to=["tensorboard"],
        save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=None,  # CompleteCheckpoints rotates, after the marker, counting complete checkpoints
        seed=cfg.seed, data_seed=cfg.seed, remove_unused_columns=False, disable_tqdm=True,
        dataloader_num_workers=cfg.dataloader_workers if on_gpu else 0, use_cpu=not on_gpu,
        # workers decode and process the images of the next batches while the GPU runs this step
        dataloader_prefetch_factor=4 if on_gpu and cfg.dataloader_workers else None,
        dataloader_persistent_workers=bool(on_gpu and cfg.dataloader_workers), dataloader_pin_memory=on_gpu,
        ddp_find_unused_parameters=False, log_level="warning",
        deepspeed=zero2_config(cfg, total_steps, world) if on_gpu and cfg.deepspeed else None,
    )


def publish(model, processor, out: Path, metrics: dict, log) -> None:
    """Rank 0: the adapter, the merged export and the metrics under `out`."""
    model.save_pretrained(str(out / "adapter"))
    processor.save_pretrained(str(out / "adapter"))
    export_merged(model, processor, str(out / "merged"), metrics["recipe"])
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str))
    log.info("wrote adapter, merged export and metrics under %s", out)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m nyx_tasks.training.driver RUN_SPEC.json")
    import logging
    import warnings

    rank, _ = _world()
    # the parent (the train stage, an Airflow task) stamps every line it forwards: no second timestamp
    logging.basicConfig(level="INFO" if rank == 0 else "WARNING", format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices, once per process
    run(json.loads(Path(argv[0]).read_text()))


if __name__ == "__main__":
    main()

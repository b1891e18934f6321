"""`train_stage1` (paper: stage-1 contrastive pre-training of Nyx on NyxQA and
the public mix); the recipe is nyx_tasks/training, the launch nyx_tasks/stages/train.py."""

from __future__ import annotations

from nyx_tasks.stages.train import TrainStage


class Stage1(TrainStage):
    name = "train_stage1"  # its config section and its output prefix
    doc = ("Matryoshka InfoNCE training of the Nyx embedder with LoRA (`torchrun` + DeepSpeed ZeRO-2 "
           "over `num_gpus` GPUs, `route` holds that many `gpu` pool slots; CPU in one process on the "
           "demo); publishes `nyx_checkpoint`.")
    flow = {
        "in": "training examples (triplets)",
        "out": "training-log rows (one per logging step); the checkpoint is published beside them",
        "drops": "none",
    }
    inputs = ("mine",)


STAGE = Stage1()

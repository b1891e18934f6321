"""`train_stage2` (paper: stage 2, fine-tuning on VLM feedback): the stage-1
recipe on the feedback triplets plus the configured mix, starting from the base
model or from the stage-1 model (`train_stage2.init_from`; the paper is
ambiguous, so both). From a VLM stage 1, its adapter is merged into the base and a
fresh adapter is trained on top; the merged export then carries both. From an
encoder stage 1, its merged export is the starting weights."""

from __future__ import annotations

from nyx_tasks.core.base import StageError
from nyx_tasks.runner import StageContext
from nyx_tasks.stages.train import TrainStage
from nyx_tasks.store.checkpoints import stage_checkpoint


class Stage2(TrainStage):
    name = "train_stage2"  # its config section and its output prefix
    doc = ("The stage-1 recipe on the feedback triplets plus the mix, from the base or the stage-1 "
           "model; publishes `nyx_checkpoint`.")
    flow = {
        "in": "training examples (feedback triplets)",
        "out": "training-log rows (one per logging step); the checkpoint is published beside them",
        "drops": "none",
    }
    inputs = ("feedback", "train_stage1")

    def _stage1(self, ctx: StageContext) -> dict | None:
        if ctx.cfg.train_stage2.init_from != "stage1":
            return None
        ckpt = stage_checkpoint(ctx.store, ctx.partition, "train_stage1")
        if ckpt["base_model"] != ctx.cfg.train_stage2.base_model:

            raise StageError(f"train_stage2: init_from=stage1 but the stage-1 base is {ckpt['base_model']!r} and "
                             f"train_stage2.base_model is {ctx.cfg.train_stage2.base_model!r}; make them equal.")
        return ckpt

    def init_adapter(self, ctx: StageContext) -> str | None:
        """A LoRA-trained stage 1: its adapter, folded into the base."""
        ckpt = self._stage1(ctx)
        return ckpt["adapter"] if ckpt and ckpt.get("family", "vlm") == "vlm" else None

    def init_model(self, ctx: StageContext) -> str | None:
        """An encoder stage 1 (LoRA or full fine-tuning): its merged export is the starting weights."""
        ckpt = self._stage1(ctx)
        return ckpt["merged"] if ckpt and ckpt.get("family", "vlm") == "encoder" else None


STAGE = Stage2()

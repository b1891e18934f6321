"""`train_stage2` (paper: stage 2, fine-tuning on VLM feedback): the stage-1
recipe on the feedback triplets plus the configured mix, starting from the base
model or from the stage-1 model (`train_stage2.init_from`; the paper is
ambiguous, so both). From stage 1, its adapter is merged into the base and a
fresh adapter is trained on top; the merged export then carries both."""

from __future__ import annotations

from ..base import StageError
from ..checkpoints import stage_checkpoint
from ..runner import StageContext
from .train import TrainStage


class Stage2(TrainStage):
    name = "train_stage2"  # its config section and its output prefix
    inputs = ("feedback", "train_stage1")

    def init_adapter(self, ctx: StageContext) -> str | None:
        if ctx.cfg.train_stage2.init_from != "stage1":
            return None
        ckpt = stage_checkpoint(ctx.store, ctx.partition, "train_stage1")
        if ckpt["base_model"] != ctx.cfg.train_stage2.base_model:

            raise StageError(f"train_stage2: init_from=stage1 but the stage-1 base is {ckpt['base_model']!r} and "
                             f"train_stage2.base_model is {ctx.cfg.train_stage2.base_model!r}; make them equal.")
        return ckpt["adapter"]


STAGE = Stage2()

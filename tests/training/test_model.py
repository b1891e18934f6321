"""LoRA wraps exactly the language model's decoder projections of the tiny
Qwen2.5-VL (none of the vision tower's same-named modules), a wrong name list
is refused, and the DeepSpeed ZeRO-2 config passes DeepSpeed's own validation."""

import pytest

from nyx_tasks.core.config import LoraSettings, TrainConfig
from nyx_tasks.inference import resolve_model


@pytest.fixture(scope="module")
def base():
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(resolve_model("tiny:qwen2_5_vl"))


def test_lora_wraps_every_decoder_projection_and_nothing_in_the_vision_tower(base):
    from peft.tuners.lora import LoraLayer

    from nyx_tasks.training.model import apply_lora

    layers = base.config.get_text_config().num_hidden_layers
    vision_mlp = [n for n, _ in base.named_modules() if n.startswith("model.visual") and n.endswith("gate_proj")]
    assert vision_mlp  # same-named modules exist in the vision tower: a bare name list would wrap them
    model = apply_lora(base, LoraSettings(r=4, alpha=8))
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    assert len(wrapped) == layers * 7
    assert all(".language_model.layers." in n for n in wrapped)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    model.unload()  # leave the module-scoped base as it was


def test_a_wrong_target_name_is_refused(base):
    from nyx_tasks.training.model import apply_lora

    with pytest.raises(ValueError, match="qkv"):
        apply_lora(base, LoraSettings(target_modules=["q_proj", "qkv"]))  # qkv is a vision-tower name


@pytest.mark.parametrize("accum", [1, 4])
def test_zero2_config_is_valid_for_deepspeed(accum):
    from deepspeed.runtime.config import DeepSpeedConfig

    from nyx_tasks.training.deepspeed_config import zero2_config

    cfg = TrainConfig(per_device_batch_size=8, gradient_accumulation_steps=accum, learning_rate=1e-4,
                      warmup_ratio=0.05, max_grad_norm=1.0)
    # DeepSpeed checks the batch arithmetic against the process group's world size: 1 outside torchrun
    ds = DeepSpeedConfig(zero2_config(cfg, total_steps=1000, world_size=1))
    assert ds.zero_optimization_stage == 2 and ds.bfloat16_config.enabled
    assert ds.train_batch_size == 8 * accum and ds.gradient_clipping == 1.0
    assert ds.optimizer_name == "adamw" and ds.scheduler_name == "WarmupDecayLR"
    assert ds.scheduler_params["warmup_num_steps"] == 50 and ds.scheduler_params["total_num_steps"] == 1000
    assert zero2_config(cfg, 1000, world_size=8)["train_batch_size"] == 8 * accum * 8

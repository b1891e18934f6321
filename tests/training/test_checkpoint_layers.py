"""Gradient checkpointing on the first N layers of each tower (`train_stage*.checkpoint_layers`): the
layers named recompute their forward in the backward and the others do not, the loss and every
trainable gradient are the same whichever layers recompute (LoRA dropout included: the recomputation
replays the random state), the encoder family's layers are found too, and the setting leaves the
stage's config hash alone (it changes how a step runs, not what it computes)."""

from __future__ import annotations

import pytest
import torch

from nyx_tasks.core.config import CheckpointLayers, LoraSettings, TrainConfig
from nyx_tasks.inference import resolve_model
from nyx_tasks.training.model import Backbone, layer_stacks, prepare_for_training


@pytest.fixture(scope="module")
def inputs():
    from PIL import Image
    from transformers import AutoProcessor

    from nyx_tasks.embedding.nyx import nyx_prompt

    processor = AutoProcessor.from_pretrained(resolve_model("tiny:qwen2_5_vl"))
    processor.tokenizer.padding_side = "right"
    texts = [nyx_prompt(processor, t, "document", "", "<image>") for t in
             ("a harbour city and its <image> market", "salt maps and lanterns", "the northern ledger")]
    image = Image.effect_noise((56, 84), 60).convert("RGB")
    return dict(processor(text=texts, images=[image], padding=True, return_tensors="pt"))


def step(inputs, gradient_checkpointing: bool, layers: CheckpointLayers,
         compiled: bool = False) -> tuple[dict, dict, float]:
    """One forward + backward of the tiny Qwen2.5-VL, paper-like LoRA (dropout on, vision down_proj):
    (forward calls per layer, gradients of the trainable parameters, the loss)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(resolve_model("tiny:qwen2_5_vl"),
                                                                dtype=torch.float32)
    cfg = TrainConfig(lora=LoraSettings(r=4, alpha=16, dropout=0.3, use_dora=True,
                                        vision_target_modules=["down_proj"]),
                      gradient_checkpointing=gradient_checkpointing, checkpoint_layers=layers,
                      compile_layers=compiled)
    model = prepare_for_training(model, cfg)
    model.train()
    calls: dict[str, int] = {}
    for name, stack in layer_stacks(model).items():
        for i, layer in enumerate(stack):
            key = f"{name}{i}"
            first = next(iter(layer.children()))  # runs inside the layer's forward, recomputation included
            first.register_forward_hook(lambda *_a, key=key: calls.__setitem__(key, calls.get(key, 0) + 1))
    torch.manual_seed(1)  # the dropout masks
    emb = Backbone().encode(model, inputs)
    loss = (emb.float() ** 2).mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return calls, grads, float(loss.detach())


def test_only_the_layers_named_recompute_and_the_gradients_do_not_change(inputs):
    plain_calls, plain, plain_loss = step(inputs, False, CheckpointLayers())
    all_calls, full, full_loss = step(inputs, True, CheckpointLayers())
    part_calls, part, part_loss = step(inputs, True, CheckpointLayers(language=1, vision=0))
    n_lang = sum(1 for k in plain_calls if k.startswith("language"))
    n_vis = sum(1 for k in plain_calls if k.startswith("vision"))
    assert n_lang >= 2 and n_vis >= 2
    assert set(plain_calls.values()) == {1}  # no checkpointing: each layer runs once
    assert set(all_calls.values()) == {2}  # every layer recomputed in the backward
    assert part_calls == {**plain_calls, "language0": 2}  # only the first decoder layer recomputes
    assert plain_loss == pytest.approx(full_loss, abs=1e-6) and plain_loss == pytest.approx(part_loss, abs=1e-6)
    assert plain.keys() == full.keys() == part.keys() and any("visual" in n for n in plain)
    for name, g in plain.items():
        assert "lora_B" not in name or g.abs().sum() > 0, name  # (B starts at zero, so A's gradient is zero)
        assert torch.allclose(g, full[name], atol=1e-6, rtol=1e-4), name
        assert torch.allclose(g, part[name], atol=1e-6, rtol=1e-4), name


def test_the_encoder_family_checkpoints_its_first_layers():
    from transformers import BertConfig, BertModel

    from nyx_tasks.training.model import enable_checkpointing

    model = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                                 intermediate_size=32))
    told = enable_checkpointing(model, CheckpointLayers(language=3, vision=0))
    stacks = layer_stacks(model)
    assert told == {"language": "3 of 4"} and stacks["vision"] == []
    assert [layer.gradient_checkpointing for layer in stacks["language"]] == [True, True, True, False]


def test_checkpoint_layers_and_compile_leave_the_config_hash_alone():
    from nyx_tasks.core.config import load_config
    from nyx_tasks.stages.train_stage1 import STAGE as stage

    cfg = load_config("demo")
    base = stage.config_payload(cfg)
    changed = cfg.model_copy(update={"train_stage1": cfg.train_stage1.model_copy(update={
        "checkpoint_layers": CheckpointLayers(language=2), "compile_layers": True})})
    assert stage.config_payload(changed) == base
    other = cfg.model_copy(update={"train_stage1": cfg.train_stage1.model_copy(update={"learning_rate": 0.5})})
    assert stage.config_payload(other) != base


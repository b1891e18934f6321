"""The trainable Nyx embedder (paper: Nyx, stage 1 / stage 2): a Qwen2.5-VL
backbone whose embedding is the last layer's hidden state at the final token
(right padding, the end-of-text token appended by the prompt), with LoRA on the
language model's decoder layers, gradient checkpointing and bf16.

The prompt, the pixel cap and the pooling are the inference embedder's own
(`nyx_tasks.embedding.nyx`), so a trained checkpoint embeds exactly as it was
trained.
"""

from __future__ import annotations

import re

from ..config import LoraSettings, TrainConfig
from ..embedding.nyx import cap_image_pixels
from ..embedding.vlm import last_token_pool
from ..log import get_logger

# Decoder-layer projections of the language model only: Qwen2.5-VL's vision
# blocks also have gate_proj / up_proj / down_proj, which must stay frozen.
LM_LAYER = r"(?:.*\.)?language_model\.layers\.(\d+)\.(?:self_attn|mlp)\.({names})"
# The vision tower's blocks, wrapped only when `vision_target_modules` names them.
VISION_BLOCK = r"(?:.*\.)?visual\.blocks\.(\d+)\.(?:attn|mlp)\.({names})"


def _alternatives(names: list[str]) -> str:
    return "|".join(re.escape(n) for n in names)


def lora_pattern(names: list[str], vision_names: list[str] = ()) -> str:
    pattern = LM_LAYER.format(names=_alternatives(names))
    if vision_names:
        pattern = f"(?:{pattern})|(?:{VISION_BLOCK.format(names=_alternatives(list(vision_names)))})"
    return pattern


def _count(model, block: str, names: list[str], layers: int, where: str, fix: str) -> int:
    """Layers x names; each name must exist in every layer of that tower."""
    if not names:
        return 0
    pattern = re.compile(block.format(names=_alternatives(names)))
    per_name: dict[str, set[int]] = {n: set() for n in names}
    for key, _ in model.named_modules():
        m = pattern.fullmatch(key)
        if m:
            per_name[m.group(2)].add(int(m.group(1)))
    missing = {n: layers - len(found) for n, found in per_name.items() if len(found) != layers}
    if missing:
        raise ValueError(f"LoRA target modules {sorted(missing)} are missing from {where} ({layers} layers); "
                         f"{fix}")
    return layers * len(names)


def expected_lora_modules(model, names: list[str], vision_names: list[str] = ()) -> int:
    """Decoder layers x target names (+ vision blocks x vision names)."""
    n = _count(model, LM_LAYER, names, model.config.get_text_config().num_hidden_layers,
               "decoder layers of the language model", "Qwen2.5-VL's are q_proj k_proj v_proj o_proj gate_proj "
               "up_proj down_proj. Fix train.lora.target_modules.")
    vision = getattr(model.config, "vision_config", None)
    if vision_names:
        n += _count(model, VISION_BLOCK, list(vision_names), int(getattr(vision, "depth", 0) or 0),
                    "blocks of the vision tower", "Qwen2.5-VL's are qkv proj gate_proj up_proj down_proj. "
                    "Fix train.lora.vision_target_modules.")
    return n


def apply_lora(model, cfg: LoraSettings):
    """Wrap the language model's projections (and the vision blocks' named in
    `vision_target_modules`) with LoRA (or DoRA); assert how many modules were wrapped,
    since a wrong name list silently wraps almost nothing."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    expected = expected_lora_modules(model, cfg.target_modules, cfg.vision_target_modules)
    peft_cfg = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, use_dora=cfg.use_dora,
                          init_lora_weights="gaussian" if cfg.init == "gaussian" else True,
                          target_modules=lora_pattern(cfg.target_modules, cfg.vision_target_modules), bias="none")
    model = get_peft_model(model, peft_cfg)
    wrapped = sum(1 for _, m in model.named_modules() if isinstance(m, LoraLayer))
    if wrapped != expected:
        raise RuntimeError(f"LoRA wrapped {wrapped} modules, expected {expected}")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    get_logger("train").info(
        "LoRA r=%d alpha=%d dropout=%g dora=%s init=%s vision=%s: %d modules wrapped, %d trainable of %d "
        "parameters (%.3f%%)", cfg.r, cfg.alpha, cfg.dropout, cfg.use_dora, cfg.init,
        cfg.vision_target_modules or "frozen", wrapped, trainable, total, 100 * trainable / max(total, 1))
    return model


def load_trainable(path: str, cfg: TrainConfig, use_bf16: bool, adapter: str | None = None):
    """The base model (plus an adapter to continue from, merged in), LoRA-wrapped
    when enabled, gradient checkpointing on. Returns (model, processor)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.bfloat16 if use_bf16 else torch.float32)
    if adapter:  # stage 2 from the stage-1 model: fold its adapter in, then train a fresh one
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.config.use_cache = False
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    processor = AutoProcessor.from_pretrained(path)
    processor.tokenizer.padding_side = "right"  # last-token pooling relies on it
    cap_image_pixels(processor, cfg.max_pixels)
    return model, processor


def backbone(model):
    """The Qwen2.5-VL backbone (vision + language model, no LM head) under any peft wrapping."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.model


def encode(model, inputs):
    """(B, D) un-normalised embeddings: the hidden state at each row's last real token."""
    hidden = backbone(model)(**inputs, use_cache=False).last_hidden_state  # (B, T, D)
    return last_token_pool(hidden, inputs["attention_mask"])


def export_merged(model, processor, out: str) -> None:
    """A plain Qwen2.5-VL checkpoint with the adapter merged in, loadable by the
    embedder. Merges in place (no second copy of the weights): save the adapter first."""
    merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    merged.save_pretrained(out)
    processor.save_pretrained(out)

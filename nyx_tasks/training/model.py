"""The trainable Nyx embedder (paper: Nyx, stage 1 / stage 2). Two backbone families:

- `vlm` (the paper): a Qwen2.5-VL whose embedding is the last layer's hidden state at the final
  token (right padding, the end-of-text token appended by the prompt), with LoRA on the language
  model's decoder layers, gradient checkpointing and bf16. The prompt, the pixel cap and the
  pooling are the inference embedder's own (`nyx_tasks.embedding.nyx`).
- `encoder`: a pretrained text encoder (a sentence-transformers folder such as MiniLM or E5, or
  any BERT-like transformers model), pooled by mean / CLS / last token; LoRA on the named
  projections or full fine-tuning. Its merged export is a sentence-transformers folder, which the
  `sentence-transformers` embedder loads, so a trained checkpoint embeds exactly as it was trained.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from nyx_tasks.core.config import CheckpointLayers, LoraSettings, TrainConfig
from nyx_tasks.core.log import get_logger
from nyx_tasks.embedding.nyx import cap_image_pixels
from nyx_tasks.embedding.vlm import last_token_pool
from nyx_tasks.models.vision_attention import use_one_call_vision_attention

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


def apply_encoder_lora(model, cfg: LoraSettings):
    """LoRA (or DoRA) on every linear layer of a text encoder whose name ends with one of
    `target_modules` (BERT: query key value dense); refuses a list that matches nothing."""
    import torch
    from peft import LoraConfig, get_peft_model

    names = tuple(cfg.target_modules)
    expected = sum(1 for key, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and key.split(".")[-1] in names)
    if not expected:
        raise ValueError(f"LoRA target modules {list(names)} match no linear layer of this encoder; BERT's are "
                         "query key value dense. Fix train.lora.target_modules.")
    peft_cfg = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, use_dora=cfg.use_dora,
                          init_lora_weights="gaussian" if cfg.init == "gaussian" else True,
                          target_modules=list(names), bias="none")
    model = get_peft_model(model, peft_cfg)
    get_logger("train").info("LoRA r=%d alpha=%d on %d encoder projections (%s)", cfg.r, cfg.alpha, expected,
                             " ".join(names))
    return model


def freeze_lower_layers(model, n: int) -> None:
    """Full fine-tuning of an encoder with its embeddings and first `n` layers frozen."""
    if n <= 0:
        return
    layer = re.compile(r"(?:.*\.)?layers?\.(\d+)\.")
    for key, p in model.named_parameters():
        m = layer.match(key)
        if "embeddings" in key or (m and int(m.group(1)) < n):
            p.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    get_logger("train").info("full fine-tuning, embeddings and the first %d layers frozen: %d of %d parameters "
                             "train", n, trainable, sum(p.numel() for p in model.parameters()))


def layer_stacks(model) -> dict[str, list]:
    """The model's stacks of transformer layers ({"language": [...], "vision": [...]}), in order: the
    layers gradient checkpointing wraps (transformers' GradientCheckpointingLayer), grouped by the list
    holding them; a list under a `visual` module is the vision tower."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    stacks: dict[str, list] = {"language": [], "vision": []}
    for key, module in model.named_modules():
        if isinstance(module, GradientCheckpointingLayer):
            stacks["vision" if ".visual." in f".{key}" else "language"].append(module)
    return stacks


def enable_checkpointing(model, layers: CheckpointLayers) -> dict[str, str]:
    """Gradient checkpointing (non-reentrant) on the first N layers of each stack (`layers`; None: all)
    and off on the rest, which keep their activations. Returns {stack: "k of n"} for the log."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    told = {}
    for name, stack in layer_stacks(model).items():
        n = getattr(layers, name)
        keep = len(stack) if n is None else min(n, len(stack))
        for i, layer in enumerate(stack):
            layer.gradient_checkpointing = i < keep
        if stack:
            told[name] = f"{keep} of {len(stack)}"
    return told


def traceable_dora() -> None:
    """Let dynamo trace peft's DoRA: its weight lookup asks `type(weight).__module__.startswith(
    "torchao.")`, which dynamo cannot trace (a graph break inside a checkpointed layer leaves the
    whole layer uncompiled); for a plain Parameter the answer is the weight itself, asked first."""
    import peft.tuners.lora.dora as dora
    import torch

    general = dora.dequantize_module_weight
    if getattr(general, "nyx_plain_first", False):
        return

    def plain_first(module):
        weight = getattr(module, "weight", None)
        if type(weight) is torch.nn.Parameter and not hasattr(module, "W_q"):
            return weight
        return general(module)

    plain_first.nyx_plain_first = True
    dora.dequantize_module_weight = plain_first


def compile_layers(model) -> int:
    """torch.compile the language model's layers in place, shape-polymorphic (regional compilation:
    the layers share one compiled code, so the cost is one compilation, not one per layer, and a new
    sequence length reuses it). The vision tower's blocks stay eager: their block boundaries are data
    (each batch's image grid), which a graph cannot hold. Side effects in a checkpointed forward
    (transformers' kernel-selection context) are not replayed in the recomputation, which they need
    not be. Returns how many layers were compiled."""
    import torch

    torch._dynamo.config.skip_fwd_side_effects_in_bwd_under_checkpoint = True
    traceable_dora()
    layers = layer_stacks(model)["language"]
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def prepare_for_training(model, cfg: TrainConfig):
    """What every training path does to a loaded backbone, in order: the vision attention mode
    (VLM), LoRA (or partial freezing), gradient checkpointing on the layers named, and compilation."""
    log = get_logger("train")
    if cfg.family == "vlm":
        model.config.use_cache = False
        use_one_call_vision_attention(model, cfg.vision_attention)
        if cfg.lora.enabled:
            model = apply_lora(model, cfg.lora)
    elif cfg.lora.enabled:
        model = apply_encoder_lora(model, cfg.lora)
    else:
        freeze_lower_layers(model, cfg.frozen_layers)
    if cfg.gradient_checkpointing:
        told = enable_checkpointing(model, cfg.checkpoint_layers)
        log.info("gradient checkpointing: %s", ", ".join(f"{k} {v} layers" for k, v in told.items()))
    if cfg.compile_layers:
        log.info("torch.compile: %d language-model layers (regional, dynamic shapes)", compile_layers(model))
    return model


def load_encoder(path: str, cfg: TrainConfig, use_bf16: bool):
    """A text encoder (its transformers model under a sentence-transformers folder) and its
    tokenizer, LoRA-wrapped or partly frozen. Returns (model, tokenizer)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(path, dtype=torch.bfloat16 if use_bf16 else torch.float32)
    model = prepare_for_training(model, cfg)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "right"
    return model, tokenizer


def load_trainable(path: str, cfg: TrainConfig, use_bf16: bool, adapter: str | None = None):
    """The base model (plus an adapter to continue from, merged in), LoRA-wrapped
    when enabled, gradient checkpointing on. Returns (model, processor)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if cfg.family == "encoder":
        return load_encoder(path, cfg, use_bf16)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.bfloat16 if use_bf16 else torch.float32)
    if adapter:  # stage 2 from the stage-1 model: fold its adapter in, then train a fresh one
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model = prepare_for_training(model, cfg)
    processor = AutoProcessor.from_pretrained(path)
    processor.tokenizer.padding_side = "right"  # last-token pooling relies on it
    cap_image_pixels(processor, cfg.max_pixels)
    return model, processor


def _unwrapped(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def backbone(model):
    """The Qwen2.5-VL backbone (vision + language model, no LM head) under any peft wrapping."""
    return _unwrapped(model).model


def mean_pool(hidden, attention_mask):
    """(B, T, D), (B, T) -> (B, D): the mean over each row's real tokens (sentence-transformers' mean)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


POOLS = {"last": last_token_pool, "mean": mean_pool, "cls": lambda hidden, _mask: hidden[:, 0]}


def st_pooling(path: str) -> str | None:
    """The pooling a sentence-transformers folder declares (mean / cls / last), or None."""
    modules = Path(path) / "modules.json"
    if not modules.is_file():
        return None
    for m in json.loads(modules.read_text()):
        cfg = Path(path) / m.get("path", "") / "config.json"
        if m.get("type", "").endswith("Pooling") and cfg.is_file():
            p = json.loads(cfg.read_text())
            for key, name in (("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean"),
                              ("pooling_mode_lasttoken", "last")):
                if p.get(key):
                    return name
    return None


def resolve_pooling(cfg: TrainConfig, path: str) -> str:
    """`pooling: auto` -> last token for a VLM; an encoder's declared pooling, else mean."""
    if cfg.pooling != "auto":
        return cfg.pooling
    return "last" if cfg.family == "vlm" else (st_pooling(path) or "mean")


@dataclass(frozen=True)
class Backbone:
    """How a batch becomes (B, D) un-normalised embeddings: the family's forward, then the pooling."""

    family: str = "vlm"
    pooling: str = "last"

    def encode(self, model, inputs):
        if self.family == "vlm":
            hidden = backbone(model)(**inputs, use_cache=False).last_hidden_state  # (B, T, D)
        else:
            hidden = _unwrapped(model)(**inputs).last_hidden_state
        return POOLS[self.pooling](hidden, inputs["attention_mask"])


def encode(model, inputs):
    """(B, D) un-normalised embeddings of a VLM: the hidden state at each row's last real token."""
    return Backbone().encode(model, inputs)


def export_merged(model, processor, out: str, recipe: dict | None = None) -> None:
    """A plain checkpoint with the adapter merged in, loadable by the embedder. Merges in place (no
    second copy of the weights): save the adapter first. An encoder's export is a
    sentence-transformers folder (its pooling, max length and normalisation) for `recipe`
    (`pooling`, `max_seq_length`)."""
    merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    merged.save_pretrained(out)
    processor.save_pretrained(out)
    if recipe and recipe.get("family") == "encoder":
        write_sentence_transformer(out, recipe)


def write_sentence_transformer(out: str, recipe: dict) -> None:
    """Make the transformers folder `out` a sentence-transformers model: Transformer (the folder
    itself), Pooling (`recipe['pooling']`), Normalize."""
    from sentence_transformers import SentenceTransformer, models

    word = models.Transformer(out, max_seq_length=recipe.get("max_seq_length"))
    mode = {"last": "lasttoken"}.get(recipe["pooling"], recipe["pooling"])
    st = SentenceTransformer(modules=[word, models.Pooling(word.get_embedding_dimension(), mode),
                                      models.Normalize()], device="cpu")
    st.save(out)

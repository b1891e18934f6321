"""Stage-1 training throughput on GPUs: samples/s, tokens/s and model FLOP
utilisation of the real training path (TripletCollator -> NyxTrainer ->
mrl_infonce_losses, LoRA r=8, gradient checkpointing, bf16, DeepSpeed ZeRO-2)
on a random-weight model of the real Qwen2.5-VL-3B shape (built offline: 36
layers, hidden 2048) with realistic inputs: query + positive + 1 hard negative,
about 200 text tokens per document, a third of the documents carrying one image
at the paper's pixel cap (400 x 28 x 28).

    torchrun --standalone --nproc-per-node 1 benchmarks/train_mfu.py            # one GPU (goal: MFU >= 35%)
    python benchmarks/train_mfu.py --tiny                                      # CPU smoke run of the same path
    python benchmarks/train_mfu.py --cpu-profile                               # CPU: attention calls per step

Model FLOPs per step count what LoRA training must compute: the forward pass
(2 x parameters x tokens for every matmul of the language model and the
vision tower, plus attention's 4 x layers x T^2 x width per sequence) and a
backward pass of the same size for the activation gradients (frozen weights
need no weight gradients); activation recomputation is not counted, as MFU
conventionally does not. Peak: the device's dense bf16 rate from its datasheet
(`device_peak`: 989 TFLOP/s for an H100/H200 SXM, 756 for an H100 PCIe), named in
the output; `--peak-tflops` overrides it.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Dense bf16 tensor-core peaks from the vendors' datasheets, matched on torch.cuda.get_device_name().
PEAKS = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("H800", 989e12),
         ("GH200", 989e12), ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12), ("A10G", 70e12)]


def device_peak(override_tflops: float | None = None) -> tuple[str, float]:
    """(device name, dense bf16 FLOP/s) of GPU 0; the override wins; 0.0 when unknown."""
    import torch

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    if override_tflops:
        return name, override_tflops * 1e12
    return name, next((peak for key, peak in PEAKS if key in name), 0.0)
LOREM = ["the", "harbour", "city", "kept", "its", "old", "market", "where", "traders", "sold", "salt", "maps", "lanterns", "and", "glass", "while", "the", "northern", "ledger", "recorded", "every", "ship", "that", "came", "through", "the", "narrow", "channel", "in", "winter"]


def qwen25_vl_3b_config(tok):
    """Qwen/Qwen2.5-VL-3B-Instruct's shape (config.json), random weights, with the special-token
    ids of the tiny tokenizer the benchmark's processor uses."""
    from transformers import Qwen2_5_VLConfig

    ids = tok.convert_tokens_to_ids
    text = dict(vocab_size=len(tok), bos_token_id=None, eos_token_id=ids("<|im_end|>"), pad_token_id=tok.pad_token_id, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
                tie_word_embeddings=True)
    vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=112, out_hidden_size=2048,
                  fullatt_block_indexes=[7, 15, 23, 31])
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"),
                            video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                            vision_end_token_id=ids("<|vision_end|>"))


def paper_stage1(args, **update):
    """configs/paper.yaml's train_stage1 (its LoRA/DoRA recipe, pixel cap, loss, checkpointing) with the
    benchmark's batch, steps and the command line's checkpointing and compilation choices."""
    from nyx_tasks.core.config import load_config

    cfg = load_config("paper").train_stage1
    layers = {"language": args.checkpoint_language, "vision": args.checkpoint_vision}
    return cfg.model_copy(update={"per_device_batch_size": args.batch, "max_steps": args.steps, "sources": [],
                                  "checkpoint_layers": cfg.checkpoint_layers.model_copy(update=layers),
                                  "compile_layers": args.compile, "image_placeholder": "<image>",  # make_examples'
                                  **update})


def bench_processor(max_pixels: int):
    """The real Qwen2.5-VL processor with the tiny offline tokenizer, set up as training sets it up:
    right padding (last-token pooling) and the recipe's pixel cap."""
    from transformers import AutoProcessor

    from nyx_tasks.embedding.nyx import cap_image_pixels
    from nyx_tasks.inference import resolve_model

    processor = AutoProcessor.from_pretrained(resolve_model("tiny:qwen2_5_vl"))
    processor.tokenizer.padding_side = "right"
    cap_image_pixels(processor, max_pixels)
    return processor


def noise_image(store, side: int) -> tuple[str, str]:
    """A side x side noise PNG in the store's image folder: (sha256, path relative to the root)."""
    import hashlib

    from PIL import Image

    buf = io.BytesIO()
    Image.effect_noise((side, side), 60).convert("RGB").save(buf, format="PNG")
    data = buf.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    return sha, store.put_image(sha, "png", data)


def tokens_per_word(tok) -> float:
    """How many tokens the tokenizer spends on a LOREM word (the tiny offline tokenizer ~2.3; Qwen's, ~1)."""
    import random

    rng = random.Random(0)
    return len(tok(" ".join(rng.choice(LOREM) for _ in range(500))).input_ids) / 500


def make_examples(store, n: int, seed: int = 0, images: bool = True, tok=None):
    """Query (~30 text tokens) + positive + 1 negative (~200 text tokens each, a third with one image at
    the pixel cap); with `tok`, the word counts are set so that its token counts are those."""
    import random

    from nyx_tasks.training.data import Doc, Example

    rng = random.Random(seed)
    _, path = noise_image(store, 560)  # 400 merged tokens at the cap
    per_word = tokens_per_word(tok) if tok is not None else 1.0
    q_words, d_words = max(1, round(30 / per_word)), max(1, round(200 / per_word))

    def doc(words: int, image: bool) -> Doc:
        text = " ".join(rng.choice(LOREM) for _ in range(words))
        return Doc(f"<image> {text}", (path,)) if image else Doc(text)

    return [Example(f"q{i}", "bench", doc(q_words, False), doc(d_words, images and i % 3 == 0),
                    (doc(d_words, images and i % 3 == 1),))
            for i in range(n)]


def model_flops(model, batch: dict) -> float:
    """Forward + activation-gradient backward FLOPs of one batch (see the module docstring)."""
    cfg = model.config.get_text_config()
    vis = model.config.vision_config
    lm_params = sum(p.numel() for n, p in model.named_parameters()
                    if "language_model" in n and "embed_tokens" not in n and "lora_" not in n)
    vis_params = sum(p.numel() for n, p in model.named_parameters() if ".visual." in n and "lora_" not in n)
    fwd = 0.0
    for part in (batch["query"], batch["docs"]):
        lengths = part["attention_mask"].sum(dim=1).double()
        fwd += 2 * lm_params * float(lengths.sum())
        fwd += 4 * cfg.num_hidden_layers * cfg.hidden_size * float((lengths ** 2).sum())
        if "pixel_values" in part:
            patches = float(part["image_grid_thw"].prod(dim=1).sum())
            fwd += 2 * vis_params * patches + 4 * vis.depth * vis.hidden_size * patches * vis.window_size
    return 2 * fwd


class Profile:
    """torch.profiler over steps 3-4 (after kernel selection); prints the top ops by device and CPU time."""

    def __new__(cls, on_gpu: bool):
        import torch
        from transformers import TrainerCallback

        class _Profile(TrainerCallback):
            prof = None

            def on_step_begin(self, a, state, control, **kw):
                if state.global_step == 2:
                    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if on_gpu else [])
                    self.prof = torch.profiler.profile(activities=acts)
                    self.prof.__enter__()

            def on_step_end(self, a, state, control, **kw):
                if self.prof is not None and state.global_step == 4:
                    self.prof.__exit__(None, None, None)
                    avg = self.prof.key_averages()
                    if int(os.environ.get("RANK", "0")) == 0:
                        key = "device_time_total" if on_gpu else "cpu_time_total"
                        print(avg.table(sort_by=key, row_limit=25, max_name_column_width=60), flush=True)
                        print(avg.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60), flush=True)
                    self.prof = None

        return _Profile()


def narrow_3b_config(tok):
    """The 3B's structure (36 + 32 layers, heads, windows, patches, merge, full-attention layers) at
    narrow widths, for the CPU step profile: every call the real model makes, at a fraction of the cost."""
    cfg = qwen25_vl_3b_config(tok)
    text, vis = cfg.text_config, cfg.vision_config
    text.hidden_size, text.intermediate_size = 256, 512
    text.rope_parameters = {**text.rope_parameters, "mrope_section": [2, 3, 3]}  # head_dim 16
    vis.hidden_size, vis.intermediate_size, vis.num_heads, vis.out_hidden_size = 128, 256, 8, 256
    return cfg


class StepCounter:
    """Over one training step: F.scaled_dot_product_attention calls (attention) and every operator
    torch dispatched (torch.profiler's CPU events: the launches a GPU would see), and its time."""

    def __new__(cls, step: int, count_attention: bool = True):
        import torch
        import torch.nn.functional as F
        from transformers import TrainerCallback

        real = F.scaled_dot_product_attention

        class _Counter(TrainerCallback):
            attention = ops = 0
            seconds = 0.0
            prof = None

            def counted(self, *args, **kwargs):
                self.attention += 1
                return real(*args, **kwargs)

            def on_step_begin(self, a, state, control, **kw):
                if state.global_step == step:
                    if count_attention:  # (not in compiled code: a Python counter there is a guard)
                        F.scaled_dot_product_attention = self.counted
                    self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                    self.prof.__enter__()
                    self.t0 = time.perf_counter()

            def on_step_end(self, a, state, control, **kw):
                if self.prof is not None:
                    self.seconds = time.perf_counter() - self.t0
                    F.scaled_dot_product_attention = real
                    self.prof.__exit__(None, None, None)
                    self.ops = sum(e.count for e in self.prof.key_averages()
                                   if e.key.startswith("aten::") or "cpp_fused" in e.key)
                    self.prof = None

        return _Counter()


class LiveBytes:
    """The bytes of every tensor storage created while it is active and still alive (a dispatch mode:
    each operator's outputs, freed when their storage goes), and the peak; tensors made before it
    (the weights) and views of tensors are not counted. Device-independent: what an allocator would hold, less its slack."""

    def __new__(cls):
        import weakref

        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        class _Live(TorchDispatchMode):
            live = peak = 0
            sizes: dict = {}

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0]
                          if hasattr(t, "untyped_storage") and not t.is_meta}  # views and in-place results
                for t in tree_flatten(out)[0]:
                    if hasattr(t, "untyped_storage") and not t.is_meta:
                        storage = t.untyped_storage()
                        if storage._cdata not in self.sizes and storage._cdata not in inputs:
                            self.sizes[storage._cdata] = storage.nbytes()
                            self.live += storage.nbytes()
                            weakref.finalize(storage, self.free, storage._cdata)
                self.peak = max(self.peak, self.live)
                return out

            def free(self, key):
                self.live -= self.sizes.pop(key, 0)

        return _Live()


def layer_increments(model, live) -> dict:
    """Hooks on every transformer layer: the live bytes each one's first forward adds (what it keeps for
    the backward, plus its output), summed over the query and document passes."""
    from nyx_tasks.training.model import layer_stacks

    kept: dict = {}
    for stack in layer_stacks(model).values():
        for layer in stack:
            def before(mod, _args, layer=layer):
                mod._nyx_start = live.live

            def after(mod, _args, _out, layer=layer):
                if not getattr(mod, "_nyx_backward", False):
                    kept[mod] = kept.get(mod, 0) + live.live - mod._nyx_start
            layer.register_forward_pre_hook(before)
            layer.register_forward_hook(after)
    return kept


def memory_step(processor, cfg, batch, keep: bool) -> dict:
    """One forward + backward at the 3B's real widths with one decoder layer and two vision blocks (a
    windowed one and a full-attention one), in bf16 on the CPU: each layer's kept bytes, the bytes
    outside the layers, and the backward's transient peak."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from nyx_tasks.training.collator import split_docs
    from nyx_tasks.training.loss import mrl_infonce_losses
    from nyx_tasks.training.model import Backbone, layer_stacks, prepare_for_training

    config = qwen25_vl_3b_config(processor.tokenizer)
    config.text_config.num_hidden_layers, config.vision_config.depth = 1, 2
    config.vision_config.fullatt_block_indexes = [1]
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(torch.float32)
    layers = {"language": 0, "vision": 0} if keep else {"language": None, "vision": None}
    model = prepare_for_training(model, cfg.model_copy(update={
        "checkpoint_layers": cfg.checkpoint_layers.model_copy(update=layers)}))
    model.train()
    live = LiveBytes()
    kept = layer_increments(model, live)
    c = cfg.loss
    with live:
        q = Backbone().encode(model, batch["query"])
        d = Backbone().encode(model, batch["docs"])
        pos, neg = split_docs(d, batch["negative_mask"])
        loss, _ = mrl_infonce_losses(q, pos, neg, c.dims, c.weights, c.temperature, True, False,
                                     batch["negative_mask"], normalize_weights=c.normalize_weights)
        after_forward = live.live
        for stack in layer_stacks(model).values():
            for layer in stack:
                layer._nyx_backward = True  # recomputation re-runs the hooks
        loss.backward()
    stacks = layer_stacks(model)
    lang, (windowed, full) = stacks["language"][0], stacks["vision"]
    in_layers = sum(kept.values())
    return {"language": kept[lang], "windowed": kept[windowed], "full": kept[full],
            "other": after_forward - in_layers, "transient": live.peak - after_forward}


def weight_bytes(processor, cfg) -> tuple[float, float]:
    """(bytes of the 3B's bf16 weights with the LoRA/DoRA adapters, bytes of the trainable parameters'
    training state: bf16 gradient, fp32 master copy, Adam's two moments), from a model on the meta device."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from nyx_tasks.training.model import apply_lora

    with torch.device("meta"):
        model = apply_lora(Qwen2_5_VLForConditionalGeneration(qwen25_vl_3b_config(processor.tokenizer)), cfg.lora)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return 2.0 * total, (2 + 4 + 4 + 4) * float(trainable)


def cpu_memory(args) -> None:
    """Estimate a training step's peak GPU memory at the 3B's shape and the given per-device batch, from
    one measured step of one layer of each kind at real widths (`memory_step`), scaled to 36 decoder
    layers and 32 vision blocks (28 windowed, 4 full), for every number of recomputed decoder layers."""
    import tempfile

    from nyx_tasks.store.artifacts import ArtifactStore
    from nyx_tasks.training.collator import TripletCollator

    cfg = paper_stage1(args, num_gpus=0)
    processor = bench_processor(cfg.max_pixels)
    store = ArtifactStore(tempfile.mkdtemp(prefix="nyx-memory-"))
    batch = TripletCollator(processor, cfg, store)(make_examples(store, args.batch, tok=processor.tokenizer))
    weights, state = weight_bytes(processor, cfg)
    t0 = time.perf_counter()
    ck, kp = memory_step(processor, cfg, batch, keep=False), memory_step(processor, cfg, batch, keep=True)
    gib = 2.0 ** 30
    tokens = {k: tuple(batch[k]["input_ids"].shape) for k in ("query", "docs")}
    print(f"CPU memory estimate: Qwen2.5-VL-3B shape, per-device batch {args.batch} (query + positive + 1 "
          f"negative: {tokens['query']} query and {tokens['docs']} document tokens, "
          f"{int(batch['docs']['image_grid_thw'].shape[0])} images at the pixel cap), paper LoRA/DoRA, bf16; "
          f"measured on one layer of each kind in {time.perf_counter() - t0:.0f} s")
    print(f"  weights {weights / gib:.1f} GiB, trainable state {state / gib:.2f} GiB; kept per layer "
          f"(checkpointed / not): decoder {ck['language'] / gib:.3f} / {kp['language'] / gib:.3f}, windowed vision "
          f"{ck['windowed'] / gib:.3f} / {kp['windowed'] / gib:.3f}, full-attention vision {ck['full'] / gib:.3f} / "
          f"{kp['full'] / gib:.3f} GiB; outside the layers {ck['other'] / gib:.2f} GiB")

    def peak(n_lang: int, vision_ckpt: bool) -> float:
        v = ck if vision_ckpt else kp
        lang = n_lang * ck["language"] + (36 - n_lang) * kp["language"]
        transient = max(ck["transient"] if n_lang or vision_ckpt else kp["transient"], kp["transient"])
        return weights + state + ck["other"] + lang + 28 * v["windowed"] + 4 * v["full"] + transient

    budget = args.memory_budget * gib
    print(f"  {'recomputed decoder layers':>26s} {'vision recomputed':>18s} {'estimated peak GiB':>19s}")
    for n in (36, 24, 12, 0):
        for vision in (True, False):
            print(f"  {n:26d} {'all' if vision else 'none':>18s} {peak(n, vision) / gib:19.1f}")
    fits = [n for n in range(37) if peak(n, True) <= budget]
    print(f"  budget {args.memory_budget:.0f} GiB: " + (f"checkpoint_layers.language: {min(fits)} is the fewest "
          "recomputed decoder layers that fit (vision all)" if fits else "does not fit even fully checkpointed"))


def cpu_step_profile(args) -> None:
    """One training step of the 3B's structure at narrow widths on the CPU, with the vision tower's
    attention per window (transformers) and in one call per layer (ours), side by side; with
    --compile, one call per layer eager and with every layer compiled."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration, TrainingArguments

    from nyx_tasks.core.config import LossSettings
    from nyx_tasks.store.artifacts import ArtifactStore
    from nyx_tasks.training.collator import TripletCollator
    from nyx_tasks.training.data import ExampleDataset
    from nyx_tasks.training.model import Backbone, prepare_for_training
    from nyx_tasks.training.trainer import NyxTrainer

    cfg = paper_stage1(args, max_steps=2, num_gpus=0, loss=LossSettings(dims=[256, 128, 64, 32],
                                                                        weights=[1, 1, 0.2, 0.2]))
    processor = bench_processor(cfg.max_pixels)
    store = ArtifactStore(tempfile.mkdtemp(prefix="nyx-profile-"))
    examples = make_examples(store, args.batch * 2, images=not args.no_images, tok=processor.tokenizer)
    collator = TripletCollator(processor, cfg, store)
    first = collator(examples[:args.batch])
    images = int(first["docs"]["image_grid_thw"].shape[0]) if "image_grid_thw" in first["docs"] else 0
    # per-window vs one-call vision attention; with --compile, one-call eager vs compiled
    variants = [("one_call", False), ("one_call", True)] if args.compile else [("per_window", False), ("one_call", False)]
    steps = 3  # the last one is counted: the first pays for kernel selection (and compilation, recompilation
    rows = {}  # once dynamic shapes are seen)
    for mode, compiled in variants:
        if compiled:
            import torch._inductor.config as inductor

            inductor.cpp.enable_kernel_profile = True  # fused kernels show in the profile as events
        torch.manual_seed(0)
        model = Qwen2_5_VLForConditionalGeneration(narrow_3b_config(processor.tokenizer))
        model = prepare_for_training(model, cfg.model_copy(update={"vision_attention": mode,
                                                                   "compile_layers": compiled}))
        counter = StepCounter(steps - 1, count_attention=not compiled)
        targs = TrainingArguments(output_dir=tempfile.mkdtemp(prefix="nyx-profile-out-"), max_steps=steps,
                                  per_device_train_batch_size=args.batch, use_cpu=True, report_to=[],
                                  save_strategy="no", remove_unused_columns=False, disable_tqdm=True)
        NyxTrainer(model=model, args=targs, train_dataset=ExampleDataset(examples * 2), data_collator=collator,
                   loss_cfg=cfg.loss, backbone=Backbone(), callbacks=[counter]).train()
        rows[mode + (" + compile" if compiled else "")] = (counter.attention, counter.ops, counter.seconds)
    text, vis = model.config.get_text_config(), model.config.vision_config
    layers = text.num_hidden_layers + vis.depth
    print(f"CPU step profile: Qwen2.5-VL-3B structure ({text.num_hidden_layers} language + {vis.depth} vision layers, "
          f"windows of {vis.window_size} px, full attention in layers {vis.fullatt_block_indexes}) at narrow widths; "
          f"batch {args.batch} (query + positive + 1 negative), {images} images at 560 x 560 (the pixel cap) in the "
          "documents, the paper's LoRA/DoRA, gradient checkpointing (every layer's forward runs twice)")
    print(f"  {'vision attention':22s} {'attention calls/step':>21s} {'operators/step':>15s} {'s/step':>8s}")
    for mode, (calls, ops, secs) in rows.items():
        shown = "(compiled)" if "compile" in mode else f"{calls:,d}"
        print(f"  {mode:22s} {shown:>21s} {ops:15,d} {secs:8.2f}")
    c1, o1, s1 = rows["one_call"]
    if "per_window" in rows:
        c0, o0, s0 = rows["per_window"]
        print(f"  one_call / per_window: attention calls x{c1 / c0:.3f}, operators x{o1 / o0:.3f}, time x{s1 / s0:.2f}")
    if "one_call + compile" in rows:
        _, o2, s2 = rows["one_call + compile"]
        print(f"  compiled / one_call: operators and fused kernels x{o2 / o1:.3f}, time x{s2 / s1:.2f}")
    print(f"  goal: attention calls per step <= 2 x {layers} layers = {2 * layers} per forward pass of query and "
          f"documents, i.e. {2 * 2 * 2 * layers} with both passes recomputed; one_call: {c1}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="the tiny offline model on the CPU (smoke run)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--no-images", action="store_true", help="text-only documents (isolates the vision tower's cost)")
    ap.add_argument("--profile", action="store_true", help="print torch.profiler's top ops over two warm steps")
    ap.add_argument("--batch", type=int, default=8, help="per-device batch size")
    ap.add_argument("--checkpoint-language", type=int, default=None, help="gradient checkpointing on the first N "
                    "decoder layers only (default: all)")
    ap.add_argument("--checkpoint-vision", type=int, default=None, help="... and the first N vision blocks")
    ap.add_argument("--compile", action="store_true", help="torch.compile each layer (regional)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak (default: by name)")
    ap.add_argument("--cpu-profile", action="store_true", help="one step of the 3B's structure at narrow widths "
                    "on the CPU: attention calls, operators and time per step, per-window vs one-call vision attention")
    ap.add_argument("--cpu-memory", action="store_true", help="estimate the peak GPU memory of a step at the 3B's "
                    "shape and --batch from one layer of each kind measured on the CPU")
    ap.add_argument("--memory-budget", type=float, default=72.0, help="GiB a step may use (--cpu-memory; default: "
                    "an 80 GB card's 74.5 GiB less room for the allocator's slack)")
    args = ap.parse_args()
    if args.cpu_profile:
        cpu_step_profile(args)
        return
    if args.cpu_memory:
        cpu_memory(args)
        return

    import torch
    from transformers import (
        Qwen2_5_VLForConditionalGeneration,
        TrainerCallback,
        TrainingArguments,
    )

    from nyx_tasks.core.config import LossSettings
    from nyx_tasks.inference import resolve_model
    from nyx_tasks.store.artifacts import ArtifactStore
    from nyx_tasks.training.collator import TripletCollator
    from nyx_tasks.training.data import ExampleDataset
    from nyx_tasks.training.deepspeed_config import zero2_config
    from nyx_tasks.training.model import Backbone, prepare_for_training
    from nyx_tasks.training.trainer import NyxTrainer

    world = int(os.environ.get("WORLD_SIZE", "1"))
    on_gpu = torch.cuda.is_available() and not args.tiny
    tiny = resolve_model("tiny:qwen2_5_vl")
    dims = [128, 64, 32, 16] if args.tiny else [2048, 1024, 512, 256]
    cfg = paper_stage1(args, learning_rate=1e-4, num_gpus=world if on_gpu else 0,
                       loss=LossSettings(dims=dims, weights=[1, 1, 0.2, 0.2]))
    processor = bench_processor(cfg.max_pixels)
    torch.manual_seed(0)
    if args.tiny:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny)
    else:
        with torch.device("cuda"):
            model = Qwen2_5_VLForConditionalGeneration(qwen25_vl_3b_config(processor.tokenizer)).to(torch.bfloat16)
    model = prepare_for_training(model, cfg)

    store = ArtifactStore(tempfile.mkdtemp(prefix="nyx-mfu-"))
    examples = make_examples(store, args.batch * world * args.steps, images=not args.no_images,
                             tok=processor.tokenizer)
    collator = TripletCollator(processor, cfg, store)
    flops_per_step = model_flops(model, collator(examples[:args.batch])) * world  # batches are alike
    tokens_per_step = world * sum(float(collator(examples[:args.batch])[k]["attention_mask"].sum())
                                  for k in ("query", "docs"))

    class Clock(TrainerCallback):
        def __init__(self):
            self.t: dict[int, float] = {}

        def on_step_end(self, a, state, control, **kw):
            if on_gpu:
                torch.cuda.synchronize()
            self.t[state.global_step] = time.perf_counter()

    clock = Clock()
    targs = TrainingArguments(output_dir=tempfile.mkdtemp(prefix="nyx-mfu-out-"), max_steps=args.steps,
                              per_device_train_batch_size=args.batch, learning_rate=cfg.learning_rate,
                              bf16=on_gpu, use_cpu=not on_gpu, report_to=[], save_strategy="no",
                              logging_steps=args.steps, remove_unused_columns=False, disable_tqdm=True,
                              deepspeed=zero2_config(cfg, args.steps, world) if on_gpu else None,
                              dataloader_num_workers=4 if on_gpu else 0)
    trainer = NyxTrainer(model=model, args=targs, train_dataset=ExampleDataset(examples), data_collator=collator,
                         loss_cfg=cfg.loss, backbone=Backbone(), callbacks=[clock] + ([Profile(on_gpu)] if args.profile else []))
    trainer.train()
    if int(os.environ.get("RANK", "0")) != 0:
        return
    warm = min(2, args.steps - 2)  # the first steps pay for kernel selection and allocator growth
    secs = (clock.t[args.steps] - clock.t[warm]) / (args.steps - warm)
    samples = args.batch * world / secs
    device, peak = device_peak(args.peak_tflops)
    mfu = flops_per_step / secs / (peak * world) if peak else float("nan")
    print(f"{'tiny Qwen2.5-VL on CPU (smoke run)' if args.tiny else f'Qwen2.5-VL-3B shape, {world} GPU(s), ZeRO-2, bf16'}: "
          f"batch {args.batch}/device, query + positive + 1 negative")
    print(f"  {secs * 1000:.0f} ms/step  {samples:.1f} samples/s  {tokens_per_step / secs:,.0f} tokens/s")
    print(f"  model FLOPs {flops_per_step / 1e12:.2f} TFLOP/step -> {flops_per_step / secs / 1e12 / world:.1f} "
          f"TFLOP/s per device: MFU {mfu:.1%} of {device}'s {peak / 1e12:.0f} TFLOP/s (goal >= 35% on GPUs)")
    if on_gpu:
        layers = cfg.checkpoint_layers
        print(f"  peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB allocated, "
              f"{torch.cuda.max_memory_reserved() / 2**30:.1f} GiB reserved of "
              f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f}; checkpointing language "
              f"{'all' if layers.language is None else layers.language}, vision "
              f"{'all' if layers.vision is None else layers.vision} layers; compile {cfg.compile_layers}")


if __name__ == "__main__":
    main()

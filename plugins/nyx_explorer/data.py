"""What the explorer reads from an artifact root, Airflow-agnostic: partitions, stage manifests,
stage outputs (a page or the looked-up rows at a time, through `tables`), image locations, the
evaluation report, the experiment reports (`reports/experiments/<name>/`).

Manifests list the files, so a half-written stage is never seen. Paths that come from a URL or a
manifest are checked here: `image_rel` and `report_file` return None for anything that is not an
image under `images/` or a plot beside the report, `report_dir` only accepts a manifest's report
path relative to the root. Every file, JSON (manifests, experiment records), Markdown, images and
Parquet alike, is read through `tables.open_regular` (`read_regular`, `read_json`): a regular file
inside the root, reached without a symlink anywhere below the root, with a single link (a hard link
may be another name of a file outside), and within a cap in bytes (`JSON_CAP`, `REPORT_CAP`,
`IMAGE_CAP`: a planted 300 MB image or a 2 MB report table would otherwise be read whole, the table
rendered in 15 s and 1.6 GB). Partition folders are reached without a symlink too (`partition_exists`).

What it will not read is `Refused` (the path and why): a page that needs it answers 404 with that
message and one log line (`app`); the lists (partitions, stages, experiments) show such an item as
broken on its row, with the reason, and go on. A manifest that is no JSON object, or whose fields
the pages read have other types (`manifest_problem`), is refused as well.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from nyx_tasks.core.config import FetchConfig, load_config
from nyx_tasks.core.log import get_logger
from nyx_tasks.experiments import REPORTS, experiments
from nyx_tasks.stages import STAGE_NAMES, get_stage
from nyx_tasks.store.artifacts import ArtifactStore, manifest_rel

from .tables import (
    Output,
    Page,
    Refused,
    TooLarge,
    find_rows,
    folder_exists,
    is_regular,
    iter_batches,
    open_regular,
    over_cap,
    page_of,
    paginate,
    query_page,
    read_range,
)

# the app reads tables through data
__all__ = ["Page", "Refused", "TooLarge", "is_regular", "page_of", "paginate", "query_page", "read_range"]

log = get_logger("explorer")  # nyx.explorer: one line per refused read (`app.refused`, `noted`)

PARTITION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]{0,63}$")  # the DAG's partition param pattern
# images/<sha[:2]>/<sha>.<ext>: the store's content-addressed layout (`ArtifactStore.image_rel`)
IMAGE_RE = re.compile(r"^([0-9A-Za-z]{2})/(\1[0-9A-Za-z_-]{0,126})\.(png|jpe?g|gif|webp|bmp|tiff?)$")
IMAGE_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif",
               "webp": "image/webp", "bmp": "image/bmp", "tif": "image/tiff", "tiff": "image/tiff"}
PLOT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,200}\.png$")
# the evaluate manifest's `report`, relative to the root: reports/<run>/report.md (run: partition-key)
REPORT_RE = re.compile(r"^reports/[A-Za-z0-9][A-Za-z0-9_.=-]{0,100}/report\.md$")

DEFAULT_FLOW = {"in": "rows read", "out": "rows written", "drops": "rows"}

# the most bytes read of one file: far above any manifest or record the pipeline writes (a manifest
# lists a few hundred bytes per output file); a report's Markdown (rendering a 1 MB table takes
# about 2.6 s and 150 MB, a 2 MB one took 15 s and 1.6 GB); an image or plot (served whole)
JSON_CAP = 64 << 20
REPORT_CAP = 1 << 20
IMAGE_CAP = 20 << 20


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


def read_regular(store, rel: str, cap: int | None = None) -> bytes | None:
    """The bytes of the root's regular file `rel` (`tables.open_regular`), None when there is none;
    `Refused` (saying why) when it is anything else, `TooLarge` when over `cap` bytes."""
    try:
        f = open_regular(store, rel, cap)
    except FileNotFoundError:
        return None
    with f:
        body = f.read() if cap is None else f.read(cap + 1)
    if cap is not None and len(body) > cap:  # grew after it was opened
        raise TooLarge(rel, over_cap(len(body), cap))
    return body


def regular_exists(store, rel: str) -> bool:
    """`rel` is a regular file of the root (True) or absent (False); `Refused` when it is there
    but anything else (`tables.open_regular`)."""
    try:
        open_regular(store, rel).close()
    except FileNotFoundError:
        return False
    return True


def read_json(store, rel: str) -> Any:
    """The root's regular file `rel` as JSON (at most `JSON_CAP` bytes), None when there is none;
    `Refused` when it cannot be read or is not JSON (a truncated write, say)."""
    body = read_regular(store, rel, JSON_CAP)
    if body is None:
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError; RecursionError: [[[[...
        raise Refused(rel, f"not valid JSON ({str(e)[:200] or type(e).__name__})") from e


def noted(e: Refused) -> str:
    """What a page shows of a refused file (the path and why, on a list: on its item's row), logged
    as one line."""
    log.warning("refused: %s", one_line(str(e)))
    return str(e)


def one_line(text: str) -> str:
    """Text from paths and files as one log line: control characters escaped."""
    return text.translate({c: f"\\x{c:02x}" for c in (*range(32), 127)})


def manifest(store, partition: str, stage: str) -> dict | None:
    """The stage's manifest, None when it has none; `Refused` when it is no regular file of the
    root, not JSON, or not the shape the pages read (`manifest_problem`)."""
    rel = manifest_rel(partition, stage)
    m = read_json(store, rel)
    if m is not None and (why := manifest_problem(m)):
        raise Refused(rel, why)
    return m


# what the pages read of a manifest, by field: its type when present
MANIFEST_FIELDS = {"stage": str, "status": str, "config_hash": str, "location": str, "drops": dict, "extra": dict,
                   "config": dict, "timings": dict, "outputs": dict, "shards": list}


def manifest_problem(m: Any) -> str | None:
    """Why a parsed manifest cannot be shown (a field of another type than the pipeline writes), or None."""
    if not isinstance(m, dict):
        return f"a JSON {type(m).__name__}, not an object"
    for key, kind in MANIFEST_FIELDS.items():
        if m.get(key) is not None and not isinstance(m[key], kind):
            return f"`{key}` is a {type(m[key]).__name__}, not a {kind.__name__}"
    if not all(isinstance(n, int) for n in (m.get("drops") or {}).values()):
        return "a `drops` count is not an integer"
    timings = m.get("timings") or {}
    if not isinstance(timings.get("finished_at", ""), str) or not isinstance(timings.get("shard_seconds", 0),
                                                                            int | float | None):
        return "`timings` holds a value of another type"
    for kind, entries in (m.get("outputs") or {}).items():
        if not isinstance(entries, list) or not all(
                isinstance(e, dict) and isinstance(e.get("path"), str) and isinstance(e.get("rows"), int)
                for e in entries):
            return f"`outputs.{kind}` is not a list of files with a path and a row count"
    return None


def partition_exists(store, partition: str) -> bool:
    """`partitions/<partition>` is a folder of the root reached without a symlink; `Refused` when
    it is there but is something else (a symlink to a folder elsewhere, a file)."""
    return bool(PARTITION_RE.match(partition)) and folder_exists(store, f"partitions/{partition}")


def partitions(store) -> list[dict]:
    """One row per partition: name, stages complete (of the pipeline's), last finish time, and
    `broken`: what could not be read (a partition that is no folder of the root, a manifest that
    is refused), each with why. `Refused` when `partitions/` itself is not a folder of the root."""
    if not folder_exists(store, "partitions"):
        return []
    out = []
    for name in store.listdir("partitions"):
        if not PARTITION_RE.match(name):
            continue
        row = {"name": name, "complete": 0, "stages": len(STAGE_NAMES), "last_stage": "", "finished_at": "",
               "broken": [], "linked": True}
        out.append(row)
        try:
            partition_exists(store, name)
        except Refused as e:
            row.update(broken=[noted(e)], linked=False)
            continue
        done = []
        for s in STAGE_NAMES:
            try:
                m = manifest(store, name, s)
            except Refused as e:
                row["broken"].append(noted(e))
                continue
            if m and m.get("status") == "complete":
                done.append((s, m))
        row.update(complete=len(done), last_stage=done[-1][0] if done else "",
                   finished_at=max(((m.get("timings") or {}).get("finished_at") or "" for _, m in done), default=""))
    return out


def stage_summaries(store, partition: str) -> list[dict]:
    """Every pipeline stage in order, with its manifest's counts (None fields when not run;
    `broken`, why, when its manifest is refused)."""
    rows = []
    for stage in STAGE_NAMES:
        flow = stage_flow(stage)
        try:
            m = manifest(store, partition, stage)
        except Refused as e:
            rows.append({"stage": stage, "present": False, "flow": flow, "broken": noted(e)})
            continue
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
    token = (m.get("config") or {}).get("image_placeholder")
    return token if isinstance(token, str) and token else "<image>"


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
    """The bytes of `rel` (from `image_rel`, or a report's plot), None when there is none; `Refused`
    when it is no regular file of the root, `TooLarge` over `IMAGE_CAP`."""
    return read_regular(store, rel, IMAGE_CAP)


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
    """`<rel>/report.md` as text, None when there is none; `Refused` when it is no regular file of
    the root, `TooLarge` over `REPORT_CAP` (never read, so never rendered)."""
    body = read_regular(store, f"{rel}/report.md", REPORT_CAP) if rel else None
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
    try:
        return folder_exists(store, rel)
    except Refused:
        return False


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


def _record(store, rel: str) -> Any:
    """An experiment record read as `read_json` does, its refusal a ValueError (what
    `nyx_tasks.experiments.experiments` takes for an unreadable record)."""
    try:
        return read_json(store, rel)
    except Refused as e:
        raise ValueError(e.why) from e


def experiment_reports(store) -> list[dict]:
    """The experiment reports under reports/experiments/ (name, base, variants;
    `nyx_tasks.experiments.experiments`), their records read as every JSON file is (`read_json`).
    A record that is refused or malformed, or a report.md that is no regular file of the root, is
    listed with `broken` (why); `linked` when its report.md can be shown. `Refused` when
    reports/experiments/ itself is no folder of the root."""
    if not folder_exists(store, REPORTS):
        return []
    out = []
    for e in experiments(store, lambda rel: _record(store, rel)):
        if "broken" in e:
            log.warning("refused: %s", one_line(e["broken"]))
        try:
            linked = regular_exists(store, e["report"])
            why = "" if linked else f"{e['report']}: no such file"
        except Refused as refused:
            linked, why = False, noted(refused)
        if why:
            e = {**e, "broken": "; ".join(filter(None, (e.get("broken"), why)))}
        out.append({**e, "linked": linked})
    return out


def experiment_dir(store, name: str) -> str | None:
    """reports/experiments/<name> when `name` is a valid name and its report.md a regular file of
    the root; None when there is none, `Refused` when it is something else."""
    if not PARTITION_RE.match(name):
        return None
    rel = f"{REPORTS}/{name}"
    return rel if regular_exists(store, f"{rel}/report.md") else None


def experiment_text(store, name: str) -> str | None:
    return _markdown(store, experiment_dir(store, name))


def experiment_plots(store, name: str) -> list[str]:
    """The experiment report's plots: PNG names in its folder that are regular files of the root."""
    return _plots(store, experiment_dir(store, name))


def experiment_file(store, name: str, plot: str) -> str | None:
    """`<experiment dir>/<plot>` when plot is one of its plots (listed, not built from the URL)."""
    return f"{experiment_dir(store, name)}/{plot}" if plot in experiment_plots(store, name) else None


# ------------------------------------------------------------------ the user's indexes (nyx index)
INDEXES = "indexes"
INDEX_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def user_indexes(store) -> list[dict]:
    """The indexes `nyx index` built under the root (`user_index` of each)."""
    if not folder_exists(store, INDEXES):
        return []
    return [entry for name in sorted(store.listdir(INDEXES)) if INDEX_NAME.match(name)
            if (entry := user_index(store, name)) is not None]


def user_index(store, name: str) -> dict | None:
    """Index `name`: documents and model; a record that is refused or malformed is `broken` (why),
    and cannot be searched. None when there is no record."""
    try:
        record = read_json(store, f"{INDEXES}/{name}/_INDEX.json")
        problem = None if record is None else index_problem(store, record)
    except Refused as e:
        record, problem = {}, noted(e)
    if record is None:
        return None
    if problem:
        log.warning("refused: index %s: %s", name, one_line(problem))
    server = record.get("server") if isinstance(record, dict) and isinstance(record.get("server"), str) else None
    return {"name": name, "documents": record.get("documents"), "model": record.get("model"), "server": server,
            "broken": problem}


def index_problem(store, record: Any) -> str | None:
    """Why an index record cannot be searched from here (None: it can): the explorer only reads a
    corpus table that `nyx index` already built under the root, never the files a record names."""
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("corpus", "model")):
        return "not an index record"
    if not re.fullmatch(r"[0-9a-f]{8,64}", record["corpus"]):
        return f"corpus {record['corpus'][:80]!r} is not a corpus key"
    try:
        if not regular_exists(store, f"corpora/{record['corpus']}/_CORPUS.json"):
            return "its corpus table is not built under this root: run `nyx index` again"
    except Refused as e:
        return noted(e)
    if not Path(record["model"], "nyx_model.json").is_file():
        return f"the model folder {record['model'][:200]} is not here (no nyx_model.json)"
    return None


@lru_cache(maxsize=2)
def index_model(path: str, mtime: float, server: str | None = None):
    """An index's model, loaded once per folder version (a search page request must not load it); an
    index built through a server (`nyx index --server`) embeds its queries there."""
    from nyx_tasks.embedding import load  # torch: only when someone searches

    return load(path, server=server)


def search(store, name: str, query: str, k: int, dim: int | None, image: bytes = b"") -> list:
    """The top-k hits of `query` in index `name` (`nyx_tasks.retrieval.user_index.search_index`);
    `image`: the bytes of an image the query carries (decoded first, under the ingest fetch's
    default guards; `ValueError` when it is no image or over `IMAGE_CAP`)."""
    from nyx_tasks.retrieval.user_index import search_index  # torch: only when someone searches

    entry = user_index(store, name) if INDEX_NAME.match(name) else None
    if entry is None or entry["broken"]:
        raise Refused(f"{INDEXES}/{name}", entry["broken"] if entry else "no such index")
    model = entry["model"]
    embedder = index_model(model, Path(model, "nyx_model.json").stat().st_mtime, entry.get("server"))
    if not image:
        return search_index(store, name, [query], k, dim, embedder=embedder)[0]
    with query_image(image) as path:
        return search_index(store, name, [query], k, dim, embedder=embedder, images=[path])[0]


@contextmanager
def query_image(body: bytes) -> Iterator[str]:
    """An uploaded image as a temporary file for the query (removed after): fully decoded first."""
    from nyx_tasks.sources.fetch import decode_image  # PIL: only when someone uploads

    if len(body) > IMAGE_CAP:
        raise ValueError(f"the image is over {IMAGE_CAP >> 20} MiB")
    checked = decode_image("upload", body, FetchConfig())
    if not checked.ok:
        raise ValueError(f"the uploaded file is no usable image ({checked.reason}: {checked.detail})")
    with tempfile.NamedTemporaryFile(suffix=f".{checked.ext}", prefix="nyx-query-") as f:
        f.write(body)
        f.flush()
        yield f.name

"""Where retriever checkpoints are found, and the one place that writes and
reads their marker. Training (stage 1 / stage 2) writes

    <root>/models/<run>/<stage>/_CHECKPOINT.json
        {"base_model": ..., "adapter": <path or null>, "merged": <path or null>, "created_at": ISO-8601}

last, after the weights are in place; the training stage copies it into its
manifest (`checkpoint`), which is what `feedback`, `train_stage2` and
`evaluate` load (`stage_checkpoint`); the newest marker is what re-mining uses
(`latest_checkpoint`).

The Trainer's resumable checkpoints (`<out>/checkpoints/checkpoint-N/`) have a
marker of their own, `nyx_complete.json`, written last once every rank has
finished writing the folder (`mark_step_complete`). A folder without it is a
save that was interrupted: resuming takes the newest complete one
(`resume_checkpoint`) and rotation counts complete ones only
(`rotate_step_checkpoints`)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
from pathlib import Path

from nyx_tasks.core.base import StageError
from nyx_tasks.store.artifacts import ArtifactStore

MARKER = "_CHECKPOINT.json"


def write_checkpoint_marker(store: ArtifactStore, rel: str, *, base_model: str, stage: str, run: str,
                            partition: str, metrics: dict) -> dict:
    """Publish the checkpoint trained under `rel` (`models/<run>/<stage>`, with `adapter/` and
    `merged/` in place): its marker, written last. `metrics` may carry the training's `recipe`
    (how it embeds: family, pooling, prefixes, dims), which the marker holds at its top level
    (`family` missing means vlm). Returns the record."""
    metrics = dict(metrics)
    recipe = metrics.pop("recipe", None) or {}
    record = {"base_model": base_model, "adapter": store.url(f"{rel}/adapter"), "merged": store.url(f"{rel}/merged"),
              "stage": stage, "run": run, "partition": partition,
              "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "metrics": metrics,
              "family": recipe.get("family", "vlm"), "recipe": recipe}
    store.write_json_atomic(f"{rel}/{MARKER}", record)
    return record


def read_checkpoint_marker(store: ArtifactStore, rel: str) -> dict | None:
    """The marker under `rel` (`models/<run>/<stage>`), or None while none is published."""
    return store.read_json(f"{rel}/{MARKER}")


def latest_checkpoint(store: ArtifactStore) -> dict | None:
    found = []
    for run in store.listdir("models"):
        for stage in store.listdir(f"models/{run}"):
            marker = read_checkpoint_marker(store, f"models/{run}/{stage}")
            if marker:
                found.append({**marker, "run": run, "stage": stage})
    return max(found, key=lambda m: m["created_at"]) if found else None


def stage_checkpoint(store: ArtifactStore, partition: str, stage: str) -> dict:
    """The checkpoint a training stage of this partition published (its manifest's record)."""
    m = store.read_json(f"{ArtifactStore.stage_rel(partition, stage)}/_MANIFEST.json")
    if not m or not m.get("checkpoint"):
        raise StageError(f"no `{stage}` checkpoint for partition {partition!r} under {store.root}; "
                         f"run `nyx {stage} --partition {partition}` first.")
    return m["checkpoint"]


STEP_MARKER = "nyx_complete.json"  # inside checkpoint-N/: written last, the folder is whole
_STEP_DIR = re.compile(r"^checkpoint-(\d+)$")


def step_checkpoints(ckpt_dir: Path) -> list[tuple[int, Path, bool]]:
    """(step, folder, complete) of every `checkpoint-N` folder under `ckpt_dir`, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [(step, p, (p / STEP_MARKER).is_file()) for step, p in sorted(found)]


def mark_step_complete(folder: Path, step: int) -> None:
    """Vouch for `folder` (checkpoint-N): call only after every file of it is written, on one
    rank. The marker lists the files it vouches for and lands by an atomic rename."""
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    record = {"step": step, "files": files, "completed_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    tmp = folder / f".{STEP_MARKER}.tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(record, indent=1))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / STEP_MARKER)


def remove_step_checkpoint(folder: Path) -> None:
    """The marker first: a removal cut short never leaves a marked folder with files missing."""
    (folder / STEP_MARKER).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def resume_checkpoint(ckpt_dir: Path, remove_incomplete: bool, log=None) -> Path | None:
    """The newest complete checkpoint under `ckpt_dir` (None: train from scratch). Incomplete
    ones (an interrupted save) are never resumed from; with `remove_incomplete` (rank 0 only)
    they are deleted, so the run's next save of that step starts from an empty folder."""
    found = step_checkpoints(ckpt_dir)
    complete = [p for _, p, ok in found if ok]
    incomplete = [p for _, p, ok in found if not ok]
    if incomplete and log is not None:
        log.warning("ignoring %d incomplete checkpoint(s) (a save that did not finish, no %s): %s%s",
                    len(incomplete), STEP_MARKER, ", ".join(p.name for p in incomplete),
                    "; removing them" if remove_incomplete else "")
    if remove_incomplete:
        for p in incomplete:
            remove_step_checkpoint(p)
    return complete[-1] if complete else None


def rotate_step_checkpoints(ckpt_dir: Path, keep: int | None) -> list[Path]:
    """Keep the newest `keep` complete checkpoints (the Trainer's `save_total_limit`, counted on
    complete ones only, so an interrupted save never displaces the last good one); returns
    the removed folders. Incomplete folders are left to `resume_checkpoint`."""
    complete = [p for _, p, ok in step_checkpoints(ckpt_dir) if ok]
    doomed = complete[:-keep] if keep and keep > 0 else []
    for p in doomed:
        remove_step_checkpoint(p)
    return doomed

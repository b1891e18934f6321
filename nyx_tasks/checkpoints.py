"""Where retriever checkpoints are found, and the one place that writes and
reads their marker. Training (stage 1 / stage 2) writes

    <root>/models/<run>/<stage>/_CHECKPOINT.json
        {"base_model": ..., "adapter": <path or null>, "merged": <path or null>, "created_at": ISO-8601}

last, after the weights are in place; the training stage copies it into its
manifest (`checkpoint`), which is what `feedback`, `train_stage2` and
`evaluate` load (`stage_checkpoint`); the newest marker is what re-mining uses
(`latest_checkpoint`)."""

from __future__ import annotations

import datetime as dt

from .artifacts import ArtifactStore
from .base import StageError

MARKER = "_CHECKPOINT.json"


def write_checkpoint_marker(store: ArtifactStore, rel: str, *, base_model: str, stage: str, run: str,
                            partition: str, metrics: dict) -> dict:
    """Publish the checkpoint trained under `rel` (`models/<run>/<stage>`, with `adapter/` and
    `merged/` in place): its marker, written last. Returns the record."""
    record = {"base_model": base_model, "adapter": store.url(f"{rel}/adapter"), "merged": store.url(f"{rel}/merged"),
              "stage": stage, "run": run, "partition": partition,
              "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "metrics": metrics}
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

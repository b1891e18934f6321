"""Where retriever checkpoints are found. Training (stage 1 / stage 2) writes

    <root>/models/<run>/<stage>/_CHECKPOINT.json
        {"base_model": ..., "adapter": <path or null>, "merged": <path or null>, "created_at": ISO-8601}

last, after the weights are in place; the newest one is what re-mining uses."""

from __future__ import annotations

from .artifacts import ArtifactStore


def latest_checkpoint(store: ArtifactStore) -> dict | None:
    found = []
    for run in store.listdir("models"):
        for stage in store.listdir(f"models/{run}"):
            marker = store.read_json(f"models/{run}/{stage}/_CHECKPOINT.json")
            if marker:
                found.append({**marker, "run": run, "stage": stage})
    return max(found, key=lambda m: m["created_at"]) if found else None

"""What `nyx status` says of one stage's committed snapshot: every listed file checked against
the manifest (missing, corrupt: bytes, rows, unreadable, sha256 with --verify), files in the
snapshot's folder the manifest does not list (extra), and what is stale: attempt folders no
commit owns, and a snapshot whose inputs were re-committed since. A manifest that is not JSON
is reported, never raised.
"""

from __future__ import annotations

from collections.abc import Iterator

from nyx_tasks.store.artifacts import (
    MANIFEST,
    ArtifactStore,
    SnapshotError,
    iter_stage_batches,
    read_manifest,
    snapshot_problems,
)
from nyx_tasks.store.attempts import ATTEMPTS_DIR, attempt_rel


def _extra_files(store: ArtifactStore, stage_rel: str, manifest: dict) -> list[str]:
    listed = {e["path"].rsplit("/", 1)[-1] for entries in manifest.get("outputs", {}).values() for e in entries}
    folder = attempt_rel(stage_rel, manifest.get("attempt", ""))
    return [f"extra: {folder}/{n} (not in the manifest; readers ignore it)" for n in store.listdir(folder)
            if n.endswith(".parquet") and n not in listed]


def _stale(store: ArtifactStore, partition: str, stage_rel: str, manifest: dict) -> list[str]:
    notes = [f"stale: {stage_rel}/{ATTEMPTS_DIR}/{a} (an attempt no commit owns; the next commit removes it "
             "once it is dead)" for a in store.listdir(f"{stage_rel}/{ATTEMPTS_DIR}") if a != manifest.get("attempt")]
    for name, recorded in manifest.get("inputs", {}).items():
        rel = f"{ArtifactStore.stage_rel(partition, name)}/{MANIFEST}"
        try:
            current = store.read_json(rel) if ":" not in name else None
        except ValueError:
            continue  # reported under that stage
        if current and current.get("output_hash") != recorded:
            notes.append(f"stale: input {name!r} was committed again after this snapshot; re-run "
                         f"`nyx {manifest.get('stage')} --partition {partition}`")
    return notes


def stage_status(store: ArtifactStore, partition: str, stage: str, verify: bool = False
                 ) -> tuple[dict | None, list[str]]:
    """(the manifest or None, the problems and stale notes found)."""
    stage_rel = ArtifactStore.stage_rel(partition, stage)
    try:
        manifest = read_manifest(store, partition, stage, missing_ok=True)
    except SnapshotError as e:
        return None, [f"unreadable manifest: {e}"]
    if manifest is None:
        return None, []
    found = snapshot_problems(store, manifest, verify) + _extra_files(store, stage_rel, manifest)
    return manifest, found + _stale(store, partition, stage_rel, manifest)


def dropped(store: ArtifactStore, partition: str, stage: str, reason: str | None) -> Iterator[dict]:
    """A committed stage's drop record (all reasons for None); nothing for a stage without one."""
    try:
        manifest = read_manifest(store, partition, stage, missing_ok=True)
    except SnapshotError:
        return
    if not manifest or not manifest.get("outputs", {}).get("drops"):
        return
    for batch in iter_stage_batches(store, partition, stage, kind="drops"):
        for r in batch.to_pylist():
            if reason is None or r["reason"] == reason:
                yield r

"""Attempt folders: every attempt at a stage writes under `<stage dir>/attempts/<attempt>/`,
so a concurrent or crashed attempt can never mix into a committed snapshot. The attempt
of an unforced run is named by its key (a re-run with the same config and inputs resumes
the same folder); a forced run gets a fresh one.

A folder other than the committed one is removed only when it is provably dead: it was
started by the run that now commits (an earlier attempt of ours), or nothing under it
changed for longer than a lease lives (its writer stopped renewing long ago). A folder a
live writer may still be filling is left for a later commit to remove.
"""

from __future__ import annotations

import datetime as dt
import time

from nyx_tasks.store.artifacts import TMP_PREFIX, ArtifactStore

ATTEMPTS_DIR = "attempts"
OWNER = "_ATTEMPT.json"
LEGACY = ("_shards",)  # what a root written before attempt folders keeps beside the manifest


def attempt_rel(stage_rel: str, attempt: str) -> str:
    """An attempt's folder; the stage directory itself for "" (a root written before attempts existed)."""
    return f"{stage_rel}/{ATTEMPTS_DIR}/{attempt}" if attempt else stage_rel


def write_attempt_owner(store: ArtifactStore, rel: str, owner: str) -> None:
    store.write_json_atomic(f"{rel}/{OWNER}", {"owner": owner, "planned_at": time.time()})


def _timestamp(info: dict) -> float:
    for k in ("mtime", "LastModified", "last_modified", "updated", "created"):
        v = info.get(k)
        if isinstance(v, int | float):
            return float(v)
        if isinstance(v, dt.datetime):
            return v.timestamp()
        if isinstance(v, str):
            try:
                return dt.datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return time.time()  # unknown: treat as fresh, never as dead


def newest_change(store: ArtifactStore, rel: str) -> float:
    """The newest modification time of anything under `rel` (now, when it cannot tell)."""
    found = store.fs.find(store.path(rel), detail=True)
    return max((_timestamp(i) for i in found.values()), default=time.time())


def attempt_is_dead(store: ArtifactStore, rel: str, owner: str, ttl: float) -> bool:
    try:
        started_by = (store.read_json(f"{rel}/{OWNER}") or {}).get("owner")
    except ValueError:
        started_by = None
    return started_by == owner or time.time() - newest_change(store, rel) > ttl


def remove_dead_attempts(store: ArtifactStore, stage_rel: str, keep: str, owner: str, ttl: float, log) -> None:
    """After a commit: drop the other attempt folders that are provably dead, the kept attempt's
    temporary files, and the files of a root written before attempt folders."""
    for name in store.listdir(f"{stage_rel}/{ATTEMPTS_DIR}"):
        rel = f"{stage_rel}/{ATTEMPTS_DIR}/{name}"
        if name == keep:
            continue
        if attempt_is_dead(store, rel, owner, ttl):
            store.remove(rel)
            log.info("removed attempt folder %s (superseded or abandoned)", store.url(rel))
        else:
            log.info("kept attempt folder %s: it changed within the last %.0f s, a writer may still be "
                     "filling it; a later commit removes it", store.url(rel), ttl)
    kept = attempt_rel(stage_rel, keep)
    for name in store.listdir(kept):
        if name.startswith(TMP_PREFIX):
            store.remove(f"{kept}/{name}")
    if keep:  # the pre-attempt layout's files beside the manifest are no snapshot's any more
        for name in store.listdir(stage_rel):
            if name.endswith(".parquet") or name in LEGACY or name.startswith(TMP_PREFIX):
                store.remove(f"{stage_rel}/{name}")

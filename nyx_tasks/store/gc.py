"""Leftovers under an artifact root: what a killed or failed writer left behind and no reader
lists. `nyx gc --dry-run` lists them, `nyx gc` removes them; a committed snapshot is never one.

- temporary files (`_tmp.*`, anywhere): a writer renames its temporary file into place when the
  write ends, so one that has not changed for `min_age` seconds belongs to a writer that died;
- corpus table builds (`corpora/<key>/b-*`) that the key's `_CORPUS.json` does not name: a build
  that lost the race to another, or was killed before its manifest;
- attempt folders (`partitions/<p>/<stage>/attempts/<a>`) that are neither the committed snapshot's
  nor the current plan's, and where nothing changed for `min_age` seconds.

    for item in leftovers(store):
        print(item.rel, item.kind, item.bytes)
    remove(store, leftovers(store))
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from nyx_tasks.store.artifacts import TMP_PREFIX, ArtifactStore
from nyx_tasks.store.attempts import ATTEMPTS_DIR, newest_change
from nyx_tasks.store.lease import DEFAULT_TTL


@dataclass(frozen=True)
class Leftover:
    rel: str  # relative to the root
    kind: str  # temp | corpus build | attempt
    bytes: int


def _size(store: ArtifactStore, rel: str) -> int:
    found = store.fs.find(store.path(rel), detail=True)
    return sum(int(i.get("size") or 0) for i in found.values())


def _old(store: ArtifactStore, rel: str, min_age: float, now: float) -> bool:
    return now - newest_change(store, rel) > min_age


def leftovers(store: ArtifactStore, min_age: float = DEFAULT_TTL) -> list[Leftover]:
    """Everything under the root that `remove` may delete, sorted by path."""
    now, found = time.time(), []
    base = store.path("")
    for path in store.fs.find(base, withdirs=False):
        rel = path[len(base):].lstrip("/")
        if rel.rsplit("/", 1)[-1].startswith(TMP_PREFIX) and _old(store, rel, min_age, now):
            found.append(Leftover(rel, "temp", _size(store, rel)))
    for key in store.listdir("corpora"):
        try:
            named = store.read_json(f"corpora/{key}/_CORPUS.json") or {}
        except ValueError:  # a torn manifest: the table is rebuilt, every build folder is a leftover
            named = {}
        found += [Leftover(rel, "corpus build", _size(store, rel)) for rel in unnamed_builds(store, key, named, min_age)]
    for attempts in sorted(store.fs.glob(store.path(f"partitions/*/*/{ATTEMPTS_DIR}"))
                           + store.fs.glob(store.path(f"partitions/*/*/*/{ATTEMPTS_DIR}"))):  # negatives/<v>/
        stage_rel = attempts[len(base):].lstrip("/").rsplit("/", 1)[0]
        keep = set()
        for name in ("_MANIFEST.json", "_PLAN.json"):
            try:
                keep.add((store.read_json(f"{stage_rel}/{name}") or {}).get("attempt"))
            except ValueError:
                continue
        for attempt in store.listdir(f"{stage_rel}/{ATTEMPTS_DIR}"):
            rel = f"{stage_rel}/{ATTEMPTS_DIR}/{attempt}"
            if attempt not in keep and _old(store, rel, min_age, now):
                found.append(Leftover(rel, "attempt", _size(store, rel)))
    folders = [f.rel + "/" for f in found if f.kind != "temp"]  # a temp file inside one goes with it
    return sorted((f for f in found if not any(f.rel.startswith(d) for d in folders)), key=lambda x: x.rel)


def unnamed_builds(store: ArtifactStore, key: str, manifest: dict, min_age: float = DEFAULT_TTL) -> list[str]:
    """The build folders of corpus table `key` that its manifest does not name and that nothing
    changed in for `min_age` seconds (a build that lost the race, or was killed)."""
    used = {f["path"].split("/")[2] for f in manifest.get("files", []) if f.get("path", "").count("/") >= 3}
    now = time.time()
    return [f"corpora/{key}/{n}" for n in store.listdir(f"corpora/{key}")
            if n.startswith("b-") and n not in used and _old(store, f"corpora/{key}/{n}", min_age, now)]


def remove(store: ArtifactStore, items: list[Leftover]) -> int:
    """Delete `items`; returns the bytes freed."""
    for item in items:
        store.remove(item.rel)
    return sum(i.bytes for i in items)

"""Embeddings of an item list cached as an artifact, looked up by key, never scanned:

    <root>/cache/embeddings/<hash(model_id)>/<role>-<hash(the list's distinct item keys)>.npy

The key is the content hash of every distinct item in order, so the same list (a
partition's chunks, a shard's queries) embedded again by the same model is one file
read, whichever stage or run asks; a different list is embedded anew. Files are written
under a temporary name and moved into place, so concurrent writers never corrupt one.
A large corpus does not come here: it is embedded in shards (`nyx_tasks.retrieval.vector_shards`)."""

from __future__ import annotations

import io

import numpy as np

from nyx_tasks.core.hashing import stable_hash
from nyx_tasks.core.log import get_logger
from nyx_tasks.embedding.base import Embedder, MixedItem
from nyx_tasks.store.artifacts import ArtifactStore

PREFIX = "cache/embeddings"


def cache_rel(embedder: Embedder, role: str, keys: list[str]) -> str:
    return f"{PREFIX}/{stable_hash(embedder.model_id)}/{role}-{stable_hash(keys, 32)}.npy"


def embed_cached(embedder: Embedder, items: list[MixedItem], role: str, store: ArtifactStore) -> tuple[np.ndarray, int]:
    """(vectors, number embedded now). Identical items are embedded once."""
    log = get_logger("embed")
    keys = [it.key(role) for it in items]
    if not keys:
        return np.zeros((0, embedder.dim), np.float32), 0
    distinct = list(dict.fromkeys(keys))
    rel = cache_rel(embedder, role, distinct)
    if store.exists(rel):
        with store.fs.open(store.path(rel), "rb") as f:
            vecs = np.load(io.BytesIO(f.read()))
        todo = 0
    else:
        first = {k: i for i, k in reversed(list(enumerate(keys)))}
        vecs = np.asarray(embedder.embed([items[first[k]] for k in distinct], role), dtype=np.float32)
        buf = io.BytesIO()
        np.save(buf, vecs)
        store.write_bytes_atomic(rel, buf.getvalue())
        todo = len(distinct)
    log.info("embed %s: %d items, %d from cache, %d embedded (%s)", role, len(items), len(items) - todo, todo,
             embedder.model_id[:80])
    index = {k: i for i, k in enumerate(distinct)}
    return vecs[[index[k] for k in keys]], todo

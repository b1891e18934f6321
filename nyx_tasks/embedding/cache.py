"""Embeddings cached as an artifact, keyed by model and content hash:

    <root>/cache/embeddings/<hash(model_id)>/emb-<uuid>.parquet   (key, vector)

A later run (or stage) with the same model embeds only content it has not
seen; files are written atomically, so concurrent writers never corrupt it."""

from __future__ import annotations

import uuid

import numpy as np

from ..artifacts import ArtifactStore
from ..config import stable_hash
from ..log import get_logger
from .base import Embedder, MixedItem

PREFIX = "cache/embeddings"


def embed_cached(embedder: Embedder, items: list[MixedItem], role: str, store: ArtifactStore) -> tuple[np.ndarray, int]:
    """(vectors, number embedded now). Identical items are embedded once."""
    import pyarrow as pa

    log = get_logger("embed")
    folder = f"{PREFIX}/{stable_hash(embedder.model_id)}"
    keys = [it.key(role) for it in items]
    wanted = set(keys)
    found: dict[str, np.ndarray] = {}
    for name in store.listdir(folder):
        if name.endswith(".parquet"):
            for batch in store.read_parquet(f"{folder}/{name}"):
                for k, v in zip(batch.column("key").to_pylist(), batch.column("vector").to_numpy(zero_copy_only=False), strict=True):
                    if k in wanted:
                        found[k] = v
    todo = list(dict.fromkeys(k for k in keys if k not in found))
    if todo:
        first = {k: i for i, k in reversed(list(enumerate(keys)))}
        vecs = embedder.embed([items[first[k]] for k in todo], role)
        found.update(zip(todo, vecs, strict=True))
        rel = f"{folder}/emb-{uuid.uuid4().hex[:12]}.parquet"
        table = pa.table({"key": pa.array(todo), "vector": pa.FixedSizeListArray.from_arrays(
            pa.array(vecs.reshape(-1), pa.float32()), vecs.shape[1])})
        with store.parquet_writer(rel, table.schema, name="embeddings") as w:
            w.write_table(table)
            w.close()
    log.info("embed %s: %d items, %d from cache, %d embedded (%s)", role, len(items),
             len(items) - len(todo), len(todo), embedder.model_id[:80])
    return np.stack([np.asarray(found[k], dtype=np.float32) for k in keys]) if keys else \
        np.zeros((0, embedder.dim), np.float32), len(todo)

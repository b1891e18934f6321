"""The embedding cache is looked up by key, never scanned."""

import numpy as np
import pytest

from nyx_tasks.embedding import MixedItem
from nyx_tasks.embedding.cache import cache_rel, embed_cached
from nyx_tasks.store.artifacts import ArtifactStore


class Counting:
    model_id, dim = "fake:count", 4

    def __init__(self):
        self.seen = []

    def embed(self, items, role):
        self.seen += [it.text for it in items]
        return np.array([[len(it.text), 1.0, 0.0, float(i)] for i, it in enumerate(items)], np.float32)


def items(*texts):
    return [MixedItem(t) for t in texts]


def test_the_same_list_is_one_file_read_and_the_folder_is_never_listed(tmp_path, monkeypatch):
    store = ArtifactStore(str(tmp_path))
    monkeypatch.setattr(store, "listdir", lambda *a: pytest.fail("the cache folder was listed"))
    monkeypatch.setattr(store.fs, "ls", lambda *a, **k: pytest.fail("the cache folder was listed"))
    emb = Counting()
    vecs, n = embed_cached(emb, items("a", "bb", "a"), "query", store)
    assert n == 2 and emb.seen == ["a", "bb"]  # identical items embedded once
    np.testing.assert_array_equal(vecs[0], vecs[2])
    again = Counting()
    vecs2, n2 = embed_cached(again, items("a", "bb", "a"), "query", store)
    assert n2 == 0 and again.seen == [] and np.array_equal(vecs, vecs2)
    assert store.exists(cache_rel(emb, "query", [MixedItem("a").key("query"), MixedItem("bb").key("query")]))
    other = Counting()
    assert embed_cached(other, items("a", "ccc"), "query", store)[1] == 2  # another list: embedded anew
    assert embed_cached(Counting(), items("a", "bb"), "document", store)[1] == 2  # roles are apart
    assert embed_cached(Counting(), [], "query", store)[0].shape == (0, 4)

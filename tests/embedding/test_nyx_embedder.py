"""The Nyx embedder on the tiny Qwen2.5-VL: last real token under right padding,
checked against a manual one-item-at-a-time computation; Matryoshka truncation."""

import numpy as np
import pytest
import torch

from nyx_tasks.core.config import EmbedderConfig
from nyx_tasks.embedding import MixedItem, make_embedder
from nyx_tasks.embedding.base import matryoshka
from nyx_tasks.store.artifacts import ArtifactStore
from tests.conftest import png_bytes


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    store = ArtifactStore(str(tmp_path_factory.mktemp("root")))
    a, b = "a" * 64, "b" * 64
    store.put_image(a, "png", png_bytes(60, 40, (200, 10, 10)))
    store.put_image(b, "png", png_bytes(30, 50, (10, 10, 200)))
    items = [
        MixedItem("a short text"),
        MixedItem("<image> a red picture and a much longer caption around it, with more words", ((a, store.image_rel(a, "png")),)),
        MixedItem("two images <image> then <image> end", ((a, store.image_rel(a, "png")), (b, store.image_rel(b, "png")))),
    ]
    emb = make_embedder(EmbedderConfig(kind="nyx", model="tiny:qwen2_5_vl", device="cpu", batch_size=3), store)
    return store, items, emb


def test_last_token_pooling_under_right_padding_matches_manual(setup):
    store, items, emb = setup
    batched = emb.embed(items, "document")
    assert batched.shape == (3, emb.dim)
    assert emb.processor.tokenizer.padding_side == "right"
    for i, it in enumerate(items):  # one at a time: no padding, the last position is the last real token
        from nyx_tasks.inference.base import load_image

        images = [load_image(store, {"path": p}) for _, p in it.images]
        kw = {"images": images} if images else {}
        inputs = emb.processor(text=[emb._text(it, "document")], return_tensors="pt", **kw)
        with torch.inference_mode():
            h = emb.model.model(**inputs).last_hidden_state[0, -1].numpy()
        manual = h / np.linalg.norm(h)
        np.testing.assert_allclose(batched[i], manual, atol=2e-4)
    assert not np.allclose(batched[0], batched[1])


def test_query_instruction_and_matryoshka(setup):
    _, items, emb = setup
    q = emb.embed(items[:1], "query")
    d = emb.embed(items[:1], "document")
    assert not np.allclose(q, d)  # the instruction is part of the query input
    t = matryoshka(q, 32)
    assert t.shape == (1, 32) and np.isclose(np.linalg.norm(t), 1.0)
    np.testing.assert_allclose(t[0], q[0, :32] / np.linalg.norm(q[0, :32]), rtol=1e-5)

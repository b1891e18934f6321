"""The mmE5 embedder on the tiny Mllama: mmE5's input format, last real token under
right padding checked against a manual one-item-at-a-time computation done the
model card's way, batches mixing 0, 1 and 2 images, the pixel cap as a tile cap."""

import numpy as np
import pytest
import torch

from nyx_tasks.core.config import EmbedderConfig
from nyx_tasks.embedding import MixedItem, make_embedder
from nyx_tasks.embedding.base import matryoshka
from nyx_tasks.inference.base import load_image
from nyx_tasks.store.artifacts import ArtifactStore
from tests.conftest import png_bytes

TILE = 56 * 56  # the tiny Mllama's tile (56x56 pixels, up to 4 tiles per image)
INSTR = "Please retrieve the most relevant document to answer the question."


def mme5(store, **kw):
    return make_embedder(EmbedderConfig(kind="mme5", model="tiny:mllama", device="cpu", **kw), store)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    store = ArtifactStore(str(tmp_path_factory.mktemp("root")))
    refs = {}
    for key, (w, h, color) in {"a": (60, 40, (200, 10, 10)), "b": (30, 50, (10, 10, 200)),
                               "c": (112, 112, (10, 160, 40)), "d": (56, 112, (120, 120, 10))}.items():
        image_id = key * 64
        store.put_image(image_id, "png", png_bytes(w, h, color))
        refs[key] = (image_id, store.image_rel(image_id, "png"))
    items = [
        MixedItem("a short text"),
        MixedItem("a text-only item, somewhat longer than the first one"),
        MixedItem("<image> a red picture and a much longer caption around it, with more words", (refs["a"],)),
        MixedItem("<image> blue", (refs["b"],)),
        MixedItem("text before <image> the image", (refs["c"],)),
        MixedItem("two images <image> then <image> end", (refs["a"], refs["b"])),
        MixedItem("<image><image> two leading images", (refs["c"], refs["d"])),
        MixedItem("five: <image> one <image> two <image> three <image> four <image> five",
                  (refs["a"], refs["b"], refs["c"], refs["d"], refs["a"])),
    ]
    emb = mme5(store, batch_size=3)
    return store, items, refs, emb


def manual(emb, store, item, role):
    """One item alone (no padding), called as on the mmE5 model card."""
    images = [load_image(store, {"path": p}) for _, p in item.images]
    kw = {"images": [images]} if images else {}
    inputs = emb.processor(text=[emb._text(item, role)], return_tensors="pt", **kw)
    if images and emb.tiles < emb.native_tiles:  # the capped processor's tiles -> the model's slots
        inputs = emb._pad_tiles(inputs)
    with torch.inference_mode():
        h = emb.model(**inputs, return_dict=True, output_hidden_states=True).hidden_states[-1][0, -1].numpy()
    return h / np.linalg.norm(h), inputs


def test_mme5_input_format(setup):
    _, items, _, emb = setup
    assert emb._text(items[0], "document") == "<|begin_of_text|>a short text"
    assert emb._text(items[0], "query") == f"<|begin_of_text|>{INSTR} a short text"
    # leading images stay in front of <|begin_of_text|> and of the instruction, as in mmE5
    assert emb._text(items[3], "query") == f"<|image|><|begin_of_text|>{INSTR} blue"
    assert emb._text(items[6], "document") == "<|image|><|image|><|begin_of_text|>two leading images"
    # an image inside the text stays where it is
    assert emb._text(items[4], "document") == "<|begin_of_text|>text before <|image|> the image"
    tok = emb.processor.tokenizer
    image = load_image(emb.store, {"path": items[3].images[0][1]})
    inputs = emb.processor(text=[emb._text(items[3], "document")], images=[[image]], return_tensors="pt")
    tokens = tok.convert_ids_to_tokens(inputs["input_ids"][0].tolist())
    # Llama-3's tokenizer adds its own <|begin_of_text|> in front; no EOS at the end
    assert tokens[:3] == ["<|begin_of_text|>", "<|image|>", "<|begin_of_text|>"]
    assert tokens[-1] != tok.eos_token and tok.eos_token not in tokens


def test_last_token_pooling_under_right_padding_matches_manual(setup):
    store, items, _, emb = setup
    batched = emb.embed(items, "document")
    assert batched.shape == (len(items), emb.dim)
    assert emb.dim == emb.model.config.text_config.hidden_size == 128
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, rtol=1e-5)
    assert emb.processor.tokenizer.padding_side == "right"
    # batches never mix image counts; text-only items share a padded batch
    batches = emb._batches(items)
    assert all(len({len(items[i].images) for i in b}) == 1 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(len(items)))
    for i, it in enumerate(items):
        expected, _ = manual(emb, store, it, "document")
        np.testing.assert_allclose(batched[i], expected, atol=2e-4)
    # the padded batches really are padded: the last position is not the last real token
    for b in batches:
        if len(b) < 2:
            continue
        texts = [emb._text(items[i], "document") for i in b]
        images = [[load_image(store, {"path": p}) for _, p in items[i].images] for i in b]
        inputs = emb._inputs(texts, images)
        mask = inputs["attention_mask"]
        if (mask.sum(1) < mask.shape[1]).any():
            with torch.inference_mode():
                h = emb._forward(inputs)[:, -1].numpy()
            h /= np.linalg.norm(h, axis=1, keepdims=True)
            short = int(torch.argmin(mask.sum(1)))
            assert not np.allclose(h[short], batched[b[short]], atol=1e-3)
            break
    else:
        pytest.fail("no batch with padding")
    assert not np.allclose(batched[0], batched[2])


def test_query_instruction_and_matryoshka(setup):
    store, items, _, emb = setup
    q = emb.embed(items[:4], "query")
    d = emb.embed(items[:4], "document")
    for i in range(4):
        assert not np.allclose(q[i], d[i], atol=1e-3)  # the instruction is part of the query input
    np.testing.assert_allclose(q[3], manual(emb, store, items[3], "query")[0], atol=2e-4)
    small = mme5(store, batch_size=3, dim=32)
    t = small.embed(items[:4], "query")
    assert t.shape == (4, 32)
    np.testing.assert_allclose(t, matryoshka(q, 32), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, rtol=1e-5)


def test_pixel_cap_limits_tiles(setup):
    store, _, refs, emb = setup
    one, two = mme5(store, max_pixels=TILE), mme5(store, max_pixels=2 * TILE + 100)
    assert (emb.tiles, two.tiles, one.tiles) == (4, 2, 1)
    assert len({emb.model_id, one.model_id, two.model_id}) == 3
    big = [MixedItem("<image> a big square picture", (refs["c"],))]  # 2x2 tiles uncapped
    assert not np.allclose(emb.embed(big, "document"), one.embed(big, "document"), atol=1e-3)
    assert not np.allclose(emb.embed(big, "document"), two.embed(big, "document"), atol=1e-3)
    # a 56x112 picture takes 2 tiles (1 across, 2 down) under either cap: same vector,
    # which needs the capped processor's aspect-ratio id renumbered to the model's
    tall = [MixedItem("<image> a tall picture", (refs["d"],))]
    np.testing.assert_allclose(two.embed(tall, "document"), emb.embed(tall, "document"), atol=1e-5)
    assert not np.allclose(one.embed(tall, "document"), emb.embed(tall, "document"), atol=1e-3)
    # one item alone under the cap, model-card style, matches too
    expected, inputs = manual(one, store, big[0], "document")
    assert inputs["pixel_values"].shape[2] == 4 and int(inputs["aspect_ratio_mask"].sum()) == 1
    np.testing.assert_allclose(one.embed(big, "document")[0], expected, atol=2e-4)

"""Chunk invariants as property tests (hypothesis), on a BPE trained here."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nyx_tasks.chunking.chunks import cut, layout, strip_placeholder
from nyx_tasks.chunking.tokenizer import placeholder_id, train_bpe
from tests.conftest import WORDS, long_text

PH = "<image>"


@pytest.fixture(scope="module")
def tok():
    return train_bpe((long_text(i, 60) for i in range(200)), 400, PH)


text_slot = st.lists(st.sampled_from([*WORDS, "<image>", "<ima", "ge>", "é", "日本", "\n"]), min_size=1, max_size=80).map(" ".join)
slots = st.lists(st.one_of(text_slot.map(lambda t: ("t", t)), st.just(("i", None))), min_size=1, max_size=40)


def build(slot_list):
    texts, images, n = [], [], 0
    for kind, t in slot_list:
        if kind == "t":
            texts.append(t)
            images.append(None)
        else:
            texts.append(None)
            images.append(f"img{n}")
            n += 1
    return texts, images


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(slot_list=slots, size=st.sampled_from([1, 7, 50, 200]), keep_tail=st.booleans())
def test_chunk_invariants(tok, slot_list, size, keep_tail):
    texts, images = build(slot_list)
    pid = placeholder_id(tok, PH)
    doc, doc_images = layout(texts, images, PH)
    enc = tok.encode(doc, add_special_tokens=False)
    chunks = cut(doc, doc_images, enc.ids, enc, pid, size, keep_tail)

    n = len(enc.ids)
    full = n // size
    assert len(chunks) == (full + (1 if keep_tail and n % size else 0))
    # every chunk but a kept tail has exactly `size` tokens; chunks tile the token stream in order
    for i, c in enumerate(chunks):
        assert c.chunk_index == i and c.token_start == i * size
        assert c.n_tokens == size or (keep_tail and i == len(chunks) - 1 and c.n_tokens == n % size)
        # placeholders in the text == images of the chunk == placeholder tokens in its span
        assert c.text.count(PH) == len(c.image_ids) == enc.ids[c.token_start:c.token_start + c.n_tokens].count(pid)
    # images keep their order, none is invented or duplicated
    flat = [i for c in chunks for i in c.image_ids]
    assert flat == doc_images[: len(flat)]
    if keep_tail or n % size == 0:
        assert flat == doc_images
    # chunk texts appear in the document in order
    pos = 0
    for c in chunks:
        at = doc.find(c.text, pos)
        assert at >= 0
        pos = at + len(c.text)


@given(st.text(alphabet="<>imagex ", max_size=40))
def test_literal_placeholders_never_survive(text):
    assert PH not in strip_placeholder(text, PH)


def test_chunk_stage_drops_by_name_and_keeps_at_most_five_images(tmp_path, make_cfg):
    """Through the real stage: >5-image chunks and short tails are counted drops."""
    from nyx_tasks.runner import run_stage
    from nyx_tasks.stages import get_stage
    from nyx_tasks.store.artifacts import ArtifactStore, read_stage_table

    cfg = make_cfg("sample.size=5")
    store = ArtifactStore(cfg.artifact_root())
    for s in ("ingest", "chunk"):
        run_stage(get_stage(s), cfg, store)
    chunks = read_stage_table(store, cfg.partition, "chunk").to_pylist()
    manifest = store.read_json(f"partitions/{cfg.partition}/chunk/_MANIFEST.json")
    assert chunks and all(c["n_tokens"] == 200 and c["n_images"] <= 5 for c in chunks)
    assert all(c["text"].count(PH) == c["n_images"] == len(c["image_ids"]) for c in chunks)
    assert all("END_OF_DOCUMENT_TOKEN_TO_BE_REPLACED" not in c["text"] for c in chunks)
    assert manifest["drops"]["chunk_too_many_images"] == 1  # the sample corpus's 7-image document
    assert manifest["drops"]["chunk_short_tail"] > 0
    assert len({c["chunk_id"] for c in chunks}) == len(chunks)

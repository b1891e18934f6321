"""`bf16: native` (the demo's setting): bf16 where the hardware computes it (a GPU, or a CPU with
AVX512-BF16 or AMX), else fp32. On a CPU the sentence-transformers embedder autocasts (fp32
weights) and says so in its model id, so cached fp32 and bf16 vectors never mix."""

import numpy as np
import pytest

from nyx_tasks.core.config import EmbedderConfig
from nyx_tasks.embedding import make_embedder, vlm
from nyx_tasks.embedding.base import MixedItem

TEXTS = ["Return the absolute path of a file.", "Open a URL in the default browser and wait for it to close.",
         "Split a string on whitespace, at most maxsplit times, and return the list of its words."]


@pytest.mark.parametrize("cpu_has_it", [True, False])
def test_the_setting_on_each_device(monkeypatch, cpu_has_it):
    monkeypatch.setattr(vlm, "cpu_computes_bf16", lambda: cpu_has_it)
    assert [vlm.use_bf16("auto", g) for g in (True, False)] == [True, False]
    assert [vlm.use_bf16("native", g) for g in (True, False)] == [True, cpu_has_it]
    assert [vlm.use_bf16(v, False) for v in (True, False)] == [True, False]


def test_native_on_a_bf16_cpu_autocasts_and_names_it(monkeypatch):
    fp32 = make_embedder(EmbedderConfig(device="cpu"), None)
    want = fp32.embed([MixedItem(t) for t in TEXTS], "document")
    monkeypatch.setattr(vlm, "cpu_computes_bf16", lambda: True)
    bf16 = make_embedder(EmbedderConfig(device="cpu", bf16="native"), None)
    got = bf16.embed([MixedItem(t) for t in TEXTS], "document")
    assert bf16.model_id == fp32.model_id + ":cpu-bf16"
    assert got.dtype == np.float32 and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    cos = (got * want).sum(1)
    assert cos.min() > 0.999 and not np.array_equal(got, want)  # bf16 arithmetic: close, not the same bits


def test_native_on_a_cpu_without_it_is_fp32(monkeypatch):
    monkeypatch.setattr(vlm, "cpu_computes_bf16", lambda: False)
    fp32 = make_embedder(EmbedderConfig(device="cpu"), None)
    native = make_embedder(EmbedderConfig(device="cpu", bf16="native"), None)
    assert native.model_id == fp32.model_id
    items = [MixedItem(t) for t in TEXTS]
    np.testing.assert_array_equal(native.embed(items, "query"), fp32.embed(items, "query"))


def test_max_length_cuts_long_texts_only_and_names_it():
    """`max_length` (the demo's miner: 128 of MiniLM's 256 tokens): a text longer than it is embedded
    as its first `max_length` tokens; shorter texts are untouched; the model id says so."""
    full = make_embedder(EmbedderConfig(device="cpu"), None)
    cut = make_embedder(EmbedderConfig(device="cpu", max_length=16), None)
    assert cut.model_id == full.model_id + ":len=16"
    tok = full.model.tokenizer
    long = " ".join(TEXTS * 3)
    ids = tok(long, add_special_tokens=False)["input_ids"]
    head = tok.decode(ids[:14])  # 16 with [CLS] and [SEP]
    short = "Return the path."
    got = cut.embed([MixedItem(long), MixedItem(short)], "document")
    want = full.embed([MixedItem(head), MixedItem(short)], "document")
    assert (got * want).sum(1).min() > 0.9999
    assert (got[0] * full.embed([MixedItem(long)], "document")[0]).sum() < 0.99  # the cut changed it

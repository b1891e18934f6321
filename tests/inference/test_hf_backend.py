"""The hf backend on the tiny offline Qwen2.5-VL: real processor, chat template,
images, batching, and xgrammar-constrained JSON."""

import json

import pytest

from nyx_tasks.core.config import GenerationConfig
from nyx_tasks.inference import ChatRequest, make_backend
from nyx_tasks.inference.structured import parse
from nyx_tasks.stages.synthesize import SHORTEN_SCHEMA, distractor_schema
from nyx_tasks.store.artifacts import ArtifactStore
from tests.conftest import png_bytes


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = ArtifactStore(str(tmp_path_factory.mktemp("root")))
    s.put_image("a" * 64, "png", png_bytes(60, 40))
    return s


def test_batched_structured_generation_with_images_and_cache(store):
    cfg = GenerationConfig(backend="hf", model="tiny:qwen2_5_vl", device="cpu", batch_size=3,
                           compact_json=True, temperature=1.0, max_tokens=96)
    backend = make_backend(cfg, store)
    img = {"type": "image", "image_id": "a" * 64, "path": store.image_rel("a" * 64, "png")}
    reqs = [ChatRequest(messages=[{"role": "user", "content": [{"type": "text", "text": f"Shorten {i}: "}, img]}],
                        json_schema=SHORTEN_SCHEMA, max_tokens=96, temperature=1.0, seed=i) for i in range(4)]
    reqs.append(ChatRequest(messages=[{"role": "user", "content": "three wrong answers"}],
                            json_schema=distractor_schema(3), max_tokens=96, temperature=1.0))
    out = backend.generate(reqs)
    assert backend.misses == 5 and backend.hits == 0
    finished = [r for r in out if r.finish_reason == "stop"]
    assert finished, [r.text for r in out]
    for req, r in zip(reqs, out, strict=True):
        if r.finish_reason == "stop":  # a finished constrained generation always satisfies the schema
            assert parse(r.text, req.json_schema) is not None, r.text
    assert all(r.prompt_tokens > 0 for r in out)
    again = backend.generate(reqs)
    assert backend.hits == 5 and [a.text for a in again] == [r.text for r in out]
    json.dumps([r.to_json() for r in out])  # responses are plain data


def test_text_only_model_refuses_images(store):
    from nyx_tasks.inference import GenerationError

    backend = make_backend(GenerationConfig(backend="hf", model="tiny:qwen2", device="cpu"), store, cache=False)
    img = {"type": "image", "image_id": "a" * 64, "path": store.image_rel("a" * 64, "png")}
    with pytest.raises(GenerationError, match="text-only"):
        backend.generate([ChatRequest(messages=[{"role": "user", "content": [img]}])])


def test_tiny_internvl_answers_image_requests_in_schema(store):
    cfg = GenerationConfig(backend="hf", model="tiny:internvl", device="cpu", batch_size=2,
                           compact_json=True, temperature=1.0, max_tokens=64)
    backend = make_backend(cfg, store, cache=False)
    img = {"type": "image", "image_id": "a" * 64, "path": store.image_rel("a" * 64, "png")}
    reqs = [ChatRequest(messages=[{"role": "user", "content": [{"type": "text", "text": "<image1>"}, img]}],
                        json_schema=SHORTEN_SCHEMA, max_tokens=64, temperature=1.0, seed=i) for i in range(2)]
    out = backend.generate(reqs)
    assert backend.model_id.startswith("hf:") and "internvl" in backend.model_id
    assert all(r.prompt_tokens > 4 for r in out)  # the image expanded into its context tokens
    for r in out:
        if r.finish_reason == "stop":
            assert parse(r.text, SHORTEN_SCHEMA) is not None


def sampled_requests(store, seed):
    """Sampled requests of different lengths, with and without a schema and an image, plus a greedy one."""
    img = {"type": "image", "image_id": "a" * 64, "path": store.image_rel("a" * 64, "png")}
    reqs = [ChatRequest(messages=[{"role": "user", "content": [{"type": "text", "text": f"Shorten {i}: "}, img]}],
                        json_schema=SHORTEN_SCHEMA, max_tokens=16 + 8 * i, temperature=1.0,
                        top_p=0.9 if i % 2 else 1.0, seed=seed) for i in range(3)]
    reqs.append(ChatRequest(messages=[{"role": "user", "content": "free text"}], max_tokens=16, temperature=1.0,
                            seed=seed))
    reqs.append(ChatRequest(messages=[{"role": "user", "content": "greedy"}], json_schema=SHORTEN_SCHEMA,
                            max_tokens=16, temperature=0.0, seed=seed))
    return reqs


def test_sampled_answers_do_not_depend_on_the_batch(store):
    """Each request samples with its own seed and is cut at its own max_tokens: batched in
    threes (beside longer requests, schema-less beside schema rows) it answers as it does alone."""
    def answers(batch_size, seed):
        cfg = GenerationConfig(backend="hf", model="tiny:qwen2_5_vl", device="cpu", batch_size=batch_size,
                               compact_json=True)
        out = make_backend(cfg, store, cache=False).generate(sampled_requests(store, seed))
        return [(r.text, r.finish_reason, r.completion_tokens) for r in out]

    alone, batched = answers(1, 0), answers(3, 0)
    assert alone == batched
    limits = [r.max_tokens for r in sampled_requests(store, 0)]
    assert all(n <= limit for (_, _, n), limit in zip(alone, limits, strict=True))
    assert any(n == limit and why == "length" for (_, why, n), limit in zip(batched, limits, strict=True))
    other = answers(3, 1)
    assert sum(a[0] != b[0] for a, b in zip(alone[:4], other[:4], strict=True)) >= 2  # another seed, other samples
    assert other[4] == alone[4]  # greedy ignores the seed

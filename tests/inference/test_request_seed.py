"""Request keys and per-request sampling seeds (base.ChatRequest): a sampled request
carries its own seed, derived from its content and the configured seed, and its
cache key names the sampler, so answers sampled the old batch-dependent way are not
served; greedy keys are unchanged."""

import hashlib
import json

from nyx_tasks.core.config import GenerationConfig
from nyx_tasks.inference.base import SAMPLER, ChatRequest
from nyx_tasks.inference.openai_backend import OpenAIBackend
from nyx_tasks.store.artifacts import ArtifactStore


def req(text="q", temperature=1.0, seed=0, **kw):
    return ChatRequest(messages=[{"role": "user", "content": text}], temperature=temperature, seed=seed, **kw)


def old_key(r: ChatRequest, model_id: str) -> str:
    """The key before per-request seeds (the cache written then)."""
    blob = json.dumps({"model": model_id, "messages": r.messages, "schema": r.json_schema, "max_tokens": r.max_tokens,
                       "temperature": r.temperature, "top_p": r.top_p, "seed": r.seed},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def test_greedy_keys_stay_sampled_keys_name_the_sampler():
    greedy, sampled = req(temperature=0.0), req(temperature=1.0)
    assert greedy.key("m") == old_key(greedy, "m")  # greedy caches stay valid
    assert sampled.key("m") != old_key(sampled, "m")  # old sampled answers are not served
    blob = json.dumps({"model": "m", "messages": sampled.messages, "schema": None, "max_tokens": 512,
                       "temperature": 1.0, "top_p": 1.0, "seed": 0, "sampler": SAMPLER},
                      sort_keys=True, ensure_ascii=False)
    assert sampled.key("m") == hashlib.sha256(blob.encode()).hexdigest()


def test_sampling_seed_from_content_and_configured_seed():
    a = req("a").sampling_seed()
    assert a == req("a").sampling_seed() and isinstance(a, int) and 0 <= a < 2**31
    assert req("b").sampling_seed() != a  # another request, another stream
    assert req("a", seed=1).sampling_seed() != a  # another configured seed, another stream
    assert req("a", max_tokens=7).sampling_seed() != a
    assert req("a", seed=None).sampling_seed() is None  # no seed configured: none sent
    # images count by content hash, not by where they are stored
    img = {"type": "image", "image_id": "f" * 64}
    at = [ChatRequest(messages=[{"role": "user", "content": [{**img, "path": p}]}]) for p in ("x.png", "y/z.png")]
    assert at[0].sampling_seed() == at[1].sampling_seed() and at[0].key("m") == at[1].key("m")


def test_openai_sends_each_requests_own_seed(tmp_path):
    backend = OpenAIBackend(GenerationConfig(backend="openai", model="m"), ArtifactStore(str(tmp_path)),
                            base_url="http://127.0.0.1:9/v1", api_key=None)
    assert backend._kwargs(req("a"))["seed"] == req("a").sampling_seed()
    assert backend._kwargs(req("b"))["seed"] != backend._kwargs(req("a"))["seed"]
    assert "seed" not in backend._kwargs(req("a", seed=None))

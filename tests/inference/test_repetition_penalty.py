"""`generation.repetition_penalty` (the released code's feedback VLM samples
with 1.05): carried from the config into every request and every backend, and neutral
at 1.0 (the default): request keys, config dumps and outputs stay as they were."""

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nyx_tasks.core.config import GenerationConfig
from nyx_tasks.inference import ChatRequest, make_backend
from nyx_tasks.inference import hf_backend as hf
from nyx_tasks.inference.base import SAMPLER
from nyx_tasks.inference.openai_backend import OpenAIBackend
from nyx_tasks.inference.vllm_backend import sampling_kwargs
from nyx_tasks.retrieval.answering import Answering
from nyx_tasks.store.artifacts import ArtifactStore


def req(text="q", temperature=0.0, **kw):
    return ChatRequest(messages=[{"role": "user", "content": text}], temperature=temperature, **kw)


def key_before(r: ChatRequest, model_id: str) -> str:
    """ChatRequest.key as it was before repetition_penalty existed."""
    content = {"model": model_id, "messages": r.messages, "schema": r.json_schema, "max_tokens": r.max_tokens,
               "temperature": r.temperature, "top_p": r.top_p, "seed": r.seed}
    if r.temperature > 0:
        content["sampler"] = SAMPLER
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


# ------------------------------------------------------------------ config and request keys
def test_keys_and_seeds_unchanged_at_1_and_distinct_otherwise():
    for temp in (0.0, 0.7):
        plain, neutral = req(temperature=temp), req(temperature=temp, repetition_penalty=1.0)
        assert plain.key("m") == neutral.key("m") == key_before(plain, "m")  # caches stay valid
        assert plain.sampling_seed() == neutral.sampling_seed()
        penal = req(temperature=temp, repetition_penalty=1.05)
        assert penal.key("m") != plain.key("m") and penal.key("m") != req(temperature=temp,
                                                                            repetition_penalty=1.1).key("m")
    assert req(temperature=0.7, repetition_penalty=1.05).sampling_seed() != req(temperature=0.7).sampling_seed()


def test_config_field_is_left_out_of_dumps_at_1():
    """Config hashes (stage payloads are model dumps) and resolved configs stay as they were at 1.0."""
    assert GenerationConfig().repetition_penalty == 1.0
    assert "repetition_penalty" not in GenerationConfig().model_dump(mode="json")
    cfg = GenerationConfig(repetition_penalty=1.05)
    assert cfg.model_dump(mode="json")["repetition_penalty"] == 1.05
    assert GenerationConfig.model_validate(cfg.model_dump(mode="json")) == cfg  # round-trips
    with pytest.raises(ValueError):
        GenerationConfig(repetition_penalty=0)


def test_stage_config_hashes_unchanged_at_1(make_cfg):
    from nyx_tasks.runner import stage_config_hash
    from nyx_tasks.stages import get_stage

    base = make_cfg()
    for stage in ("synthesize", "feedback", "evaluate"):
        st = get_stage(stage)
        assert "repetition_penalty" not in json.dumps(st.config_payload(base))
        set_ = make_cfg(f"{stage}.generation.repetition_penalty=1.05")
        assert stage_config_hash(st, set_) != stage_config_hash(st, base)


def test_answering_requests_carry_the_penalty():
    class Corpus:
        texts, image_ids, paths = ["a document"], [[]], {}

    for p in (1.0, 1.05):
        asking = Answering(GenerationConfig(repetition_penalty=p), "v1", Corpus(), "<image>", 0)
        assert asking.request("q?", [], [0], options=["a", "b"]).repetition_penalty == p


# ------------------------------------------------------------------ vllm
def test_vllm_sampling_kwargs():
    r = req(temperature=0.5, top_p=0.9, max_tokens=7)
    kw = sampling_kwargs(r)
    assert kw == {"temperature": 0.5, "top_p": 0.9, "max_tokens": 7, "seed": r.sampling_seed()}
    assert "repetition_penalty" not in sampling_kwargs(req(repetition_penalty=1.0))
    assert sampling_kwargs(req(repetition_penalty=1.05))["repetition_penalty"] == 1.05
    try:  # where vLLM is installed, the kwargs are what SamplingParams takes
        from vllm import SamplingParams
    except ImportError:
        return
    assert SamplingParams(**sampling_kwargs(req(repetition_penalty=1.05))).repetition_penalty == 1.05


# ------------------------------------------------------------------ openai (loopback server)
class FakeOpenAI:
    """A loopback OpenAI-compatible chat endpoint that records every JSON body it receives."""

    def __init__(self):
        self.bodies: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.bodies.append(body)
                out = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": "ok"}}],
                                  "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


@pytest.fixture
def fake_openai():
    srv = FakeOpenAI()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def test_openai_sends_repetition_penalty_only_when_set(tmp_path, fake_openai):
    backend = OpenAIBackend(GenerationConfig(backend="openai", model="m", concurrency=1, retries=0),
                            ArtifactStore(str(tmp_path)), base_url=fake_openai.base_url, api_key=None)
    reqs = [req("a"), req("b", repetition_penalty=1.0), req("c", repetition_penalty=1.05)]
    out = backend.generate(reqs)
    assert [r.text for r in out] == ["ok"] * 3
    by_text = {b["messages"][0]["content"]: b for b in fake_openai.bodies}
    assert "repetition_penalty" not in by_text["a"] and "repetition_penalty" not in by_text["b"]
    assert by_text["c"]["repetition_penalty"] == 1.05  # top level of the JSON body, as vLLM reads it
    assert "extra_body" not in by_text["c"]
    assert {k for k in by_text["a"]} == {k for k in by_text["c"]} - {"repetition_penalty"}


# ------------------------------------------------------------------ hf (tiny random Qwen2.5-VL)
@pytest.fixture(scope="module")
def tiny():
    import tempfile

    cfg = GenerationConfig(backend="hf", model="tiny:qwen2_5_vl", device="cpu", batch_size=3)
    return make_backend(cfg, ArtifactStore(tempfile.mkdtemp()), cache=False)


PROMPTS = ("hello", "the same the same the same", "x")


def answers(backend, penalties, temperature=0.0, max_tokens=20):
    reqs = [req(t, temperature=temperature, max_tokens=max_tokens, repetition_penalty=p, seed=0)
            for t, p in zip(PROMPTS, penalties, strict=True)]
    return [backend.tokenizer(r.text, add_special_tokens=False)["input_ids"] for r in backend.generate(reqs)]


def test_hf_at_1_adds_no_processor(tiny, monkeypatch):
    before = answers(tiny, [1.0] * 3)

    def refuse(*a, **k):
        raise AssertionError("RowPenalty built for rows at 1.0")

    monkeypatch.setattr(hf, "RowPenalty", refuse)
    assert answers(tiny, [1.0] * 3) == before  # the code path of today: no penalty processor at all
    assert answers(tiny, [1.0] * 3, temperature=1.0) == answers(tiny, [1.0] * 3, temperature=1.0)


def test_hf_penalty_changes_repeating_greedy_output_per_row(tiny):
    plain = answers(tiny, [1.0] * 3)
    assert any(len(set(ids)) < len(ids) for ids in plain)  # the random model repeats itself greedily
    strong = answers(tiny, [5.0] * 3)
    assert all(s != p for s, p in zip(strong, plain, strict=True))
    mixed = answers(tiny, [1.0, 5.0, 1.0])  # per row: rows at 1.0 are bit-identical to today
    assert mixed[0] == plain[0] and mixed[2] == plain[2] and mixed[1] == strong[1]
    sampled_plain, sampled_mixed = (answers(tiny, p, temperature=1.0) for p in ([1.0] * 3, [1.0, 5.0, 1.0]))
    assert sampled_mixed[0] == sampled_plain[0] and sampled_mixed[2] == sampled_plain[2]


def test_hf_penalised_row_alone_matches_transformers_generate(tiny):
    """A penalised row answers as in a batch (its left padding is not penalised) and as
    transformers' own `generate(repetition_penalty=...)` answers it alone."""
    import torch

    r = req(PROMPTS[1], max_tokens=20, repetition_penalty=5.0)
    alone = tiny.generate([r])[0].text
    assert alone == tiny.generate([req(PROMPTS[0], max_tokens=20), r, req(PROMPTS[2], max_tokens=20,
                                                                          repetition_penalty=2.0)])[1].text
    text, _ = tiny._prompt(r)
    inputs = tiny.processor(text=[text], return_tensors="pt")
    with torch.inference_mode():
        seqs = tiny.model.generate(**inputs, max_new_tokens=20, do_sample=False, repetition_penalty=5.0,
                                   pad_token_id=tiny.tokenizer.pad_token_id)
    reference = tiny.tokenizer.decode(seqs[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert alone == reference

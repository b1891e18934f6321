"""synthesize's three rounds called one by one (generate_qa, shorten_answers,
add_distractors) with a scripted backend behind the real request cache: what each
keeps, what it drops and under which name, what it counts."""

import hashlib
import json
import logging

import pytest

from nyx_tasks.core.config import SynthesizeConfig
from nyx_tasks.core.log import DropCounter
from nyx_tasks.inference import CachedBackend, RequestCache
from nyx_tasks.inference.base import ChatResponse, text_of
from nyx_tasks.stages import synthesize as synth
from nyx_tasks.store.artifacts import ArtifactStore
from tests import conftest

LOG = logging.getLogger("nyx.test_synthesize_steps")


class Scripted(conftest.Scripted):
    """Answers each request with the reply of the first rule whose marker is in its prompt."""

    model_id = "scripted:steps"

    def __init__(self, rules):
        super().__init__()
        self.rules = rules  # [(marker, ChatResponse)]

    def reply(self, prompt: str):
        return next(reply for marker, reply in self.rules if marker in prompt)

    def close(self):
        pass


def ok(obj) -> ChatResponse:
    return ChatResponse(text=json.dumps(obj), finish_reason="stop")


def backend(tmp_path, rules):
    inner = Scripted(rules)
    return CachedBackend(inner, RequestCache(ArtifactStore(str(tmp_path)), inner.model_id)), inner


@pytest.fixture
def settings():
    return synth.Settings.of(SynthesizeConfig(max_qa_per_chunk=2))


def report():
    return synth.Report(LOG, "chunks-000000-000003", DropCounter(LOG))


def chunk(chunk_id, text, image_ids=()):
    return {"chunk_id": chunk_id, "doc_id": f"doc-{chunk_id}", "modality": "image" if image_ids else "text",
            "text": text, "image_ids": list(image_ids)}


CHUNKS = [chunk("c1", "Alpha tower of granite."), chunk("c2", "Beta passage."),
          chunk("c3", "A red kite <image> over a blue lake <image> at noon.", ["i1", "i2"])]
PATHS = {"i1": "images/i1.png", "i2": "images/i2.png"}
QA_RULES = [
    ("Alpha tower", ok({"qa_pairs": [{"question": " What is the tower built of? ", "answer": " granite "},
                                     {"question": "How old is it?", "answer": "old"}]})),
    ("Beta passage", ChatResponse(text="{oops", finish_reason="length")),
    ("at least two images", ok({"qa_pairs": [{"question": "Which is redder, <image1> or <image2>?",
                                              "answer": "<image1>"}]})),
    ("need the image(s)", ChatResponse(text="", error="HTTP 400: too many images")),
]


def test_generate_qa_keeps_parsed_pairs_and_names_each_failed_request(tmp_path, settings, caplog):
    b, inner = backend(tmp_path, QA_RULES)
    rep = report()
    with caplog.at_level(logging.INFO, logger=LOG.name):
        cands = synth.generate_qa(b, CHUNKS, settings, PATHS, "<image>", rep)
    # one request per text chunk, two (image + multi-image) for the chunk with two images
    prompts = [text_of(r.messages[0]["content"]) for r in inner.seen]
    assert [next(m for m, _ in QA_RULES if m in p) for p in prompts] == [
        "Alpha tower", "Beta passage", "need the image(s)", "at least two images"]
    assert all(r.json_schema == synth.qa_schema(2) and r.max_tokens == settings.max_tokens for r in inner.seen)
    assert [(c["chunk"]["chunk_id"], c["prompt"], c["k"], c["question"], c["original_answer"]) for c in cands] == [
        ("c1", "qa_text", 0, "What is the tower built of?", "granite"),
        ("c1", "qa_text", 1, "How old is it?", "old"),
        ("c3", "qa_multi_image", 0, "Which is redder, <image1> or <image2>?", "<image1>"),
    ]
    assert rep.drops.as_dict() == {"request_refused_qa_image": 1, "unparseable_qa_text": 1}
    assert rep.extra == {"requests_qa": 4, "cache_hits": 0}
    assert "drop unparseable_qa_text: c2: '{oops' (length)" in caplog.text
    assert "drop request_refused_qa_image: c3: HTTP 400: too many images" in caplog.text
    assert "synthesize chunks-000000-000003: qa: 4 answered, 0 from cache" in caplog.text
    # the images travel labelled where they stood
    parts = inner.seen[2].messages[0]["content"]
    assert [p for p in parts if p["type"] == "image"] == [
        {"type": "image", "image_id": "i1", "path": "images/i1.png"},
        {"type": "image", "image_id": "i2", "path": "images/i2.png"}]
    # again: every answer is a cache hit except the refused request, which is never cached
    again = report()
    assert synth.generate_qa(b, CHUNKS, settings, PATHS, "<image>", again) == cands
    assert again.extra == {"requests_qa": 4, "cache_hits": 3}
    assert len(inner.seen) == 5


def cand(question, answer="granite blocks", k=0):
    return {"chunk": CHUNKS[0], "prompt": "qa_text", "k": k, "question": question, "original_answer": answer}


def shorten_reply(short, can=True, depends=False):
    return ok({"short_answer": short, "can_shorten": can, "depends_on_context": depends})


def test_shorten_answers_keeps_short_ones_and_names_the_rest(tmp_path, settings):
    rules = [("Question: keep", shorten_reply(" granite ")),
             ("Question: context", shorten_reply("things", depends=True)),
             ("Question: long", shorten_reply("x", can=False)),
             ("Question: blank", shorten_reply("   ")),
             ("Question: broken", ChatResponse(text='{"short_answer": 3}')),
             ("Question: refused", ChatResponse(text="", error="HTTP 400"))]
    b, inner = backend(tmp_path, rules)
    rep = report()
    cands = [cand(q) for q in ("keep it?", "context it?", "long it?", "blank it?", "broken it?", "refused it?")]
    kept = synth.shorten_answers(b, cands, settings, rep)
    assert kept == [{**cands[0], "answer": "granite"}]
    assert rep.drops.as_dict() == {"depends_on_context": 1, "not_shortenable": 2, "unparseable_shorten": 2}
    assert rep.extra == {"requests_shorten": 6, "cache_hits": 0}
    assert all(r.json_schema == synth.SHORTEN_SCHEMA and r.max_tokens == min(settings.max_tokens, 128)
               for r in inner.seen)
    assert "at most 5 words" in text_of(inner.seen[0].messages[0]["content"])


def test_add_distractors_writes_rows_and_drops_what_breaks_the_schema(tmp_path, settings):
    rules = [("Question: good", ok({"distractors": [" basalt ", "marble", "slate"]})),
             ("Question: short", ok({"distractors": ["basalt", "marble"]}))]
    b, inner = backend(tmp_path, rules)
    rep = report()
    kept = [{**cand("good one?", k=1), "answer": "granite"}, {**cand("short one?"), "answer": "granite"}]
    rows = synth.add_distractors(b, kept, settings, rep)
    qa_id = hashlib.sha256(b"c1|qa_text|1|good one?").hexdigest()[:24]
    assert rows == [{"qa_id": qa_id, "chunk_id": "c1", "doc_id": "doc-c1", "modality": "text", "prompt": "qa_text",
                     "question": "good one?", "answer": "granite", "original_answer": "granite blocks",
                     "distractors": ["basalt", "marble", "slate"], "chunk_text": "Alpha tower of granite.",
                     "chunk_image_ids": [], "model_id": "scripted:steps", "prompt_version": "v1"}]
    assert rep.drops.as_dict() == {"unparseable_distractors": 1}
    assert rep.extra == {"requests_distractors": 2, "cache_hits": 0}
    assert all(r.json_schema == synth.distractor_schema(3) and r.max_tokens == min(settings.max_tokens, 160)
               for r in inner.seen)


def test_rounds_with_nothing_to_ask_send_nothing(tmp_path, settings):
    b, inner = backend(tmp_path, [])
    rep = report()
    assert synth.shorten_answers(b, [], settings, rep) == []
    assert synth.add_distractors(b, [], settings, rep) == []
    assert inner.seen == [] and rep.drops.as_dict() == {}
    assert rep.extra == {"requests_shorten": 0, "requests_distractors": 0, "cache_hits": 0}

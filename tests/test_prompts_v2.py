"""Prompt templates v2 (the paper's prompts): what each template
says, and what synthesize's requests carry under v2 (shortening sees the source
chunk and its images; distractors the chunk, its images and the question's
images) against v1 (question and answer only, unchanged)."""

import json
import logging
import re

import pytest

from nyx_tasks.core.config import SynthesizeConfig, load_config
from nyx_tasks.core.log import DropCounter
from nyx_tasks.inference import CachedBackend, RequestCache
from nyx_tasks.inference.base import ChatResponse, text_of
from nyx_tasks.prompts import CHUNK_MARKER, PROMPTS_DIR, QUESTION_IMAGES_MARKER, fingerprint, render
from nyx_tasks.runner import run_stage, stage_config_hash
from nyx_tasks.stages import get_stage
from nyx_tasks.stages import synthesize as synth
from nyx_tasks.store.artifacts import ArtifactStore, read_stage_table
from tests import conftest

LOG = logging.getLogger("nyx.test_prompts_v2")


# ------------------------------------------------------------------ templates
def test_v2_has_every_v1_template_and_keeps_the_answer_prompts():
    v1 = {p.name for p in (PROMPTS_DIR / "v1").glob("*.jinja")}
    assert v1 == {p.name for p in (PROMPTS_DIR / "v2").glob("*.jinja")}
    for name in ("answer_mc.jinja", "answer_free.jinja"):  # evaluation prompts: unchanged
        assert (PROMPTS_DIR / "v1" / name).read_text() == (PROMPTS_DIR / "v2" / name).read_text()
    # the QA-writing templates all differ from v1, so the config hash moves with the version
    f1, f2 = fingerprint("v1", synth.PROMPTS), fingerprint("v2", synth.PROMPTS)
    assert set(f1) == set(f2) and all(f1[k] != f2[k] for k in f1)


def test_text_prompt_has_the_few_shot_and_no_images():
    t = render("v2", "qa_text", max_qa=4, n_images=0, max_words=5)
    assert "at most 4 questions" in t and t.count(CHUNK_MARKER) == 1
    # the paper's example: a question leaning on an unnamed speaker, and its self-contained rewrite
    assert "Bad question: What does the speaker think about this crime?" in t
    assert "Good question: According to Jeb Bush" in t and "Answer: An act of love" in t
    assert "<image" not in t


def test_image_prompt_allows_image_questions_and_names_images_imageN():
    t = render("v2", "qa_image", max_qa=5, n_images=3, max_words=5)
    assert "each labelled where it appears: <image1>, <image2>, <image3>." in t
    assert "You may ask about the images, but you do not have to" in t
    assert '"Based on the image, <image2>, ..."' in t and '"Considering both images, <image1> and <image3>, ..."' in t
    # few-shot: a bad and a good question about <image1>, and one about unnamed comments
    assert "Bad question: Considering both the text and <image1>" in t
    assert "Good question: In the image, <image1>," in t
    assert t.count("Bad question:") == 2 and t.count("Good question:") == 2
    # v1 demanded the images; v2 does not
    assert "need the image(s)" in render("v1", "qa_image", max_qa=5, n_images=3)
    assert "need the image" not in t and "at least two images" not in t
    one = render("v2", "qa_image", max_qa=5, n_images=1, max_words=5)
    assert "1 image, labelled where it appears: <image1>." in one and "<image2>," not in one.split("Requirements")[0]


def test_multi_image_prompt_needs_two_labelled_images_and_short_answers():
    t = render("v2", "qa_multi_image", max_qa=5, n_images=2, max_words=3)
    assert "labelled where it appears: <image1>, <image2>." in t
    assert "at least two images and names each of them by its label" in t
    assert "at most 3 words" in t
    assert "Q: Considering both images, <image2> and <image3>," in t and "A: Agriculture and farmer support" in t


def test_shorten_prompt_sees_the_document_and_keeps_the_paper_rules():
    t = render("v2", "shorten", question="Who built it?", answer="The Romans built it long ago", max_words=5,
               n_images=2)
    assert t.count(CHUNK_MARKER) == 1 and t.index(CHUNK_MARKER) < t.index("Question: Who built it?")
    assert t.count("Question: ") == 1  # the few-shot uses "Q:", so the real question is the only one
    assert "at most 5 words" in t and "key nouns or phrases" in t
    assert '"short_answer": "Love and commitment to family"' in t  # kept example
    assert '"depends_on_context": true' in t  # deleted example
    assert "Q: Based on the image, <image1>, what is Jeb Bush doing?" in t  # the image example ...
    text_only = render("v2", "shorten", question="Who?", answer="x", max_words=5, n_images=0)
    assert "<image1>" not in text_only  # ... only for documents with images
    assert CHUNK_MARKER not in render("v1", "shorten", question="Who?", answer="x", max_words=5)


def test_distractor_prompt_sees_document_and_question_images():
    t = render("v2", "distractors", question="What is in <image2>?", answer="a kite", n=3, n_images=2,
               n_question_images=1)
    assert t.index(CHUNK_MARKER) < t.index("Question: What is in <image2>?") < t.index(QUESTION_IMAGES_MARKER)
    assert t.index(QUESTION_IMAGES_MARKER) < t.index("Correct answer: a kite")
    assert "3 wrong but plausible answers" in t and "4 options" in t and '"eating a sandwich"' in t
    assert t.endswith('{"distractors": ["...", "...", "..."]}')
    bare = render("v2", "distractors", question="Who?", answer="Rome", n=2, n_images=0, n_question_images=0)
    assert QUESTION_IMAGES_MARKER not in bare and bare.endswith('{"distractors": ["...", "..."]}')


# ---------------------------------------------------------------- the requests
CHUNK = {"chunk_id": "c1", "doc_id": "d1", "modality": "image", "text": "Kites <image> over the lake <image> at dawn.",
         "image_ids": ["i1", "i2"]}
PATHS = {i: f"images/{i}.png" for i in ("i1", "i2", "j1", "j2", "j3", "j4")}


def backend(tmp_path, inner):
    return CachedBackend(inner, RequestCache(ArtifactStore(str(tmp_path)), inner.model_id))


def report():
    return synth.Report(LOG, "chunks-000000-000001", DropCounter(LOG))


def images(req):
    return [p["image_id"] for p in req.image_parts()]


def run_rounds(tmp_path, version, inner=None, chunks=(CHUNK,), **cfg):
    inner = inner or conftest.Scripted()
    s = synth.Settings.of(SynthesizeConfig(prompt_version=version, **cfg))
    b = backend(tmp_path / version, inner)
    cands = synth.generate_qa(b, list(chunks), s, PATHS, "<image>", report())
    kept = synth.shorten_answers(b, cands, s, report(), PATHS, "<image>")
    rows = synth.add_distractors(b, kept, s, report(), PATHS, "<image>")
    shorten = [r for r in inner.seen if "Shorten the answer" in text_of(r.messages[0]["content"])]
    distract = [r for r in inner.seen if "wrong but plausible" in text_of(r.messages[0]["content"])]
    return rows, shorten, distract


def test_v2_shortening_and_distractors_see_the_chunk_and_images_v1_do_not(tmp_path):
    rows2, shorten2, distract2 = run_rounds(tmp_path, "v2")
    # the scripted VLM asks "What colour is <image1>?" (image prompt) and "Compare <image1> and <image2>?"
    assert sorted(r["question"] for r in rows2) == ["Compare <image1> and <image2>?", "What colour is <image1>?"]
    assert len(shorten2) == 2 and len(distract2) == 2
    for r in shorten2:
        text = text_of(r.messages[0]["content"])
        assert "Kites " in text and " over the lake " in text and " at dawn." in text
        assert images(r) == ["i1", "i2"]
        # interleaved and labelled as in round 1
        parts = r.messages[0]["content"]
        k = next(i for i, p in enumerate(parts) if p.get("type") == "image")
        assert parts[k - 1] == {"type": "text", "text": "<image1>"} and parts[k - 2]["text"] == "Kites "
    by_q = {text_of(r.messages[0]["content"]).split("Question: ")[1].split("\n")[0]: r for r in distract2}
    one, two = by_q["What colour is <image1>?"], by_q["Compare <image1> and <image2>?"]
    for r in (one, two):
        assert "Kites " in text_of(r.messages[0]["content"]) and "Correct answer: granite" in text_of(
            r.messages[0]["content"])
    # the chunk's images, then the question's, labelled as the question cites them
    assert images(one) == ["i1", "i2", "i1"] and images(two) == ["i1", "i2", "i1", "i2"]
    parts = one.messages[0]["content"]
    q_at = next(i for i, p in enumerate(parts) if p.get("type") == "text" and "Question: " in p["text"])
    assert parts[q_at + 1:q_at + 3] == [{"type": "text", "text": "<image1>"},
                                        {"type": "image", "image_id": "i1", "path": "images/i1.png"}]
    assert all(r["prompt_version"] == "v2" for r in rows2)

    rows1, shorten1, distract1 = run_rounds(tmp_path, "v1")
    assert len(rows1) == 2 and len(shorten1) == 2 and len(distract1) == 2
    for r in shorten1 + distract1:
        content = r.messages[0]["content"]
        assert isinstance(content, str) and "Kites" not in content and images(r) == []
    # v1 requests are exactly the rendered v1 template, nothing more
    q = rows1[0]
    assert [r.messages for r in distract1 if q["question"] in text_of(r.messages[0]["content"])] == [
        [{"role": "user", "content": render("v1", "distractors", question=q["question"], answer="granite", n=3)}]]


def test_text_chunk_v2_requests_carry_the_text_and_no_images(tmp_path):
    text_chunk = {"chunk_id": "t1", "doc_id": "d2", "modality": "text", "text": "The tower is granite.",
                  "image_ids": []}
    rows, shorten, distract = run_rounds(tmp_path, "v2", chunks=[text_chunk])
    assert rows and shorten and distract
    for r in shorten + distract:
        text = text_of(r.messages[0]["content"])
        assert "Document:\nThe tower is granite." in text and images(r) == []
        assert "<image1>" not in text and "question's image" not in text


def image_prompt(prompt: str) -> bool:
    """Round 1's single-image prompt (either version)."""
    return "<image1>" in prompt and not any(
        m in prompt for m in ("Shorten the answer", "wrong but plausible", "at least two images"))


class Loose(conftest.Scripted):
    """Writes image questions with sloppy labels, or none at all."""

    model_id = "scripted:loose"

    def reply(self, prompt):
        if image_prompt(prompt):
            return ChatResponse(text=json.dumps({"qa_pairs": [
                {"question": "Based on the image, <Image 2>, what flies?", "answer": "kites"},
                {"question": "When do the kites fly over the lake?", "answer": "at dawn"}]}))
        return super().reply(prompt)


def test_v2_image_questions_are_optional_and_labels_normalised(tmp_path):
    rows, _, distract = run_rounds(tmp_path, "v2", inner=Loose())
    qs = {r["question"] for r in rows}
    assert "Based on the image, <image2>, what flies?" in qs  # "<Image 2>" -> "<image2>"
    assert "When do the kites fly over the lake?" in qs  # a text-only question is kept too
    plain = next(r for r in distract if "When do the kites" in text_of(r.messages[0]["content"]))
    assert images(plain) == ["i1", "i2"] and "question's image" not in text_of(plain.messages[0]["content"])
    cited = next(r for r in distract if "what flies" in text_of(r.messages[0]["content"]))
    assert images(cited) == ["i1", "i2", "i2"]
    # v1 leaves the model's text as it wrote it
    rows1, _, _ = run_rounds(tmp_path, "v1", inner=Loose())
    assert "Based on the image, <Image 2>, what flies?" in {r["question"] for r in rows1}


def test_v2_requests_stay_within_the_image_caps(tmp_path):
    many = {"chunk_id": "c9", "doc_id": "d9", "modality": "image", "text": " <image> ".join("abcde"),
            "image_ids": ["j1", "j2", "j3", "j4"]}

    class Cites(conftest.Scripted):
        model_id = "scripted:cites"

        def reply(self, prompt):
            if image_prompt(prompt):
                return ChatResponse(text=json.dumps({"qa_pairs": [
                    {"question": "Is <image4> brighter than <image3>?", "answer": "yes"}]}))
            return super().reply(prompt)

    inner = Cites()
    rows, shorten, distract = run_rounds(tmp_path, "v2", inner=inner, chunks=[many], max_images_per_prompt=3,
                                         generation={"limit_mm_per_prompt": 2})
    assert rows and all(len(images(r)) <= 2 for r in inner.seen)
    qa = [r for r in inner.seen if r not in shorten and r not in distract]
    assert [images(r) for r in qa] == [["j1", "j2"], ["j1", "j2"]]  # image + multi-image prompts
    assert "<image1>, <image2>." in text_of(qa[0].messages[0]["content"])  # names only what it carries
    assert all(images(r) == ["j1", "j2"] for r in shorten)
    # the question's images come first; the chunk's fill what is left (nothing here)
    d = next(r for r in distract if "<image4>" in text_of(r.messages[0]["content"]))
    assert images(d) == ["j4", "j3"]
    # v1: max_images_per_prompt alone, as before
    inner1 = Cites()
    run_rounds(tmp_path, "v1", inner=inner1, chunks=[many], max_images_per_prompt=3,
               generation={"limit_mm_per_prompt": 2})
    assert images(inner1.seen[0]) == ["j1", "j2", "j3"]


def test_cited_images_skips_labels_past_the_chunk():
    assert synth.cited_images("<image2> vs <image9> vs <image2> vs <image1>", ["a", "b"]) == [(2, "b"), (1, "a")]
    assert synth.cited_images("no images", ["a"]) == []


# ------------------------------------------------------------- config and stage
def test_prompt_version_is_part_of_the_config_hash():
    st = get_stage("synthesize")
    v1, v2 = load_config("demo"), load_config("demo", ["synthesize.prompt_version=v2"])
    assert v1.synthesize.prompt_version == "v1"
    assert stage_config_hash(st, v1) != stage_config_hash(st, v2)
    assert st.config_payload(v2)["prompts"] == fingerprint("v2", synth.PROMPTS)


def test_stage_on_v2_sends_the_chunk_and_writes_rows(make_cfg, scripted):
    cfg = make_cfg("sample.size=6", "synthesize.max_qa_per_chunk=4", "synthesize.prompt_version=v2")
    store = ArtifactStore(cfg.artifact_root())
    for s in ("ingest", "chunk", "sample", "synthesize"):
        m = run_stage(get_stage(s), cfg, store).manifest
    rows = read_stage_table(store, cfg.partition, "synthesize").to_pylist()
    assert rows and all(r["prompt_version"] == "v2" for r in rows)
    shorten = [r for r in scripted.seen if "Shorten the answer" in text_of(r.messages[0]["content"])]
    assert len(shorten) == m["extra"]["requests_shorten"] > 0
    sample = {c["chunk_id"]: c for c in read_stage_table(store, cfg.partition, "sample").to_pylist()}
    flat = lambda t: re.sub(r"\s+", " ", t)  # noqa: E731
    for row in rows:
        # the scripted VLM asks the same questions of every chunk: this row's request is
        # the distractor request for its question that carries its chunk
        pieces = flat(sample[row["chunk_id"]]["text"]).split(cfg.chunk.image_placeholder)
        words = [p.strip() for p in pieces if p.strip()]
        cited = [row["chunk_image_ids"][int(n) - 1]
                 for n in dict.fromkeys(re.findall(r"<image(\d+)>", row["question"]))]
        expected = row["chunk_image_ids"][:5 - len(cited)] + cited
        reqs = [r for r in scripted.seen if "wrong but plausible" in text_of(r.messages[0]["content"])
                and f"Question: {row['question']}\n" in text_of(r.messages[0]["content"])
                and all(w in flat(text_of(r.messages[0]["content"])) for w in words)]
        assert reqs and all(images(r) == expected for r in reqs), row["chunk_id"]  # the whole chunk, its images
        assert all(store.exists(p["path"]) for p in reqs[0].image_parts())
    assert any(r["chunk_image_ids"] for r in rows) and any(not r["chunk_image_ids"] for r in rows)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_every_template_renders_strictly(version):
    kw = dict(max_qa=3, n_images=2, max_words=5, question="Q?", answer="A", n=3, n_question_images=1,
              options=["a", "b"])
    for name in synth.PROMPTS + ("answer_mc", "answer_free"):
        assert render(version, name, **kw)

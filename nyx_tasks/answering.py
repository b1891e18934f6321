"""Answering over retrieved documents, shared by `feedback` and `evaluate`:
schema-constrained requests asking the answering VLM a question over documents
that `nyx_tasks.retrieval` ranked, and the answer read back from the response.

A multiple-choice answer is constrained by the JSON schema to the option
texts, so format noise never counts as wrong; a free-form answer is a short
string judged by token F1.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import GenerationConfig
from .inference import ChatRequest
from .inference.structured import parse
from .prompts import render
from .retrieval import Corpus

ANSWER_PROMPTS = ("answer_mc", "answer_free")
DOCS_MARKER, QUESTION_MARKER = "[[DOCS]]", "[[QUESTION]]"


def _interleave(text: str, image_ids: list[str], paths: dict[str, str], placeholder: str, budget: list[int]):
    """Text with its images where the placeholders stood, while the image budget lasts."""
    parts: list[dict] = []
    for i, piece in enumerate(text.split(placeholder)):
        if i:
            iid = image_ids[i - 1] if i - 1 < len(image_ids) else None
            if iid is not None and budget[0] > 0 and iid in paths:
                parts.append({"type": "image", "image_id": iid, "path": paths[iid]})
                budget[0] -= 1
            else:
                parts.append({"type": "text", "text": "[image omitted]"})
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


def answer_schema(options: list[str] | None) -> dict:
    answer = {"enum": list(dict.fromkeys(options))} if options else {"type": "string", "minLength": 1,
                                                                      "maxLength": 100}
    return {"type": "object", "additionalProperties": False, "required": ["answer"], "properties": {"answer": answer}}


@dataclass(frozen=True)
class Answering:
    """How the answering VLM is asked, the same for every question of a stage: its generation
    settings, the prompt version, the corpus the documents come from, the image placeholder in
    their texts, and the images one request may carry."""

    gen: GenerationConfig
    prompt_version: str
    corpus: Corpus
    placeholder: str
    max_images: int

    def request(self, question: str, question_images: list[str], docs: list[int],
                options: list[str] | None = None, max_words: int = 5) -> ChatRequest:
        """Ask `question` (multiple choice when `options`) over the corpus documents `docs` (indices,
        in rank order); query images take the image budget first."""
        corpus, budget = self.corpus, [self.max_images]
        q_parts = _interleave(question, question_images, corpus.paths, self.placeholder, budget)
        d_parts: list[dict] = []
        for n, d in enumerate(docs, start=1):
            d_parts.append({"type": "text", "text": f"Document {n}:\n"})
            d_parts += _interleave(corpus.texts[d], corpus.image_ids[d], corpus.paths, self.placeholder, budget)
            d_parts.append({"type": "text", "text": "\n\n"})
        text = render(self.prompt_version, "answer_mc" if options else "answer_free", options=options or [],
                      max_words=max_words)
        before, _, rest = text.partition(DOCS_MARKER)
        middle, _, after = rest.partition(QUESTION_MARKER)
        content = [{"type": "text", "text": before}, *d_parts, {"type": "text", "text": middle}, *q_parts,
                   {"type": "text", "text": after}]
        content = [p for p in content if p["type"] == "image" or p["text"]]
        gen = self.gen
        return ChatRequest(messages=[{"role": "user", "content": content}], json_schema=answer_schema(options),
                           max_tokens=gen.max_tokens, temperature=gen.temperature, top_p=gen.top_p, seed=gen.seed)


def parsed_answer(response, options: list[str] | None) -> str | None:
    """The answer string, or None when the response does not fit the schema (a counted drop)."""
    obj = None if response.error else parse(response.text, answer_schema(options))
    return None if obj is None else str(obj["answer"]).strip()

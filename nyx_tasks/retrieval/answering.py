"""Answering over retrieved documents, shared by `feedback` and `evaluate`:
schema-constrained requests asking the answering VLM a question over documents
that `nyx_tasks.retrieval.corpora` ranked, and the answer read back from the response.

A multiple-choice answer is constrained by the JSON schema to the option
texts, so format noise never counts as wrong; a free-form answer is a short
string judged by token F1.

`evaluate.protocol: paper` asks as the released code does (experiments/nyxqa/
generator.py, experiments/text-only/generator.py): the instruction as the
system message, each document's text followed by a blank line, then
"Question: ..." (and "Choices: a, b, c, d" for NyxQA), no schema: the answer
is the VLM's text, stripped (`free_answer`).
"""

from __future__ import annotations

from dataclasses import dataclass

from nyx_tasks.core.config import GenerationConfig
from nyx_tasks.inference import ChatRequest
from nyx_tasks.inference.structured import parse
from nyx_tasks.prompts import render
from nyx_tasks.retrieval.corpora import Corpus

ANSWER_PROMPTS = ("answer_mc", "answer_free")
PAPER_ANSWER_PROMPTS = ("answer_paper_mc", "answer_paper_free")  # evaluate.protocol: paper
DOCS_MARKER, QUESTION_MARKER, USER_MARKER = "[[DOCS]]", "[[QUESTION]]", "[[USER]]"


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
                options: list[str] | None = None, max_words: int = 5, protocol: str = "strict") -> ChatRequest:
        """Ask `question` (multiple choice when `options`) over the corpus documents `docs` (indices,
        in rank order); query images take the image budget first. `protocol="paper"`: the released
        code's free-form prompt (`answer_paper_mc` with the options as choices, else
        `answer_paper_free`): everything before `[[USER]]` is the system message, the documents are
        their texts each followed by a blank line, and no JSON schema constrains the answer."""
        corpus, budget = self.corpus, [self.max_images]
        paper = protocol == "paper"
        q_parts = _interleave(question, question_images, corpus.paths, self.placeholder, budget)
        d_parts: list[dict] = []
        for n, d in enumerate(docs, start=1):
            if not paper:
                d_parts.append({"type": "text", "text": f"Document {n}:\n"})
            d_parts += _interleave(corpus.texts[d], corpus.image_ids[d], corpus.paths, self.placeholder, budget)
            d_parts.append({"type": "text", "text": "\n\n"})
        name = ("answer_paper_mc" if options else "answer_paper_free") if paper else \
            ("answer_mc" if options else "answer_free")
        text = render(self.prompt_version, name, options=options or [], max_words=max_words)
        system, user = (part.strip("\n") for part in text.partition(USER_MARKER)[::2]) if paper else ("", text)
        before, _, rest = user.partition(DOCS_MARKER)
        middle, _, after = rest.partition(QUESTION_MARKER)
        content = [{"type": "text", "text": before}, *d_parts, {"type": "text", "text": middle}, *q_parts,
                   {"type": "text", "text": after}]
        content = [p for p in content if p["type"] == "image" or p["text"]]
        messages = [{"role": "user", "content": content}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        gen = self.gen
        return ChatRequest(messages=messages, json_schema=None if paper else answer_schema(options),
                           max_tokens=gen.max_tokens, temperature=gen.temperature, top_p=gen.top_p, seed=gen.seed,
                           repetition_penalty=gen.repetition_penalty)


def parsed_answer(response, options: list[str] | None) -> str | None:
    """The answer string, or None when the response does not fit the schema (a counted drop)."""
    obj = None if response.error else parse(response.text, answer_schema(options))
    return None if obj is None else str(obj["answer"]).strip()


def free_answer(response) -> str | None:
    """A free-form answer (paper protocol): the response text, stripped; None when the request failed."""
    return None if response.error else response.text.strip()

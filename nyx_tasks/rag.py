"""Retrieve-then-answer, shared by `feedback` (paper: stage 2, VLM feedback)
and `evaluate` (RAG accuracy): a corpus, a retriever checkpoint that embeds it
(through the embedding cache), exact search, and schema-constrained requests
asking the answering VLM a question over retrieved documents.

A multiple-choice answer is constrained by the JSON schema to the option
texts, so format noise never counts as wrong; a free-form answer is a short
string judged by token F1.
"""

from __future__ import annotations

from dataclasses import dataclass

from .artifacts import ArtifactStore, image_paths, iter_stage_batches
from .inference import ChatRequest
from .prompts import render

ANSWER_PROMPTS = ("answer_mc", "answer_free")
DOCS_MARKER, QUESTION_MARKER = "[[DOCS]]", "[[QUESTION]]"


@dataclass
class Corpus:
    """Documents one search runs over: NyxQA chunks (with images) or a text set's passages."""

    name: str
    ids: list[str]
    texts: list[str]
    image_ids: list[list[str]]
    paths: dict[str, str]  # image_id -> path relative to the artifact root

    def items(self):
        from .embedding import MixedItem

        return [MixedItem(t, tuple((i, self.paths[i]) for i in ims))
                for t, ims in zip(self.texts, self.image_ids, strict=True)]


def nyxqa_corpus(store: ArtifactStore, partition: str) -> Corpus:
    rows = [r for b in iter_stage_batches(store, partition, "chunk", columns=["chunk_id", "text", "image_ids"])
            for r in b.to_pylist()]
    return Corpus("nyxqa", [r["chunk_id"] for r in rows], [r["text"] for r in rows],
                  [r["image_ids"] for r in rows], image_paths(store, partition))


def text_corpus(ts, drop=lambda *a: None) -> Corpus:
    from .text_sets import read_corpus

    docs = read_corpus(ts, drop)
    return Corpus(ts.name, [d.doc_id for d in docs], [d.text for d in docs], [[] for _ in docs], {})


def stage_checkpoint(store: ArtifactStore, partition: str, stage: str) -> dict:
    """The checkpoint a training stage of this partition published (its manifest's record)."""
    m = store.read_json(f"{ArtifactStore.stage_rel(partition, stage)}/_MANIFEST.json")
    if not m or not m.get("checkpoint"):
        from .runner import StageError

        raise StageError(f"no `{stage}` checkpoint for partition {partition!r} under {store.root}; "
                         f"run `nyx {stage} --partition {partition}` first.")
    return m["checkpoint"]


def checkpoint_embedder(emb_cfg, checkpoint: dict, store: ArtifactStore):
    """The `nyx` embedder loading a published checkpoint's merged export."""
    from .embedding import make_embedder

    return make_embedder(emb_cfg.model_copy(update={"kind": "nyx", "model": checkpoint["merged"], "adapter": None,
                                                    "dim": None}), store)


def embed(embedder, corpus: Corpus, queries, store: ArtifactStore):
    """(document vectors, query vectors, newly embedded count), full width, L2-normalised."""
    from .embedding.cache import embed_cached

    d_vecs, n_docs = embed_cached(embedder, corpus.items(), "document", store)
    q_vecs, n_q = embed_cached(embedder, queries, "query", store)
    return d_vecs, q_vecs, n_docs + n_q


def search(q_vecs, d_vecs, k: int, search_cfg, dim: int | None = None):
    """Top-k (scores, doc indices) at a Matryoshka dim (truncate, renormalise), best first."""
    from .embedding.base import matryoshka
    from .search import exact_topk

    return exact_topk(matryoshka(q_vecs, dim), matryoshka(d_vecs, dim), k, search_cfg)


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


def answer_request(gen, prompt_version: str, question: str, question_images: list[str], docs: list[int],
                   corpus: Corpus, placeholder: str, max_images: int, options: list[str] | None = None,
                   max_words: int = 5) -> ChatRequest:
    """Ask the VLM `question` (multiple choice when `options`) over `corpus` documents `docs`
    (indices, in rank order); query images take the image budget first."""
    budget = [max_images]
    q_parts = _interleave(question, question_images, corpus.paths, placeholder, budget)
    d_parts: list[dict] = []
    for n, d in enumerate(docs, start=1):
        d_parts.append({"type": "text", "text": f"Document {n}:\n"})
        d_parts += _interleave(corpus.texts[d], corpus.image_ids[d], corpus.paths, placeholder, budget)
        d_parts.append({"type": "text", "text": "\n\n"})
    text = render(prompt_version, "answer_mc" if options else "answer_free", options=options or [],
                  max_words=max_words)
    before, _, rest = text.partition(DOCS_MARKER)
    middle, _, after = rest.partition(QUESTION_MARKER)
    content = [{"type": "text", "text": before}, *d_parts, {"type": "text", "text": middle}, *q_parts,
               {"type": "text", "text": after}]
    content = [p for p in content if p["type"] == "image" or p["text"]]
    return ChatRequest(messages=[{"role": "user", "content": content}], json_schema=answer_schema(options),
                       max_tokens=gen.max_tokens, temperature=gen.temperature, top_p=gen.top_p, seed=gen.seed)


def parsed_answer(response, options: list[str] | None) -> str | None:
    """The answer string, or None when the response does not fit the schema (a counted drop)."""
    from .stages.synthesize import parse

    obj = None if response.error else parse(response.text, answer_schema(options))
    return None if obj is None else str(obj["answer"]).strip()

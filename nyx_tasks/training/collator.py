"""Batches of training examples -> model inputs (tevatron's "collator" role: raw examples in,
tensors out).

VLM backbones: queries and documents go through the inference embedder's own prompt
(`nyx_tasks.embedding.nyx.nyx_prompt`: the chat template, interleaved text and images, each
query's source instruction, the end-of-text token last), so training and embedding see identical
inputs. Text encoders: the tokenizer on `query_prefix + text` / `document_prefix + text`, cut at
`max_length` tokens, as sentence-transformers encodes them.

Documents are every query's positive (B rows, in example order), then every real negative, in
example and rank order. `negative_mask` (B, K) marks which of the K = `negatives.per_query`
slots of each example are real: an example with fewer negatives has padded slots that the loss
ignores, and never takes negatives from the others.
"""

from __future__ import annotations

from nyx_tasks.core.config import TrainConfig
from nyx_tasks.embedding.nyx import nyx_prompt
from nyx_tasks.inference.base import load_image


def negative_slots(counts: list[int], k: int):
    """(B, K) bool: example i's first min(counts[i], K) slots are real."""
    import torch

    n = torch.tensor(counts, dtype=torch.long).clamp(max=k)
    return torch.arange(k)[None, :] < n[:, None]


def split_docs(docs, mask):
    """The collated documents' embeddings (B + real negatives, D) -> positives (B, D) and negatives
    (B, K, D), padded slots zero (the loss masks them); None when K = 0."""
    b, k = mask.shape
    if not k:
        return docs[:b], None
    negatives = docs.new_zeros(b, k, docs.shape[1])
    negatives[mask] = docs[b:]
    return docs[:b], negatives


class TripletCollator:
    def __init__(self, processor, cfg: TrainConfig, store):
        self.processor, self.cfg, self.store = processor, cfg, store

    def _encode(self, docs, role: str, instructions=None) -> dict:
        if self.cfg.family == "encoder":
            prefix = self.cfg.query_prefix if role == "query" else self.cfg.document_prefix
            return dict(self.processor([prefix + d.text for d in docs], padding=True, truncation=True,
                                       max_length=self.cfg.max_length, return_tensors="pt"))
        instructions = instructions or [""] * len(docs)
        texts = [nyx_prompt(self.processor, d.text, role, instr, self.cfg.image_placeholder, self.cfg.prompt_format)
                 for d, instr in zip(docs, instructions, strict=True)]
        images = [load_image(self.store, {"path": p}) for d in docs for p in d.images]
        kw = {"images": images} if images else {}
        return dict(self.processor(text=texts, padding=True, return_tensors="pt", **kw))

    def __call__(self, examples) -> dict:
        k = self.cfg.negatives.per_query
        negatives = [d for ex in examples for d in ex.negatives[:k]]
        return {
            "query": self._encode([ex.query for ex in examples], "query", [ex.instruction for ex in examples]),
            "docs": self._encode([ex.positive for ex in examples] + negatives, "document"),
            "negative_mask": negative_slots([len(ex.negatives) for ex in examples], k),
        }

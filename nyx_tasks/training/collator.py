"""Batches of training examples -> processor inputs (tevatron's "collator"
role: raw examples in, tensors out).

Queries and documents go through the inference embedder's own prompt
(`nyx_tasks.embedding.nyx.nyx_prompt`: the chat template, interleaved text and
images, each query's source instruction, the end-of-text token last), so training
and embedding see identical inputs. Documents are each query's positive then
its K negatives, flattened to (B * (1 + K)) rows; K is the smallest negative
count in the batch (rows with more are cut, in rank order).
"""

from __future__ import annotations

from ..config import TrainConfig
from ..embedding.nyx import nyx_prompt
from ..inference.base import load_image


class TripletCollator:
    def __init__(self, processor, cfg: TrainConfig, store):
        self.processor, self.cfg, self.store = processor, cfg, store

    def _encode(self, docs, role: str, instructions=None) -> dict:
        instructions = instructions or [""] * len(docs)
        texts = [nyx_prompt(self.processor, d.text, role, instr, self.cfg.image_placeholder, self.cfg.prompt_format)
                 for d, instr in zip(docs, instructions, strict=True)]
        images = [load_image(self.store, {"path": p}) for d in docs for p in d.images]
        kw = {"images": images} if images else {}
        return dict(self.processor(text=texts, padding=True, return_tensors="pt", **kw))

    def __call__(self, examples) -> dict:
        k = min(len(ex.negatives) for ex in examples)
        docs = [d for ex in examples for d in (ex.positive, *ex.negatives[:k])]
        return {
            "query": self._encode([ex.query for ex in examples], "query", [ex.instruction for ex in examples]),
            "docs": self._encode(docs, "document"),  # B * (1 + k) rows: positive, then negatives
            "num_negatives": k,
        }

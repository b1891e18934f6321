"""Batches of training examples -> processor inputs (tevatron's "collator"
role: raw examples in, tensors out).

Queries and documents go through the inference embedder's own prompt
(`nyx_tasks.embedding.nyx.nyx_prompt`: the chat template, interleaved text and
images, the instruction for queries, the end-of-text token last), so training
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

    def _encode(self, docs, role: str) -> dict:
        texts = [nyx_prompt(self.processor, d.text, role, self.cfg.query_instruction, self.cfg.image_placeholder)
                 for d in docs]
        images = [load_image(self.store, {"path": p}) for d in docs for p in d.images]
        kw = {"images": images} if images else {}
        return dict(self.processor(text=texts, padding=True, return_tensors="pt", **kw))

    def __call__(self, examples) -> dict:
        k = min(len(ex.negatives) for ex in examples)
        docs = [d for ex in examples for d in (ex.positive, *ex.negatives[:k])]
        return {
            "query": self._encode([ex.query for ex in examples], "query"),  # B rows
            "docs": self._encode(docs, "document"),  # B * (1 + k) rows: positive, then negatives
            "num_negatives": k,
        }

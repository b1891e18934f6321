"""A retriever served behind an OpenAI-compatible embeddings API (`kind: openai`): `vllm serve DIR
--runner pooling` on a folder `nyx export model` wrote, or any server speaking `/v1/embeddings`.
The recipe is applied here as in process (the role's prefix before the text), the vectors come back
L2-normalised and cut to `dim` (Matryoshka). Text only: an item with images is refused by name."""

from __future__ import annotations

import os

import httpx
import numpy as np

from nyx_tasks.core.base import StageError
from nyx_tasks.core.log import Progress, get_logger
from nyx_tasks.embedding.base import MixedItem, l2_normalise, matryoshka


class ServedEmbedder:
    kind = "openai"

    def __init__(self, cfg):
        import openai

        if not cfg.base_url:
            raise StageError("embedder kind openai needs base_url: the server's /v1 URL")
        self.cfg = cfg
        self.client = openai.OpenAI(base_url=cfg.base_url, api_key=os.environ.get(cfg.api_key_env) or "none",
                                    http_client=httpx.Client(trust_env=False, timeout=600), max_retries=2)
        self.model_id = (f"openai:{cfg.base_url}:{cfg.model}:q={cfg.query_prefix!r}:d={cfg.document_prefix!r}"
                         + (f":dim={cfg.dim}" if cfg.dim else ""))
        self.dim = self.embed([MixedItem("dimension probe")], "document").shape[1]

    def embed(self, items: list[MixedItem], role: str) -> np.ndarray:
        if any(it.images for it in items):
            raise StageError(f"embedder {self.model_id}: the served embedder takes text only; an item has images")
        prefix = self.cfg.query_prefix if role == "query" else self.cfg.document_prefix
        texts = [prefix + it.text for it in items]
        progress = Progress(get_logger("embed"), f"served embed {role}", total=len(texts), unit="items")
        parts = []
        for i in range(0, len(texts), self.cfg.batch_size):
            resp = self.client.embeddings.create(model=self.cfg.model, input=texts[i:i + self.cfg.batch_size])
            parts.append(np.asarray([d.embedding for d in sorted(resp.data, key=lambda d: d.index)], np.float32))
            progress.update(len(parts[-1]))
        if texts:
            progress.close()
        vecs = l2_normalise(np.concatenate(parts)) if parts else np.zeros((0, getattr(self, "dim", 0)), np.float32)
        return matryoshka(vecs, self.cfg.dim)

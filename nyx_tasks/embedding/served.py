"""A retriever served behind an OpenAI-compatible embeddings API (`kind: openai`): `vllm serve DIR
$(vllm_serve_flags DIR)` on a folder `nyx export model` wrote, or any server speaking `/v1/embeddings`.
The recipe is applied here as in process and the vectors come back L2-normalised and cut to `dim`
(Matryoshka). `request: text` (an encoder): the role's prefix before each text in `input`.
`request: chat` (a VLM): each item as one chat conversation - a query's instruction as the system
message, the text split at its placeholders with each image between as a PNG data URL - which the
server renders with the folder's serving template (the recipe's prompt and end-of-text token)."""

from __future__ import annotations

import base64
import io
import os

import httpx
import numpy as np

from nyx_tasks.core.base import StageError
from nyx_tasks.core.log import Progress, get_logger
from nyx_tasks.embedding.base import MixedItem, l2_normalise, matryoshka
from nyx_tasks.inference.base import load_image


def image_url(store, path: str) -> str:
    """An image as the in-process embedder sees it (decoded, converted to RGB), sent losslessly as PNG:
    the server decodes the same pixels (an RGBA image's alpha is dropped here, not blended by the server)."""
    buf = io.BytesIO()
    load_image(store, {"path": path}).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def conversation(item: MixedItem, role: str, cfg, store=None) -> list[dict]:
    """One item as the chat conversation a served VLM embeds (`request: chat`): a query's instruction as
    the system message; the text split at its placeholders, each image between as a data URL."""
    pieces = item.text.split(cfg.image_placeholder)
    if len(pieces) - 1 != len(item.images):
        raise StageError(f"served embedder {cfg.model}: an item has {len(item.images)} image(s) and "
                         f"{len(pieces) - 1} placeholder(s) {cfg.image_placeholder!r}")
    content: list[dict] = []
    for i, part in enumerate(pieces):
        if i:
            content.append({"type": "image_url", "image_url": {"url": image_url(store, item.images[i - 1][1])}})
        if part:
            content.append({"type": "text", "text": part})
    messages = [{"role": "user", "content": content}]
    if role == "query" and cfg.query_instruction:
        messages.insert(0, {"role": "system", "content": cfg.query_instruction})
    return messages


class ServedEmbedder:
    kind = "openai"

    def __init__(self, cfg, store=None):
        import openai

        if not cfg.base_url:
            raise StageError("embedder kind openai needs base_url: the server's /v1 URL")
        self.cfg, self.store = cfg, store
        self.takes_images = cfg.request == "chat"
        self.client = openai.OpenAI(base_url=cfg.base_url, api_key=os.environ.get(cfg.api_key_env) or "none",
                                    http_client=httpx.Client(trust_env=False, timeout=600), max_retries=2)
        self.model_id = (f"openai:{cfg.base_url}:{cfg.model}:q={cfg.query_prefix!r}:d={cfg.document_prefix!r}"
                         + (f":dim={cfg.dim}" if cfg.dim else "")
                         + (f":chat:instr={cfg.query_instruction!r}" if self.takes_images else ""))
        self.dim = self.embed([MixedItem("dimension probe")], "document").shape[1]

    def _batch(self, items: list[MixedItem], role: str) -> np.ndarray:
        if not self.takes_images:
            if any(it.images for it in items):
                raise StageError(f"embedder {self.model_id}: the served embedder takes text only (request: text); "
                                 "an item has images")
            prefix = self.cfg.query_prefix if role == "query" else self.cfg.document_prefix
            resp = self.client.embeddings.create(model=self.cfg.model, input=[prefix + it.text for it in items])
            data = [(d.index, d.embedding) for d in resp.data]
        else:  # vLLM's batched chat form (the client's `embeddings.create` takes text only; its retries hold here)
            resp = self.client.post("/embeddings", cast_to=httpx.Response, body={
                "model": self.cfg.model, "messages": [conversation(it, role, self.cfg, self.store) for it in items],
                "add_generation_prompt": True})
            data = [(d["index"], d["embedding"]) for d in resp.json()["data"]]
        return np.asarray([vec for _, vec in sorted(data)], np.float32)

    def embed(self, items: list[MixedItem], role: str) -> np.ndarray:
        progress = Progress(get_logger("embed"), f"served embed {role}", total=len(items), unit="items")
        parts = []
        for i in range(0, len(items), self.cfg.batch_size):
            parts.append(self._batch(items[i:i + self.cfg.batch_size], role))
            progress.update(len(parts[-1]))
        if items:
            progress.close()
        vecs = l2_normalise(np.concatenate(parts)) if parts else np.zeros((0, getattr(self, "dim", 0)), np.float32)
        return matryoshka(vecs, self.cfg.dim)

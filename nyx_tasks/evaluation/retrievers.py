"""The retrievers `evaluate` compares (`evaluate.retrievers`), one small type per kind: a trained
checkpoint, any embedder, no document, the gold document. Each carries its name (the results'
`model` column) and the dims it is scored at; the retrieving ones carry their embedder, the others
say which documents the reader is given instead.

    retriever = make_retriever(cfg, r, store, partition, notes, log)   # None: it has none of the dims
    if retriever.embedder is None:
        docs = retriever.given(gold_docs)          # [] for `none`, the gold for `golden`
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from nyx_tasks.embedding import make_embedder
from nyx_tasks.retrieval.corpora import checkpoint_embedder
from nyx_tasks.store.checkpoints import stage_checkpoint

DIM_FREE_NOTE = ("retrievers none (no document: the VLM answers from the question alone) and golden (the gold "
                 "passage as the top-1) do not depend on the dim: their rows repeat one value at every dim; golden's "
                 "recall is 1 by construction")


@dataclass(frozen=True)
class Retriever:
    """A retriever under evaluation: `name` (the results' `model`), the dims it is scored at and,
    for a retrieving kind, its embedder."""

    name: str
    dims: tuple[int, ...]
    embedder: Any = None
    kind: ClassVar[str]
    needs_gold: ClassVar[bool] = False  # skipped on a text set that names no gold passage


@dataclass(frozen=True)
class CheckpointRetriever(Retriever):
    """A model this pipeline trained (`stage: stage1 | stage2`): its merged export, embedded as the
    Nyx embedder (`evaluate.embedder`) or, for an encoder, as sentence-transformers."""

    kind: ClassVar[str] = "checkpoint"


@dataclass(frozen=True)
class EmbedderRetriever(Retriever):
    """Any embedder config (mmE5, E5, the packaged MiniLM, a base model); dims above its width are
    skipped with a note."""

    kind: ClassVar[str] = "embedder"


@dataclass(frozen=True)
class NoDocument(Retriever):
    """The reader answers from the question alone: no retrieval rows, answer rows at every dim."""

    kind: ClassVar[str] = "none"

    def given(self, gold: list) -> list:
        return []


@dataclass(frozen=True)
class GoldDocument(Retriever):
    """The gold document as the top-1: recall 1 by construction (computed as any retriever's), the
    reader's answer over the gold; skipped on a text set that names no gold passage."""

    kind: ClassVar[str] = "golden"
    needs_gold: ClassVar[bool] = True

    def given(self, gold: list) -> list:
        return gold


def retriever_embedder_cfg(cfg, r):
    """The EmbedderConfig of an `embedder` retriever, a name (`mine.embedder`, ...) resolved."""
    if isinstance(r.embedder, str):
        section, field = r.embedder.split(".")
        return getattr(getattr(cfg, section), field)
    return r.embedder


def make_retriever(cfg, r, store, partition: str, notes: list[str], log) -> Retriever | None:
    """The retriever that `r` (a `RetrieverConfig`) names, its embedder loaded and its dims those of
    `evaluate.dims` it has; dims above its width are skipped with a note in `notes`. None when it has
    none of the dims."""
    ev = cfg.evaluate
    if r.kind in ("none", "golden"):
        log.info("evaluate %s: %s (no retrieval), dims %s", r.name, r.kind, ev.dims)
        return (NoDocument if r.kind == "none" else GoldDocument)(r.name, tuple(ev.dims))
    if r.kind == "checkpoint":
        ckpt = stage_checkpoint(store, partition, f"train_{r.stage}")
        embedder, cls = checkpoint_embedder(ev.embedder, ckpt, store), CheckpointRetriever
        what = f"checkpoint {ckpt['merged']} (run {ckpt['run']})"
    else:
        emb_cfg = retriever_embedder_cfg(cfg, r)
        embedder, cls = make_embedder(emb_cfg, store), EmbedderRetriever
        what = f"embedder {emb_cfg.kind}:{emb_cfg.model}"
    dims = tuple(d for d in ev.dims if d <= embedder.dim)
    if skipped := [d for d in ev.dims if d > embedder.dim]:
        notes.append(f"{r.name}: dims {skipped} skipped, above its {embedder.dim} dims")
    log.info("evaluate %s: %s, dims %s (skipped: %s)", r.name, what, list(dims), skipped)
    return cls(r.name, dims, embedder) if dims else None

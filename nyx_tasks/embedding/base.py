"""The embedder interface: items are mixed-modal text (a string with one image
placeholder per image) plus the ordered image refs; outputs are L2-normalised
float32 rows. Each item's cache key is the hash of its role, text and image
content hashes, so identical content is embedded once per model."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class MixedItem:
    """One query or document: `text` (one image placeholder per image where the images stand, or
    none: the embedder puts them first) and its images in order, as (image_id, path). In the
    pipeline a path is relative to the artifact root; for an embedder `load` made without a root,
    a local path or fsspec URL (`MixedItem.of_files`)."""

    text: str
    images: tuple[tuple[str, str], ...] = field(default=())  # (image_id: sha256 of the bytes, path)

    @classmethod
    def of_files(cls, text: str, paths: Sequence[str] = ()) -> MixedItem:
        """An item whose images are files (local paths or fsspec URLs), read once here for their
        content hashes: the same bytes have the same id as in the pipeline's image store."""
        import fsspec

        images = []
        for path in paths:
            with fsspec.open(str(path), "rb") as f:
                images.append((hashlib.sha256(f.read()).hexdigest(), str(path)))
        return cls(text, tuple(images))

    def key(self, role: str) -> str:
        blob = "\x1f".join([role, self.text, *(i for i, _ in self.images)])
        return hashlib.sha256(blob.encode()).hexdigest()


class Embedder(Protocol):
    model_id: str  # model + everything that changes its vectors (pooling, instruction, pixel cap)
    dim: int
    takes_images: bool  # whether items may carry images

    def embed(self, items: list[MixedItem], role: str) -> np.ndarray:
        """(len(items), dim) float32, L2-normalised. role: "query" or "document"."""
        ...


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def matryoshka(x: np.ndarray, dim: int | None) -> np.ndarray:
    """Truncate to the first `dim` features, then renormalise (MRL)."""
    if dim is None or dim >= x.shape[1]:
        return x
    return l2_normalise(x[:, :dim])

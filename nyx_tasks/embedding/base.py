"""The embedder interface: items are mixed-modal text (a string with one image
placeholder per image) plus the ordered image refs; outputs are L2-normalised
float32 rows. Each item's cache key is the hash of its role, text and image
content hashes, so identical content is embedded once per model."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class MixedItem:
    text: str
    images: tuple[tuple[str, str], ...] = field(default=())  # (image_id, path relative to the artifact root)

    def key(self, role: str) -> str:
        blob = "\x1f".join([role, self.text, *(i for i, _ in self.images)])
        return hashlib.sha256(blob.encode()).hexdigest()


class Embedder(Protocol):
    model_id: str  # model + everything that changes its vectors (pooling, instruction, pixel cap)
    dim: int

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

"""The Nyx embedder (paper: Nyx model): a Qwen2.5-VL backbone; the embedding is
the last layer's hidden state at the last non-padding token (right padding,
an end-of-text token appended), L2-normalised; queries carry the retrieval
instruction; images are capped at `max_pixels`; Matryoshka truncation to any
configured dimension. Loads a merged checkpoint, or a base model plus a LoRA
adapter. The shared machinery lives in `vlm.VLMEmbedder`."""

from __future__ import annotations

from .base import MixedItem
from .vlm import VLMEmbedder, last_token_pool

__all__ = ["VISION", "NyxEmbedder", "last_token_pool"]

VISION = "<|vision_start|><|image_pad|><|vision_end|>"


class NyxEmbedder(VLMEmbedder):
    kind = "nyx"

    def _setup(self) -> None:
        ip = self.processor.image_processor  # the pixel cap (paper: 400 x 28 x 28 per image)
        ip.size = {"shortest_edge": min(ip.size.get("shortest_edge", 56 * 56), self.cfg.max_pixels),
                   "longest_edge": self.cfg.max_pixels}
        self.eos = self.processor.tokenizer.pad_token or "<|endoftext|>"

    def _text(self, item: MixedItem, role: str) -> str:
        body = item.text.replace(self.cfg.image_placeholder, VISION)
        prefix = f"{self.cfg.query_instruction}\n" if role == "query" and self.cfg.query_instruction else ""
        return f"{prefix}{body}{self.eos}"

"""The Nyx embedder (paper: Nyx model): a Qwen2.5-VL backbone; the embedding is
the last layer's hidden state at the last non-padding token (right padding,
an end-of-text token appended), L2-normalised; queries carry the retrieval
instruction; images are capped at `max_pixels`; Matryoshka truncation to any
configured dimension. Loads a merged checkpoint, or a base model plus a LoRA
adapter."""

from __future__ import annotations

import time

import numpy as np

from ..inference.base import load_image
from ..log import get_logger
from .base import MixedItem, l2_normalise, matryoshka

VISION = "<|vision_start|><|image_pad|><|vision_end|>"


def last_token_pool(hidden, attention_mask):
    """hidden (B, T, D), attention_mask (B, T), right padding -> (B, D) at each row's last real token."""
    import torch

    last = attention_mask.sum(dim=1) - 1  # (B,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class NyxEmbedder:
    def __init__(self, cfg, store, path: str):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from ..inference.hf_backend import model_fingerprint

        self.cfg, self.store = cfg, store
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
        if cfg.adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, cfg.adapter).merge_and_unload()
        self.model = model.to(self.device).eval()
        self.processor = AutoProcessor.from_pretrained(path)
        ip = self.processor.image_processor  # the pixel cap (paper: 400 x 28 x 28 per image)
        ip.size = {"shortest_edge": min(ip.size.get("shortest_edge", 56 * 56), cfg.max_pixels),
                   "longest_edge": cfg.max_pixels}
        self.processor.tokenizer.padding_side = "right"
        self.eos = self.processor.tokenizer.pad_token or "<|endoftext|>"
        self.dim = int(self.model.config.get_text_config().hidden_size)
        self.model_id = (f"nyx:{model_fingerprint(path)}:adapter={cfg.adapter}:px={cfg.max_pixels}"
                         f":instr={cfg.query_instruction!r}")

    def _text(self, item: MixedItem, role: str) -> str:
        body = item.text.replace(self.cfg.image_placeholder, VISION)
        prefix = f"{self.cfg.query_instruction}\n" if role == "query" and self.cfg.query_instruction else ""
        return f"{prefix}{body}{self.eos}"

    def embed(self, items: list[MixedItem], role: str) -> np.ndarray:
        import torch

        log = get_logger("embed")
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        # length-sorted batches waste less padding
        order = sorted(range(len(items)), key=lambda i: (len(items[i].images), len(items[i].text)))
        t0 = time.monotonic()
        for b in range(0, len(order), self.cfg.batch_size):
            idx = order[b:b + self.cfg.batch_size]
            texts = [self._text(items[i], role) for i in idx]
            images = [load_image(self.store, {"path": p}) for i in idx for _, p in items[i].images]
            kw = {"images": images} if images else {}
            inputs = self.processor(text=texts, padding=True, return_tensors="pt", **kw).to(self.device)
            with torch.inference_mode():
                hidden = self.model.model(**inputs).last_hidden_state  # (B, T, D)
                pooled = last_token_pool(hidden, inputs["attention_mask"]).float().cpu().numpy()
            out[idx] = pooled
            if (b // self.cfg.batch_size) % 20 == 0:
                done = b + len(idx)
                log.info("nyx embed %s: %d/%d (%.1f items/s)", role, done, len(items), done / (time.monotonic() - t0))
        return matryoshka(l2_normalise(out), self.cfg.dim)

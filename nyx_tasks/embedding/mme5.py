"""The mmE5 embedder: the paper's hard-negative miner, `intfloat/mmE5-mllama-11b-instruct`
(Llama-3.2-11B-Vision, `MllamaForConditionalGeneration`).

`MmE5Embedder(cfg, path).embed(items, role)` returns one L2-normalised vector per item: the last
layer's hidden state at the last real token. Each `cfg.image_placeholder` becomes `<|image|>` where
it stands; queries read `<|image|>...<|begin_of_text|>{query_instruction} {text}`, documents
`<|image|>...<|begin_of_text|>{text}`; `cfg.max_pixels` sets the number of 560x560 tiles per image.
How this follows mmE5's released code and model card: docs/FIDELITY.md, "The mmE5 miner's input".
"""

from __future__ import annotations

from nyx_tasks.embedding.base import MixedItem
from nyx_tasks.embedding.vlm import VLMEmbedder


class MmE5Embedder(VLMEmbedder):
    kind = "mme5"
    model_class = "MllamaForConditionalGeneration"

    def _setup(self) -> None:
        import torch
        from transformers.models.mllama.image_processing_mllama import (
            get_all_supported_aspect_ratios,
        )

        self.image_token = self.processor.image_token  # <|image|>
        self.bos = self.processor.bos_token  # <|begin_of_text|>
        ip = self.processor.image_processor
        vc = self.model.config.vision_config
        self.native_tiles = int(vc.max_num_tiles)
        tile_area = int(ip.size["height"]) * int(ip.size["width"])
        self.tiles = max(1, min(self.native_tiles, int(ip.max_image_tiles), self.cfg.max_pixels // tile_area))
        ip.max_image_tiles = self.tiles
        native = [tuple(r) for r in vc.supported_aspect_ratios]
        # processor id (1-based within its own set; 0 = no image) -> the model's id
        self._ratio_ids = torch.tensor([0] + [native.index(r) + 1 for r in get_all_supported_aspect_ratios(self.tiles)])

    def _group(self, item: MixedItem) -> int:
        # A batch never mixes image counts. MllamaProcessor (transformers 5.x) mis-shapes
        # aspect_ratio_ids when a batch mixes text-only samples (images=[]) with image ones;
        # and text-only inputs skip the cross-attention layers, while in a batch with images
        # they would cross-attend (masked rows attend uniformly: only the MLP half is gated
        # off). Likewise text before an item's first image attends uniformly to all image
        # slots, padded ones included. Same-count batches keep each vector independent of
        # its batch-mates.
        return len(item.images)

    def _text(self, item: MixedItem, role: str) -> str:
        body = item.text.replace(self.cfg.image_placeholder, self.image_token).lstrip()
        lead = 0
        while body.startswith(self.image_token):
            body = body[len(self.image_token):].lstrip()
            lead += 1
        instr = f"{self.cfg.query_instruction} " if role == "query" and self.cfg.query_instruction else ""
        return f"{self.image_token * lead}{self.bos}{instr}{body}"

    def _inputs(self, texts: list[str], images: list[list]):
        kw = {"images": images} if any(images) else {}  # one list of images per sample
        inputs = self.processor(text=texts, padding=True, return_tensors="pt", **kw)
        if kw and self.tiles < self.native_tiles:
            inputs = self._pad_tiles(inputs)
        return inputs

    def _pad_tiles(self, inputs):
        """Tiles from a processor capped at `self.tiles` -> the model's `max_num_tiles` slots."""
        import torch.nn.functional as F

        extra = self.native_tiles - self.tiles
        pv = inputs["pixel_values"]  # (B, images, tiles, C, H, W)
        inputs["pixel_values"] = F.pad(pv, (0, 0, 0, 0, 0, 0, 0, extra))
        inputs["aspect_ratio_mask"] = F.pad(inputs["aspect_ratio_mask"], (0, extra))  # (B, images, tiles)
        inputs["cross_attention_mask"] = F.pad(inputs["cross_attention_mask"], (0, extra))  # (B, T, images, tiles)
        inputs["aspect_ratio_ids"] = self._ratio_ids[inputs["aspect_ratio_ids"]]
        return inputs

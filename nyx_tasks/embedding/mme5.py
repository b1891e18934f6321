"""The mmE5 embedder: the paper's hard-negative miner, `intfloat/mmE5-mllama-11b-instruct`
(Llama-3.2-11B-Vision, `MllamaForConditionalGeneration`).

Input format and call, as in haon-chen/mmE5 (`demo.py`; `src/collator.py`,
`LlamaEvalCollator`; `src/model.py`, `MMEBModel.encode_input/_pooling`) and the
model card:

- an image is the `<|image|>` token; mmE5 puts the image first, followed by
  `<|begin_of_text|>` and the text (the collator turns MMEB's `<|image_1|>\\n`
  into `<|image|><|begin_of_text|>`; demo: `'<|image|><|begin_of_text|> Represent
  the given image with the following question: What is in the image'`);
  text-only inputs are the plain text (`'A cat and a dog'`), to which the
  processor prepends `<|begin_of_text|>`;
- query instructions come before the query text on the same line
  (`'Find me an everyday image that matches the given caption: A cat and a dog.'`);
- no EOS is appended: the embedding is the last layer's hidden state at the last
  real token of the prompt (`pooling='last'`, `attention_mask.sum(1) - 1`, right
  padding with `<|finetune_right_pad_id|>`), L2-normalised;
- the processor is called on the text (and, per sample, its list of images) with
  the tokenizer's default special tokens, so Llama-3's tokenizer adds its own
  `<|begin_of_text|>` in front (ids 128000, 128256, 128000 for
  `<|image|><|begin_of_text|>`, see vllm-project/vllm#10910) - kept as is, since
  mmE5 was trained and evaluated through that same processor call;
- the model is called as `model(**inputs, return_dict=True,
  output_hidden_states=True).hidden_states[-1]`; transformers ties
  `hidden_states[-1]` to the text model's `last_hidden_state` (after the final
  norm), so we take `model.model(**inputs).last_hidden_state` and skip the LM
  head's (B, T, 128k) logits (tests/embedding/test_mme5_embedder.py checks they
  are equal).

Here: each `cfg.image_placeholder` becomes `<|image|>` in place (an image in the
middle of the text stays there: Mllama's cross-attention mask lets text see the
images before it); images leading the text stay in front of `<|begin_of_text|>`
and of the query instruction, as in mmE5's format; queries read
`<|image|>...<|begin_of_text|>{query_instruction} {text}`, documents
`<|image|>...<|begin_of_text|>{text}`.

Pixel cap: Mllama cuts an image into at most `max_image_tiles` tiles of the vision
encoder's fixed tile size (560x560 for Llama-3.2-Vision, so the paper's
400x28x28 = 313,600 px cap is exactly one tile); the processor resizes the image
to the best canvas of at most that many tiles. `cfg.max_pixels` maps to
`max_image_tiles = clamp(max_pixels // tile_area, 1, model's max_num_tiles)`
(mmE5's own setting is 4 tiles: `max_pixels >= 4 x 560 x 560`). The model always
takes `max_num_tiles` tile slots per image (its tile and aspect-ratio embeddings
are shaped so), so a lower cap changes the resolution, not the cost: the tile
dimension is zero-padded back (masked, as for any image using fewer tiles) and
the aspect-ratio ids, which the processor numbers within its own (smaller) set,
are renumbered into the model's `supported_aspect_ratios`.
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

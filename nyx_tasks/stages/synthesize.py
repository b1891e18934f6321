"""`synthesize` (paper: NyxQA construction): a VLM writes QA pairs per sampled
chunk, then shortens each answer and writes three wrong options.

Round 1, per chunk: the text-only prompt (text chunks) or the image prompt
(chunks with images, which are named <image1>..<imageN> where they stand), plus
the multi-image prompt for chunks with more than one image; at most
`max_qa_per_chunk` pairs each. Round 2: shorten every answer to at most
`max_answer_words` words; pairs that cannot be shortened or depend on their
context are dropped. Round 3: `num_distractors` plausible wrong options.
Every request is schema-constrained JSON; what still fails to parse is a named
drop. Every finished request is cached by content hash, so a re-run or resumed
shard never pays twice.

rows_in = chunks; rows_out = QA candidates; drops count QA pairs (or requests
for `unparseable_*` / `request_refused_*`).
"""

from __future__ import annotations

import hashlib

from ..artifacts import image_paths
from ..base import StageError
from ..inference import ChatRequest, GenerationError, make_backend
from ..inference.structured import parse
from ..prompts import CHUNK_MARKER, render
from ..runner import ShardOutputs, Stage, StageContext
from .common import GENERATION_TUNING, with_prompts


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


def user_message(prompt_text: str, chunk: list[dict] | None = None) -> list[dict]:
    if chunk is None:
        return [{"role": "user", "content": prompt_text}]
    before, _, after = prompt_text.partition(CHUNK_MARKER)
    content = [{"type": "text", "text": before}, *chunk, {"type": "text", "text": after}]
    return [{"role": "user", "content": [p for p in content if p.get("type") == "image" or p["text"]]}]


PROMPTS = ("qa_text", "qa_image", "qa_multi_image", "shorten", "distractors")


class SynthesizeStage(Stage):
    name = "synthesize"
    version = 1
    inputs = ("sample", "ingest")
    outputs = {"part": "qa_candidates"}
    execution_only = ("shard_chunks", *GENERATION_TUNING)
    doc = "A VLM writes QA pairs per chunk (text, image, multi-image prompts), shortens answers, writes distractors."

    def config_payload(self, cfg):
        return with_prompts(super().config_payload(cfg), cfg, cfg.synthesize.prompt_version, PROMPTS)

    def plan_shards(self, ctx: StageContext) -> list[dict]:
        n = ctx.input_manifest("sample")["rows_out"]
        step = ctx.cfg.synthesize.shard_chunks
        return [{"shard": i, "name": f"chunks-{s:06d}-{min(s + step, n):06d}", "start": s, "stop": min(s + step, n)}
                for i, s in enumerate(range(0, max(n, 1), step))]

    def _chunks(self, ctx, shard) -> list[dict]:
        from ..artifacts import iter_stage_batches

        rows, seen = [], 0
        for batch in iter_stage_batches(ctx.store, ctx.partition, "sample"):
            lo, hi = max(shard["start"] - seen, 0), min(shard["stop"] - seen, batch.num_rows)
            if lo < hi:
                rows += batch.slice(lo, hi - lo).to_pylist()
            seen += batch.num_rows
            if seen >= shard["stop"]:
                break
        return rows

    def process(self, ctx: StageContext, shard: dict, out: ShardOutputs) -> None:
        cfg = ctx.cfg.synthesize
        gen = cfg.generation
        chunks = self._chunks(ctx, shard)
        out.rows_in = len(chunks)
        if not chunks:
            return
        paths = image_paths(ctx.store, ctx.partition, {i for c in chunks for i in c["image_ids"]})
        try:
            backend = make_backend(gen, ctx.store)
        except GenerationError as e:
            raise StageError(f"synthesize: {e}") from e
        model_id = backend.model_id
        ph = ctx.cfg.chunk.image_placeholder

        def request(prompt_text, chunk=None, schema=None, max_tokens=gen.max_tokens):
            return ChatRequest(messages=user_message(prompt_text, chunk), json_schema=schema, max_tokens=max_tokens,
                               temperature=gen.temperature, top_p=gen.top_p, seed=gen.seed)

        def run(round_name: str, reqs: list[ChatRequest]):
            before = backend.hits
            ctx.log.info("synthesize %s: %s: %d requests", shard["name"], round_name, len(reqs))
            try:
                resps = backend.generate(reqs)
            except GenerationError as e:
                raise StageError(f"synthesize: {e}") from e
            out.extra[f"requests_{round_name}"] += len(reqs)
            out.extra["cache_hits"] += backend.hits - before
            in_flight = getattr(backend.inner, "max_in_flight", None)
            ctx.log.info("synthesize %s: %s: %d answered, %d from cache%s", shard["name"], round_name, len(resps),
                         backend.hits - before, f", up to {in_flight} in flight" if in_flight else "")
            return resps

        def answered(round_name: str, items: list, reqs: list[ChatRequest], schema: dict, refused, unparseable,
                     where=lambda _: ""):
            """(item, parsed answer) for every answer that parses; the rest are named drops
            (`refused(item)` for a request the server refused, `unparseable(item)` otherwise)."""
            for item, r in zip(items, run(round_name, reqs), strict=True):
                obj = None if r.error else parse(r.text, schema)
                if obj is None:
                    reason = refused(item) if r.error else unparseable(item)
                    out.drops.drop(reason, f"{where(item)}{r.error or f'{r.text[-200:]!r} ({r.finish_reason})'}")
                    continue
                yield item, obj

        # Round 1: QA pairs per chunk and prompt.
        reqs, meta = [], []
        schema = qa_schema(cfg.max_qa_per_chunk)
        for c in chunks:
            n = len(c["image_ids"])
            prompts = ["qa_text"] if n == 0 else ["qa_image"] + (["qa_multi_image"] if n > 1 else [])
            parts = chunk_parts(c["text"], c["image_ids"][: cfg.max_images_per_prompt], paths, ph)
            for p in prompts:
                text = render(cfg.prompt_version, p, max_qa=cfg.max_qa_per_chunk, n_images=n)
                reqs.append(request(text, parts, schema))
                meta.append((c, p))
        cands = []
        for (c, p), obj in answered("qa", meta, reqs, schema, refused=lambda m: f"request_refused_{m[1]}",
                                    unparseable=lambda m: f"unparseable_{m[1]}", where=lambda m: f"{m[0]['chunk_id']}: "):
            for k, pair in enumerate(obj["qa_pairs"]):
                cands.append({"chunk": c, "prompt": p, "k": k, "question": pair["question"].strip(),
                              "original_answer": pair["answer"].strip()})
        # Round 2: shorten answers.
        reqs = [request(render(cfg.prompt_version, "shorten", question=q["question"], answer=q["original_answer"],
                               max_words=cfg.max_answer_words), schema=SHORTEN_SCHEMA, max_tokens=min(gen.max_tokens, 128))
                for q in cands]
        kept = []
        for q, obj in answered("shorten", cands, reqs, SHORTEN_SCHEMA, refused=lambda _: "unparseable_shorten",
                               unparseable=lambda _: "unparseable_shorten"):
            if obj["depends_on_context"]:
                out.drops.drop("depends_on_context", q["question"])
            elif not obj["can_shorten"] or not obj["short_answer"].strip():
                out.drops.drop("not_shortenable", f"{q['question']} -> {q['original_answer']}")
            else:
                kept.append({**q, "answer": obj["short_answer"].strip()})
        # Round 3: distractors.
        dschema = distractor_schema(cfg.num_distractors)
        reqs = [request(render(cfg.prompt_version, "distractors", question=q["question"], answer=q["answer"],
                               n=cfg.num_distractors), schema=dschema, max_tokens=min(gen.max_tokens, 160))
                for q in kept]
        rows = []
        for q, obj in answered("distractors", kept, reqs, dschema, refused=lambda _: "unparseable_distractors",
                               unparseable=lambda _: "unparseable_distractors"):
            c = q["chunk"]
            qa_id = hashlib.sha256(f"{c['chunk_id']}|{q['prompt']}|{q['k']}|{q['question']}".encode()).hexdigest()[:24]
            rows.append({"qa_id": qa_id, "chunk_id": c["chunk_id"], "doc_id": c["doc_id"], "modality": c["modality"],
                         "prompt": q["prompt"], "question": q["question"], "answer": q["answer"],
                         "original_answer": q["original_answer"], "distractors": [d.strip() for d in obj["distractors"]],
                         "chunk_text": c["text"], "chunk_image_ids": c["image_ids"], "model_id": model_id,
                         "prompt_version": cfg.prompt_version})
        out.write(rows)
        backend.close()


STAGE = SynthesizeStage()

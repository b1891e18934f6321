"""`filter` (paper: NyxQA construction, post-processing): rule filters over the
synthesized QA items, each drop counted by name; then the four shuffled
options with the correct index, image references replaced by the image
placeholder, and the train/dev/test split.

Rules, in order (the first that fires names the drop):
  empty_question / empty_answer
  context_dependent            the question leans on its source ("the text", "the author", ...)
  invalid_image_reference      <imageN> with N outside 1..images of the chunk
  image_mention_without_reference   mentions an image word but cites no <imageN>
  multi_image_cites_fewer_than_two  a multi-image question citing < 2 distinct images
  answer_too_long              more than `max_answer_words` words
  bad_options                  answer + distractors are not 4 distinct strings with one equal to the answer
  duplicate_question           the same normalised question seen before (first kept)

Split: dev and test of `eval_per_group` items per modality group, the rest
train; whole chunks go to one split (a positive never straddles splits),
chunks ordered by a seeded hash.
"""

from __future__ import annotations

import hashlib
import random
import re
import string

from nyx_tasks.core.base import ShardSpec
from nyx_tasks.runner import ShardOutputs, Stage, StageContext
from nyx_tasks.stages.sample import GROUPS
from nyx_tasks.store.artifacts import iter_stage_batches

IMAGE_REF = re.compile(r"<image(\d+)>")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalise(text: str) -> str:
    return " ".join(text.lower().translate(_PUNCT).split())


def check_item(q: dict, cfg) -> str | None:
    """The name of the first rule `q` breaks, or None when it passes."""
    question, answer = q["question"].strip(), q["answer"].strip()
    if not question:
        return "empty_question"
    if not answer:
        return "empty_answer"
    low = question.lower()
    if any(p in low for p in cfg.context_phrases):
        return "context_dependent"
    refs = [int(n) for n in IMAGE_REF.findall(question)]
    n_images = len(q["chunk_image_ids"])
    if any(not 1 <= r <= n_images for r in refs):
        return "invalid_image_reference"
    if not refs and re.search(r"\b(" + "|".join(map(re.escape, cfg.image_words)) + r")s?\b", IMAGE_REF.sub("", low)):
        return "image_mention_without_reference"
    if q["prompt"] == "qa_multi_image" and len(set(refs)) < 2:
        return "multi_image_cites_fewer_than_two"
    if len(answer.split()) > cfg.max_answer_words:
        return "answer_too_long"
    options = [answer, *q["distractors"]]
    norm = [normalise(o) for o in options]
    if len(options) != 4 or len(set(norm)) != 4 or not all(norm):
        return "bad_options"
    return None


def to_query(question: str, image_ids: list[str], placeholder: str) -> tuple[str, list[str]]:
    """`<imageN>` -> the placeholder, and the cited images in order of citation."""
    cited = [image_ids[int(m.group(1)) - 1] for m in IMAGE_REF.finditer(question)]
    return IMAGE_REF.sub(placeholder, question), cited


def assign_splits(items: list[dict], per_group: int, seed: int, by: str = "chunk") -> dict[str, str]:
    """qa_id -> split. Per modality group, in seeded-hash order, `per_group` items fill dev, then
    test, the rest is train. `by`: `chunk` moves whole chunks (a chunk's questions never straddle
    splits, so no test positive is a training positive; dev and test may pass `per_group` by the last
    chunk's questions), `question` moves single questions (the released code, `10_split.py`)."""
    splits: dict[str, str] = {}
    for g in GROUPS:
        units: dict[str, list[str]] = {}
        for it in items:
            if it["modality"] == g:
                units.setdefault(it["chunk_id"] if by == "chunk" else it["qa_id"], []).append(it["qa_id"])
        order = sorted(units, key=lambda u: hashlib.sha256(f"{seed}:{u}".encode()).digest())
        filled = {"dev": 0, "test": 0}
        for unit in order:
            split = next((s for s in ("dev", "test") if filled[s] < per_group), "train")
            if split != "train":
                filled[split] += len(units[unit])
            for qa_id in units[unit]:
                splits[qa_id] = split
    return splits


class FilterStage(Stage):
    name = "filter"
    version = 1
    inputs = ("synthesize",)
    outputs = {"part": "nyxqa"}
    doc = ("The paper's rule filters (named drops), 4 shuffled options + correct index, train/dev/test "
           "split.")
    flow = {
        "in": "QA candidates",
        "out": "NyxQA items kept (options, split)",
        "drops": "QA candidates, by the first rule that fired",
    }

    def config_payload(self, cfg):
        return {**super().config_payload(cfg), "image_placeholder": cfg.chunk.image_placeholder}

    def plan_shards(self, ctx: StageContext) -> list[ShardSpec]:
        return [{"shard": 0, "name": "all"}]  # duplicates and splits need the whole partition

    def process(self, ctx: StageContext, shard: ShardSpec, out: ShardOutputs) -> None:
        cfg = ctx.cfg.filter
        placeholder = ctx.cfg.chunk.image_placeholder
        seen: set[str] = set()
        kept: list[dict] = []
        for batch in iter_stage_batches(ctx.store, ctx.partition, "synthesize"):
            for q in batch.to_pylist():
                out.rows_in += 1
                reason = check_item(q, cfg)
                if reason is None:
                    key = normalise(IMAGE_REF.sub("<image>", q["question"]))
                    if key in seen:
                        reason = "duplicate_question"
                    seen.add(key)
                if reason:
                    out.drops.drop(reason, f"{q['qa_id']}: {q['question'][:120]!r} -> {q['answer'][:60]!r}",
                                   item=q["qa_id"])
                    continue
                kept.append(q)
        splits = assign_splits(kept, cfg.eval_per_group, cfg.seed, cfg.split_by)
        rows = []
        for q in kept:
            options = [q["answer"].strip(), *(d.strip() for d in q["distractors"])]
            random.Random(f"{cfg.seed}:{q['qa_id']}").shuffle(options)
            query, cited = to_query(q["question"].strip(), q["chunk_image_ids"], placeholder)
            rows.append({"qa_id": q["qa_id"], "query": query, "query_image_ids": cited, "answer": q["answer"].strip(),
                         "options": options, "correct_index": options.index(q["answer"].strip()),
                         "pos_chunk_id": q["chunk_id"], "pos_text": q["chunk_text"],
                         "pos_image_ids": q["chunk_image_ids"], "n_images": len(q["chunk_image_ids"]),
                         "modality": q["modality"], "prompt": q["prompt"], "split": splits[q["qa_id"]]})
            out.extra[f"split_{splits[q['qa_id']]}"] += 1
        out.write(rows)


STAGE = FilterStage()

"""`sample` (paper: NyxQA construction): draw a fixed number of chunks (paper:
10,000) with the paper's modality mix: 63.29% text-only, 29.85% single-image,
the rest multi-image. Seeded and independent of file order: every chunk gets a
key hash(seed, chunk_id) and each group keeps its k smallest keys, so memory is
O(k) however large the corpus. A short group gives what it has; the shortfall
is logged and recorded in the manifest.
"""

from __future__ import annotations

import hashlib
import heapq

import pyarrow as pa
import pyarrow.compute as pc

from nyx_tasks.core.base import ShardSpec
from nyx_tasks.core.schema import SAMPLED_CHUNKS
from nyx_tasks.runner import ShardOutputs, Stage, StageContext
from nyx_tasks.store.artifacts import iter_stage_batches

GROUPS = ("text_only", "single_image", "multi_image")


def modality(n_images: int) -> str:
    return GROUPS[min(n_images, 2)]


def group_targets(size: int, fracs: tuple[float, float, float]) -> dict[str, int]:
    """Split `size` over the groups by largest remainder, so the targets sum to `size`."""
    raw = [size * f for f in fracs]
    counts = [int(x) for x in raw]
    for i in sorted(range(3), key=lambda i: raw[i] - counts[i], reverse=True)[: size - sum(counts)]:
        counts[i] += 1
    return dict(zip(GROUPS, counts, strict=True))


def sample_key(seed: int, chunk_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{chunk_id}".encode(), digest_size=8).digest(), "big")


class SampleStage(Stage):
    name = "sample"
    version = 1
    inputs = ("chunk",)
    outputs = {"part": "sampled_chunks"}
    doc = "Fixed-size subset: 63.29% text-only, 29.85% single-image, rest multi-image."
    flow = {
        "in": "chunks",
        "out": "sampled chunks (the paper's text / single-image / multi-image mix)",
        "drops": "none by name: the chunks not drawn are counted as not_selected",
    }

    def plan_shards(self, ctx: StageContext) -> list[ShardSpec]:
        return [{"shard": 0, "name": "all"}]

    def process(self, ctx: StageContext, shard: ShardSpec, out: ShardOutputs) -> None:
        cfg = ctx.cfg.sample
        targets = group_targets(cfg.size, (cfg.text_only_frac, cfg.single_image_frac, cfg.multi_image_frac))
        # Phase 1: stream two small columns, keep the k smallest keys per group (max-heaps of size k).
        heaps: dict[str, list[tuple[int, str]]] = {g: [] for g in GROUPS}
        available = dict.fromkeys(GROUPS, 0)
        for batch in iter_stage_batches(ctx.store, ctx.partition, "chunk", columns=["chunk_id", "n_images"]):
            for cid, n in zip(batch.column("chunk_id").to_pylist(), batch.column("n_images").to_pylist(), strict=True):
                g = modality(n)
                available[g] += 1
                out.rows_in += 1
                k = targets[g]
                if k == 0:
                    continue
                item = (-sample_key(cfg.seed, cid), cid)  # negated: heapq is a min-heap
                if len(heaps[g]) < k:
                    heapq.heappush(heaps[g], item)
                elif item > heaps[g][0]:
                    heapq.heapreplace(heaps[g], item)
        chosen = {cid: g for g in GROUPS for _, cid in heaps[g]}
        for g in GROUPS:
            got = len(heaps[g])
            out.extra[f"available_{g}"] = available[g]
            out.extra[f"selected_{g}"] = got
            if got < targets[g]:
                out.extra[f"shortfall_{g}"] = targets[g] - got
                ctx.log.info("sample: group %s is short: wanted %d, only %d available; taking all",
                                g, targets[g], got)
        ctx.log.info("sample: targets %s, selected %s",
                     targets, {g: len(heaps[g]) for g in GROUPS})
        # Phase 2: stream the chunks again and write the chosen ones.
        ids = pa.array(sorted(chosen))
        for batch in iter_stage_batches(ctx.store, ctx.partition, "chunk"):
            table = pa.Table.from_batches([batch])
            table = table.filter(pc.is_in(table.column("chunk_id"), value_set=ids))
            if table.num_rows:
                mods = [chosen[c] for c in table.column("chunk_id").to_pylist()]
                out.write_table(table.append_column(SAMPLED_CHUNKS.field("modality"), pa.array(mods, pa.string())))
        out.extra["not_selected"] = out.rows_in - len(chosen)


STAGE = SampleStage()

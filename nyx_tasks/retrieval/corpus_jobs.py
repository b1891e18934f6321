"""A stage's large corpora embedded as mapped work.

Before a stage that searches a text set's whole corpus (its `Stage.corpora(cfg, store)`
names the (embedder, text set) pairs), its Airflow task group plans one job per embedding shard of
each distinct (embedder, corpus) and maps them: each job embeds one shard of
`corpora.shard_rows` rows into its vector file (`vector_shards.embed_shard`), so
shards spread over workers, a finished shard is never redone, and a crash costs
the shard in flight. The stage's own tasks then find every shard present
(`ensure_embedded` embeds only what is missing, so the CLI, which runs no mapped
jobs, gets the same files)."""

from __future__ import annotations

import socket
import time

from nyx_tasks.core.hashing import stable_hash
from nyx_tasks.core.log import get_logger
from nyx_tasks.embedding import make_embedder
from nyx_tasks.retrieval.vector_shards import embed_shard
from nyx_tasks.sources.corpus_table import corpus_table
from nyx_tasks.store.artifacts import ArtifactStore


def embeds_on_gpu(stage, cfg, store: ArtifactStore | None = None) -> bool:
    """Whether the stage's embedding shards go to the `gpu` queue: `corpora.queue`, or under
    `auto` a corpus embedder set to a CUDA device."""
    if cfg.corpora.queue != "auto":
        return cfg.corpora.queue == "gpu"
    return any(str(emb.device).startswith("cuda") for emb, _ in stage.corpora(cfg, store))


def plan_vector_jobs(stage, cfg, store: ArtifactStore) -> list[dict]:
    """One job per shard of each distinct (embedder, corpus) the stage searches. Building a
    missing corpus table (one pass over the corpus files) is the plan's one heavy step;
    nothing is embedded here. Sets sharing corpus files (wiki18) share one corpus."""
    log = get_logger(stage.name)
    jobs, seen = [], set()
    for n, (emb, ts) in enumerate(stage.corpora(cfg, store)):
        table = corpus_table(store, ts)
        ident = (stable_hash(emb.model_dump(mode="json")), table.key)
        if ident in seen:
            continue
        seen.add(ident)
        shards = -(-len(table) // cfg.corpora.shard_rows)
        log.info("%s: corpus of %s (%s): %d rows -> %d embedding shards of %d rows", stage.name, ts.name,
                 table.key[:8], len(table), shards, cfg.corpora.shard_rows)
        jobs += [{"shard": i, "corpus": n, "name": f"{ts.name}:{i + 1}/{shards}"} for i in range(shards)]
    return jobs


def run_vector_job(stage, cfg, store: ArtifactStore, job: dict) -> dict:
    """Embed one shard (nothing when its file exists); returns what the task reports."""
    emb, ts = stage.corpora(cfg, store)[job["corpus"]]
    table = corpus_table(store, ts)
    embedder = make_embedder(emb, store)
    t0 = time.monotonic()
    rows = embed_shard(embedder, table, job["shard"], cfg.corpora.shard_rows)
    seconds = time.monotonic() - t0
    get_logger(stage.name).info(
        "%s: vectors %s shard %d: %s", stage.name, ts.name, job["shard"],
        f"{rows} rows embedded in {seconds:.1f} s ({rows / max(seconds, 1e-9):.0f} rows/s)" if rows
        else "already embedded, nothing to do")
    return {"name": job["name"], "shard": job["shard"], "rows_embedded": rows, "seconds": round(seconds, 3),
            "host": socket.gethostname()}

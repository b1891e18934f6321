"""What the VLM-driven stages (synthesize, feedback, evaluate) share in their
contract: settings that tune how, not what, they compute, and the part of the
config hash that covers their prompt templates."""

from __future__ import annotations

from nyx_tasks.prompts import fingerprint

# Left out of config hashes (Stage.execution_only): throughput and where it runs.
GENERATION_TUNING = ("generation.concurrency", "generation.batch_size", "generation.timeout_s",
                     "generation.retries", "generation.base_url", "generation.api_key_env", "generation.device")
RETRIEVAL_TUNING = ("embedder.batch_size", "embedder.device", "embedder.prepare_workers", "search.query_batch",
                    "search.doc_chunk", "search.backend")


def with_prompts(payload: dict, cfg, version: str, names: tuple[str, ...]) -> dict:
    """A stage's config payload plus the content hashes of the templates it uses and
    the image placeholder its inputs carry: editing either recomputes the stage."""
    return {**payload, "prompts": fingerprint(version, names), "image_placeholder": cfg.chunk.image_placeholder}

"""Experiment adoption: a variant partition takes its base partition's snapshot by reference
when the keys match, instead of recomputing."""

from __future__ import annotations

from nyx_tasks.runner.contract import PLAN, StageContext, now
from nyx_tasks.store.artifacts import (
    MANIFEST,
    SnapshotError,
    adopted_manifest,
    experiment_base,
    missing_files,
    read_manifest,
)


def adopt_from_base(ctx: StageContext, key: str) -> bool:
    """In an experiment's variant partition (`_EXPERIMENT.json` names its base): when the base
    partition's committed snapshot has this very key (same config hash, same input hashes), write a
    manifest here that adopts it by reference (`artifacts.adopted_manifest`) instead of recomputing.
    Nothing is written under the base; force never adopts."""
    base = None if ctx.cfg.force else experiment_base(ctx.store, ctx.partition)
    if not base or base == ctx.partition:
        return False
    stage = ctx.stage.name
    try:
        found = read_manifest(ctx.store, base, ctx.stage.output, missing_ok=True)
    except SnapshotError as e:
        ctx.log.warning("%s: base partition %s: %s; computing in %s", stage, base, e, ctx.partition)
        return False
    if not found or found.get("key") != key or missing_files(ctx.store, found):
        ctx.log.info("%s: computing in variant partition %s: base partition %s has %s", stage, ctx.partition, base,
                     "no snapshot" if not found else f"key {found.get('key')} (this variant's is {key})"
                     if found.get("key") != key else "lost files of its snapshot")
        return False
    ctx.store.write_json_atomic(ctx.stage_rel(MANIFEST), adopted_manifest(found, ctx.partition, now()))
    ctx.store.remove(ctx.stage_rel(PLAN))  # an abandoned attempt's plan: the commit finds nothing to do
    ctx.log.info("%s: adopted base partition %s's snapshot (key %s, %s rows, %s) into partition %s; nothing "
                 "recomputed", stage, base, key, found["rows_out"], found.get("location", ""), ctx.partition)
    return True

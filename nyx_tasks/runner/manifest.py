"""A snapshot's manifest, built from its attempt's shard markers, and the checks that refuse to
commit what no one can use."""

from __future__ import annotations

import re
from collections import Counter

from nyx_tasks.core.base import StageError, code_version
from nyx_tasks.core.hashing import stable_hash
from nyx_tasks.runner.contract import DROPS_KIND, StageContext, now, shard_done

# Drops whose cause is outside the data: a dependency that is down or too slow, not a bad record.
DEPENDENCY_REASON = re.compile(r"(connection_error|timeout|deadline|http_5\d\d|unavailable)$")

def check_usable(ctx: StageContext, manifest: dict) -> None:
    """Refuse to commit what no one can use: rows read but none kept, or more of the input lost to
    a dependency (connection refused, timeouts, 5xx) than `checks.max_dependency_failure_share`."""
    checks, name = ctx.cfg.checks, ctx.stage.name
    rows_in, rows_out, drops = manifest["rows_in"], manifest["rows_out"], manifest["drops"]
    top = ", ".join(f"{r}={n}" for r, n in sorted(drops.items(), key=lambda kv: -kv[1])[:3]) or "none"
    failed = sum(n for r, n in drops.items() if DEPENDENCY_REASON.search(r))
    if rows_in and checks.max_dependency_failure_share < 1.0 and failed > checks.max_dependency_failure_share * rows_in:
        reasons = ", ".join(f"{r}={n}" for r, n in drops.items() if DEPENDENCY_REASON.search(r))
        raise StageError(f"{name}: {failed} drops for {rows_in} rows read came from a dependency, not the data "
                         f"({reasons}), over checks.max_dependency_failure_share={checks.max_dependency_failure_share}; "
                         "nothing was committed. Check that the servers it reaches are up, then re-run with --force "
                         "(the finished shards hold the failed requests).")
    if checks.fail_when_nothing_kept and rows_in > 0 and rows_out == 0:
        raise StageError(f"{name}: read {rows_in} rows of partition {ctx.partition} and kept none (drops: {top}); "
                         "nothing was committed. Check the input and the drop reasons (nyx status --drops REASON); "
                         "checks.fail_when_nothing_kept=false commits an empty snapshot.")

def build_manifest(ctx: StageContext, plan: dict) -> dict:
    """The snapshot's manifest from the attempt's shard markers (refuses when one is missing)."""
    stage = ctx.stage
    markers, missing = [], []
    for s in plan["shards"]:
        m = shard_done(ctx, s, plan["key"])
        (markers.append(m) if m else missing.append(s["name"]))
    if missing:
        raise StageError(f"{stage.name}: shard(s) {missing} of partition {ctx.partition} did not "
                         "finish; re-run the stage (finished shards are kept).")
    drops: Counter[str] = Counter()
    extra: Counter[str] = Counter()
    outputs: dict[str, list[dict]] = {k: [] for k in (*stage.outputs, DROPS_KIND)}
    for m in markers:
        drops.update(m["drops"])
        extra.update(m["extra"])
        for kind, f in m["outputs"].items():
            outputs[kind].append(f)
    return {
        "stage": stage.name, "partition": ctx.partition, "status": "complete",
        "stage_version": stage.version, "code_version": code_version(),
        "key": plan["key"], "attempt": ctx.attempt, "config_hash": plan["config_hash"], "config": plan["config"],
        "inputs": plan["inputs"], "rows_in": sum(m["rows_in"] for m in markers),
        "rows_out": sum(m["rows_out"] for m in markers),
        "drops": dict(sorted(drops.items())), "extra": dict(sorted(extra.items())),
        "outputs": outputs, "schemas": {**stage.outputs, DROPS_KIND: "drops"},
        "output_hash": stable_hash([(k, f["path"].rsplit("/", 1)[-1], f["sha256"])
                                    for k, fs in outputs.items() if k != DROPS_KIND for f in fs], 32),
        "location": ctx.store.url(ctx.stage_rel()),
        "shards": [{k: m[k] for k in ("shard", "name", "rows_in", "rows_out", "drops", "seconds")} for m in markers],
        "timings": {"planned_at": plan["planned_at"], "finished_at": now(),
                    "shard_seconds": round(sum(m["seconds"] for m in markers), 3)},
    }

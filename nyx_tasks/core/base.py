"""What every layer of the package may need of the pipeline, and nothing more:
the error that stops a stage (raised by the runner, the stages and the helpers
they call), the shard spec a stage plans and the runner hands back, and the
code version every manifest records. It sits beside config,
log and artifacts at the bottom of the package, so a helper can raise
`StageError` without importing the runner above it (see tests/test_layers.py).
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Required, TypedDict

from nyx_tasks import __version__


class StageError(RuntimeError):
    """A stage cannot go on; the message says what went wrong and what to do."""


class ShardSpec(TypedDict, total=False):
    """One unit of a stage's work, as `Stage.plan_shards` returns it. It is stored in the stage's
    `_PLAN.json` and travels through Airflow's XCom to the mapped shard task, so it stays a plain
    JSON dict; the runner checks `shard` and `name` (`check_shard_specs`); a stage declares its own keys in a
    subclass beside it (e.g. `IngestShard` in sources/obelics.py) and reads them."""

    shard: Required[int]  # the index: names the shard's Parquet files and its `_shards/<index>.json` marker
    name: Required[str]  # what logs and the Airflow task's map index show


def check_shard_specs(stage: str, shards: list[ShardSpec]) -> None:
    """A stage's plan must give every shard a distinct integer index and a name."""
    seen: set[int] = set()
    for spec in shards:
        index, name = spec.get("shard"), spec.get("name")
        if not isinstance(index, int) or isinstance(index, bool) or not isinstance(name, str) or not name:
            raise StageError(f"{stage}: a planned shard needs an integer 'shard' and a non-empty 'name'; got {spec!r}")
        if index in seen:
            raise StageError(f"{stage}: two planned shards share the index {index}")
        seen.add(index)


@functools.cache
def code_version() -> str:
    """Package version plus the git commit when run from a checkout."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        return f"{__version__}+g{sha}"
    except (OSError, subprocess.SubprocessError):
        return __version__

"""Logging helpers: stage loggers, throttled progress lines, drop-reason tables.

Everything goes through stdlib logging, so the same lines land in a terminal
(`nyx ...`) and in Airflow task logs.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections import Counter


def get_logger(stage: str) -> logging.Logger:
    return logging.getLogger(f"nyx.{stage}")


def setup_cli_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_nyx", False) for h in root.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        h._nyx = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(level)
    # httpx logs every request at INFO; a fetch of thousands of images would drown the log.
    logging.getLogger("httpx").setLevel(logging.WARNING)


LIBRARY_LOGGERS = ("transformers", "huggingface_hub", "datasets", "sentence_transformers", "peft", "accelerate",
                   "torch", "faiss", "httpx", "PIL", "matplotlib", "urllib3", "filelock", "fsspec")


# What the heavy libraries read when they load, for task processes (and for an executor that
# imports those libraries before it forks them: nyx_tasks/warm.py).
TASK_ENV = (("OMP_WAIT_POLICY", "PASSIVE"), ("TQDM_DISABLE", "1"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
            ("TRANSFORMERS_VERBOSITY", "error"), ("TOKENIZERS_PARALLELISM", "false"),
            ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"))


def prepare_task_process() -> None:
    """For Airflow task processes, before the heavy libraries load:

    - OpenMP threads sleep instead of spinning while they wait (`OMP_WAIT_POLICY=PASSIVE`):
      the executor runs several torch tasks at once on the same cores, and spinning threads
      of one task then starve the others (measured: two synthesize shards side by side on 2
      cores took 139 s with the default policy, 21 s with PASSIVE, ~12 s alone);
    - libraries' progress bars off (tqdm writes to stderr, which Airflow logs at ERROR level,
      red in the UI) and their advice (deprecations, "weights not initialised" for random-
      weight test models) kept out of a successful run's log; the project's own progress
      lines (`Progress`) report counts and rates at INFO instead. A library error still logs
      at ERROR."""
    for var, value in TASK_ENV:
        os.environ.setdefault(var, value)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for category in (DeprecationWarning, FutureWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    if "transformers" in sys.modules:  # already imported: its verbosity was read then
        sys.modules["transformers"].logging.set_verbosity_error()
        sys.modules["transformers"].logging.disable_progress_bar()


class Progress:
    """Logs `label: done/total (rate/s)` at most every `every_s` seconds, and once at the end."""

    def __init__(self, log: logging.Logger, label: str, total: int | None = None,
                 unit: str = "rows", every_s: float = 5.0):
        self.log, self.label, self.total, self.unit, self.every_s = log, label, total, unit, every_s
        self.done = 0
        self.t0 = self._last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._emit(now)

    def _emit(self, now: float, final: bool = False) -> None:
        rate = self.done / max(now - self.t0, 1e-9)
        of = f"/{self.total}" if self.total is not None else ""
        self.log.info("%s: %s%s %s%s (%.1f %s/s)", self.label, self.done, of, self.unit,
                      " done" if final else "", rate, self.unit)

    def close(self) -> float:
        now = time.monotonic()
        self._emit(now, final=True)
        return now - self.t0


class DropCounter:
    """Counts dropped records by named reason, logs the first few examples of each, and keeps a
    record of every drop (reason, item, source, row, detail) for the stage's `_drops` files."""

    def __init__(self, log: logging.Logger, examples_per_reason: int = 3):
        self.log = log
        self.counts: Counter[str] = Counter()
        self.examples_per_reason = examples_per_reason
        self.records: list[dict] = []

    def drop(self, reason: str, example: str = "", n: int = 1, *, item: str | None = None,
             source: str | None = None, row: int | None = None) -> None:
        self.counts[reason] += n
        self.records.append({"reason": reason, "item": item, "source": source, "row": row,
                             "detail": str(example)[:300], "count": n})
        if self.counts[reason] <= self.examples_per_reason:
            self.log.info("drop %s: %s", reason, str(example)[:300])

    def __getitem__(self, reason: str) -> int:
        return self.counts[reason]

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


def drop_lines(drops: dict[str, int], kept: int) -> list[str]:
    """One line per drop reason, most frequent first, with its share of all
    records the stage judged (kept + dropped, in the unit the drops count)."""
    if not drops:
        return ["(no drops)"]
    judged = kept + sum(drops.values())
    width = max(len(r) for r in drops)
    return [f"{reason:<{width}}  {n:>8}  {100.0 * n / judged:5.1f}%"
            for reason, n in sorted(drops.items(), key=lambda kv: (-kv[1], kv[0]))]


def drop_table(drops: dict[str, int], kept: int) -> str:
    return "\n".join("  " + line for line in drop_lines(drops, kept))

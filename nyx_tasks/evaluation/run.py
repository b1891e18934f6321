"""What every dataset family's scoring needs of one evaluation: the config, the artifact store,
the answering backend and the shard's counters, with the helpers that make results rows (a
value, its interval, its per-query scores until `paired_deltas`) and ask the answering model.

    run = EvalRun(cfg, store, backend, out, log)
    rows = [run.row("base", "docstrings_eval", "eval", 384, "mrr", per_query_scores)]
    rows = paired_deltas(rows, baseline="base", n_boot=1000)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nyx_tasks.core.base import StageError
from nyx_tasks.evaluation.metrics import (
    aggregate,
    bootstrap_ci,
    paired_bootstrap_ci,
    retrieval_scores,
)
from nyx_tasks.evaluation.report import COST_METRICS, DELTA_COLUMNS
from nyx_tasks.inference import GenerationError
from nyx_tasks.retrieval.answering import free_answer, parsed_answer

PER_QUERY = "_values"  # a row's per-query scores while the stage runs (`EvalRun.row`); never written


@dataclass
class EvalRun:
    """One evaluation: `cfg` the whole config (its `evaluate` section is `ev`), `backend` the
    answering model, `out` the shard's outputs (its `drops` and `extra` counters), `log` the
    stage's logger."""

    cfg: Any
    store: Any
    backend: Any
    out: Any
    log: Any

    @property
    def ev(self):
        return self.cfg.evaluate

    def row(self, model: str, dataset: str, split: str, dim: int, metric: str, values) -> dict:
        """A results row, its per-query `values` kept under `PER_QUERY` until `paired_deltas`."""
        ev = self.ev
        agg = aggregate(values)
        lo, hi = bootstrap_ci(values, n_boot=ev.bootstrap) if ev.bootstrap else (None, None)
        return {"model": model, "dataset": dataset, "split": split, "dim": int(dim), "metric": metric,
                "value": agg["mean"], "n": agg["n"], "ci_low": lo, "ci_high": hi, "protocol": ev.protocol,
                PER_QUERY: np.asarray(values, dtype=np.float64)}

    def cost_rows(self, model: str, dataset: str, split: str, dim: int, cost: dict) -> list[dict]:
        """index_bytes and, when queries were timed, latency p50 / p95; n: the queries timed (for
        index_bytes without timing: the documents searched); no interval."""
        base = {"model": model, "dataset": dataset, "split": split, "dim": int(dim), "ci_low": None,
                "ci_high": None, "protocol": self.ev.protocol}
        rows = [{**base, "metric": "index_bytes", "value": float(cost["index_bytes"]),
                 "n": cost["n_timed"] or cost["n_docs"]}] if cost["n_docs"] else []
        if cost["n_timed"]:
            rows += [{**base, "metric": f"latency_ms_{p}", "value": cost[f"{p}_ms"], "n": cost["n_timed"]}
                     for p in ("p50", "p95")]
        return rows

    def answers(self, reqs: list, options: list) -> list[str | None]:
        """Answers in request order; identical requests (the same top-1 at several dims) are sent
        once. `options[i]`: request i's options (None: free-form). Paper protocol: the free-form text
        (no schema), None only when the request failed."""
        backend = self.backend
        keys = [r.key(backend.model_id) for r in reqs]
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        unique = list(first)
        self.log.info("evaluate: %d answer requests (%d distinct) to %s", len(reqs), len(unique),
                      backend.model_id[:80])
        try:
            resps = dict(zip(unique, backend.generate([reqs[first[k]] for k in unique]), strict=True))
        except GenerationError as e:
            raise StageError(f"evaluate: {e}") from e
        self.out.extra["requests"] += len(unique)
        if self.ev.protocol == "paper":
            answers = [free_answer(resps[k]) for k in keys]
        else:
            answers = [parsed_answer(resps[k], opts) for k, opts in zip(keys, options, strict=True)]
        self.out.extra["unparseable_answers"] += sum(a is None for a in answers)
        return answers


def content_scores(ids: list[str], gold_of: dict[str, str], ranked, gold_ids: list[str], ks) -> dict:
    """`retrieval_scores` by content: each query's ranked corpus indices (best first, -1 pads) and
    gold chunk id are mapped to their content's first occurrence (`gold_of`, from
    `Corpus.representative_id`), so retrieving a copy of the gold (same text and images) is a hit."""
    ranked_ids = [[gold_of.get(ids[d], ids[d]) for d in row if d >= 0] for row in ranked]
    return retrieval_scores(ranked_ids, [gold_of.get(g, g) for g in gold_ids], ks)


def _pair_key(row: dict) -> tuple:
    """Rows with the same key were scored on the same queries (in the same order): the stage asks
    every retriever the same questions of a dataset/split, in one order, at every dim."""
    return row["dataset"], row["split"], row["dim"], row["metric"], row["n"]


def _delta(values, base: dict | None, n_boot: int) -> dict:
    """The `DELTA_COLUMNS` of a row with per-query `values` against the baseline's row `base`."""
    if base is None or values is None:
        return dict.fromkeys(DELTA_COLUMNS)
    if n_boot:
        d, lo, hi = paired_bootstrap_ci(values, base[PER_QUERY], n_boot=n_boot)
    else:  # no bootstrap: the difference of means, without an interval
        d, lo, hi = float(aggregate(values)["mean"] - aggregate(base[PER_QUERY])["mean"]), None, None
    return {"baseline": base["model"], "delta": d, "delta_ci_low": lo, "delta_ci_high": hi}


def paired_deltas(rows: list[dict], baseline: str, n_boot: int) -> list[dict]:
    """The rows (same order) with their per-query scores (`PER_QUERY`) dropped and the `DELTA_COLUMNS`
    set: every accuracy row of a retriever other than `baseline` whose baseline row has the same
    dataset, split, dim, metric and n gets its paired difference (`metrics.paired_bootstrap_ci`,
    `n_boot` resamples; 0: no interval); None elsewhere (the baseline's rows, cost rows, rows without
    per-query scores such as a retrieving retriever's benchmark rows, other queries)."""
    base = {_pair_key(r): r for r in rows if r["model"] == baseline and PER_QUERY in r}
    out = []
    for r in rows:
        values = r.get(PER_QUERY) if r["model"] != baseline and r["metric"] not in COST_METRICS else None
        row = {k: v for k, v in r.items() if k != PER_QUERY}
        out.append({**row, **_delta(values, base.get(_pair_key(r)), n_boot)})
    return out

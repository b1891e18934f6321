"""Evaluation metrics for NyxQA and the text-only sets (arXiv 2510.17354, "Experiments":
retrieval recall@k / MRR, RAG accuracy, answer F1 / EM), numpy only.

Retrieval has one gold (positive) chunk id per query. `retrieval_scores` gives the per-query
0/1 hits and reciprocal ranks, so that `bootstrap_ci` can put an interval on any of them;
`retrieval_metrics` is their mean. Answer-level metrics (judged RAG accuracy, token F1, EM) are
computed per query elsewhere and reduced here with `aggregate` (any mean) or `accuracy` (which
also checks that every judged score is 0 or 1). `paired_bootstrap_ci` puts an interval on the
difference of two retrievers' means over the same queries (one resample of queries for both).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_KS = (1, 5, 10)


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(
        isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1 for k in ks
    ):
        raise ValueError(f"ks must be a non-empty sequence of positive ints, got {ks!r}")
    return tuple(sorted(set(int(k) for k in ks)))


def gold_ranks(ranked_ids: Sequence[Sequence[str]], gold_ids: Sequence[str]) -> np.ndarray:
    """1-based rank of each query's gold id in its ranked list (first occurrence), 0 when absent.

    ranked_ids: per query, the retrieved chunk ids best first; gold_ids: per query, the positive
    chunk id. Returns an int64 array of len(gold_ids). Raises ValueError on empty input or
    mismatched lengths.
    """
    if len(ranked_ids) != len(gold_ids):
        raise ValueError(
            f"ranked_ids has {len(ranked_ids)} queries but gold_ids has {len(gold_ids)}"
        )
    if not gold_ids:
        raise ValueError("no queries: ranked_ids and gold_ids are empty")
    ranks = np.zeros(len(gold_ids), dtype=np.int64)
    for i, (ranked, gold) in enumerate(zip(ranked_ids, gold_ids, strict=True)):
        for r, chunk_id in enumerate(ranked, start=1):
            if chunk_id == gold:
                ranks[i] = r
                break
    return ranks


def retrieval_scores(
    ranked_ids: Sequence[Sequence[str]], gold_ids: Sequence[str], ks: Sequence[int] = DEFAULT_KS
) -> dict[str, np.ndarray]:
    """Per-query retrieval scores: {"recall@k": 0/1 float array for each k, "mrr": 1/rank (0 when
    the gold is not in the ranked list)}. Inputs as in `gold_ranks`; a k larger than a query's
    list simply counts the whole list. Feed any entry to `bootstrap_ci` for an interval."""
    ks = _check_ks(ks)
    ranks = gold_ranks(ranked_ids, gold_ids)
    found = ranks > 0
    scores = {f"recall@{k}": (found & (ranks <= k)).astype(np.float64) for k in ks}
    scores["mrr"] = np.where(found, 1.0 / np.maximum(ranks, 1), 0.0)
    return scores


def retrieval_metrics(
    ranked_ids: Sequence[Sequence[str]], gold_ids: Sequence[str], ks: Sequence[int] = DEFAULT_KS
) -> dict:
    """Mean retrieval metrics over queries: {"recall@k": float for each k, "mrr": float, "n": int}.

    recall@k is the fraction of queries whose gold id is among their top k (one gold per query,
    so it equals hit rate@k); mrr is the mean reciprocal rank of the gold, 0 when absent.
    Raises ValueError on empty input, mismatched lengths or bad ks.
    """
    scores = retrieval_scores(ranked_ids, gold_ids, ks)
    out: dict = {name: float(v.mean()) for name, v in scores.items()}
    out["n"] = len(gold_ids)
    return out


def _as_finite_1d(values, what: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError(f"{what}: no values")
    if not np.isfinite(x).all():
        raise ValueError(f"{what}: values must be finite, got NaN or inf")
    return x


def aggregate(values) -> dict:
    """Mean of per-query values (judged 0/1 RAG scores, token F1, EM): {"mean": float, "n": int}.

    One reducer for every answer-level metric, so that F1 and EM need no functions of their own.
    Raises ValueError on empty or non-finite input.
    """
    x = _as_finite_1d(values, "aggregate")
    return {"mean": float(x.mean()), "n": int(x.size)}


def accuracy(scores) -> float:
    """RAG accuracy: the mean of 0/1 judged scores (one per multiple-choice question). Raises
    ValueError on empty input or on any score other than 0 or 1 (a judge that leaked a
    probability or a parse failure would otherwise bias the mean silently)."""
    x = _as_finite_1d(scores, "accuracy")
    bad = ~np.isin(x, (0.0, 1.0))
    if bad.any():
        raise ValueError(f"accuracy: scores must be 0 or 1, got {x[bad][:5].tolist()}")
    return float(x.mean())


def _check_boot(n_boot, alpha) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive int, got {n_boot!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def _resample_means(x: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """The means of n_boot resamples of x with replacement, drawn from default_rng(seed)."""
    rng = np.random.default_rng(seed)
    means = np.empty(int(n_boot), dtype=np.float64)
    # Resample in blocks of about 4M indices so a large test set never needs n_boot x n memory;
    # the block size depends only on len(values), so results stay reproducible per seed.
    block = max(1, (1 << 22) // x.size)
    for start in range(0, n_boot, block):
        m = min(block, n_boot - start)
        idx = rng.integers(0, x.size, size=(m, x.size))
        means[start : start + m] = x[idx].mean(axis=1)
    return means


def bootstrap_ci(
    values, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) confidence interval of the mean of `values`.

    values: per-query scores (e.g. `retrieval_scores(...)["recall@1"]` or judged 0/1 scores);
    n_boot resamples with replacement, drawn from numpy's default_rng(seed), so the interval is
    the same for the same input and seed. Returns (lo, hi) floats; (v, v) when all values equal v.
    Dev sets are small (200 per modality group in the paper), hence intervals in the report.
    """
    x = _as_finite_1d(values, "bootstrap_ci")
    _check_boot(n_boot, alpha)
    if np.ptp(x) == 0.0:
        # Every resample mean is that value; skip float noise from summing it n times.
        return float(x[0]), float(x[0])
    lo, hi = np.quantile(_resample_means(x, n_boot, seed), [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def paired_bootstrap_ci(
    a, b, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float, float]:
    """The mean of a minus the mean of b, scored on the same queries (a[i] and b[i]: query i), with
    its percentile bootstrap (1 - alpha) interval: every resample draws one set of query indices
    for both, so what the two retrievers share (the hard and the easy queries) cancels, and the
    interval is narrower than the two unpaired ones taken apart whenever a and b are correlated.

    Returns (a.mean() - b.mean(), lo, hi); (d, d, d) when a - b is the constant d. n_boot, seed and
    alpha as in `bootstrap_ci` (same seed, same interval). Raises ValueError on empty, non-finite
    or unequal-length input.
    """
    x = _as_finite_1d(a, "paired_bootstrap_ci a")
    y = _as_finite_1d(b, "paired_bootstrap_ci b")
    if x.size != y.size:
        raise ValueError(f"paired_bootstrap_ci: a has {x.size} values but b has {y.size}; "
                         "pairing needs the same queries")
    _check_boot(n_boot, alpha)
    d = x - y  # resampling d with indices idx is resampling a and b with the same idx
    if np.ptp(d) == 0.0:
        return float(d[0]), float(d[0]), float(d[0])
    lo, hi = np.quantile(_resample_means(d, n_boot, seed), [alpha / 2, 1 - alpha / 2])
    return float(x.mean() - y.mean()), float(lo), float(hi)

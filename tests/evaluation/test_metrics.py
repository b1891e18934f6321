"""nyx_tasks.evaluation.metrics: recall@k and MRR on hand-computed cases, input errors, the
answer-level means, and the bootstrap confidence interval (contains the mean, reproducible per
seed, narrower with more data)."""

from __future__ import annotations

import numpy as np
import pytest

from nyx_tasks.evaluation.metrics import (
    accuracy,
    aggregate,
    bootstrap_ci,
    gold_ranks,
    paired_bootstrap_ci,
    retrieval_metrics,
    retrieval_scores,
)

# Gold at rank 1, at rank 3, absent, and at rank 7 of a list shorter than k=10.
RANKED = [
    ["g1", "a", "b"],
    ["a", "b", "g2", "c"],
    ["a", "b", "c"],
    ["a", "b", "c", "d", "e", "f", "g4"],
]
GOLD = ["g1", "g2", "g3", "g4"]


def test_gold_ranks_are_one_based_and_zero_when_absent():
    assert gold_ranks(RANKED, GOLD).tolist() == [1, 3, 0, 7]


def test_gold_rank_is_its_first_occurrence():
    assert gold_ranks([["a", "g", "g"]], ["g"]).tolist() == [2]


def test_recall_and_mrr_by_hand():
    m = retrieval_metrics(RANKED, GOLD)
    assert m["n"] == 4
    assert m["recall@1"] == pytest.approx(1 / 4)
    assert m["recall@5"] == pytest.approx(2 / 4)  # ranks 1 and 3
    assert m["recall@10"] == pytest.approx(3 / 4)  # k beyond the list still counts rank 7
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 0 + 1 / 7) / 4)
    assert set(m) == {"recall@1", "recall@5", "recall@10", "mrr", "n"}


def test_single_query_cases():
    assert retrieval_metrics([["g"]], ["g"], ks=(1,)) == {"recall@1": 1.0, "mrr": 1.0, "n": 1}
    absent = retrieval_metrics([[]], ["g"], ks=(3,))
    assert absent == {"recall@3": 0.0, "mrr": 0.0, "n": 1}


def test_custom_ks_are_deduplicated_and_sorted():
    m = retrieval_metrics(RANKED, GOLD, ks=[3, 1, 3])
    assert [k for k in m if k.startswith("recall@")] == ["recall@1", "recall@3"]
    assert m["recall@3"] == pytest.approx(2 / 4)


def test_per_query_scores_average_to_the_metrics():
    scores = retrieval_scores(RANKED, GOLD)
    assert scores["recall@5"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert scores["mrr"].tolist() == pytest.approx([1.0, 1 / 3, 0.0, 1 / 7])
    m = retrieval_metrics(RANKED, GOLD)
    assert all(m[name] == pytest.approx(v.mean()) for name, v in scores.items())


@pytest.mark.parametrize(
    ("ranked", "gold", "message"),
    [
        ([], [], "no queries"),
        ([["a"]], ["a", "b"], "1 queries but gold_ids has 2"),
        ([["a"], ["b"]], ["a"], "2 queries but gold_ids has 1"),
    ],
)
def test_retrieval_input_errors(ranked, gold, message):
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(ranked, gold)


@pytest.mark.parametrize("ks", [(), (0,), (1, -5), (1.5,), (True,)])
def test_bad_ks(ks):
    with pytest.raises(ValueError, match="ks must be"):
        retrieval_metrics([["a"]], ["a"], ks=ks)


def test_aggregate_and_accuracy():
    assert aggregate([0.5, 1.0, 0.0, 0.5]) == {"mean": 0.5, "n": 4}
    assert accuracy([1, 0, 1, 1]) == 0.75
    assert accuracy([True, False]) == 0.5
    with pytest.raises(ValueError, match="must be 0 or 1"):
        accuracy([1, 0.5])
    for fn in (aggregate, accuracy):
        with pytest.raises(ValueError, match="no values"):
            fn([])
        with pytest.raises(ValueError, match="finite"):
            fn([1.0, float("nan")])


def test_bootstrap_ci_contains_the_mean_and_is_reproducible():
    values = np.random.default_rng(1).binomial(1, 0.4, size=200).astype(float)
    lo, hi = bootstrap_ci(values, n_boot=500, seed=7)
    assert lo < values.mean() < hi
    assert lo >= 0.0 and hi <= 1.0
    assert bootstrap_ci(values, n_boot=500, seed=7) == (lo, hi)
    assert bootstrap_ci(values, n_boot=500, seed=8) != (lo, hi)


def test_bootstrap_ci_narrows_with_more_data():
    rng = np.random.default_rng(2)
    small = rng.binomial(1, 0.5, size=50).astype(float)
    large = rng.binomial(1, 0.5, size=5000).astype(float)
    width_small = np.subtract(*bootstrap_ci(small)[::-1])
    width_large = np.subtract(*bootstrap_ci(large)[::-1])
    # The width scales as 1/sqrt(n): 10x narrower here, so 3x is a safe margin.
    assert width_large * 3 < width_small


def test_bootstrap_ci_level_and_edge_cases():
    values = np.random.default_rng(3).normal(size=300)
    lo95, hi95 = bootstrap_ci(values, alpha=0.05)
    lo50, hi50 = bootstrap_ci(values, alpha=0.5)
    assert lo95 < lo50 < hi50 < hi95
    assert bootstrap_ci([0.25, 0.25, 0.25]) == (0.25, 0.25)
    assert bootstrap_ci([1.0], n_boot=10) == (1.0, 1.0)


def test_bootstrap_ci_on_a_set_larger_than_one_block():
    # Far beyond one block (4M indices): still reproducible and close to the normal interval.
    values = np.random.default_rng(4).binomial(1, 0.3, size=20_000).astype(float)
    lo, hi = bootstrap_ci(values, n_boot=400, seed=0)
    assert (lo, hi) == bootstrap_ci(values, n_boot=400, seed=0)
    se = values.std() / np.sqrt(values.size)
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"values": []}, "no values"),
        ({"values": [1.0, float("inf")]}, "finite"),
        ({"values": [1.0, 0.0], "n_boot": 0}, "n_boot"),
        ({"values": [1.0, 0.0], "alpha": 1.0}, "alpha"),
        ({"values": [1.0, 0.0], "alpha": 0.0}, "alpha"),
    ],
)
def test_bootstrap_ci_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_ci(**kwargs)


def test_paired_bootstrap_of_identical_arrays_is_zero():
    values = np.random.default_rng(5).binomial(1, 0.4, size=200).astype(float)
    assert paired_bootstrap_ci(values, values.copy(), n_boot=300, seed=0) == (0.0, 0.0, 0.0)


def test_paired_bootstrap_of_a_constant_shift_is_that_shift():
    b = np.random.default_rng(6).integers(0, 5, size=100).astype(float)
    assert paired_bootstrap_ci(b + 1.0, b, n_boot=300) == (1.0, 1.0, 1.0)
    assert paired_bootstrap_ci(b, b + 0.5, n_boot=300) == (-0.5, -0.5, -0.5)


def test_paired_bootstrap_is_the_difference_of_means_with_a_narrower_interval_when_correlated():
    # a and b share most of their per-query variance (hard and easy queries): b is a with a few
    # extra hits, so a - b varies far less than a or b does
    rng = np.random.default_rng(7)
    a = rng.binomial(1, 0.4, size=300).astype(float)
    b = np.maximum(a, rng.binomial(1, 0.1, size=300).astype(float))
    d, lo, hi = paired_bootstrap_ci(b, a, n_boot=1000, seed=0)
    assert d == b.mean() - a.mean() and lo <= d <= hi and lo > 0  # b is better, and the pairing shows it
    (alo, ahi), (blo, bhi) = bootstrap_ci(a, seed=0), bootstrap_ci(b, seed=0)
    assert blo < ahi  # unpaired, the two intervals overlap: apart, they cannot tell the retrievers apart
    assert (hi - lo) * 2 < min(ahi - alo, bhi - blo)
    assert paired_bootstrap_ci(b, a, n_boot=1000, seed=0) == (d, lo, hi)  # reproducible per seed
    # the same resampled queries for both: the interval of a - b is the bootstrap interval of a - b
    assert (lo, hi) == bootstrap_ci(b - a, n_boot=1000, seed=0)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (([1.0, 0.0], [1.0]), {}, "same queries"),
        (([], []), {}, "no values"),
        (([1.0, float("nan")], [1.0, 0.0]), {}, "finite"),
        (([1.0, 0.0], [0.0, 1.0]), {"n_boot": 0}, "n_boot"),
        (([1.0, 0.0], [0.0, 1.0]), {"alpha": 1.0}, "alpha"),
    ],
)
def test_paired_bootstrap_errors(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        paired_bootstrap_ci(*args, **kwargs)

"""The VLM-feedback selection rule (paper: stage 2). Every expectation is
written out by hand from the rule, never computed with the helpers."""

import pytest

from nyx_tasks.stages.feedback import num_windows, select_feedback, windows

D = [f"d{i}" for i in range(10)]


def sel(ranked, scores, window_size=1, stride=1, num_negatives=3, **kw):
    return select_feedback(ranked, scores, window_size, stride, num_negatives, **kw)


# --- num_windows / windows -------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "size", "stride", "expected"),
    [
        (0, 1, 1, 0),
        (30, 1, 1, 30),  # the paper's setting
        (6, 2, 2, 3),
        (5, 2, 2, 3),  # starts 0, 2, 4: the last window holds one document
        (5, 3, 1, 5),  # starts 0..4 whatever the size
        (7, 1, 3, 3),  # starts 0, 3, 6
        (1, 5, 1, 1),
    ],
)
def test_num_windows(n, size, stride, expected):
    assert num_windows(n, size, stride) == expected


@pytest.mark.parametrize(("n", "size", "stride"), [(-1, 1, 1), (3, 0, 1), (3, 1, 0)])
def test_num_windows_rejects_bad_arguments(n, size, stride):
    with pytest.raises(ValueError):
        num_windows(n, size, stride)


def test_windows_shapes():
    r = ["a", "b", "c", "d", "e"]
    assert windows(r, 1, 1) == [["a"], ["b"], ["c"], ["d"], ["e"]]
    assert windows(r, 2, 2) == [["a", "b"], ["c", "d"], ["e"]]
    assert windows(r, 3, 1) == [
        ["a", "b", "c"],
        ["b", "c", "d"],
        ["c", "d", "e"],
        ["d", "e"],
        ["e"],
    ]
    assert windows(r, 1, 3) == [["a"], ["d"]]  # b, c and e are in no window
    assert windows(r, 9, 9) == [["a", "b", "c", "d", "e"]]
    assert windows([], 2, 1) == []


def test_windows_rejects_bad_arguments():
    with pytest.raises(ValueError, match="window_size"):
        windows(["a"], 0, 1)
    with pytest.raises(ValueError, match="stride"):
        windows(["a"], 1, 0)


# --- positive ----------------------------------------------------------------------------


def test_paper_setting_single_correct_window():
    assert sel(D[:6], [0, 0, 1, 0, 0, 0]) == ("d2", ["d3", "d4", "d5"])


def test_tie_for_the_maximum_goes_to_the_earliest_window():
    assert sel(D[:5], [0.2, 0.8, 0.8, 0, 0], mode="paper") == ("d1", ["d2", "d3", "d4"])
    # strict: d2 also led to a correct answer, so it is no negative
    assert sel(D[:5], [0.2, 0.8, 0.8, 0, 0], mode="strict") == ("d1", ["d3", "d4"])


def test_maximum_beats_an_earlier_correct_window():
    # d0 helps a little, d3 most: the positive is the best window, not the first correct one
    assert sel(D[:5], [0.4, 0, 0, 1.0, 0], mode="paper") == ("d3", ["d4"])


def test_no_correct_window_drops_the_query():
    assert sel(D[:4], [0, 0, 0, 0]) == (None, [])
    assert sel(D[:4], [0, 0, 0, 0], mode="paper") == (None, [])


def test_score_equal_to_threshold_is_not_above_it():
    assert sel(D[:3], [0.5, 0.5, 0.2], threshold=0.5) == (None, [])
    assert sel(D[:3], [0.5, 0.6, 0.2], threshold=0.5) == ("d1", ["d2"])
    # a window scoring exactly the threshold did not lead to a correct answer: d1 may be a negative
    assert sel(D[:4], [0.9, 0.5, 0.2, 0], threshold=0.5) == ("d0", ["d1", "d2", "d3"])


def test_empty_ranking():
    assert sel([], []) == (None, [])
    assert sel([], [], window_size=3, stride=2, mode="paper") == (None, [])


# --- windows wider than 1 and strides ----------------------------------------------------


def test_overlapping_windows_positive_is_first_doc_of_winning_window():
    # size 2, stride 1 over d0..d7: [d0 d1] [d1 d2] [d2 d3] [d3 d4] [d4 d5] [d5 d6] [d6 d7] [d7]
    scores = [0, 0, 1, 0, 0, 1, 0, 0]  # correct: [d2 d3] and [d5 d6]
    assert sel(D[:8], scores, window_size=2, mode="strict") == ("d2", ["d4", "d7"])
    assert sel(D[:8], scores, window_size=2, mode="paper") == ("d2", ["d3", "d4", "d5"])


def test_disjoint_windows_strict_skips_rest_of_winning_window():
    # size 2, stride 2 over d0..d5: [d0 d1] [d2 d3] [d4 d5]
    assert sel(D[:6], [0, 1, 0], window_size=2, stride=2, mode="strict") == ("d2", ["d4", "d5"])
    assert sel(D[:6], [0, 1, 0], window_size=2, stride=2, mode="paper") == (
        "d2",
        ["d3", "d4", "d5"],
    )


def test_stride_2_documents_between_windows_can_be_strict_negatives():
    # size 1, stride 2 over d0..d6: [d0] [d2] [d4] [d6]; d1, d3, d5 are in no window
    scores = [0, 1, 1, 0]  # d2 and d4 correct
    assert sel(D[:7], scores, stride=2, mode="strict") == ("d2", ["d3", "d5", "d6"])
    assert sel(D[:7], scores, stride=2, mode="paper") == ("d2", ["d3", "d4", "d5"])


def test_short_last_window_can_win():
    # size 2, stride 2 over d0..d4: [d0 d1] [d2 d3] [d4]
    assert sel(D[:5], [0, 0, 1], window_size=2, stride=2) == ("d4", [])


# --- negatives ---------------------------------------------------------------------------


def test_strict_and_paper_differ_on_the_same_input():
    scores = [1, 1, 0, 1, 0, 0]
    assert sel(D[:6], scores, mode="paper") == ("d0", ["d1", "d2", "d3"])
    assert sel(D[:6], scores, mode="strict") == ("d0", ["d2", "d4", "d5"])


def test_default_mode_is_strict():
    assert sel(D[:4], [1, 1, 0, 0]) == ("d0", ["d2", "d3"])


def test_fewer_candidates_than_asked_returns_what_exists():
    assert sel(D[:3], [0, 1, 0], num_negatives=5, mode="paper") == ("d1", ["d2"])
    assert sel(D[:3], [0, 0, 1], num_negatives=5) == ("d2", [])
    assert sel(D[:4], [1, 1, 1, 1], num_negatives=3, mode="strict") == ("d0", [])


def test_num_negatives_zero():
    assert sel(D[:4], [0, 1, 0, 0], num_negatives=0) == ("d1", [])
    assert sel(D[:4], [0, 1, 0, 0], num_negatives=0, mode="paper") == ("d1", [])


def test_negatives_come_only_after_the_positive():
    # d0 and d1 rank above the positive and are never negatives
    assert sel(D[:5], [0, 0, 1, 0, 0], num_negatives=10, mode="paper") == ("d2", ["d3", "d4"])


def test_duplicate_ids_do_not_crash_and_positive_is_never_a_negative():
    ranked = ["d0", "d1", "d0", "d2"]
    assert sel(ranked, [1, 0, 0, 0], mode="paper") == ("d0", ["d1", "d2"])
    assert sel(ranked, [1, 0, 0, 0], mode="strict") == ("d0", ["d1", "d2"])
    # strict compares by id: a copy of a correct document is skipped too
    assert sel(["d0", "d1", "d2", "d1"], [1, 1, 0, 0], mode="strict") == ("d0", ["d2"])


def test_any_hashable_ids_and_tuple_scores():
    assert select_feedback((10, 20, 30, 40), (0.0, 0.7, 0.1, 0.0), 1, 1, 2) == (20, [40])


# --- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window_size": 0}, "window_size"),
        ({"stride": 0}, "stride"),
        ({"num_negatives": -1}, "num_negatives"),
        ({"mode": "loose"}, "mode"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    args = {"window_size": 1, "stride": 1, "num_negatives": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        select_feedback(D[:3], [0, 1, 0], **args)


@pytest.mark.parametrize(
    ("n", "size", "stride", "n_scores"),
    [
        (5, 1, 1, 4),  # 5 windows
        (5, 1, 1, 6),
        (5, 2, 2, 2),  # 3 windows: the short last one counts
        (5, 3, 1, 3),  # 5 windows, not 3
        (0, 1, 1, 1),  # no documents, no windows
    ],
)
def test_rejects_score_count_not_matching_windows(n, size, stride, n_scores):
    with pytest.raises(ValueError, match="window scores"):
        select_feedback(D[:n], [0.0] * n_scores, size, stride, 3)

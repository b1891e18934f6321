"""Answer judges (paper: stage 2): SQuAD v1.1 normalisation, token F1 and
exact match for free-form answers, option matching for multiple choice.
Expected values are worked out by hand."""

import pytest

from nyx_tasks.evaluation.judges import exact_match, judge, normalize_answer, option_match, token_f1

OPTIONS = ["Paris", "London", "Berlin", "Madrid"]  # correct: London, letter B


# --- normalisation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  A  cat,   an apple and THE dog. ", "cat apple and dog"),
        ("U.S.", "us"),  # punctuation is deleted, not replaced by a space
        ("Don't", "dont"),
        ("theater anthem", "theater anthem"),  # articles only as whole words
        ("the", ""),
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


# --- token F1 ------------------------------------------------------------------------------


def test_f1_ignores_case_punctuation_and_articles():
    assert token_f1("The Eiffel Tower!", ["eiffel tower"]) == 1.0


def test_f1_partial_overlap():
    # tokens [red, car] vs [red, truck]: P = 1/2, R = 1/2, F1 = 1/2
    assert token_f1("red car", ["the red truck"]) == pytest.approx(0.5)
    # [red, red, car] vs [red, truck]: one shared "red" (multiset), P = 1/3, R = 1/2, F1 = 2/5
    assert token_f1("red red car", ["red truck"]) == pytest.approx(0.4)
    # [paris] vs [paris, france]: P = 1, R = 1/2, F1 = 2/3
    assert token_f1("Paris", ["Paris, France"]) == pytest.approx(2 / 3)


def test_f1_is_max_over_golds():
    assert token_f1("red car", ["blue bus", "the red truck"]) == pytest.approx(0.5)
    assert token_f1("red car", ["blue bus", "the red truck", "A red car."]) == 1.0
    assert token_f1("red car", ["blue bus"]) == 0.0


def test_f1_empty_cases_follow_squad_v1_1():
    assert token_f1("", ["paris"]) == 0.0
    assert token_f1("paris", ["the"]) == 0.0
    assert token_f1("The", ["a"]) == 0.0  # both empty: still 0.0 in v1.1
    assert token_f1("paris", []) == 0.0


# --- exact match ---------------------------------------------------------------------------


def test_exact_match():
    assert exact_match("The Eiffel Tower!", ["eiffel tower"]) == 1.0
    assert exact_match("Eiffel", ["eiffel tower"]) == 0.0
    assert exact_match("red car", ["blue bus", "a red car"]) == 1.0
    assert exact_match("The", ["a"]) == 1.0  # both normalise to "", as in the v1.1 script
    assert exact_match("paris", []) == 0.0


# --- option matching -----------------------------------------------------------------------


@pytest.mark.parametrize("prediction", ["London", " London\n", "london.", "the London", "LONDON!"])
def test_option_text_of_correct_option(prediction):
    assert option_match(prediction, OPTIONS, 1) == 1.0


@pytest.mark.parametrize("prediction", ["Paris", "madrid", "Rome", "London Bridge", "", "the"])
def test_wrong_or_out_of_set_text(prediction):
    assert option_match(prediction, OPTIONS, 1) == 0.0


@pytest.mark.parametrize("prediction", ["B", "(B)", "B.", "B)", "  B  "])
def test_letter_forms(prediction):
    assert option_match(prediction, OPTIONS, 1) == 1.0


@pytest.mark.parametrize(
    "prediction",
    ["A", "(A)", "A.", "A)", "C", "E", "Z", "b", "(b)", "Option B", "B:", "[B]", "B B", "(B"],
)
def test_other_letters_and_wrappings_score_zero(prediction):
    # E and Z name no option; lower case and other wrappings are not accepted
    assert option_match(prediction, OPTIONS, 1) == 0.0


@pytest.mark.parametrize("prediction", ["B. London", "(B) London", "B) london!", "B.  the London"])
def test_letter_then_its_text(prediction):
    assert option_match(prediction, OPTIONS, 1) == 1.0


@pytest.mark.parametrize(
    "prediction",
    [
        "A. Paris",  # a consistent pair naming the wrong option
        "B. Paris",  # letter and text disagree
        "A. London",  # not the article "a" + "london": a letter form naming Paris
        "E. London",  # no option E
        "B.London",  # no whitespace after the letter form
        "B: London",
        "B London",
    ],
)
def test_letter_then_text_mismatch_scores_zero(prediction):
    assert option_match(prediction, OPTIONS, 1) == 0.0


def test_verbatim_option_text_wins_over_letters():
    letters_as_text = ["C", "A", "D", "B"]
    # "A" is the text of options[1] (and erased by SQuAD normalisation): it names options[1]
    assert option_match("A", letters_as_text, 1) == 1.0
    assert option_match("A", letters_as_text, 0) == 0.0
    # "B" is the text of options[3], not letter B
    assert option_match("B", letters_as_text, 3) == 1.0
    assert option_match("B", letters_as_text, 1) == 0.0


@pytest.mark.parametrize("correct_index", [-1, 4])
def test_option_match_rejects_bad_correct_index(correct_index):
    with pytest.raises(ValueError, match="correct_index"):
        option_match("London", OPTIONS, correct_index)


# --- judge ---------------------------------------------------------------------------------


def test_judge_dispatch():
    assert judge("red car", golds=["the red truck"], kind="free_form") == pytest.approx(0.5)
    assert judge("(B)", options=OPTIONS, correct_index=1, kind="multiple_choice") == 1.0
    assert judge("Paris", options=OPTIONS, correct_index=1, kind="multiple_choice") == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "free_form"},
        {"kind": "free_form", "golds": []},
        {"kind": "free_form", "options": OPTIONS, "correct_index": 1},
        {"kind": "multiple_choice", "correct_index": 1},
        {"kind": "multiple_choice", "options": OPTIONS},
        {"kind": "multiple_choice", "golds": ["London"]},
        {"kind": "open_ended", "golds": ["London"]},
    ],
)
def test_judge_rejects_missing_inputs_and_unknown_kind(kwargs):
    with pytest.raises(ValueError):
        judge("London", **kwargs)


def test_judge_kind_is_required():
    with pytest.raises(TypeError):
        judge("London", golds=["London"])

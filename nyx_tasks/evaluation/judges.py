"""Answer judges for VLM feedback (paper: stage 2): a free-form answer scores
its SQuAD v1.1 token F1 against the gold answers, a multiple-choice answer
scores 1.0 when it names the correct option. Pure functions, no heavy imports.

Normalisation and F1 follow the official SQuAD v1.1 evaluation script
(`evaluate-v1.1.py`), the judge FlashRAG uses as well.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

KINDS = ("free_form", "multiple_choice")

_PUNCT = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# Option letters, upper case only: a lone "a" is the article, not option A.
_LETTER = re.compile(r"\(([A-Z])\)|([A-Z])[.)]?")
_LETTER_THEN_TEXT = re.compile(r"(?:\(([A-Z])\)|([A-Z])[.)])\s+(.+)", re.DOTALL)


def normalize_answer(s: str) -> str:
    """SQuAD v1.1 normalisation: lower-case, delete ASCII punctuation (no space
    left behind: "U.S." -> "us"), replace the words a/an/the by a space, and
    collapse whitespace. Same steps in the same order as the official script."""
    text = s.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _f1(prediction_tokens: list[str], gold_tokens: list[str]) -> float:
    common = Counter(prediction_tokens) & Counter(gold_tokens)
    num_same = sum(common.values())
    # As in SQuAD v1.1, no shared token is 0.0, even when both sides are empty.
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    """Token F1 of `prediction` against its best gold answer (paper: stage 2,
    free-form judge). Tokens are the whitespace split of `normalize_answer`,
    counted as a multiset. 0.0 when no token is shared, which includes a
    prediction or gold normalising to nothing, and both at once (the v1.1
    script's rule; SQuAD v2.0 would give 1.0 there); 0.0 for no golds."""
    pred_tokens = normalize_answer(prediction).split()
    return max((_f1(pred_tokens, normalize_answer(g).split()) for g in golds), default=0.0)


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals some normalised gold answer,
    else 0.0 (0.0 for no golds). Unlike `token_f1`, two strings that both
    normalise to "" match, as in the v1.1 script."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def _letter_index(m: re.Match) -> int:
    return ord(m.group(1) or m.group(2)) - ord("A")


def option_match(prediction: str, options: Sequence[str], correct_index: int) -> float:
    """1.0 when `prediction` names `options[correct_index]`, else 0.0 (paper:
    stage 2, multiple-choice judge). The stage constrains the VLM's answer to
    the option texts, so this is a safety net for format noise.

    Accepted, checked in this order on the prediction with outer whitespace
    stripped (A is options[0], B options[1], ...); the first rule that applies
    decides:
      1. verbatim option text: equal to an option's text (outer whitespace
         stripped), which is what the schema-constrained VLM returns. Checked
         first because SQuAD normalisation erases an option text "A" (an
         article) and because text wins over letters: with options
         ["C", "A", "D", "B"], "A" names options[1].
      2. a letter then text: "(B) Paris", "B. Paris" or "B) Paris"
         (whitespace after the letter form required). It names option B only
         when the text normalises to option B's text; when they disagree the
         answer scores 0.0 and no later rule is tried (else "A. London" would
         reach rule 3 as the article "a" plus "london").
      3. normalised option text: `normalize_answer(prediction)` equals the
         normalised text of an option ("the london." names "London"). A
         prediction normalising to "" matches nothing here.
      4. a letter alone: "A", "(A)", "A." or "A)".
    Letters are upper case only (a lone "a" is the article). A letter past the
    last option, lower case, other wrappings ("Option B", "B: Paris") and any
    other text score 0.0. Raises ValueError when `correct_index` is not an
    index of `options`.
    """
    if not 0 <= correct_index < len(options):
        raise ValueError(f"correct_index {correct_index} is not an index of {len(options)} options")
    raw = prediction.strip()
    if raw in (texts := [o.strip() for o in options]):
        return float(raw == texts[correct_index])
    norm_options = [normalize_answer(o) for o in options]
    if m := _LETTER_THEN_TEXT.fullmatch(raw):
        i = _letter_index(m)
        named = i < len(options) and normalize_answer(m.group(3)) == norm_options[i]
        return float(named and i == correct_index)
    pred = normalize_answer(prediction)
    if pred and pred in norm_options:
        return float(pred == norm_options[correct_index])
    if m := _LETTER.fullmatch(raw):
        return float(_letter_index(m) == correct_index)
    return 0.0


def judge(
    prediction: str,
    *,
    golds: Sequence[str] | None = None,
    options: Sequence[str] | None = None,
    correct_index: int | None = None,
    kind: str,
) -> float:
    """Score one VLM answer (paper: stage 2): `"free_form"` -> `token_f1`
    against `golds`, `"multiple_choice"` -> `option_match` against
    `options[correct_index]`. Output in [0, 1]. Raises ValueError on an unknown
    kind or when the kind's inputs are missing (None, or no golds/options)."""
    if kind == "free_form":
        if not golds:
            raise ValueError("free_form judging needs golds: a non-empty list of gold answers")
        return token_f1(prediction, golds)
    if kind == "multiple_choice":
        if not options or correct_index is None:
            raise ValueError("multiple_choice judging needs options and correct_index")
        return option_match(prediction, options, correct_index)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")

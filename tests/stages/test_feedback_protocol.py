"""How feedback asks and judges a window, by `feedback.protocol` (a scripted VLM pins the logic; the
demo's real run is tests/stages/test_feedback_evaluate.py). strict: NyxQA multiple choice
constrained to the options, scored 1/0 by option match; paper (the released code, configs/paper.yaml):
the free-form prompt with the choices in the question, no schema, every answer scored by token F1
against the gold answer (NyxQA: the correct option's text); each stored window names its score's kind."""

from __future__ import annotations

from collections import Counter

import pytest

from nyx_tasks.core.config import GenerationConfig, load_config
from nyx_tasks.inference import ChatResponse
from nyx_tasks.retrieval.answering import Answering
from nyx_tasks.retrieval.corpora import Corpus
from nyx_tasks.stages.feedback import FeedbackShard, Ranking, WindowRequest, judge, select_feedback

CORPUS = Corpus(name="nyxqa", ids=["c0", "c1", "c2"], texts=["The tower in Paris.", "A bridge.", "A river."],
                image_ids=[[], [], []], paths={})
OPTIONS = ["Eiffel Tower", "Tower Bridge", "Big Ben", "Louvre"]
ROWS = [{"qa_id": "q0", "source": "nyxqa", "query": "Which landmark is in Paris?", "query_image_ids": [],
         "answer": "Eiffel Tower", "answers": []},
        {"qa_id": "t0", "source": "hotpotqa", "query": "Where is the tower?", "query_image_ids": [],
         "answer": "Paris", "answers": ["Paris", "Paris, France"]}]


def shard() -> tuple[FeedbackShard, Ranking, list[WindowRequest]]:
    data = FeedbackShard("s", ROWS, CORPUS, {"q0": {"options": OPTIONS, "correct_index": 0}})
    ranking = Ranking(scores=[[0.9, 0.5, 0.1]] * 2, ranked=[[1, 0, 2]] * 2, hits=[[1, 0, 2]] * 2, embedder_id="x")
    return data, ranking, [WindowRequest(q, w, [d]) for q in range(2) for w, d in enumerate([1, 0, 2])]


# what the scripted VLM says for the three windows of each query (rank order: c1, c0, c2)
FREE = ["Tower Bridge", "the Eiffel Tower", "Eiffel", "London", "Paris", "in Paris, France"]
JSON = ['{"answer": "Tower Bridge"}', '{"answer": "Eiffel Tower"}', '{"answer": "Big Ben"}',
        '{"answer": "London"}', '{"answer": "Paris"}', '{"answer": "Paris France"}']


def test_paper_judges_free_form_answers_by_token_f1_against_the_correct_option():
    data, ranking, wins = shard()
    extra: Counter[str] = Counter()
    scores, rows = judge(data, ranking, wins, [ChatResponse(t) for t in FREE], extra, protocol="paper")
    assert [r["judge"] for r in rows] == ["token_f1"] * 6
    assert scores[0] == pytest.approx([0.5, 1.0, 2 / 3])  # vs "Eiffel Tower": articles and case aside
    assert scores[1] == pytest.approx([0.0, 1.0, 0.8])  # the best over the gold answers
    assert extra["unparseable_answers"] == 0
    # the positive: the first window with the best F1, when that is above the quality threshold
    assert select_feedback(["c1", "c0", "c2"], scores[0], 1, 1, 1, 0.0, "paper") == ("c0", ["c2"])
    assert select_feedback(["c1", "c0", "c2"], [0.5, 0.0, 0.4], 1, 1, 1, 0.0, "paper") == ("c1", ["c0"])
    assert select_feedback(["c1", "c0", "c2"], [0.5, 0.0, 0.4], 1, 1, 1, 0.5, "paper") == (None, [])


def test_strict_scores_multiple_choice_by_option_match_and_refuses_free_text():
    data, ranking, wins = shard()
    scores, rows = judge(data, ranking, wins, [ChatResponse(t) for t in JSON], Counter(), protocol="strict")
    assert [r["judge"] for r in rows] == ["option_match"] * 3 + ["token_f1"] * 3
    assert scores[0] == [0.0, 1.0, 0.0]
    extra: Counter[str] = Counter()
    scores, _ = judge(data, ranking, wins, [ChatResponse(t) for t in FREE], extra, protocol="strict")
    assert extra["unparseable_answers"] == 6 and scores == [[0.0] * 3, [0.0] * 3]


def test_the_paper_request_puts_the_choices_in_the_question_and_constrains_nothing():
    asking = Answering(GenerationConfig(), "v1", CORPUS, "<image>", 10)
    paper = asking.request(ROWS[0]["query"], [], [0], options=OPTIONS, protocol="paper")
    strict = asking.request(ROWS[0]["query"], [], [0], options=OPTIONS, protocol="strict")
    assert paper.json_schema is None and strict.json_schema is not None
    text = " ".join(p["text"] for m in paper.messages for p in
                    (m["content"] if isinstance(m["content"], list) else [{"text": m["content"]}]) if "text" in p)
    assert all(o in text for o in OPTIONS) and "The tower in Paris." in text


def test_the_paper_profile_judges_feedback_as_the_released_code():
    cfg = load_config("paper")
    assert (cfg.feedback.protocol, cfg.feedback.threshold, cfg.evaluate.protocol) == ("paper", 0.0, "paper")
    assert load_config("demo").feedback.protocol == "strict"

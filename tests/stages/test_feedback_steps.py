"""The feedback stage's steps (`window_requests`, `judge`, `select`, `triplets`) on small
hand-made inputs: a five-document corpus, two or three queries and their rankings. Every
expectation is written out by hand."""

import logging
from collections import Counter
from types import SimpleNamespace

import pytest

from nyx_tasks.core.config import FeedbackConfig
from nyx_tasks.core.hashing import stable_hash
from nyx_tasks.core.log import DropCounter
from nyx_tasks.inference.base import ChatResponse
from nyx_tasks.retrieval.corpora import Corpus
from nyx_tasks.stages.feedback import (
    FeedbackShard,
    Ranking,
    Selection,
    WindowRequest,
    judge,
    select,
    triplets,
    window_requests,
)

CORPUS = Corpus("t", ["a", "b", "c", "d", "e"], ["ta", "tb", "tc", "td", "te"],
                [[], ["img-b"], [], [], []], {"img-b": "images/b.png"})
OPTIONS = ["red", "green", "blue"]


def row(qa_id, **kw):
    base = {"qa_id": qa_id, "source": "s", "query": f"q {qa_id}", "query_image_ids": [], "answer": "",
            "answers": [], "split": "train", "modality": "text"}
    return {**base, **kw}


def ranking(ranked, scores=None):
    """A `Ranking` as `rank` builds it from `search`'s output (-1 pads dropped from the hits)."""
    scores = scores or [[1.0 - 0.1 * k for k in range(len(r))] for r in ranked]
    return Ranking(scores, ranked, [[d for d in r if d >= 0] for r in ranked], "emb-1")


def out():
    return SimpleNamespace(drops=DropCounter(logging.getLogger("test")), extra=Counter())


def test_window_requests_go_query_by_query_over_each_ranking():
    r = ranking([[3, 1, 4], [2, -1, -1], [-1, -1, -1]])
    assert window_requests(r, 2, 1) == [
        WindowRequest(0, 0, [3, 1]), WindowRequest(0, 1, [1, 4]), WindowRequest(0, 2, [4]),
        WindowRequest(1, 0, [2]),  # the -1 pads are not documents; a query with no hits asks nothing
    ]
    assert window_requests(r, 1, 2) == [WindowRequest(0, 0, [3]), WindowRequest(0, 1, [4]), WindowRequest(1, 0, [2])]


def test_judge_scores_each_window_and_stores_its_row():
    data = FeedbackShard("s", [row("mc"), row("ff", answer="Paris", answers=["Paris", "Paris, France"])], CORPUS,
                         {"mc": {"qa_id": "mc", "options": OPTIONS, "correct_index": 1}})
    r = ranking([[4, 0, 2], [1, 3, -1]])
    wins = window_requests(r, 2, 2)  # mc: [4, 0], [2]; ff: [1, 3]
    resps = [ChatResponse('{"answer": "green"}'), ChatResponse("", error="refused"),
             ChatResponse('{"answer": "paris france"}')]
    extra = Counter()
    scores, rows = judge(data, r, wins, resps, extra)
    assert scores == [[1.0, 0.0], [1.0]]
    assert extra == {"window_score_1.0": 2, "window_score_0.0": 1, "unparseable_answers": 1}
    assert rows == [
        {"qa_id": "mc", "source": "s", "window": 0, "doc_ids": ["e", "a"], "ranks": [0, 1], "answer": "green",
         "score": 1.0, "judge": "option_match"},
        {"qa_id": "mc", "source": "s", "window": 1, "doc_ids": ["c"], "ranks": [2], "answer": None,
         "score": 0.0, "judge": "option_match"},
        {"qa_id": "ff", "source": "s", "window": 0, "doc_ids": ["b", "d"], "ranks": [0, 1],
         "answer": "paris france", "score": 1.0, "judge": "token_f1"},
    ]


def test_judge_needs_one_response_per_window():
    data = FeedbackShard("s", [row("ff", answers=["x"])], CORPUS, {})
    r = ranking([[0, 1]])
    with pytest.raises(ValueError):
        judge(data, r, window_requests(r, 1, 1), [ChatResponse('{"answer": "x"}')], Counter())


def test_select_drops_unhelped_queries_and_locates_the_rest():
    data = FeedbackShard("s", [row("q0"), row("q1"), row("q2")], CORPUS, {})
    r = ranking([[4, 0, 2, 1, 3], [0, 1, -1, -1, -1], [2, 3, 4, 0, 1]])
    cfg = FeedbackConfig(num_negatives=2, mode="strict")
    o = out()
    picked = select(data, r, [[0.0, 0.0, 1.0, 0.0, 0.5], [0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]], cfg, o)
    # q0: positive at rank 2 ("c"); "d" (rank 4, a helpful window) is skipped in strict mode
    # q1: no window helps; q2: positive at the last rank, nothing after it
    assert picked == [Selection(0, "c", (2, 2), ["b"], [(1, 3)]), Selection(2, "b", (1, 4), [], [])]
    assert o.drops.as_dict() == {"no_helpful_window": 1}
    assert o.extra == {"positive_rank_02": 1, "positive_rank_04": 1, "queries_short_of_negatives": 2}
    o = out()
    paper = select(data, r, [[0.0, 0.0, 1.0, 0.0, 0.5], [0.0, 0.0], [0.0] * 5], cfg.model_copy(update={"mode": "paper"}), o)
    assert paper == [Selection(0, "c", (2, 2), ["b", "d"], [(1, 3), (3, 4)])]
    assert o.extra == {"positive_rank_02": 1} and o.drops.as_dict() == {"no_helpful_window": 2}


def test_triplets_carry_the_selected_documents_with_their_scores_and_ranks():
    data = FeedbackShard("s", [row("q0", answer="x"), row("q1")], CORPUS, {})
    r = ranking([[4, 0, 2, 1], [0, 1, 2, 3]], scores=[[0.9, 0.8, 0.7, 0.6], [0.5, 0.4, 0.3, 0.2]])
    got = triplets(data, r, [Selection(0, "a", (0, 1), ["b", "e"], [(1, 3), (4, 0)])])
    assert got == [{**row("q0", answer="x"),
                    "pos_chunk_id": "a", "pos_text": "ta", "pos_image_ids": [], "pos_score": 0.8, "pos_rank": 1,
                    "neg_chunk_ids": ["b", "e"], "neg_texts": ["tb", "te"], "neg_image_ids": [["img-b"], []],
                    "neg_scores": [0.6, 0.9], "neg_ranks": [3, 0],
                    "miner_id": "feedback:emb-1", "miner_hash": stable_hash("feedback:emb-1")}]
    assert triplets(data, r, []) == []

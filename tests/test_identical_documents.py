"""Identical documents count once: a document is its content, the text plus
its ordered image ids. Mining, the retrieval that feedback and evaluate share, and the
evaluation's hit test rank each content once; the same text with other images stays a
different document. The embedder is scripted: a content's vector is fixed by its text and
images, so copies get the same vector, as any real embedder gives them."""

import numpy as np
import pytest

from nyx_tasks.core.config import MineConfig, SearchConfig
from nyx_tasks.evaluation.run import content_scores
from nyx_tasks.retrieval.corpora import Corpus, search
from nyx_tasks.retrieval.search import content_keys, distinct_contents, exact_topk
from nyx_tasks.stages.mine import mine_negatives, positive_rank, select_negatives

BACKENDS = [SearchConfig(backend="faiss"), SearchConfig(backend="torch", doc_chunk=7)]


def fan(n_distinct: int) -> np.ndarray:
    """Unit vectors at angles 0, 0.01, 0.02, ...: content j is the (j+1)-th closest to QUERY."""
    a = 0.01 * np.arange(n_distinct)
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


QUERY = np.array([[1.0, 0.0]], np.float32)


def corpus_with_copies(contents, order):
    """A corpus listing `contents[j]` for each j in `order` (a j listed twice is a copy), and
    its vectors (content j at angle 0.01 j)."""
    vecs = fan(len(contents))
    texts = [contents[j][0] for j in order]
    images = [list(contents[j][1]) for j in order]
    return texts, images, vecs[order]


def keyed(texts, images):
    return [(t, tuple(i)) for t, i in zip(texts, images, strict=True)]


# ------------------------------------------------------------------ mining
def test_select_negatives_gives_a_repeated_content_one_rank():
    # the content of each ranked document: 0 is the positive, 2 its copy, 'x' comes three times
    keys = ["pos", "a", "pos", "b", "x", "x", "c", "x", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n"]
    texts = [f"text {k}" for k in keys]
    ranked = list(range(len(keys)))
    p = select_negatives(ranked, [1.0 - 0.01 * r for r in ranked], 0, keys, texts, MineConfig(range_min=3), 1.0)
    # distinct candidates in rank order: a b x c d e f ... ; skip 3 (a b x), keep 5
    assert [keys[d] for d in p.indices] == ["c", "d", "e", "f", "g"]
    assert p.ranks == [6, 8, 9, 10, 11]  # raw search ranks of the kept documents
    assert p.excluded == {"positive": 2, "same_text": 0, "guard": 0, "duplicate": 2}
    p0 = select_negatives(ranked, [1.0] * len(ranked), 0, keys, texts, MineConfig(range_min=0), 1.0)
    assert [keys[d] for d in p0.indices] == ["a", "b", "x", "c", "d"]  # the copy of x never comes twice


@pytest.mark.parametrize("search_cfg", BACKENDS, ids=["faiss", "torch"])
def test_mining_text_copies_ranks_each_content_once(search_cfg):
    contents = [(f"passage {j}", ()) for j in range(30)]
    # content 0 is the positive; 0, 2, 5 and 12 are repeated, 0 first appears late in the corpus
    order = [3, 1, 0, 2, 5, 2, 4, 0, 6, 7, 5, 8, 9, 10, 11, 12, 12, 12, *range(13, 30), 0]
    texts, images, d_vecs = corpus_with_copies(contents, order)
    keys = content_keys(texts, images)
    cfg = MineConfig(search=search_cfg)
    for pos in (order.index(0), len(order) - 1):  # the positive given as its first or its last copy
        picks, positives, _, ranked = mine_negatives(QUERY, d_vecs, [pos], keys, texts, cfg)
        p = picks[0]
        negs = [texts[d] for d in p.indices]
        # the 11th..15th other contents, whatever the copies: exactly sentence-transformers' rule
        assert negs == [f"passage {j}" for j in range(11, 16)]
        assert len(set(negs)) == len(negs) and "passage 0" not in negs
        assert positives == [pos] and positive_rank(ranked[0], pos, keys) == 0
        hits = [d for d in ranked[0] if d >= 0]
        assert len({keys[d] for d in hits}) == len(hits)  # the search returns each content once
        assert all(order.index(order[d]) == d for d in hits)  # at its first occurrence
    # mining the corpus without its copies gives the same negatives
    base_texts = [t for t, _ in contents]
    base, _, _, _ = mine_negatives(QUERY, fan(30), [0], content_keys(base_texts), base_texts, cfg)
    assert [base_texts[d] for d in base[0].indices] == negs


def test_mining_mixed_same_text_other_images_stays_distinct():
    contents = [("the positive", ("img-p",)),                  # 0: the positive
                ("the positive", ()),                          # 1: its text without its image
                ("shared text", ("img-a", "img-b")),           # 2
                ("shared text", ("img-b", "img-a")),           # 3: other image order, another document
                ("shared text", ()),                           # 4: same text, no images
                *[(f"chunk {j}", ()) for j in range(5, 20)]]
    order = [0, 2, 1, 2, 0, 3, 2, 4, *range(5, 20), 3]
    texts, images, d_vecs = corpus_with_copies(contents, order)
    keys = content_keys(texts, images)
    assert len(set(keys)) == 20 and distinct_contents(keys).keep.tolist() == [0, 1, 2, 5, 7, *range(8, 23)]
    cfg = MineConfig(range_min=0, num_negatives=5, exclude_same_text=False)
    picks, _, _, ranked = mine_negatives(QUERY, d_vecs, [4], keys, texts, cfg)  # the positive's second copy
    got = [(texts[d], tuple(images[d])) for d in picks[0].indices]
    assert got == [contents[j] for j in (1, 2, 3, 4, 5)]  # same text, other images: distinct negatives
    assert contents[0] not in got and len(set(got)) == 5
    # the paper's default also drops documents with the positive's text (not its copies: those are it)
    picks, _, _, _ = mine_negatives(QUERY, d_vecs, [4], keys, texts, MineConfig(range_min=0))
    assert [(texts[d], tuple(images[d])) for d in picks[0].indices] == [contents[j] for j in (2, 3, 4, 5, 6)]
    assert picks[0].excluded["same_text"] == 1 and picks[0].excluded["positive"] == 1


# ------------------------------------------------------------------ search and retrieval
@pytest.mark.parametrize("search_cfg", BACKENDS, ids=["faiss", "torch"])
def test_exact_topk_over_distinct_rows_returns_corpus_indices(search_cfg):
    d = fan(6)[[0, 1, 0, 2, 1, 3, 4, 5]]
    keep = distinct_contents(content_keys(["a", "b", "a", "c", "b", "d", "e", "f"])).keep
    s, i = exact_topk(QUERY, d, 7, search_cfg, keep=keep)
    assert i.tolist() == [[0, 1, 3, 5, 6, 7, -1]] and np.isneginf(s[0, -1])
    np.testing.assert_allclose(s[0, :6], (QUERY @ fan(6).T)[0], atol=1e-6)


def nyx_corpus():
    """Chunks c0..c7: c2 copies c0, c5 copies c1; c3 has c0's text with an image, c6 c1's images reversed."""
    rows = [("c0", "alpha", []), ("c1", "beta", ["i1", "i2"]), ("c2", "alpha", []), ("c3", "alpha", ["i1"]),
            ("c4", "gamma", []), ("c5", "beta", ["i1", "i2"]), ("c6", "beta", ["i2", "i1"]), ("c7", "delta", [])]
    corpus = Corpus("nyxqa", [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], {})
    content = {k: j for j, k in enumerate(dict.fromkeys(keyed(corpus.texts, corpus.image_ids)))}
    vecs = fan(len(content))[[content[k] for k in keyed(corpus.texts, corpus.image_ids)]]
    return corpus, vecs


def test_retrieval_search_ranks_each_content_once():
    corpus, d_vecs = nyx_corpus()
    distinct = corpus.distinct()
    assert distinct.keep.tolist() == [0, 1, 3, 4, 6, 7] and distinct.has_duplicates
    assert corpus.representative_id(distinct) == {"c0": "c0", "c1": "c1", "c2": "c0", "c3": "c3", "c4": "c4",
                                                  "c5": "c1", "c6": "c6", "c7": "c7"}
    _, ranked = search(QUERY, d_vecs, 8, SearchConfig(backend="faiss"), distinct=distinct)
    assert [corpus.ids[d] for d in ranked[0] if d >= 0] == ["c0", "c1", "c3", "c4", "c6", "c7"]
    _, plain = search(QUERY, d_vecs, 3, SearchConfig(backend="torch"))  # without: every copy takes a rank
    assert sorted(plain[0].tolist()[:2]) == [0, 2]


# ------------------------------------------------------------------ evaluation
def test_evaluation_counts_a_copy_of_the_gold_as_a_hit():
    corpus, d_vecs = nyx_corpus()
    distinct = corpus.distinct()
    gold_of = corpus.representative_id(distinct)
    queries = np.concatenate([QUERY, fan(6)[[1]], fan(6)[[2]]])  # nearest: alpha, beta (i1 i2), alpha (i1)
    _, ranked = search(queries, d_vecs, 3, SearchConfig(backend="faiss"), distinct=distinct)
    assert [corpus.ids[ranked[i][0]] for i in range(3)] == ["c0", "c1", "c3"]
    # q0's gold is c2, a copy of the retrieved c0; q1's gold c5, a copy of c1; q2's gold is c0, the
    # text-only alpha, while q2 retrieves c3 (alpha with an image): another document, not a hit at 1
    got = content_scores(corpus.ids, gold_of, ranked, ["c2", "c5", "c0"], ks=(1, 3))
    assert got["recall@1"].tolist() == [1.0, 1.0, 0.0] and got["mrr"][:2].tolist() == [1.0, 1.0]
    # even from a ranking that lists copies, a copy of the gold counts at its first rank
    assert content_scores(corpus.ids, gold_of, [[4, 2, 0]], ["c0"], ks=(1, 2))["mrr"].tolist() == [0.5]

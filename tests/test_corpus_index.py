"""Corpora at scale: the corpus table (texts by row id, read_corpus's rows
and drops), vector shards written once and atomically, and sharded exact search equal to a
search of the concatenated corpus, ties included."""

import hashlib
import json
import os

import numpy as np
import pytest

from nyx_tasks.core.config import EmbedderConfig, SearchConfig, TextSetConfig
from nyx_tasks.embedding.base import l2_normalise, matryoshka
from nyx_tasks.retrieval.search import content_keys, distinct_contents, exact_topk
from nyx_tasks.retrieval.vector_shards import (
    best_k,
    corpus_vectors,
    embed_shard,
    ensure_embedded,
    search_shards,
    topk_ties_by_row,
)
from nyx_tasks.sources import corpus_table as ct
from nyx_tasks.sources.corpus_table import corpus_key, corpus_table
from nyx_tasks.sources.text_sets import read_corpus
from nyx_tasks.store.artifacts import ArtifactStore

SETS = ["hotpotqa", "2wikimultihopqa", "musique"]
BACKENDS = ["faiss", "torch"]


def packaged(name):
    return TextSetConfig(name=name, questions=[f"pkgdata:text_sets/{name}/questions.jsonl"],
                         corpus=[f"pkgdata:text_sets/{name}/corpus.jsonl"])


def messy_set(tmp_path):
    """Two files (JSONL and Parquet) with every kind of bad row read_corpus drops."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = [json.dumps({"id": "a", "contents": "alpha"}), "{not json", json.dumps([1, 2]),
             json.dumps({"id": "b", "contents": "  "}), json.dumps({"id": "c"}),
             json.dumps({"id": "a", "contents": "alpha again"}),  # duplicate id
             json.dumps({"contents": "no id"}), json.dumps({"id": 7, "contents": "alpha"}),  # same text as a
             json.dumps({"id": "d", "contents": "delta"})]
    (tmp_path / "c1.jsonl").write_text("\n".join(lines) + "\n")
    pq.write_table(pa.table({"id": ["e", "d", "f", "g"], "contents": ["echo", "dup id", None, "delta"]}),
                   tmp_path / "c2.parquet")
    return TextSetConfig(name="messy", questions=[str(tmp_path / "c1.jsonl")],
                         corpus=[str(tmp_path / "c1.jsonl"), str(tmp_path / "c2.parquet")])


def recorder():
    seen = []
    return seen, lambda reason, where: seen.append((reason, where))


@pytest.mark.parametrize("name", SETS + ["messy"])
def test_the_table_holds_read_corpus_rows_and_reports_its_drops(tmp_path, name):
    ts = messy_set(tmp_path) if name == "messy" else packaged(name)
    want_drops, drop = recorder()
    docs = read_corpus(ts, drop)
    got_drops, drop2 = recorder()
    table = corpus_table(ArtifactStore(str(tmp_path / "root")), ts, drop2, row_group=4, file_rows=8)
    assert len(table) == len(docs)
    assert table.doc_ids(np.arange(len(docs))) == [d.doc_id for d in docs]
    assert sum(table.iter_texts(), []) == [d.text for d in docs]
    assert got_drops == want_drops
    texts = [d.text for d in docs]
    want = distinct_contents(content_keys(texts)).rep
    np.testing.assert_array_equal(table.rep(np.arange(len(texts))), want)
    np.testing.assert_array_equal(table.repeats()[0], np.flatnonzero(want != np.arange(len(texts))))
    np.testing.assert_array_equal(table.rep([len(texts) - 1, 0]), want[[len(texts) - 1, 0]])
    if name == "messy":
        assert {r for r, _ in want_drops} == {"messy_corpus_malformed_invalid_json", "messy_corpus_empty_text",
                                             "messy_corpus_malformed_not_an_object", "messy_corpus_duplicate_id"}
        assert table.manifest["distinct"] == len(set(texts)) < len(texts)


def test_an_image_column_keeps_each_rows_urls_and_identical_means_same_text_and_images(tmp_path):
    """A corpus that names an image column: each row's image URLs (relative paths read beside their
    file), a bad image value a named drop, a duplicate id dropped with its images, and identical
    documents the same text with the same images in order (across row groups and files)."""
    rows = [{"id": "a", "contents": "a car", "pics": ["x.png"]},
            {"id": "b", "contents": "a car", "pics": ["y.png"]},            # same text, other image
            {"id": "c", "contents": "a car", "pics": "x.png"},              # one string: same as a
            {"id": "a", "contents": "dup id", "pics": ["z.png"]},           # duplicate id: dropped
            {"id": "d", "contents": "bad", "pics": [3]},                    # not strings: dropped
            {"id": "e", "contents": "a car", "pics": ["y.png", "x.png"]},   # other order: another document
            {"id": "f", "contents": "a car", "pics": ["https://example.org/x.png"]},
            {"id": "g", "contents": "no pics"}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ts = TextSetConfig(name="pics", questions=[str(tmp_path / "d.jsonl")], corpus=[str(tmp_path / "d.jsonl")],
                       corpus_image_column="pics")
    seen, drop = recorder()
    table = corpus_table(ArtifactStore(str(tmp_path / "root")), ts, drop, row_group=2, file_rows=4)
    x, y = ((tmp_path / n).as_uri() for n in ("x.png", "y.png"))
    assert table.doc_ids(np.arange(len(table))) == ["a", "b", "c", "e", "f", "g"]
    assert table.images(np.arange(len(table))) == [(x,), (y,), (x,), (y, x), ("https://example.org/x.png",), ()]
    assert sum(table.iter_contents(1, 5), []) == [("a car", (y,)), ("a car", (x,)), ("a car", (y, x)),
                                                  ("a car", ("https://example.org/x.png",))]
    assert table.rep(np.arange(len(table))).tolist() == [0, 1, 0, 3, 4, 5]
    assert sorted(r for r, _ in seen) == ["pics_corpus_bad_images", "pics_corpus_duplicate_id"]
    assert corpus_key(ts) != corpus_key(ts.model_copy(update={"corpus_image_column": None}))
    text_only = corpus_table(ArtifactStore(str(tmp_path / "root")), ts.model_copy(update={"corpus_image_column": None}))
    assert not text_only.has_images and text_only.rep(np.arange(len(text_only))).tolist()[:3] == [0, 0, 0]


def test_texts_by_row_read_only_their_row_groups_and_the_table_is_built_once(tmp_path, monkeypatch):
    ts = packaged("hotpotqa")
    docs = read_corpus(ts, lambda *a: None)
    store = ArtifactStore(str(tmp_path))
    table = corpus_table(store, ts, row_group=4, file_rows=12)
    assert [f["rows"] for f in table.manifest["files"]] == [12, 12, 12, 12, 8]
    rows = np.random.default_rng(0).integers(0, len(docs), 40)
    assert table.texts(rows) == [docs[r].text for r in rows]
    assert table.texts([]) == []
    for start, stop in [(0, 1), (3, 9), (11, 13), (50, 99)]:
        assert sum(table.iter_texts(start, stop), []) == [d.text for d in docs[start:stop]]
    with pytest.raises(IndexError):
        table.texts([len(docs)])
    read = []
    real = ct.CorpusTable._row_group
    monkeypatch.setattr(ct.CorpusTable, "_row_group", lambda self, g, c: read.append(g) or real(self, g, c))
    table.texts([13, 1, 14, 2])
    assert sorted(read) == [0, 3]
    monkeypatch.setattr(ct, "_build", lambda *a: pytest.fail("built twice"))
    again = corpus_table(store, ts)
    assert again.key == table.key and len(again) == len(docs) and again.row_group == 4


def test_equal_hashes_are_checked_against_the_strings():
    hashes = np.array([5, 5, 7, 5, 7, 2**63 + 5], np.uint64)  # rows 0, 1 and 3 collide; only 0 and 3 are equal
    values = ["a", "b", "c", "a", "c", "z"]
    rows, firsts = ct._repeats(hashes, lambda idx: [values[i] for i in idx])
    assert rows.tolist() == [3, 4] and firsts.tolist() == [0, 2]


def test_a_changed_corpus_file_is_a_new_table(tmp_path):
    ts = messy_set(tmp_path)
    key = corpus_key(ts)
    path = tmp_path / "c1.jsonl"
    path.write_text(path.read_text() + json.dumps({"id": "z", "contents": "zulu"}) + "\n")
    assert corpus_key(ts) != key


# ------------------------------------------------------------------------------- vector shards
class Embedder:
    """Deterministic unit vectors from each text's hash; counts the rows it embeds, and fails on
    any text in `fail_on`."""

    model_id, dim = "fake:hash-16", 16

    def __init__(self, fail_on=()):
        self.embedded, self.fail_on = [], set(fail_on)

    def embed(self, items, role):
        assert role == "document"
        out = []
        for it in items:
            if it.text in self.fail_on:
                raise RuntimeError(f"simulated crash on {it.text!r}")
            seed = int.from_bytes(hashlib.sha256(it.text.encode()).digest()[:8], "little")
            out.append(np.random.default_rng(seed).standard_normal(self.dim))
            self.embedded.append(it.text)
        return l2_normalise(np.array(out))


def table_of(tmp_path, name="hotpotqa", row_group=4):
    return corpus_table(ArtifactStore(str(tmp_path)), packaged(name), row_group=row_group, file_rows=4 * row_group)


def test_shards_are_written_once_and_hold_every_row(tmp_path):
    table = table_of(tmp_path)
    emb = Embedder()
    vectors = ensure_embedded(emb, table, shard_rows=10)
    texts = sum(table.iter_texts(), [])
    assert vectors.n_shards == 6 and emb.embedded == texts
    full = np.concatenate([vectors.load(i) for i in range(vectors.n_shards)])
    np.testing.assert_array_equal(full, Embedder().embed([type("I", (), {"text": t})() for t in texts], "document"))
    assert vectors.load(5).shape == (6, 16)
    np.testing.assert_array_equal(vectors.take([55, 3, 3, 20]), full[[55, 3, 3, 20]])
    again = Embedder()
    assert ensure_embedded(again, table, shard_rows=10).folder == vectors.folder and again.embedded == []
    assert embed_shard(again, table, 2, shard_rows=10) == 0
    assert corpus_vectors(emb, table, 7).folder != vectors.folder  # another shard size: other files


def test_a_crash_mid_shard_leaves_whole_shards_only_and_the_rerun_embeds_the_rest(tmp_path):
    table = table_of(tmp_path)
    texts = sum(table.iter_texts(), [])
    emb = Embedder(fail_on={texts[25]})  # shard 2 of rows [20, 30), after its first row group
    with pytest.raises(RuntimeError, match="simulated crash"):
        ensure_embedded(emb, table, shard_rows=10)
    vectors = corpus_vectors(emb, table, 10)
    assert [vectors.exists(i) for i in range(6)] == [True, True, False, False, False, False]
    assert sorted(os.listdir(vectors.folder)) == ["shard-00000.npy", "shard-00001.npy"]  # no partial file
    rerun = Embedder()
    ensure_embedded(rerun, table, shard_rows=10)
    assert rerun.embedded == texts[20:]


def test_the_sentence_transformers_embedder_fills_shards_like_embed_cached(tmp_path):
    from nyx_tasks.embedding import MixedItem, make_embedder
    from nyx_tasks.embedding.cache import embed_cached

    store = ArtifactStore(str(tmp_path))
    table = corpus_table(store, packaged("musique"), row_group=16, file_rows=32)
    emb = make_embedder(EmbedderConfig(device="cpu"), store)
    vectors = ensure_embedded(emb, table, shard_rows=20)
    want, _ = embed_cached(emb, [MixedItem(t) for t in sum(table.iter_texts(), [])], "document", store)
    got = np.concatenate([vectors.load(i) for i in range(vectors.n_shards)])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_a_remote_root_keeps_the_shards_and_readers_map_a_local_mirror(tmp_path, monkeypatch):
    import uuid

    store = ArtifactStore(f"memory://nyx-corpus-{uuid.uuid4().hex[:8]}")
    table = corpus_table(store, packaged("hotpotqa"), row_group=8, file_rows=16)
    assert len(table.texts([0, 55])) == 2  # the table itself works on any fsspec root
    monkeypatch.setenv("NYX_VECTOR_CACHE", str(tmp_path / "mirror-a"))
    emb = Embedder()
    vectors = ensure_embedded(emb, table, shard_rows=20)
    assert vectors.store is store and str(tmp_path / "mirror-a") in vectors.folder
    assert all(store.exists(vectors.remote_rel(i)) for i in range(vectors.n_shards))  # the store holds them
    assert not any(n.startswith("_tmp.") for n in store.listdir(vectors.rel))
    first = np.concatenate([vectors.load(i) for i in range(vectors.n_shards)])
    # another machine: an empty mirror downloads what the store has and embeds nothing
    monkeypatch.setenv("NYX_VECTOR_CACHE", str(tmp_path / "mirror-b"))
    other = Embedder()
    again = ensure_embedded(other, table, shard_rows=20)
    assert other.embedded == [] and not os.path.exists(again.path(0))
    np.testing.assert_array_equal(np.concatenate([again.load(i) for i in range(again.n_shards)]), first)
    assert os.path.exists(again.path(0))  # mapped from the mirror now
    # a shard embedded into the mirror whose upload was cut short is uploaded, not embedded again
    store.remove(again.remote_rel(1))
    assert again.missing() == [1]
    third = Embedder()
    assert embed_shard(third, table, 1, shard_rows=20) == 0 and third.embedded == [] and again.missing() == []


# ------------------------------------------------------------------------------------ search
def reference(q, d, k):
    """Brute force by (score desc, row asc) on exact scores (float64 of exactly representable values)."""
    s = q.astype(np.float64) @ d.astype(np.float64).T
    order = np.lexsort((np.broadcast_to(np.arange(d.shape[0]), s.shape), -s), axis=1)[:, :k]
    return np.pad(order, ((0, 0), (0, k - order.shape[1])), constant_values=-1)


def split(d, size):
    return [d[i:i + size] for i in range(0, d.shape[0], size)]


def unit(rng, n, dim):
    return l2_normalise(rng.standard_normal((n, dim)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", [1, 7, 64, 1000])
@pytest.mark.parametrize("k", [1, 10, 80])
def test_sharded_search_equals_searching_the_concatenated_corpus(backend, size, k):
    rng = np.random.default_rng(size * 100 + k)
    q, d = unit(rng, 37, 24), unit(rng, 300, 24)
    cfg = SearchConfig(backend=backend, query_batch=8, doc_chunk=50)
    s, i = search_shards(q, split(d, size), k, cfg)
    fs, fi = exact_topk(q, d, k, cfg)
    np.testing.assert_array_equal(i, fi)
    np.testing.assert_allclose(s, fs, atol=1e-6)
    np.testing.assert_array_equal(i, reference(q, d, k))


def tied_corpus(rng, n=240, dim=8):
    """Entries in {-1, 0, 1} / 4: every score is exact in float32, so many documents tie; rows
    are also copied across shard boundaries."""
    d = rng.integers(-1, 2, (n, dim)).astype(np.float32) / 4
    d[[9, 10, 11, 100, 101, 200]] = d[8]  # copies straddling boundaries of shards of 10, 50, ...
    q = rng.integers(-1, 2, (25, dim)).astype(np.float32) / 4
    q[0] = d[8]
    return q, d


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", [3, 10, 50, 240])
@pytest.mark.parametrize("k", [1, 5, 30, 300])
def test_ties_rank_by_the_lower_row_across_shard_boundaries(backend, size, k):
    rng = np.random.default_rng(k)
    q, d = tied_corpus(rng)
    cfg = SearchConfig(backend=backend, query_batch=7, doc_chunk=16)
    exact = -np.sort(-(q @ d.T), axis=1)
    assert k >= d.shape[0] or (exact[:, k - 1] == exact[:, k]).any()  # documents tie at the k-th score
    s, i = search_shards(q, split(d, size), k, cfg)
    np.testing.assert_array_equal(i, reference(q, d, k))
    fs, _ = exact_topk(q, d, k, cfg)  # the backend alone: the same scores, ties in its own order
    np.testing.assert_array_equal(s, fs)
    ts, ti = topk_ties_by_row(q, d, k, cfg)
    np.testing.assert_array_equal(ti, i)
    np.testing.assert_array_equal(ts, s)


@pytest.mark.parametrize("backend", BACKENDS)
def test_matryoshka_dim_and_distinct_texts(backend):
    rng = np.random.default_rng(3)
    q, d = unit(rng, 20, 32), unit(rng, 150, 32)
    d[[40, 41, 90]] = d[39]
    cfg = SearchConfig(backend=backend, query_batch=6)
    s, i = search_shards(q, split(d, 40), 12, cfg, dim=8)
    fs, fi = exact_topk(matryoshka(q, 8), matryoshka(d, 8), 12, cfg)
    np.testing.assert_array_equal(i[:, :], reference(matryoshka(q, 8), matryoshka(d, 8), 12))
    np.testing.assert_allclose(s, fs, atol=1e-6)
    rep = distinct_contents([d[r].tobytes() for r in range(len(d))]).rep
    s, i = search_shards(q, split(d, 40), 12, cfg, dim=8, exclude=np.flatnonzero(rep != np.arange(len(d))))
    _, fi = exact_topk(matryoshka(q, 8), matryoshka(d, 8), 12, cfg, keep=np.flatnonzero(rep == np.arange(len(d))))
    np.testing.assert_array_equal(np.sort(i, 1), np.sort(fi, 1))
    assert not np.isin(i, [40, 41, 90]).any()


def test_search_over_embedded_shards_and_a_short_corpus(tmp_path):
    table = table_of(tmp_path)
    emb = Embedder()
    vectors = ensure_embedded(emb, table, shard_rows=10)
    full = np.concatenate([vectors.load(i) for i in range(vectors.n_shards)])
    q = full[[3, 30, 55]]
    s, i = search_shards(q, vectors, 60, SearchConfig(backend="faiss"))
    assert i[:, 0].tolist() == [3, 30, 55] and (i[:, 56:] == -1).all() and np.isneginf(s[:, 56:]).all()
    np.testing.assert_array_equal(i[:, :56], reference(q, full, 56))
    assert table.texts(i[0, :3]) == [sum(table.iter_texts(), [])[r] for r in i[0, :3]]


def test_rank_keys_order_by_score_then_row():
    rng = np.random.default_rng(0)
    scores = rng.choice(np.array([-np.inf, -1.5, -0.0, 0.0, 0.25, 2.0, 1e-30, -1e-30], np.float32), (50, 40))
    rows = np.stack([rng.permutation(40) for _ in range(50)]).astype(np.int64)
    rows[scores == -np.inf] = -1
    s, r = best_k(scores, rows, 15)
    order = np.lexsort((np.where(rows < 0, 2**40, rows), -scores.astype(np.float64)), axis=1)[:, :15]
    np.testing.assert_array_equal(r, np.take_along_axis(rows, order, 1))
    np.testing.assert_array_equal(s, np.take_along_axis(scores, order, 1))


def test_prefetched_batches_keep_their_order_raise_the_readers_error_and_stop_when_dropped():
    import threading

    from nyx_tasks.retrieval.vector_shards import prefetched

    assert list(prefetched(iter([[1, 2], [3], [4, 5]]))) == [[1, 2], [3], [4, 5]]

    def failing():
        yield ["a"]
        raise OSError("a row group could not be read")

    got = []
    with pytest.raises(OSError, match="could not be read"):
        for batch in prefetched(failing()):
            got.append(batch)
    assert got == [["a"]]
    endless = prefetched(iter(range(10**9)), depth=2)
    assert next(endless) == 0
    endless.close()  # the consumer stops early: the reader thread ends instead of reading on
    for _ in range(50):
        if not any(t.name == "nyx-prefetch" and t.is_alive() for t in threading.enumerate()):
            break
        threading.Event().wait(0.1)
    assert not any(t.name == "nyx-prefetch" and t.is_alive() for t in threading.enumerate())

"""The mapped embedding jobs a stage's task group runs before it plans (issue 17 item 1): one job
per shard of each distinct (embedder, corpus), each embedding its shard once."""

import numpy as np

from nyx_tasks.artifacts import ArtifactStore
from nyx_tasks.config import load_config
from nyx_tasks.corpus_jobs import embeds_on_gpu, plan_vector_jobs, run_vector_job, stage_corpora
from nyx_tasks.corpus_table import corpus_table
from nyx_tasks.embedding import MixedItem, make_embedder
from nyx_tasks.vector_shards import corpus_vectors

SHARED = "pkgdata:text_sets/hotpotqa/corpus.jsonl"


def demo(tmp_path, **over):
    return load_config("demo", {"artifacts": {"root": str(tmp_path)}, "corpora": {"shard_rows": 20}, **over})


def test_one_job_per_shard_of_each_distinct_corpus(tmp_path):
    cfg = demo(tmp_path)
    store = ArtifactStore(str(tmp_path))
    jobs = plan_vector_jobs("mine", cfg, store)
    sizes = {ts.name: len(corpus_table(store, ts)) for _, ts in stage_corpora("mine", cfg)}
    assert len(jobs) == sum(-(-n // 20) for n in sizes.values()) and len(sizes) == 3
    assert jobs[0] == {"shard": 0, "corpus": 0, "name": f"hotpotqa:1/{-(-sizes['hotpotqa'] // 20)}"}
    assert plan_vector_jobs("evaluate", cfg, store) == []  # only stages that search a whole corpus
    # two sets over the same corpus files (wiki18 for all three in the paper) embed it once
    sets = [{"name": n, "questions": [f"pkgdata:text_sets/{n}/questions.jsonl"], "corpus": [SHARED]}
            for n in ("hotpotqa", "musique")]
    shared = demo(tmp_path, mine={"text_sets": sets})
    assert [j["corpus"] for j in plan_vector_jobs("mine", shared, store)] == [0] * -(-sizes["hotpotqa"] // 20)


def test_a_job_embeds_its_shard_once_and_the_stage_finds_it(tmp_path):
    cfg = demo(tmp_path)
    store = ArtifactStore(str(tmp_path))
    job = plan_vector_jobs("mine", cfg, store)[1]  # hotpotqa, rows 20..39
    done = run_vector_job("mine", cfg, store, job)
    assert done["rows_embedded"] == 20 and done["host"]
    assert run_vector_job("mine", cfg, store, job)["rows_embedded"] == 0  # a finished shard is not redone
    emb, ts = stage_corpora("mine", cfg)[0]
    table = corpus_table(store, ts)
    vectors = corpus_vectors(make_embedder(emb, store), table, 20)
    assert vectors.missing() == [i for i in range(vectors.n_shards) if i != 1]
    want = make_embedder(emb, store).embed([MixedItem(t) for t in table.texts(list(range(20, 40)))], "document")
    np.testing.assert_allclose(vectors.load(1), want, atol=1e-5)


def test_gpu_route_follows_the_corpus_embedders_device(tmp_path):
    assert not embeds_on_gpu("mine", demo(tmp_path))
    assert embeds_on_gpu("mine", demo(tmp_path, mine={"text_embedder": {"device": "cuda"}}))
    assert not embeds_on_gpu("feedback", demo(tmp_path))
    assert embeds_on_gpu("mine", demo(tmp_path, corpora={"queue": "gpu"}))  # the operator's choice wins
    assert not embeds_on_gpu("mine", demo(tmp_path, corpora={"queue": "default"},
                                          mine={"text_embedder": {"device": "cuda"}}))

"""The mapped embedding jobs a stage's task group runs before it plans: one job
per shard of each distinct (embedder, corpus), each embedding its shard once."""

import numpy as np

from nyx_tasks.core.config import load_config
from nyx_tasks.embedding import MixedItem, make_embedder
from nyx_tasks.retrieval.corpus_jobs import embeds_on_gpu, plan_vector_jobs, run_vector_job
from nyx_tasks.retrieval.vector_shards import corpus_vectors
from nyx_tasks.sources.corpus_table import corpus_table
from nyx_tasks.stages import get_stage
from nyx_tasks.store.artifacts import ArtifactStore
from tests.conftest import stand_in_sets

SHARED = "pkgdata:text_sets/hotpotqa/corpus.jsonl"


def demo(tmp_path, **over):
    """The demo on its tiny stand-in text sets (tests.conftest.stand_in_sets), with `over` merged per section."""
    base = load_config("demo", list(stand_in_sets()))
    tree = {"artifacts": {"root": str(tmp_path)}, "corpora": {"shard_rows": 20},
            "mine": {"text_sets": [t.model_dump(mode="json") for t in base.mine.text_sets]},
            "evaluate": {"text_sets": [t.model_dump(mode="json") for t in base.evaluate.text_sets]}}
    for key, value in over.items():
        tree[key] = {**tree.get(key, {}), **value} if isinstance(value, dict) else value
    return load_config("demo", tree)


def test_one_job_per_shard_of_each_distinct_corpus(tmp_path):
    cfg = demo(tmp_path)
    store = ArtifactStore(str(tmp_path))
    jobs = plan_vector_jobs(get_stage("mine"), cfg, store)
    sizes = {ts.name: len(corpus_table(store, ts)) for _, ts in get_stage("mine").corpora(cfg)}
    assert len(jobs) == sum(-(-n // 20) for n in sizes.values()) and len(sizes) == 3
    assert jobs[0] == {"shard": 0, "corpus": 0, "name": f"hotpotqa:1/{-(-sizes['hotpotqa'] // 20)}"}
    assert plan_vector_jobs(get_stage("chunk"), cfg, store) == []  # only stages that search a whole corpus
    # two sets over the same corpus files (wiki18 for all three in the paper) embed it once
    sets = [{"name": n, "questions": [f"pkgdata:text_sets/{n}/questions.jsonl"], "corpus": [SHARED]}
            for n in ("hotpotqa", "musique")]
    shared = demo(tmp_path, mine={"text_sets": sets})
    assert [j["corpus"] for j in plan_vector_jobs(get_stage("mine"), shared, store)] == [0] * -(-sizes["hotpotqa"] // 20)


def test_a_job_embeds_its_shard_once_and_the_stage_finds_it(tmp_path):
    cfg = demo(tmp_path)
    store = ArtifactStore(str(tmp_path))
    job = plan_vector_jobs(get_stage("mine"), cfg, store)[1]  # hotpotqa, rows 20..39
    done = run_vector_job(get_stage("mine"), cfg, store, job)
    assert done["rows_embedded"] == 20 and done["host"]
    assert run_vector_job(get_stage("mine"), cfg, store, job)["rows_embedded"] == 0  # a finished shard is not redone
    emb, ts = get_stage("mine").corpora(cfg)[0]
    table = corpus_table(store, ts)
    vectors = corpus_vectors(make_embedder(emb, store), table, 20)
    assert vectors.missing() == [i for i in range(vectors.n_shards) if i != 1]
    want = make_embedder(emb, store).embed([MixedItem(t) for t in table.texts(list(range(20, 40)))], "document")
    np.testing.assert_allclose(vectors.load(1), want, atol=1e-5)


def test_gpu_route_follows_the_corpus_embedders_device(tmp_path):
    assert not embeds_on_gpu(get_stage("mine"), demo(tmp_path))
    assert embeds_on_gpu(get_stage("mine"), demo(tmp_path, mine={"text_embedder": {"device": "cuda"}}))
    assert not embeds_on_gpu(get_stage("chunk"), demo(tmp_path))
    assert embeds_on_gpu(get_stage("mine"), demo(tmp_path, corpora={"queue": "gpu"}))  # the operator's choice wins
    assert not embeds_on_gpu(get_stage("mine"), demo(tmp_path, corpora={"queue": "default"},
                                          mine={"text_embedder": {"device": "cuda"}}))


def publish_checkpoint(root, partition, stage, model):
    """A training stage's manifest naming its published checkpoint (what feedback/evaluate read)."""
    import json

    folder = root / "partitions" / partition / stage
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "_MANIFEST.json").write_text(json.dumps({"status": "complete", "checkpoint": {"merged": model}}))


def test_feedback_and_evaluate_embed_under_the_checkpoints_they_search_with(tmp_path):
    from nyx_tasks.inference import resolve_model
    from nyx_tasks.retrieval.corpora import checkpoint_embedder

    tiny = resolve_model("tiny:qwen2_5_vl")
    for stage in ("train_stage1", "train_stage2"):
        publish_checkpoint(tmp_path, "p", stage, tiny)
    cfg = demo(tmp_path, partition="p")
    store = ArtifactStore(str(tmp_path))
    fb = get_stage("feedback").corpora(cfg, store)
    assert [ts.name for _, ts in fb] == [ts.name for ts in cfg.mine.text_sets]
    assert {(e.kind, e.model) for e, _ in fb} == {("nyx", tiny)}
    only = demo(tmp_path, partition="p", feedback={"sources": ["musique"]})
    assert [ts.name for _, ts in get_stage("feedback").corpora(only, store)] == ["musique"]
    # strict evaluation: every evaluated model's checkpoint over the held-out sets (one corpus here:
    # both checkpoints are the same model, so one set of jobs); the paper protocol: the union embedder
    ev = get_stage("evaluate").corpora(cfg, store)
    assert [(e.model, ts.name) for e, ts in ev] == [(tiny, "hotpotqa"), (tiny, "hotpotqa")]
    assert len({j["corpus"] for j in plan_vector_jobs(get_stage("evaluate"), cfg, store)}) == 1
    paper = demo(tmp_path, partition="p", evaluate={"protocol": "paper"})
    assert {e.model for e, _ in get_stage("evaluate").corpora(paper, store)} == {cfg.mine.text_embedder.model}
    # a job's shard is the file feedback's own search looks up
    job = plan_vector_jobs(get_stage("feedback"), cfg, store)[0]
    assert run_vector_job(get_stage("feedback"), cfg, store, job)["rows_embedded"] == 20
    table = corpus_table(store, fb[0][1])
    emb = checkpoint_embedder(cfg.feedback.embedder, {"merged": tiny}, store)
    assert corpus_vectors(emb, table, 20).exists(0)

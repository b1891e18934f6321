"""The `stdlib_qa` text set (scripts/build_stdlib_qa.py): real passages (stdlib module docstrings) with
hand-written questions whose answers are spans of their gold passage, so a real reader can read them off
(configs/demo-reader.yaml's feedback). The shipped files keep that promise, and a fresh interpreter of
the version that built them writes the same bytes."""

import json
import platform
import subprocess
import sys

import pytest

from nyx_tasks.core.config import TextSetConfig
from nyx_tasks.core.paths import PACKAGE_DIR
from nyx_tasks.sources.text_sets import read_corpus, read_questions
from tests.conftest import REPO

DIR = PACKAGE_DIR / "data" / "text_sets" / "stdlib_qa"
FILES = ("questions.jsonl", "corpus.jsonl", "BUILD.json")


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DIR / name).read_text().splitlines()]


def test_every_answer_is_a_span_of_its_gold_passage():
    questions, corpus = rows("questions.jsonl"), {r["id"]: r["contents"] for r in rows("corpus.jsonl")}
    build = json.loads((DIR / "BUILD.json").read_text())
    assert (len(questions), len(corpus), build["questions"], build["corpus"]) == (44, 108, 44, 108)
    assert len({q["id"] for q in questions}) == len(questions)
    assert len(set(corpus.values())) == len(corpus)  # no passage twice
    for q in questions:
        (answer,) = q["golden_answers"]
        assert answer in corpus[q["gold_id"]], q  # verbatim: extractive
        assert len(answer.split()) <= 5 and q["question"].endswith("?")
    assert len({q["gold_id"] for q in questions}) == build["gold_passages"] == 44
    assert sum((DIR / f).stat().st_size for f in FILES) < 1_000_000
    assert "PSF" in build["licence"]["passages"]


def test_the_set_reads_as_a_text_set_with_gold_ids_and_no_drops():
    ts = TextSetConfig(name="stdlib_qa", questions=["pkgdata:text_sets/stdlib_qa/questions.jsonl"],
                       corpus=["pkgdata:text_sets/stdlib_qa/corpus.jsonl"], gold_id_column="gold_id")
    drops = []
    questions, corpus = read_questions(ts, lambda *a: drops.append(a)), read_corpus(ts, lambda *a: drops.append(a))
    assert not drops and len(questions) == 44 and len(corpus) == 108
    assert {q.gold_id for q in questions} <= {d.doc_id for d in corpus}


@pytest.mark.skipif(platform.python_version() != json.loads((DIR / "BUILD.json").read_text())["python"],
                    reason="docstrings change between Python versions: only the building version can rebuild")
def test_a_fresh_build_writes_the_shipped_bytes(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "scripts/build_stdlib_qa.py"), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for f in FILES:
        assert (tmp_path / f).read_bytes() == (DIR / f).read_bytes(), f

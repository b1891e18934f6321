"""Text-only QA sets for mining (paper, stage 1 data: HotpotQA,
2WikiMultiHopQA, MuSiQue): questions with their gold answers plus a retrieval
corpus, read from local Parquet / JSONL (any fsspec URL). The default column
names are FlashRAG's layout (`id`, `question`, `golden_answers`; corpus `id`,
`contents`); `TextSetConfig` maps others.

Bad rows are dropped with a named reason (`<set>_…`), never a crash.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from nyx_tasks.core.config import TextSetConfig
from nyx_tasks.core.paths import resolve_pkgdata
from nyx_tasks.core.text import plain
from nyx_tasks.sources.files import Malformed, expand_urls, fingerprint_urls, iter_file_rows

Drop = Callable[[str, str], None]


@dataclass
class TextQuestion:
    qid: str
    question: str
    answers: list[str]
    gold_id: str | None = None  # the corpus id of the passage it was written from (`gold_id_column`)


@dataclass
class CorpusDoc:
    doc_id: str
    text: str


def set_files(ts: TextSetConfig) -> tuple[list[str], list[str]]:
    return (expand_urls([resolve_pkgdata(p) for p in ts.questions], f"text set {ts.name!r} questions"),
            expand_urls([resolve_pkgdata(p) for p in ts.corpus], f"text set {ts.name!r} corpus"))


def fingerprint(ts: TextSetConfig) -> str:
    q, c = set_files(ts)
    return fingerprint_urls(q + c)


def _answers(value) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return [a.strip() for a in value if isinstance(a, str) and a.strip()]


def read_questions(ts: TextSetConfig, drop: Drop, capped: bool = True) -> list[TextQuestion]:
    """The set's questions in file order (at most `max_questions` unless `capped` is False),
    deduplicated by id."""
    out: list[TextQuestion] = []
    seen: set[str] = set()
    for url in set_files(ts)[0]:
        for i, row in enumerate(iter_file_rows(url)):
            where = f"{url}#{i}"
            if isinstance(row, Malformed):
                drop(f"{ts.name}_malformed_{row.reason}", where)
                continue
            qid = row.get(ts.id_column)
            qid = f"{ts.name}:{qid if qid is not None else where}"
            question = row.get(ts.question_column)
            answers = _answers(row.get(ts.answers_column))
            if not isinstance(question, str) or not question.strip():
                drop(f"{ts.name}_no_question", where)
            elif not answers:
                drop(f"{ts.name}_no_answers", where)
            elif qid in seen:
                drop(f"{ts.name}_duplicate_question", qid)
            else:
                seen.add(qid)
                gold = row.get(ts.gold_id_column) if ts.gold_id_column else None
                out.append(TextQuestion(qid, plain(question.strip()), answers, None if gold is None else str(gold)))
                if capped and ts.max_questions and len(out) >= ts.max_questions:
                    return out
    return out


def sample_questions(questions: list[TextQuestion], n: int | None, seed: int) -> list[TextQuestion]:
    """`n` questions drawn at random (Python's `random.Random(seed).sample`) and kept in file order;
    all of them when `n` is None or not below their count."""
    import random

    if n is None or n >= len(questions):
        return list(questions)
    keep = sorted(random.Random(seed).sample(range(len(questions)), n))
    return [questions[i] for i in keep]


def corpus_rows(ts: TextSetConfig) -> Iterator[tuple[str, str, str | None, tuple[str, ...]]]:
    """(where, doc_id, text, images) of every row of the set's corpus files in file order, the text
    read as text (`core.text.plain`); a row that cannot be used has text None and, in place of its
    id, why (`corpus_malformed_<reason>`, `corpus_empty_text`, `corpus_bad_images`). `images`: the
    row's image URLs when the set names `corpus_image_column` (a relative path read against its
    file's folder), else (). The one reader of a corpus row: `read_corpus` and the corpus tables
    (`corpus_table`) both read through it."""
    for url in set_files(ts)[1]:
        for i, row in enumerate(iter_file_rows(url)):
            where = f"{url}#{i}"
            if isinstance(row, Malformed):
                yield where, f"corpus_malformed_{row.reason}", None, ()
                continue
            doc_id, text = row.get(ts.corpus_id_column), row.get(ts.corpus_text_column)
            if not isinstance(text, str) or not text.strip():
                yield where, "corpus_empty_text", None, ()
                continue
            images = image_refs(row.get(ts.corpus_image_column), url) if ts.corpus_image_column else ()
            if images is None:
                yield where, "corpus_bad_images", None, ()
                continue
            yield where, (str(doc_id) if doc_id is not None else where), plain(text), images


def image_refs(value, file_url: str) -> tuple[str, ...] | None:
    """A row's image column as absolute URLs: None, "" or [] -> (); a string or a list of strings,
    each a URL (`scheme://...`) or a path (relative: to the folder of `file_url`); else None."""
    if value is None:
        return ()
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list | tuple) or not all(isinstance(v, str) for v in values):
        return None
    out = []
    for v in (v.strip() for v in values):
        if not v:
            continue
        if "://" in v:
            out.append(v)
        elif "://" in file_url and not file_url.startswith("file://"):  # a remote file: a URL beside it
            scheme, rest = file_url.split("://", 1)
            out.append(f"{scheme}://{posixpath.normpath(posixpath.join(posixpath.dirname(rest), v))}")
        else:
            folder = os.path.dirname(file_url.removeprefix("file://"))
            out.append(Path(os.path.normpath(os.path.join(folder, v))).absolute().as_uri())
    return tuple(out)


def read_corpus(ts: TextSetConfig, drop: Drop) -> list[CorpusDoc]:
    out: list[CorpusDoc] = []
    seen: set[str] = set()
    for where, doc_id, text, _ in corpus_rows(ts):
        if text is None:
            drop(f"{ts.name}_{doc_id}", where)
        elif doc_id in seen:
            drop(f"{ts.name}_corpus_duplicate_id", doc_id)
        else:
            seen.add(doc_id)
            out.append(CorpusDoc(doc_id, text))
    return out

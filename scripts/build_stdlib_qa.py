"""Build the `stdlib_qa` text set: real English passages whose answers can be read off them, for a
real reader in `feedback` (configs/demo-reader.yaml), in FlashRAG's layout, shipped as package data:

    nyx_tasks/data/text_sets/stdlib_qa/
        questions.jsonl   id, question, golden_answers, gold_id (the corpus id of the passage it is about)
        corpus.jsonl      id, contents
        BUILD.json        the Python that was read, counts, the modules, the licence of the text

Passages: the module docstrings of the Python standard library (real prose written by CPython's
authors; PSF License Agreement, Python 2.0), one passage per module: the docstring's first
paragraph, then the next prose paragraphs while the passage stays under `MAX_WORDS`; when a
question's answer lies further on, the first paragraph plus the sentences around the answer.
Paragraphs that are code, tables or diagrams (`>>>`, `::`, `+--`, `===`, `---`, ` # `, `= f(`) are skipped.
Whitespace is collapsed. The modules of `QA` are the gold passages; `DISTRACTOR_MODULES` add
passages no question is about (a harder ranking for the retriever).

Questions and answers (`QA`) are this project's own, written by hand (Apache-2.0, like the rest of
the project): factoid questions whose answer is a short span of the gold passage, copied verbatim
(the build fails when one is not in its passage), so a reader that reads the right passage can
answer, and token F1 (the feedback judge) rewards it. Many questions share their kind ("Which PEP
...", "Which RFC ..."), so a passage of another module often looks like the answer's. Modules are
ones present in Python 3.11 to 3.13.

Reproducible: docstrings change between Python versions, so the generated files are shipped;
re-running on the version in BUILD.json writes the same bytes. tests/test_stdlib_qa.py checks
that every answer is in its gold passage and every gold id is in the corpus.

    .venv/bin/python scripts/build_stdlib_qa.py [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import platform
import re
import sys
import warnings
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "nyx_tasks" / "data" / "text_sets" / "stdlib_qa"
NAME = "stdlib_qa"
MAX_WORDS = 90
NOT_PROSE = re.compile(r">>>|::|\+--|===|---|^\s*import |\$ |\s# |= \w+[.(]")
SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")

# (module, question, answer): the answer is verbatim in the module's passage.
QA: tuple[tuple[str, str, str], ...] = (
    ("calendar", "By default, which day do these calendars have as the first day of the week?", "Monday"),
    ("json", "JSON is a subset of the syntax of which language?", "JavaScript"),
    ("unittest", "Whose JUnit is the Python unit testing framework based on?", "Erich Gamma"),
    ("hmac", "Which RFC describes the keyed-hashing algorithm for message authentication that is implemented?",
     "RFC 2104"),
    ("imaplib", "Which RFC is the IMAP4 client based on?", "RFC 2060"),
    ("ftplib", "Who wrote RFC 959, the File Transfer Protocol?", "J. Postel and J. Reynolds"),
    ("secrets", "Which PEP gives more information about generating cryptographically strong pseudo-random numbers?",
     "PEP 506"),
    ("weakref", "Which PEP does the weak reference support implement?", "PEP 205"),
    ("logging", "Which PEP is the logging package for Python based on?", "PEP 282"),
    ("venv", "Which PEP is the virtual environment package based on?", "PEP 405"),
    ("typing", "Which PEP defines gradual typing?", "PEP 484"),
    ("csv", "Which PEP describes the interface for reading and writing Comma Separated Value files?", "PEP 305"),
    ("sqlite3", "Which version of SQLite or newer is required by the DB-API 2.0 interface?", "3.7.15"),
    ("time", "On Unix, when is the Epoch generally?", "January 1st, 1970"),
    ("zlib", "The zlib compression library is based on which program?", "GNU zip"),
    ("pwd", "What are Unix password database entries reported as?", "7-tuples"),
    ("errno", "On most systems, which integer does errno.ENOENT equal?", "2"),
    ("uuid", "Which function creates a random UUID?", "uuid4()"),
    ("socket", "On Unix, which sockets are supported besides IP?", "Unix domain sockets"),
    ("gettext", "Which message catalog library gives internationalization and localization support?",
     "GNU gettext"),
    ("marshal", "Which format version uses a binary format for floating point numbers?", "version 2"),
    ("tabnanny", "What does the Tab Nanny despise?", "ambiguous indentation"),
    ("smtplib", "Which RFC covers SMTP Authentication?", "RFC 2554"),
    ("plistlib", "What is usually the top level object of a property list file?", "a dictionary"),
    ("shelve", "What is a shelf?", "a persistent, dictionary-like object"),
    ("threading", "Whose threading model is emulated in part by the thread module?", "Java"),
    ("timeit", "Who wrote an introduction to the Algorithms chapter in the Python Cookbook?", "Tim Peters"),
    ("optparse", "What was the powerful, extensible option parser originally distributed as?", "Optik"),
    ("codecs", "Who wrote the Python Codec Registry?", "Marc-Andre Lemburg"),
    ("io", "Which builtin function is defined in the stream handling module?", "open"),
    ("select", "On Windows, which file descriptors are supported for asynchronous I/O?", "only sockets"),
    ("sched", "In the event scheduler, what do lower priority numbers mean?", "higher priority"),
    ("zipimport", "Which exception is ZipImportError a subclass of?", "ImportError"),
    ("tempfile", "Which function for creating temporary files is subject to race conditions?", "mktemp"),
    ("array", "Arrays of basic values behave very much like what?", "lists"),
    ("lzma", "Which container formats are supported besides raw compressed data streams?",
     "XZ and legacy LZMA"),
    ("bz2", "Which compression library does the bz2 interface wrap?", "libbzip2"),
    ("quopri", "Which RFC defines the quoted-printable transport encoding?", "RFC 1521"),
    ("heapq", "What is the heap queue algorithm also known as?", "priority queue"),
    ("contextlib", "Which PEP are the with-statement utilities about?", "PEP 343"),
    ("abc", "Which PEP are Abstract Base Classes defined by?", "PEP 3119"),
    ("asyncio", "Which PEP does the asyncio package track?", "PEP 3156"),
    ("gc", "The garbage collector gives access to collection of what?", "reference cycles"),
    ("poplib", "Whose draft is the POP3 client class based on?", "J. Myers"),
)
# Modules whose passages no question is about (all in Python 3.11 to 3.13).
DISTRACTOR_MODULES = (
    "argparse", "ast", "base64", "builtins", "cmath", "cmd", "codeop", "collections", "colorsys",
    "compileall", "configparser", "copy", "copyreg", "dbm", "difflib", "doctest", "encodings", "fcntl",
    "filecmp", "fileinput", "fnmatch", "getopt", "getpass", "grp", "gzip", "hashlib", "inspect", "ipaddress",
    "itertools", "linecache", "locale", "mailbox", "math", "mimetypes", "numbers", "operator", "os",
    "pdb", "pickle", "pickletools", "platform", "posixpath", "pprint", "py_compile", "pyclbr", "pydoc",
    "random", "re", "rlcompleter", "runpy", "selectors", "shlex", "shutil", "site", "statistics",
    "string", "stringprep", "struct", "subprocess", "sys", "termios", "tokenize", "unicodedata", "wave",
)


def paragraphs(module: str) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated modules warn on import
        doc = inspect.getdoc(importlib.import_module(module)) or ""
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", doc)]
    return [p for p in paras if p and not NOT_PROSE.search(p)]


def passage(module: str, answer: str | None = None) -> str:
    """The module's passage (see the module docstring); raises ValueError when `answer` is not in it."""
    paras = paragraphs(module)
    if not paras:
        raise ValueError(f"{module}: no prose in its docstring")
    text = paras[0]
    for p in paras[1:]:
        if len((text + " " + p).split()) > MAX_WORDS:
            break
        text += " " + p
    if answer is not None and answer not in text:
        where = next((p for p in paras if answer in p), None)
        if where is None:
            raise ValueError(f"{module}: answer {answer!r} is not in its docstring's prose")
        sents = SENTENCE.split(where)
        i = next(k for k, s in enumerate(sents) if answer in s)
        text = " ".join([paras[0], *sents[max(0, i - 1): i + 2]])
        if answer not in text:  # the answer spans two sentences
            text = " ".join([paras[0], where])
    return text


def build() -> tuple[list[dict], list[dict], dict]:
    corpus: dict[str, str] = {}
    questions = []
    for n, (module, question, answer) in enumerate(QA):
        pid = f"{NAME}-{module}"
        text = corpus.get(pid) or passage(module, answer)
        if answer not in text:
            raise ValueError(f"{module}: answer {answer!r} is not in its passage {text!r}")
        corpus[pid] = text
        questions.append({"id": f"{NAME}-q{n:02d}", "question": question, "golden_answers": [answer],
                          "gold_id": pid})
    gold = set(corpus)
    for module in DISTRACTOR_MODULES:
        pid = f"{NAME}-{module}"
        if pid in gold:
            raise ValueError(f"{module} is both a gold and a distractor module")
        corpus[pid] = passage(module)
    texts = list(corpus.values())
    if len(set(texts)) != len(texts):
        raise ValueError("two modules have the same passage")
    rows = [{"id": k, "contents": v} for k, v in sorted(corpus.items())]
    words = [len(r["contents"].split()) for r in rows]
    build_info = {
        "python": platform.python_version(), "implementation": platform.python_implementation(),
        "source": "module docstrings of the Python standard library (inspect.getdoc), whitespace collapsed",
        "licence": {"passages": "PSF License Agreement for Python (the docstrings' text, CPython's authors)",
                    "questions_and_answers": "Apache-2.0 (this project's own, written by hand)"},
        "questions": len(questions), "corpus": len(rows), "gold_passages": len(gold),
        "distractor_passages": len(rows) - len(gold), "passage_words": {"min": min(words), "max": max(words),
                                                                        "mean": round(sum(words) / len(words), 1)},
        "gold_modules": sorted({m for m, _, _ in QA}), "distractor_modules": list(DISTRACTOR_MODULES),
    }
    return questions, rows, build_info


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    questions, corpus, info = build()
    args.out.mkdir(parents=True, exist_ok=True)
    for fname, rows in (("questions.jsonl", questions), ("corpus.jsonl", corpus)):
        (args.out / fname).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    (args.out / "BUILD.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"{args.out}: {len(questions)} questions, {len(corpus)} passages "
          f"({info['gold_passages']} gold), Python {info['python']}", file=sys.stderr)


if __name__ == "__main__":
    main()

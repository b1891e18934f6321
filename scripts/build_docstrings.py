"""Build the `docstrings` text set: real English text available offline, from the
Python standard library's docstrings, in FlashRAG's layout (questions `id`,
`question`, `golden_answers`; corpus `id`, `contents`), shipped as package data:

    nyx_tasks/data/text_sets/docstrings/
        train_questions.jsonl.gz  train_corpus.jsonl.gz   the training split (a `mine.text_sets` entry)
        eval_questions.jsonl.gz   eval_corpus.jsonl.gz    the held-out split (an `evaluate.text_sets` entry)
        BUILD.json                the Python that was read, the module lists, counts, every drop by name

One pair per public function, class or method (of a class defined in the module)
whose docstring has a summary and a body, in a pinned list of stdlib modules (both
splits) and, for training only, a pinned list of third-party packages the project
installs (`TRAIN_PACKAGES`, each walked whole; the standard library holds under 1,800
such pairs in all, too few for both a large held-out split and a large training split):

- question = the docstring's first sentence (the summary line);
- passage (corpus `contents`) = the rest of the docstring, whitespace collapsed,
  cut at a word boundary after `MAX_PASSAGE_CHARS`. The qualified name is left
  out: the summary often restates it (`dumps` / "Serialize ``obj``..."), so the
  name would turn retrieval into string matching;
- id = the qualified name (`json.JSONEncoder.encode`); the corpus id is the same,
  and the evaluation questions carry it again as `gold_id` (the corpus id of
  their passage) for recall@k / MRR;
- golden_answers = [the passage's first sentence]: an extractive answer that is
  in the gold passage, so F1 after top-1 retrieval measures retrieval plus
  copying (EM needs the whole sentence verbatim and stays near 0 for a reader
  that paraphrases).

Drops, counted and named in BUILD.json (`drops`: reason -> count, `dropped`:
reason -> ids): `alias` (the same object reached again under another name),
`boilerplate` (a docstring equal to one the builtin types carry, e.g. "Return
self==value."), `no_body` (a summary only), `short_question` (a summary under
`MIN_QUESTION_WORDS` words), `short_passage` (a body under `MIN_PASSAGE_WORDS`
words), `duplicate_question` / `duplicate_passage` (the same text as an
earlier pair: an ambiguous question or two golds for one passage). Objects
without a docstring are counted (`no_docstring`) but not named.

The split is by module: `EVAL_MODULES` hold-out, `TRAIN_MODULES` and `TRAIN_PACKAGES`
train; no module, id or text is in both (duplicates are dropped across the whole
build, the evaluation modules read first). The held-out split is standard library only.
A third-party submodule that cannot be imported (an optional dependency missing) is
skipped and named in BUILD.json (`unimportable`).
Rows are ordered by the SHA-1 of their id, so the first N questions (a text
set's `max_questions`) are a sample across modules.
The evaluation corpus holds the evaluation passages only (no training passages
as distractors): chance recall@1 is 1 / (evaluation passages).

Reproducible: the generated files are shipped, since docstrings change between
Python versions and package versions; BUILD.json records the interpreter that wrote
them and the version of each training package (`packages`), and re-running with
those writes the same bytes (gzip with mtime 0, sorted walk). `tests/test_docstrings.py`
checks this.

    .venv/bin/python scripts/build_docstrings.py [--out DIR]
"""

from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import importlib
import importlib.metadata
import inspect
import io
import json
import pkgutil
import platform
import re
import sys
import warnings
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "nyx_tasks" / "data" / "text_sets" / "docstrings"
# Whole modules go to one split (a package's submodules with it, except where the two lists already divided
# one: logging, http, xml). Standard-library modules present from 3.11 to 3.13 (none removed in 3.13);
# the evaluation split is the original 30 modules, every module added since, and the families whose
# name's SHA-1 mod 10 is under 2 (chosen by that rule, before any model was scored on them).
EVAL_MODULES = (
    "array", "atexit", "bdb", "binascii", "bisect", "builtins", "bz2", "cProfile", "cmath", "cmd", "code",
    "codeop", "collections", "collections.abc", "compileall", "configparser", "contextlib", "contextvars",
    "csv", "ctypes", "ctypes.macholib.dylib", "ctypes.macholib.framework", "curses", "curses.panel",
    "curses.textpad", "datetime", "dbm", "dbm.dumb", "difflib", "dis", "doctest", "email", "email.base64mime",
    "email.charset", "email.generator", "email.header", "email.headerregistry", "email.iterators",
    "email.message", "email.parser", "email.policy", "email.quoprimime", "email.utils", "faulthandler", "fcntl",
    "fileinput", "fnmatch", "ftplib", "gc", "genericpath", "getpass", "graphlib", "grp", "heapq",
    "http.cookies", "http.server", "inspect", "ipaddress", "json", "linecache", "locale", "logging.handlers",
    "lzma", "marshal", "mimetypes", "mmap", "modulefinder", "multiprocessing", "multiprocessing.connection",
    "multiprocessing.forkserver", "multiprocessing.managers", "multiprocessing.process",
    "multiprocessing.resource_tracker", "multiprocessing.shared_memory", "ntpath", "operator", "pathlib", "pdb",
    "pickle", "pickletools", "plistlib", "pstats", "pwd", "py_compile", "pyclbr", "pyexpat", "queue", "quopri",
    "readline", "resource", "rlcompleter", "runpy", "select", "shelve", "shutil", "site", "smtplib",
    "statistics", "struct", "symtable", "sysconfig", "tabnanny", "tarfile", "termios", "textwrap", "threading",
    "trace", "traceback", "typing", "unicodedata", "urllib.parse", "urllib.request", "urllib.robotparser",
    "venv", "wave", "webbrowser", "xml.sax", "xml.sax.expatreader", "xml.sax.handler", "xml.sax.saxutils",
    "xml.sax.xmlreader", "xmlrpc.client", "xmlrpc.server", "zipapp", "zoneinfo",
)
TRAIN_MODULES = (
    "abc", "argparse", "ast", "asyncio", "asyncio.selector_events", "asyncio.staggered", "asyncio.taskgroups",
    "asyncio.trsock", "base64", "calendar", "codecs", "concurrent.futures", "dataclasses", "decimal", "enum",
    "filecmp", "fractions", "functools", "getopt", "glob", "gzip", "hashlib", "hmac", "html", "html.parser",
    "http", "http.client", "http.cookiejar", "imaplib", "importlib.abc", "importlib.metadata",
    "importlib.resources", "importlib.resources.abc", "importlib.resources.readers",
    "importlib.resources.simple", "importlib.util", "io", "itertools", "logging", "logging.config", "mailbox",
    "math", "numbers", "optparse", "os", "pkgutil", "platform", "poplib", "posixpath", "random", "re", "sched",
    "secrets", "selectors", "signal", "socket", "socketserver", "sqlite3", "ssl", "string", "subprocess", "sys",
    "tempfile", "time", "timeit", "tokenize", "tracemalloc", "types", "unittest", "unittest.case",
    "unittest.mock", "unittest.util", "uuid", "warnings", "weakref", "wsgiref.handlers", "wsgiref.headers",
    "wsgiref.util", "wsgiref.validate", "xml.dom", "xml.dom.expatbuilder", "xml.dom.minidom",
    "xml.etree.ElementTree", "zipfile", "zipimport", "zlib",
)
# Training only: third-party packages the project installs (direct or through Airflow, rich, torch, matplotlib),
# each walked whole (its public submodules, sorted); BUILD.json records their versions. The standard library
# alone holds under 1,800 pairs, too few for a large held-out split and a large training split.
# (Not anyio: its lazy importer adds public names to the package as other code reads them, so what the
# builder sees would depend on what ran before it.)
TRAIN_PACKAGES = (
    "attr", "click", "dateutil", "fsspec", "httpx", "jinja2", "markdown_it", "more_itertools", "packaging",
    "pluggy", "pyparsing", "rich",
)
MIN_QUESTION_WORDS = 4
MIN_PASSAGE_WORDS = 10
MAX_PASSAGE_CHARS = 800
MAX_ANSWER_WORDS = 40
# A C function's first line may be its signature ("pow(x, y, /) -> int"), not a summary.
SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*->\s*.*)?$")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`(\"'])")
BUILTIN_TYPES = (object, type, int, float, str, bytes, list, tuple, dict, set, frozenset, BaseException,
                 Exception, property, classmethod, staticmethod)


def boilerplate_docs() -> set[str]:
    """Every docstring the builtin types carry ("Return self==value.", "Implement iter(self)."...):
    what a class inherits or re-states from them says nothing about it."""
    docs = set()
    for t in BUILTIN_TYPES:
        for name in dir(t):
            d = getattr(getattr(t, name, None), "__doc__", None)
            if isinstance(d, str):
                docs.add(inspect.cleandoc(d))
    return docs


# Hooks a debugger or a test runner replaces with its own (pytest does): never read.
REPLACEABLE = {"sys.breakpointhook", "sys.displayhook", "sys.excepthook", "sys.unraisablehook",
               "threading.excepthook", "pdb.set_trace"}


def owned(obj, module: str) -> bool:
    """Defined by `module`, a submodule, or its C implementation (`_io` for io, `_thread` for
    threading, `posix` for os)."""
    owner = getattr(obj, "__module__", None)
    if not isinstance(owner, str):
        return False
    top, impl = module.split(".")[0], owner.lstrip("_")
    return (owner == module or owner.startswith(module + ".") or owner == "posix" and top == "os"
            or owner.startswith("_") and bool(impl) and (impl.startswith(top) or top.startswith(impl)))


def documented(obj) -> bool:
    return inspect.isroutine(obj) or inspect.isclass(obj) or isinstance(obj, (classmethod, staticmethod))


def candidates(module: str):
    """(qualified name, object) for the module's public functions and classes, then each class's own
    public methods, in sorted name order."""
    mod = importlib.import_module(module)
    names = getattr(mod, "__all__", None) or [n for n in vars(mod) if not n.startswith("_")]
    for name in sorted(set(names)):
        obj = getattr(mod, name, None)
        if f"{module}.{name}" in REPLACEABLE or not documented(obj) or not owned(obj, module):
            continue
        yield f"{module}.{name}", obj
        if inspect.isclass(obj):
            for attr, member in sorted(vars(obj).items()):
                if not attr.startswith("_") and documented(member):
                    yield f"{module}.{name}.{attr}", member


def package_modules(top: str) -> list[str]:
    """A third-party package and its public submodules (no `_private`, test or testing ones), sorted."""
    pkg = importlib.import_module(top)
    names = {top}
    for info in pkgutil.walk_packages(getattr(pkg, "__path__", []), top + ".", onerror=lambda name: None):
        if not any(part.startswith("_") or part in ("test", "tests", "testing") for part in info.name.split(".")[1:]):
            names.add(info.name)
    return sorted(names)


def package_versions() -> dict[str, str]:
    """Each of `TRAIN_PACKAGES` -> the version of the distribution that installs it."""
    dists = importlib.metadata.packages_distributions()
    return {top: importlib.metadata.version(dists[top][0]) for top in TRAIN_PACKAGES}


def split_doc(doc: str) -> tuple[str, str]:
    """(first sentence of the summary, everything after it), whitespace collapsed."""
    paras = [p for p in inspect.cleandoc(doc).split("\n\n") if p.strip()]
    while paras and all(SIGNATURE.match(line.strip()) for line in paras[0].splitlines() if line.strip()):
        paras = paras[1:]
    if not paras:
        return "", ""
    summary = " ".join(paras[0].split())
    first, *rest = SENTENCE_END.split(summary, maxsplit=1)
    body = " ".join([*rest, *(" ".join(p.split()) for p in paras[1:])])
    return first, body


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0]


def first_sentence(text: str) -> str:
    return " ".join(SENTENCE_END.split(text, maxsplit=1)[0].split()[:MAX_ANSWER_WORDS])


def build() -> dict:
    """Pairs per split plus the counted, named drops. Deterministic for one Python version."""
    boiler = boilerplate_docs()
    seen_obj: set[int] = set()
    seen_q: set[str] = set()
    seen_p: set[str] = set()
    drops: dict[str, list[str]] = collections.defaultdict(list)
    no_docstring = 0
    splits: dict[str, list[dict]] = {"train": [], "eval": []}
    unimportable: list[str] = []
    sources = [("eval", m, m) for m in EVAL_MODULES] + [("train", m, m) for m in TRAIN_MODULES]
    sources += [("train", top, m) for top in TRAIN_PACKAGES for m in package_modules(top)]
    for split, label, module in sources:  # label: the pair's `module` (a third-party package's top name)
        try:
            found = list(candidates(module))
        except Exception:  # a third-party submodule that needs an optional dependency: named, skipped
            if label == module:
                raise
            unimportable.append(module)
            continue
        for qid, obj in found:
            doc = getattr(obj, "__doc__", None)
            reason, pair = judge(qid, obj, doc, boiler, seen_obj, seen_q, seen_p)
            if reason == "no_docstring":
                no_docstring += 1
            elif reason:
                drops[reason].append(qid)
            else:
                splits[split].append({**pair, "module": label})
    for pairs in splits.values():  # a prefix (`max_questions`) is a sample of every module, not the first ones
        pairs.sort(key=lambda p: hashlib.sha1(p["id"].encode()).hexdigest())
    return {"splits": splits, "drops": {k: drops[k] for k in sorted(drops)}, "no_docstring": no_docstring,
            "unimportable": unimportable}


def judge(qid, obj, doc, boiler, seen_obj, seen_q, seen_p) -> tuple[str | None, dict | None]:
    """(drop reason, None) or (None, the pair)."""
    if id(obj) in seen_obj:
        return "alias", None
    seen_obj.add(id(obj))
    if not isinstance(doc, str) or not doc.strip():
        return "no_docstring", None
    if inspect.cleandoc(doc) in boiler:
        return "boilerplate", None
    question, passage = split_doc(doc)
    passage = clip(passage, MAX_PASSAGE_CHARS)
    if not passage:
        return "no_body", None
    if len(question.split()) < MIN_QUESTION_WORDS:
        return "short_question", None
    if len(passage.split()) < MIN_PASSAGE_WORDS:
        return "short_passage", None
    if question in seen_q:
        return "duplicate_question", None
    if passage in seen_p:
        return "duplicate_passage", None
    seen_q.add(question)
    seen_p.add(passage)
    return None, {"id": qid, "question": question, "passage": passage, "answer": first_sentence(passage)}


def jsonl_gz(rows: list[dict]) -> bytes:
    """Gzipped JSONL with no timestamp or file name in the header: the same rows, the same bytes."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    return buf.getvalue()


def files(built: dict) -> dict[str, bytes]:
    """File name -> bytes for the whole set."""
    out = {}
    for split, pairs in built["splits"].items():
        questions = [{"id": p["id"], "question": p["question"], "golden_answers": [p["answer"]],
                      **({"gold_id": p["id"]} if split == "eval" else {})} for p in pairs]
        out[f"{split}_questions.jsonl.gz"] = jsonl_gz(questions)
        out[f"{split}_corpus.jsonl.gz"] = jsonl_gz([{"id": p["id"], "contents": p["passage"]} for p in pairs])
    meta = {
        "python": platform.python_version(), "implementation": platform.python_implementation(),
        "modules": {"eval": list(EVAL_MODULES), "train": list(TRAIN_MODULES)},
        "packages": package_versions(), "unimportable": built["unimportable"],
        "limits": {"min_question_words": MIN_QUESTION_WORDS, "min_passage_words": MIN_PASSAGE_WORDS,
                   "max_passage_chars": MAX_PASSAGE_CHARS, "max_answer_words": MAX_ANSWER_WORDS},
        "counts": {split: len(pairs) for split, pairs in built["splits"].items()},
        "per_module": {split: dict(collections.Counter(p["module"] for p in pairs))
                       for split, pairs in built["splits"].items()},
        "no_docstring": built["no_docstring"],
        "drops": {k: len(v) for k, v in built["drops"].items()},
        "dropped": built["drops"],
    }
    out["BUILD.json"] = (json.dumps(meta, indent=1, ensure_ascii=False) + "\n").encode()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # typing.io / typing.re on 3.11
        built = build()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in files(built).items():
        (args.out / name).write_bytes(data)
    drops = {k: len(v) for k, v in built["drops"].items()}
    print(f"{args.out}: {len(built['splits']['train'])} training pairs, {len(built['splits']['eval'])} evaluation "
          f"pairs; drops {drops}, {built['no_docstring']} without a docstring (Python {platform.python_version()})",
          file=sys.stderr)


if __name__ == "__main__":
    main()

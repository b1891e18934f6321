"""`nyx import mmqa|mmeb-eval|flashrag`: held-out evaluation benchmarks -> `<root>/benchmarks/<name>/`.

Training sets go to `datasets/` (importers.py); benchmarks live apart so that no train source can
read one. Each import writes, then `_MANIFEST.json` last (its `benchmark` block names the metric):

- `queries-00000.parquet` (BENCH_QUERIES): qid, query (image placeholders in the text),
  query_image_ids, answers (for F1 / EM), gold_ids (any of them is a hit), candidate_ids (MMEB:
  the query's own candidates, the positive first; empty when the corpus is one global pool),
  subset (MMQA's question type, MMEB's subset folder).
- `corpus-00000.parquet` (BENCH_CORPUS): doc_id, text, image_ids, kind (text / table / image /
  candidate).
- `images-00000.parquet` (IMAGES): each image stored once under its sha256, as `nyx import mmeb`.

Layouts:

- `mmqa` (MultiModalQA, Talmor et al. 2021, github.com/allenai/multimodalqa): `MMQA_<split>.jsonl`
  (qid, question, answers [{answer, ...}], metadata {type, ...}, supporting_context [{doc_id,
  doc_part}]) plus the corpus files `MMQA_texts.jsonl` (title, url, id, text), `MMQA_tables.jsonl`
  (title, url, id, table {header [{column_name}], table_rows [[{text}]]}) and `MMQA_images.jsonl`
  (title, url, id, path into final_dataset_images/). From the paper's released code
  (SnowNation101/Nyx, experiments/mmqa/make_corpus.py and nyx_rag.py): every dev question of
  every type; one global corpus of all images, tables and texts (not each question's own
  candidates); an image document is "title\\n<image>", a table "title\\n" + its grid rendering
  with `tabulate` (tablefmt "grid", headers the column names, cells their text), a text
  "title\\ntext"; images over 16384 x 28 x 28 pixels or unreadable are left out of the corpus;
  the answer is scored by SQuAD token F1 / EM, the best over the gold answers (judges.token_f1),
  generated from the top-1 retrieved document. Ours: gold_ids are the supporting_context doc ids
  (the released code reports no MMQA retrieval number; we report recall@k, a hit when any
  supporting document is retrieved); the retrieval instruction comes from the embedder config
  (the released code prefixed "Please retrieve the most relevant document to answer the
  question" to the question: EmbedderConfig.query_instruction's default); a question with no
  answer or no text is a named drop, a gold document missing from the corpus is counted
  (`gold_not_in_corpus`), not dropped.
- `mmeb-eval` (TIGER-Lab/MMEB-eval, one folder per subset, `<subset>/test-*.parquet`): columns
  qry_text, qry_img_path, tgt_text (list), tgt_img_path (list); the first target is the positive,
  all of them the query's candidates; Phi-3.5-V's `<|image_1|>` marks an image; paths are relative
  to the unzipped `images.zip` (`eval_images/`). Scored as MMEB does: precision@1 over the query's
  own candidates. Candidates are documents keyed by content (importers.doc_id), so a candidate
  identical to the positive is the positive (counted: `duplicate_candidates`).
- `flashrag` (RUC-NLPIR/FlashRAG_datasets, `<set>/{dev,test}.jsonl`: id, question, golden_answers;
  the corpus wiki18 jsonl: id, contents): text_sets.read_questions already validates FlashRAG's
  layout (drops `<name>_no_question`, `<name>_no_answers`, `<name>_duplicate_question`), so this is a
  thin validated copy: `questions-00000.parquet` with FlashRAG's own columns (id, question,
  golden_answers), which `evaluate.text_sets` / `mine.text_sets` read with TextSetConfig's defaults
  (the manifest's `text_set` block is that config). The corpus (21M passages for wiki18) is not
  copied: the manifest names its files, and text_sets.read_corpus validates it when it is read.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from nyx_tasks.core.base import code_version
from nyx_tasks.core.config import FetchConfig, TextSetConfig
from nyx_tasks.core.hashing import stable_hash
from nyx_tasks.core.log import DropCounter, get_logger
from nyx_tasks.sources.files import Malformed, expand_urls, fingerprint_urls, iter_file_rows
from nyx_tasks.sources.importers import (
    NAME_RE,
    SOURCE_IMAGE_TOKEN,
    ImageReader,
    ImportFailed,
    as_list,
    doc_id,
    encode_side,
    image_path_list,
    subset_of,
)
from nyx_tasks.sources.text_sets import read_questions
from nyx_tasks.store.artifacts import ArtifactStore

BENCH_LAYOUTS = ("mmqa", "mmeb-eval", "flashrag")
MMQA_MAX_PIXELS = 16384 * 28 * 28  # the released make_corpus.py leaves larger images out


def bench_rel(name: str) -> str:
    return f"benchmarks/{name}"


def _schemas():
    import pyarrow as pa  # pyarrow: only once rows are written

    strs = pa.list_(pa.string())
    queries = pa.schema([
        pa.field("qid", pa.string(), nullable=False), pa.field("query", pa.string(), nullable=False),
        pa.field("query_image_ids", strs, nullable=False), pa.field("answers", strs, nullable=False),
        pa.field("gold_ids", strs, nullable=False), pa.field("candidate_ids", strs, nullable=False),
        pa.field("subset", pa.string(), nullable=False)])
    corpus = pa.schema([
        pa.field("doc_id", pa.string(), nullable=False), pa.field("text", pa.string(), nullable=False),
        pa.field("image_ids", strs, nullable=False), pa.field("kind", pa.string(), nullable=False)])
    flashrag = pa.schema([
        pa.field("id", pa.string(), nullable=False), pa.field("question", pa.string(), nullable=False),
        pa.field("golden_answers", strs, nullable=False)])
    return queries, corpus, flashrag


@dataclass(frozen=True)
class BenchmarkFiles:
    """The files an import reads (globs and fsspec URLs allowed), by layout: mmqa: `questions`
    (MMQA_dev.jsonl), `texts`, `tables`, `image_lists` (MMQA_images.jsonl) and `image_roots`
    (final_dataset_images/); mmeb-eval: `sources` (<subset>/*.parquet) and `image_roots`
    (eval_images/); flashrag: `questions` and `corpus`."""

    questions: Sequence[str] = ()
    texts: Sequence[str] = ()
    tables: Sequence[str] = ()
    image_lists: Sequence[str] = ()
    sources: Sequence[str] = ()
    corpus: Sequence[str] = ()
    image_roots: Sequence[str] = ()


@dataclass(frozen=True)
class _Import:
    """One import in progress: its name and layout, where it writes, its drops and extra counts
    (both go to the manifest) and when it started."""

    name: str
    layout: str
    store: ArtifactStore
    drops: DropCounter
    extra: Counter
    started: str
    t0: float


@dataclass
class _Out:
    """What one layout's reader produced; drops and extra counts go to the manifest."""

    queries: list[dict]
    corpus: list[dict]
    rows_in: int
    subsets: Counter


def _check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise ValueError(f"benchmark name {name!r} must match {NAME_RE.pattern}")


def _rows(urls: list[str], drops: DropCounter, prefix: str = ""):
    """(url, index, row) of every readable row; unreadable ones are named drops."""
    for url in urls:
        for i, raw in enumerate(iter_file_rows(url)):
            if isinstance(raw, Malformed):
                drops.drop(f"{prefix}malformed_{raw.reason}", f"{url}: {raw.detail}")
            else:
                yield url, i, raw


# ----------------------------------------------------------------------------- MMQA


def table_text(table: dict) -> str:
    """An MMQA table as the released code renders it: tabulate's grid, headers the column names."""
    from tabulate import tabulate  # a dependency of Airflow; only needed for MMQA tables

    headers = [str(c.get("column_name", "")) for c in table.get("header") or []]
    rows = [[str(c.get("text", "")) for c in row] for row in table.get("table_rows") or []]
    return tabulate(rows, headers=headers, tablefmt="grid")


def _mmqa_corpus(files: BenchmarkFiles, images: ImageReader, placeholder: str, drops: DropCounter,
                 max_pixels: int) -> list[dict]:
    docs, seen = [], set()

    def add(did, text, image_ids, kind, where):
        if did in seen:
            drops.drop("corpus_duplicate_id", f"{where}: {did}")
            return
        seen.add(did)
        docs.append({"doc_id": did, "text": text, "image_ids": image_ids, "kind": kind})

    # The released corpus's order: images, tables, texts.
    for url, i, r in _rows(list(files.image_lists), drops, "corpus_"):
        did, path = str(r.get("id") or ""), str(r.get("path") or "")
        if not did or not path:
            drops.drop("corpus_image_no_id_or_path", f"{url}#{i}")
            continue
        iid, why = images.get(path)
        if why:
            drops.drop(f"corpus_{why}", f"{url}#{i}: {path}")
        elif images.sizes[iid][0] * images.sizes[iid][1] > max_pixels:
            drops.drop("corpus_image_too_large", f"{url}#{i}: {path} {images.sizes[iid]}")
        else:
            add(did, f"{r.get('title') or ''}\n{placeholder}", [iid], "image", f"{url}#{i}")
    for url, i, r in _rows(list(files.tables), drops, "corpus_"):
        did, table = str(r.get("id") or ""), r.get("table")
        if not did or not isinstance(table, dict):
            drops.drop("corpus_table_malformed", f"{url}#{i}")
            continue
        add(did, f"{r.get('title') or ''}\n{table_text(table)}", [], "table", f"{url}#{i}")
    for url, i, r in _rows(list(files.texts), drops, "corpus_"):
        did, text = str(r.get("id") or ""), r.get("text")
        if not did or not isinstance(text, str) or not text.strip():
            drops.drop("corpus_empty_text", f"{url}#{i}")
            continue
        add(did, f"{r.get('title') or ''}\n{text}", [], "text", f"{url}#{i}")
    return docs


def _mmqa_answers(value) -> list[str]:
    out = []
    for a in value if isinstance(value, list) else []:
        ans = a.get("answer") if isinstance(a, dict) else a
        if ans is not None and str(ans).strip():
            out.append(str(ans).strip())
    return list(dict.fromkeys(out))


def read_mmqa(files: BenchmarkFiles, images: ImageReader, placeholder: str, drops: DropCounter, extra: Counter,
              max_pixels: int = MMQA_MAX_PIXELS) -> _Out:
    """MMQA's questions and its one corpus from `files` (questions, texts, tables, image_lists: URLs
    already expanded); images through `images`."""
    corpus = _mmqa_corpus(files, images, placeholder, drops, max_pixels)
    ids = {d["doc_id"] for d in corpus}
    out, seen, rows_in, subsets = [], set(), 0, Counter()
    for url, i, r in _rows(list(files.questions), drops):
        rows_in += 1
        qid, question, answers = str(r.get("qid") or ""), r.get("question"), _mmqa_answers(r.get("answers"))
        if not isinstance(question, str) or not question.strip():
            drops.drop("empty_question", f"{url}#{i}")
        elif not answers:
            drops.drop("no_answers", f"{url}#{i} {qid}")
        elif not qid or qid in seen:
            drops.drop("duplicate_qid" if qid else "no_qid", f"{url}#{i} {qid}")
        else:
            seen.add(qid)
            gold = list(dict.fromkeys(str(c["doc_id"]) for c in r.get("supporting_context") or []
                                      if isinstance(c, dict) and c.get("doc_id")))
            extra["gold_not_in_corpus"] += sum(g not in ids for g in gold)
            subset = str((r.get("metadata") or {}).get("type") or "")
            subsets[subset] += 1
            out.append({"qid": qid, "query": question.strip(), "query_image_ids": [], "answers": answers,
                        "gold_ids": gold, "candidate_ids": [], "subset": subset})
    extra["corpus_docs"] = len(corpus)
    return _Out(out, corpus, rows_in, subsets)


# ----------------------------------------------------------------------------- MMEB-eval


def read_mmeb_eval(sources, images: ImageReader, placeholder: str, drops: DropCounter, extra: Counter) -> _Out:
    token = re.compile(f"{SOURCE_IMAGE_TOKEN}|{re.escape(placeholder)}")
    out, corpus, seen, rows_in, subsets = [], [], set(), 0, Counter()
    for url, i, r in _rows(sources, drops):
        rows_in += 1
        subset = subset_of(url)
        q_text, q_ids, why = encode_side(r.get("qry_text"), image_path_list(r.get("qry_img_path")), images, token, placeholder,
                                   extra)
        if why:
            drops.drop(f"query_{why}", f"{url}#{i}")
            continue
        if not q_text and not q_ids:
            drops.drop("empty_query", f"{url}#{i}")
            continue
        texts, paths = as_list(r.get("tgt_text")), as_list(r.get("tgt_img_path"))
        cands, bad = [], ""
        for k in range(max(len(texts), len(paths))):
            c_text, c_ids, why = encode_side(texts[k] if k < len(texts) else "",
                                       image_path_list(paths[k]) if k < len(paths) else [], images, token, placeholder,
                                       extra)
            # A candidate that cannot be read changes the query's candidate set, so the row goes.
            if why or (not c_text and not c_ids):
                bad = why or "empty_candidate"
                break
            cands.append((doc_id(c_text, c_ids), c_text, c_ids))
        if bad or not cands:
            reason = "no_candidates" if not bad else bad if bad == "empty_candidate" else f"candidate_{bad}"
            drops.drop(reason, f"{url}#{i}")
            continue
        ids = [c[0] for c in cands]
        extra["duplicate_candidates"] += len(ids) - len(set(ids))
        for did, text, c_ids in cands:
            if did not in seen:
                seen.add(did)
                corpus.append({"doc_id": did, "text": text, "image_ids": c_ids, "kind": "candidate"})
        subsets[subset] += 1
        out.append({"qid": f"{subset}-{i:06d}", "query": q_text, "query_image_ids": q_ids, "answers": [],
                    "gold_ids": [ids[0]], "candidate_ids": list(dict.fromkeys(ids)), "subset": subset})
    return _Out(out, corpus, rows_in, subsets)


# ----------------------------------------------------------------------------- the import


def _manifest(run: _Import, benchmark: dict, urls: dict, outputs: dict, got: _Out, **more) -> dict:
    return {
        "benchmark": benchmark, "dataset": run.name, "layout": run.layout, "status": "complete",
        "code_version": code_version(), "sources": urls, "rows_in": got.rows_in, "rows_out": len(got.queries),
        "drops": run.drops.as_dict(), "extra": dict(sorted(run.extra.items())),
        "subsets": dict(sorted(got.subsets.items())), "outputs": outputs, "location": run.store.url(bench_rel(run.name)),
        "output_hash": stable_hash([(k, f["path"], f["sha256"]) for k, fs in outputs.items() for f in fs], 32),
        "timings": {"started_at": run.started, "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "seconds": round(time.monotonic() - run.t0, 3)}, **more}


def _write(store: ArtifactStore, rel: str, schema, rows: list[dict], what: str) -> dict:
    w = store.parquet_writer(rel, schema, what)
    try:
        w.write_rows(rows)
        return w.close()
    except BaseException:
        w.abort()
        raise


def import_benchmark(layout: str, name: str, store: ArtifactStore, files: BenchmarkFiles | None = None, *,
                     placeholder: str = "<image>", fetch: FetchConfig | None = None,
                     max_pixels: int = MMQA_MAX_PIXELS) -> dict:
    """Import one benchmark from `files` (BenchmarkFiles: which ones each layout reads) into
    `<root>/benchmarks/<name>/`; returns the manifest. Raises ImportFailed when no question is
    usable."""
    from nyx_tasks.core.schema import IMAGES  # pyarrow, only once rows are written

    if layout not in BENCH_LAYOUTS:
        raise ValueError(f"unknown benchmark layout {layout!r}; layouts: {', '.join(BENCH_LAYOUTS)}")
    _check_name(name)
    files, log, base = files or BenchmarkFiles(), get_logger("import"), bench_rel(name)
    store.remove(f"{base}/_MANIFEST.json")  # readers see "not imported" until the new manifest lands
    run = _Import(name, layout, store, DropCounter(log), Counter(),
                  dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), time.monotonic())
    q_schema, c_schema, f_schema = _schemas()
    if layout == "flashrag":
        return _import_flashrag(run, files, f_schema)
    images = ImageReader(store, list(files.image_roots), fetch or FetchConfig())
    if layout == "mmqa":
        urls = {"questions": expand_urls(list(files.questions), "MMQA questions"),
                "texts": expand_urls(list(files.texts), "MMQA texts"),
                "tables": expand_urls(list(files.tables), "MMQA tables"),
                "images": expand_urls(list(files.image_lists), "MMQA images")}
        got = read_mmqa(BenchmarkFiles(urls["questions"], urls["texts"], urls["tables"], urls["images"]), images,
                        placeholder, run.drops, run.extra, max_pixels)
        bench = {"kind": "mmqa", "metric": "f1", "candidates": "global", "split": "dev", "generate_top_k": 1}
    else:
        urls = {"sources": expand_urls(list(files.sources), "MMEB-eval source")}
        got = read_mmeb_eval(urls["sources"], images, placeholder, run.drops, run.extra)
        bench = {"kind": "mmeb-eval", "metric": "precision@1", "candidates": "per_query", "split": "test"}
    if not got.queries:
        what = "no rows" if got.rows_in == 0 else f"{got.rows_in} rows, all dropped ({run.drops.as_dict()})"
        raise ImportFailed(f"nyx import {layout}: {what} in {urls}; check the files and --image-root "
                           f"{list(files.image_roots)}")
    outputs = {"queries": [_write(store, f"{base}/queries-00000.parquet", q_schema, got.queries, f"{name}/queries")],
               "corpus": [_write(store, f"{base}/corpus-00000.parquet", c_schema, got.corpus, f"{name}/corpus")],
               "images": [_write(store, f"{base}/images-00000.parquet", IMAGES, images.rows, f"{name}/images")]}
    manifest = _manifest(run, bench, urls, outputs, got, placeholder=placeholder,
                         image_roots=list(files.image_roots), corpus_docs=len(got.corpus), images=len(images.rows))
    store.write_json_atomic(f"{base}/_MANIFEST.json", manifest)  # last: the import is complete
    log.info("import %s (%s): %d questions in, %d out (by subset %s), %d corpus documents, %d images, "
             "drops %s -> %s", name, layout, got.rows_in, len(got.queries), manifest["subsets"], len(got.corpus),
             len(images.rows), manifest["drops"] or "none", manifest["location"])
    return manifest


def _import_flashrag(run: _Import, files: BenchmarkFiles, schema) -> dict:
    name, store, drops = run.name, run.store, run.drops
    log, base = get_logger("import"), bench_rel(name)
    q_urls = expand_urls(list(files.questions), "FlashRAG questions")
    c_urls = expand_urls(list(files.corpus), "FlashRAG corpus") if files.corpus else []
    ts = TextSetConfig(name=name, questions=q_urls, corpus=c_urls or q_urls)
    rows_in = sum(1 for u in q_urls for _ in iter_file_rows(u))
    got = read_questions(ts, drops.drop, capped=False)
    if not got:
        what = "no rows" if rows_in == 0 else f"{rows_in} rows, all dropped ({drops.as_dict()})"
        raise ImportFailed(f"nyx import flashrag: {what} in {q_urls}; FlashRAG's columns are id, question, "
                           "golden_answers")
    rows = [{"id": q.qid.removeprefix(f"{name}:"), "question": q.question, "golden_answers": q.answers}
            for q in got]
    rel = f"{base}/questions-00000.parquet"
    outputs = {"questions": [_write(store, rel, schema, rows, f"{name}/questions")]}
    text_set = {"name": name, "questions": [store.url(rel)], "corpus": c_urls}
    split = PurePosixPath(q_urls[0]).stem.split("-")[0] or "dev"  # FlashRAG's dev.jsonl / test.jsonl
    bench = {"kind": "flashrag", "metric": "f1", "candidates": "global", "split": split,
             "corpus_fingerprint": fingerprint_urls(c_urls) if c_urls else ""}
    manifest = _manifest(run, bench, {"questions": q_urls, "corpus": c_urls}, outputs,
                         _Out(rows, [], rows_in, Counter()), text_set=text_set)
    store.write_json_atomic(f"{base}/_MANIFEST.json", manifest)  # last: the import is complete
    log.info("import %s (flashrag): %d questions in, %d out, drops %s; corpus %d file(s), read when evaluated "
             "-> %s", name, rows_in, len(rows), manifest["drops"] or "none", len(c_urls), manifest["location"])
    return manifest

"""An index of a user's own documents under an exported retriever (`nyx export model`), and search
over it: `nyx index` and `nyx search`.

The documents (Parquet or JSONL files, any fsspec URL, globs allowed; an id and a text column) become
a corpus table under the artifact root (`sources.corpus_table`: read by row id, identical texts
ranked once, spelled special tokens kept as text) and the model's vector shards over it
(`retrieval.vector_shards`: resumable, one shard at a time in memory). `indexes/<name>/_INDEX.json`
names the model folder, the files and the columns.

    index = build_index(store, "docs", "exported/", ["my/*.jsonl"])
    hits = search_index(store, "docs", ["what opens a URL?"], k=5, dim=192)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from nyx_tasks.core.base import StageError
from nyx_tasks.core.config import SearchConfig, TextSetConfig
from nyx_tasks.core.log import get_logger
from nyx_tasks.core.text import plain
from nyx_tasks.embedding import MixedItem, load
from nyx_tasks.retrieval.corpora import search_table
from nyx_tasks.retrieval.vector_shards import SHARD_ROWS, embed_missing
from nyx_tasks.sources.corpus_table import CorpusTable, corpus_table
from nyx_tasks.store.artifacts import ArtifactStore

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RECORD = "_INDEX.json"


@dataclass(frozen=True)
class Hit:
    rank: int
    doc_id: str
    score: float
    text: str


def _corpus(name: str, files: list[str], id_column: str, text_column: str) -> TextSetConfig:
    # a corpus table is keyed by its files and columns: the questions side is not read here
    return TextSetConfig(name=name, questions=files, corpus=files, corpus_id_column=id_column,
                         corpus_text_column=text_column)


def build_index(store: ArtifactStore, name: str, model_dir: str, files: list[str], id_column: str = "id",
                text_column: str = "text", shard_rows: int = SHARD_ROWS) -> dict:
    """Embed every document of `files` with the exported model in `model_dir` (missing shards only:
    a rerun or a resumed one embeds nothing twice); returns the index record."""
    if not NAME.match(name):
        raise StageError(f"index name {name!r}: letters, digits, '.', '_' or '-', at most 64")
    if not (Path(model_dir) / "nyx_model.json").is_file():
        raise StageError(f"{model_dir} is not an exported model (no nyx_model.json); make one with `nyx export model`")
    ts = _corpus(name, files, id_column, text_column)
    dropped: list[tuple] = []
    table = corpus_table(store, ts, lambda *a: dropped.append(a))
    embedder = load(model_dir)
    _, new = embed_missing(embedder, table, shard_rows)
    record = {"name": name, "model": str(Path(model_dir).resolve()), "files": files, "id_column": id_column,
              "text_column": text_column, "shard_rows": shard_rows, "documents": len(table),
              "distinct_texts": table.manifest.get("distinct"), "dropped": len(dropped), "corpus": table.key}
    table.close()
    store.write_json_atomic(f"indexes/{name}/{RECORD}", record)
    get_logger("index").info("index %s: %d documents (%d embedded now, %d dropped) under %s", name,
                             record["documents"], new, len(dropped), store.url(f"indexes/{name}"))
    return record


def search_index(store: ArtifactStore, name: str, queries: list[str], k: int = 10, dim: int | None = None,
                 search: SearchConfig | None = None, embedder=None) -> list[list[Hit]]:
    """Each query's top-k documents of index `name` at Matryoshka `dim` (None: the model's full width).
    `embedder`: the index's model already loaded (`load(record["model"])`; a server keeps it)."""
    record = store.read_json(f"indexes/{name}/{RECORD}")
    if record is None:
        raise StageError(f"no index {name!r} under {store.root}; build it with `nyx index`")
    ts = _corpus(name, record["files"], record["id_column"], record["text_column"])
    table: CorpusTable = corpus_table(store, ts)
    if table.key != record["corpus"]:
        raise StageError(f"index {name!r}: its files changed since it was built; run `nyx index` again")
    embedder = embedder or load(record["model"])
    if dim is not None and not 0 < dim <= embedder.dim:
        raise StageError(f"--dim {dim}: the model has {embedder.dim} dims")
    q_vecs = embedder.embed([MixedItem(plain(q)) for q in queries], "query")  # a typed <|image_pad|> is text
    scores, rows, _ = search_table(embedder, table, q_vecs, k, search or SearchConfig(), dim, record["shard_rows"])
    out = []
    for srow, rrow in zip(scores, rows, strict=True):
        keep = [(float(s), int(r)) for s, r in zip(srow, rrow, strict=True) if r >= 0]
        ids, texts = table.doc_ids([r for _, r in keep]), table.texts([r for _, r in keep])
        out.append([Hit(i + 1, d, s, t) for i, ((s, _), d, t) in enumerate(zip(keep, ids, texts, strict=True))])
    table.close()
    return out

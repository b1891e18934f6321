"""An index of a user's own documents under an exported retriever (`nyx export model`), and search
over it: `nyx index` and `nyx search`.

The documents (Parquet or JSONL files, any fsspec URL, globs allowed; an id and a text column, and
optionally an image column: a list of image paths or URLs per document) become a corpus table under
the artifact root (`sources.corpus_table`: read by row id, identical documents ranked once, spelled
special tokens kept as text) and the model's vector shards over it (`retrieval.vector_shards`:
resumable, one shard at a time in memory). Images are fetched as ingest fetches them (the profile's
`ingest.fetch`: address guard, byte and pixel caps, file:// only under its file roots and the
documents' own folders) into the root's content-addressed image store; an image that does not fetch
is a counted drop (`image_<reason>`), its document stays with its text and other images. A VLM
embeds each document's images before its text; an encoder takes text only, and refuses an image
column. `indexes/<name>/_INDEX.json` names the model folder, the files, the columns and the counts;
`indexes/<name>/images.json` the image each URL fetched as.

    index = build_index(store, "docs", "exported/", ["my/*.jsonl"], Columns(images="images"))
    hits = search_index(store, "docs", ["what opens a URL?"], k=5, dim=192, images=["query.png"])
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from nyx_tasks.core.base import StageError
from nyx_tasks.core.config import FetchConfig, SearchConfig, TextSetConfig
from nyx_tasks.core.log import get_logger
from nyx_tasks.core.text import plain
from nyx_tasks.embedding import MixedItem, load
from nyx_tasks.retrieval.corpora import search_table
from nyx_tasks.retrieval.vector_shards import SHARD_ROWS, embed_missing
from nyx_tasks.sources.corpus_table import CorpusTable, corpus_table
from nyx_tasks.sources.fetch import ImageFetcher
from nyx_tasks.store.artifacts import ArtifactStore

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RECORD = "_INDEX.json"
IMAGES = "images.json"
FETCH_BATCH = 256  # image URLs fetched (and held in memory) at a time


@dataclass(frozen=True)
class Columns:
    """The documents' columns: id, text, and (optional) a list of image paths or URLs."""

    id: str = "id"
    text: str = "text"
    images: str | None = None

    @classmethod
    def parse(cls, spec: str) -> Columns:
        """`ID,TEXT[,IMAGES]` (the CLI's --columns); empty parts keep the defaults."""
        parts = [p.strip() for p in spec.split(",")]
        if len(parts) > 3:
            raise StageError(f"--columns {spec!r}: ID,TEXT or ID,TEXT,IMAGES")
        parts += [""] * (3 - len(parts))
        return cls(parts[0] or "id", parts[1] or "text", parts[2] or None)


@dataclass(frozen=True)
class Hit:
    rank: int
    doc_id: str
    score: float
    text: str
    images: tuple[str, ...] = field(default=())  # the document's fetched images, paths under the artifact root


def _corpus(name: str, files: list[str], columns: Columns) -> TextSetConfig:
    # a corpus table is keyed by its files and columns: the questions side is not read here
    return TextSetConfig(name=name, questions=files, corpus=files, corpus_id_column=columns.id,
                         corpus_text_column=columns.text, corpus_image_column=columns.images)


def _model_record(model_dir: str) -> dict:
    path = Path(model_dir) / "nyx_model.json"
    if not path.is_file():
        raise StageError(f"{model_dir} is not an exported model (no nyx_model.json); make one with `nyx export model`")
    return json.loads(path.read_text())


def _file_roots(files: list[str]) -> list[str]:
    """The local folders the document files sit in: their images may be read from there."""
    folders = {os.path.dirname(os.path.abspath(f.removeprefix("file://"))) for f in files
               if "://" not in f or f.startswith("file://")}
    return sorted(f for f in folders if "*" not in f and "?" not in f)


def fetch_images(store: ArtifactStore, table: CorpusTable, fetch: FetchConfig, drops: Counter) -> dict:
    """Every image URL of `table` fetched into the store's image store: URL -> (image_id, path under
    the root); a URL that does not fetch is counted in `drops` as `image_<reason>` and left out."""
    log = get_logger("index")
    urls = list(dict.fromkeys(u for batch in table.iter_texts(column="images") for row in batch for u in row or ()))
    fetcher, fetched = ImageFetcher(fetch), {}
    for start in range(0, len(urls), FETCH_BATCH):
        for url, res in fetcher.fetch_all(urls[start:start + FETCH_BATCH]).items():
            if not res.ok:
                drops[f"image_{res.reason}"] += 1
                log.info("index: image %s dropped (%s: %s)", url, res.reason, res.detail)
                continue
            rel = store.image_rel(res.image_id, res.ext)
            if not store.exists(rel):
                store.write_bytes_atomic(rel, res.data)
            fetched[url] = (res.image_id, rel)
        log.info("index: images %d/%d fetched (%d dropped)", min(start + FETCH_BATCH, len(urls)), len(urls),
                 sum(drops.values()))
    return fetched


def _attach(store: ArtifactStore, table: CorpusTable, fetched: dict, embedder) -> None:
    """The table's images as the embedder reads them (full paths: `load` made it without a root)."""
    table.fetched = {u: (i, store.path(rel)) for u, (i, rel) in fetched.items()}
    table.placeholder = embedder.cfg.image_placeholder


def build_index(store: ArtifactStore, name: str, model_dir: str, files: list[str], columns: Columns = Columns(),
                fetch: FetchConfig | None = None, server: str | None = None) -> dict:
    """Embed every document of `files` with the exported model in `model_dir` (missing shards only:
    a rerun or a resumed one embeds nothing twice); returns the index record. `fetch`: how images
    are fetched (default: `FetchConfig()`); the documents' own folders are added to its file roots.
    `server`: the /v1 URL of `vllm serve model_dir` (`vllm_serve_flags`), which computes the vectors;
    the record keeps it, and searches embed their queries there too."""
    if not NAME.match(name):
        raise StageError(f"index name {name!r}: letters, digits, '.', '_' or '-', at most 64")
    family = _model_record(model_dir)["family"]  # refuses a folder that is not an export before any document is read
    if columns.images and family == "encoder":
        raise StageError(f"{model_dir} is a text encoder: it cannot embed the images of column {columns.images!r}; "
                         "leave the image column out, or export a VLM retriever")
    dropped: list[tuple] = []
    table = corpus_table(store, _corpus(name, files, columns), lambda *a: dropped.append(a))
    embedder, image_drops, fetched = load(model_dir, server=server), Counter(), {}
    if table.has_images:
        fetch = fetch or FetchConfig()
        fetch = fetch.model_copy(update={"file_roots": [*fetch.file_roots, *_file_roots(files)]})
        fetched = fetch_images(store, table, fetch, image_drops)
        store.write_json_atomic(f"indexes/{name}/{IMAGES}", fetched)
        _attach(store, table, fetched, embedder)
    _, new = embed_missing(embedder, table, SHARD_ROWS)
    record = {"name": name, "model": str(Path(model_dir).resolve()), "server": server, "files": files,
              "id_column": columns.id,
              "text_column": columns.text, "image_column": columns.images, "shard_rows": SHARD_ROWS,
              "documents": len(table), "distinct_texts": table.manifest.get("distinct"), "dropped": len(dropped),
              "images": len(fetched), "image_drops": dict(sorted(image_drops.items())), "corpus": table.key}
    table.close()
    store.write_json_atomic(f"indexes/{name}/{RECORD}", record)
    get_logger("index").info("index %s: %d documents (%d embedded now, %d dropped), %d images (%d dropped) under %s",
                             name, record["documents"], new, len(dropped), len(fetched), sum(image_drops.values()),
                             store.url(f"indexes/{name}"))
    return record


def _query(embedder, text: str, images) -> MixedItem:
    """A query as the model embeds it: typed text is text (a typed <|image_pad|> too), its images first."""
    if not images:
        return MixedItem(plain(text))
    if not embedder.takes_images:
        raise StageError("a query image needs a VLM retriever; this index's model is a text encoder")
    return MixedItem.of_files(embedder.cfg.image_placeholder * len(images) + plain(text), [str(p) for p in images])


def search_index(store: ArtifactStore, name: str, queries: list[str], k: int = 10, dim: int | None = None,
                 embedder=None, images=()) -> list[list[Hit]]:
    """Each query's top-k documents of index `name` at Matryoshka `dim` (None: the model's full width).
    `embedder`: the index's model already loaded (`load(record["model"], server=record["server"])`; a
    server keeps it).
    `images`: image files (paths or fsspec URLs) every query carries (a VLM index)."""
    record = store.read_json(f"indexes/{name}/{RECORD}")
    if record is None:
        raise StageError(f"no index {name!r} under {store.root}; build it with `nyx index`")
    columns = Columns(record["id_column"], record["text_column"], record.get("image_column"))
    table: CorpusTable = corpus_table(store, _corpus(name, record["files"], columns))
    if table.key != record["corpus"]:
        raise StageError(f"index {name!r}: its files changed since it was built; run `nyx index` again")
    embedder = embedder or load(record["model"], server=record.get("server"))
    if dim is not None and not 0 < dim <= embedder.dim:
        raise StageError(f"--dim {dim}: the model has {embedder.dim} dims")
    fetched = (store.read_json(f"indexes/{name}/{IMAGES}") or {}) if table.has_images else {}
    if table.has_images:
        _attach(store, table, {u: tuple(v) for u, v in fetched.items()}, embedder)
    q_vecs = embedder.embed([_query(embedder, q, images) for q in queries], "query")
    scores, rows, _ = search_table(embedder, table, q_vecs, k, SearchConfig(), dim, record["shard_rows"])
    out = []
    for srow, rrow in zip(scores, rows, strict=True):
        keep = [(float(s), int(r)) for s, r in zip(srow, rrow, strict=True) if r >= 0]
        ids, texts = table.doc_ids([r for _, r in keep]), table.texts([r for _, r in keep])
        pics = [tuple(fetched[u][1] for u in urls if u in fetched) for urls in table.images([r for _, r in keep])]
        out.append([Hit(i + 1, d, s, t, p) for i, ((s, _), d, t, p)
                    in enumerate(zip(keep, ids, texts, pics, strict=True))])
    table.close()
    return out

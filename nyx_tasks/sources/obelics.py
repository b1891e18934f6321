"""Reading OBELICS rows and turning them into clean documents.

An OBELICS row (HuggingFaceM4/OBELICS) holds `images` and `texts`, parallel
lists where each index has exactly one non-null entry, and `metadata` /
`general_metadata`, both JSON *strings*. The real data has quirks handled here:
per-image metadata keys vary (`src`, `alt_text`, `original_width`, ... may be
absent), `general_metadata` can be `[]`, and texts can carry the extraction
marker END_OF_DOCUMENT_TOKEN_TO_BE_REPLACED, which must never reach a chunk.
The hub dataset has 1432 Parquet shards (data/train-000NN-of-01432-<hash>.parquet)
and a second config, `opt_out_docs_removed_2023_07_12`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from nyx_tasks.core.base import ShardSpec
from nyx_tasks.core.config import SourceConfig
from nyx_tasks.core.hashing import stable_hash
from nyx_tasks.core.paths import SAMPLE_CORPUS_DIR, resolve_pkgdata
from nyx_tasks.core.text import plain
from nyx_tasks.sources.files import (
    Malformed,
    expand_urls,
    file_facts,
    file_format,
    iter_jsonl,
    iter_parquet,
)

EOD_MARKER = "END_OF_DOCUMENT_TOKEN_TO_BE_REPLACED"
HF_NUM_SHARDS = 1432
HF_CONFIGS = ("default", "opt_out_docs_removed_2023_07_12")


class IngestShard(ShardSpec, total=False):
    """One source file or HF data-files entry (`list_source_shards`)."""

    kind: str  # "file" | "hf"
    url: str
    format: str  # "jsonl" | "parquet"
    data_files: str | None


@dataclass
class Document:
    doc_id: str
    source: str
    url: str | None
    texts: list[str | None]
    image_urls: list[str | None]
    metadata: list[Any]
    general_metadata: dict[str, Any]


# ------------------------------------------------------------------ sources
def list_source_shards(src: SourceConfig) -> list[IngestShard]:
    """One shard per input file (or HF data-files entry), in a stable order."""
    if src.kind == "hf":
        entries = src.hf_data_files or [None]
        return [{"shard": i, "name": f or f"{src.hf_dataset}:{src.hf_config}:{src.hf_split}",
                 "kind": "hf", "data_files": f} for i, f in enumerate(entries)]
    patterns = ([str(SAMPLE_CORPUS_DIR / "obelics-*.jsonl"), str(SAMPLE_CORPUS_DIR / "obelics-*.parquet")]
                if src.kind == "sample" else [resolve_pkgdata(p) for p in src.paths])
    if not patterns:
        raise ValueError("ingest.source.paths is empty (kind=files needs at least one path)")
    urls = expand_urls(patterns, what="ingest source", must_match=src.kind == "files")
    return [{"shard": i, "name": u.rsplit("/", 1)[-1], "kind": "file", "url": u,
             "format": file_format(u)} for i, u in enumerate(urls)]


def source_image_root(src: SourceConfig) -> str | None:
    """The local folder a source's relative image paths name files in: the bundled sample folder
    for kind=sample, `image_root` for kind=files, else none (a relative path is then a bad URL)."""
    if src.kind == "sample":
        return str(SAMPLE_CORPUS_DIR)
    return resolve_pkgdata(src.image_root) if src.image_root else None


def fingerprint_shards(shards: list[IngestShard], src: SourceConfig | None) -> str:
    """A hash that changes when any input file changes (size, mtime, etag)."""
    facts = []
    for s in shards:
        if s["kind"] == "hf":
            facts.append([src.hf_dataset, src.hf_config, src.hf_split, s["data_files"]])
            continue
        facts.append(file_facts(s["url"]))
    return stable_hash(facts, 32)


def iter_source_rows(shard: IngestShard, src: SourceConfig) -> Iterator[tuple[int, dict | Malformed]]:
    """(row index, raw row or Malformed) for one shard, streamed."""
    limit = src.max_rows_per_shard
    rows = (_iter_hf(shard, src) if shard["kind"] == "hf"
            else iter_jsonl(shard["url"]) if shard["format"] == "jsonl"
            else iter_parquet(shard["url"]))
    for i, row in enumerate(rows):
        if limit is not None and i >= limit:
            return
        yield i, row


def _iter_hf(shard: IngestShard, src: SourceConfig) -> Iterator[dict | Malformed]:
    """Stream the hub dataset (needs network access to the hub; real code path)."""
    from datasets import load_dataset

    kwargs: dict[str, Any] = {"split": src.hf_split, "streaming": True}
    if shard.get("data_files"):
        kwargs["data_files"] = {src.hf_split: shard["data_files"]}
    config = None if src.hf_config == "default" else src.hf_config
    yield from load_dataset(src.hf_dataset, config, **kwargs)


# ------------------------------------------------------------------- parsing
def _json_field(value: Any, default: Any) -> Any:
    if value is None:
        return default
    if isinstance(value, str):
        return json.loads(value) if value.strip() else default
    return value  # already decoded (e.g. a JSONL writer that did not stringify)


def clean_text(text: str) -> str:
    """Without the extraction marker; spelled special tokens escaped (`core.text.plain`; the image
    placeholder is chunking's to remove)."""
    return plain(text.replace(EOD_MARKER, ""), placeholders=()).strip()


def _image_url(img: str, image_root: str | None) -> str:
    """A relative path under `image_root` -> its file:// URL; anything else as written (the
    fetcher refuses what is not an absolute URL, and file:// outside its file roots)."""
    if image_root and not img.startswith("/") and not urlsplit(img).scheme:
        return Path(image_root, img).as_uri()
    return img


def parse_row(row: dict, source: str, image_root: str | None = None) -> Document | Malformed:
    """Validate one OBELICS row and clean it. Relative image paths become file:// URLs under
    `image_root` (an absolute local folder the source config names), and only then; the
    document id hashes the image strings as written, so it does not depend on where that is."""
    images, texts = row.get("images"), row.get("texts")
    if not isinstance(images, list) or not isinstance(texts, list):
        return Malformed("missing_fields", "images/texts must be lists")
    if len(images) != len(texts):
        return Malformed("length_mismatch", f"{len(images)} images vs {len(texts)} texts")
    try:
        metadata = _json_field(row.get("metadata"), [])
        general = _json_field(row.get("general_metadata"), {})
    except (json.JSONDecodeError, TypeError) as e:
        return Malformed("bad_metadata_json", str(e))
    if not isinstance(general, dict):  # the real data has `[]` here
        general = {}
    if not isinstance(metadata, list) or len(metadata) != len(texts):
        metadata = [None] * len(texts)

    out_texts: list[str | None] = []
    out_urls: list[str | None] = []  # as written; resolved below
    out_meta: list[Any] = []
    for img, txt, meta in zip(images, texts, metadata, strict=True):
        if (img is None) == (txt is None):
            return Malformed("slot_not_exactly_one", "a slot must hold exactly one of image/text")
        if txt is not None:
            if not isinstance(txt, str):
                return Malformed("bad_text_type", type(txt).__name__)
            txt = clean_text(txt)
            if not txt:
                continue  # an empty (or marker-only) text slot carries nothing
            out_texts.append(txt)
            out_urls.append(None)
        else:
            if not isinstance(img, str) or not img.strip():
                return Malformed("bad_image_url", repr(img)[:80])
            out_texts.append(None)
            out_urls.append(img.strip())
        out_meta.append(meta)
    if not any(t for t in out_texts):
        return Malformed("no_text", "document has no text after cleaning")
    doc_id = hashlib.sha256(
        json.dumps([out_texts, out_urls], ensure_ascii=False).encode()
    ).hexdigest()[:24]
    url = general.get("url")
    image_urls = [u if u is None else _image_url(u, image_root) for u in out_urls]
    return Document(doc_id=doc_id, source=source, url=url if isinstance(url, str) else None,
                    texts=out_texts, image_urls=image_urls, metadata=out_meta, general_metadata=general)

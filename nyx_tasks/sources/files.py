"""Generic row readers for the files every source arrives in: JSONL (gzip allowed) and Parquet,
local paths or any fsspec URL with globs, and a fingerprint that changes when a file changes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from nyx_tasks.core.hashing import stable_hash
from nyx_tasks.store.artifacts import iter_parquet_file


@dataclass
class Malformed:
    """A source row that could not be read at all (counted as a drop)."""

    reason: str
    detail: str = ""


def file_format(path: str) -> str:
    """`jsonl` or `parquet`, from the file name (.jsonl, .jsonl.gz, .json, .parquet)."""
    p = path.lower()
    for suffix, fmt in ((".jsonl", "jsonl"), (".jsonl.gz", "jsonl"), (".json", "jsonl"),
                        (".parquet", "parquet")):
        if p.endswith(suffix):
            return fmt
    raise ValueError(f"cannot tell the format of {path!r}: expected .parquet or .jsonl")


def expand_urls(patterns: list[str], what: str = "input", must_match: bool = True) -> list[str]:
    """Paths / fsspec URLs with globs -> the matching file URLs, sorted per pattern."""
    import fsspec

    urls: list[str] = []
    for pattern in patterns:
        fs, _ = fsspec.core.url_to_fs(pattern)
        proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        matches = sorted(fs.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        if must_match and (not matches or not fs.exists(matches[0])):
            raise FileNotFoundError(f"{what} {pattern!r} matches no file")
        urls += [m if proto in ("file", "local") else f"{proto}://{m}" for m in matches]
    return urls


def iter_file_rows(url: str) -> Iterator[dict | Malformed]:
    """Rows of one Parquet or JSONL file (a JSONL line that cannot be read is a Malformed)."""
    return iter_jsonl(url) if file_format(url) == "jsonl" else iter_parquet(url)


def fingerprint_urls(urls: list[str]) -> str:
    """A hash that changes when any file changes (size, mtime, etag)."""
    return stable_hash([file_facts(u) for u in urls], 32)


def file_facts(url: str) -> list:
    """[url, size, mtime or etag] of one file: what a fingerprint of it hashes."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    info = fs.info(path)
    return [url, info.get("size"), str(info.get("mtime") or info.get("LastModified") or info.get("ETag") or "")]


def iter_jsonl(url: str) -> Iterator[dict | Malformed]:
    """Rows of a JSONL file; a line that is not UTF-8, not JSON or not an object is a Malformed."""
    import fsspec

    with fsspec.open(url, "rb", compression="infer") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield Malformed("invalid_utf8", str(e))
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield Malformed("invalid_json", str(e))
                continue
            yield row if isinstance(row, dict) else Malformed("not_an_object", type(row).__name__)


def iter_parquet(url: str, batch_size: int = 256) -> Iterator[dict | Malformed]:
    """Rows of a Parquet file, one row group at a time."""
    import fsspec

    with fsspec.open(url, "rb") as f:
        for batch in iter_parquet_file(f, batch_size=batch_size):
            yield from batch.to_pylist()

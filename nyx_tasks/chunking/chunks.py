"""Cutting a mixed-modal document into fixed-size token chunks (paper: 200
tokens, each image one placeholder token that stays where it stood; chunks with
more than 5 images dropped).

A document is laid out as one string: text slots and image placeholders joined
by blank lines. The tokenizer encodes whole documents in batches (its Rust
batch path does the heavy lifting); a chunk is then a slice of token indices,
its text the exact character span of those tokens, and its images the
placeholders inside the span, in order.
"""

from __future__ import annotations

from dataclasses import dataclass

SLOT_SEPARATOR = "\n\n"


@dataclass
class Chunk:
    chunk_index: int
    token_start: int
    n_tokens: int
    text: str
    image_ids: list[str]


def strip_placeholder(text: str, placeholder: str) -> str:
    """Remove literal placeholders from document text so that every placeholder
    in a chunk stands for a real image (repeated: removal can form a new one)."""
    while placeholder in text:
        text = text.replace(placeholder, "")
    return text


def layout(texts: list[str | None], image_ids: list[str | None], placeholder: str) -> tuple[str, list[str]]:
    """The document string and its image ids in order of appearance."""
    parts, images = [], []
    for txt, img in zip(texts, image_ids, strict=True):
        if img is not None:
            parts.append(placeholder)
            images.append(img)
        elif txt:
            t = strip_placeholder(txt, placeholder)
            if t:
                parts.append(t)
    return SLOT_SEPARATOR.join(parts), images


def cut(
    doc_string: str,
    images: list[str],
    ids: list[int],
    encoding,
    placeholder_id: int,
    chunk_tokens: int,
    keep_tail: bool,
) -> list[Chunk]:
    """Cut one encoded document into consecutive chunks of `chunk_tokens` tokens.

    `encoding.token_to_chars(i)` gives token i's character span; only the two
    boundary tokens of each chunk are looked up, so no per-token Python work
    happens beyond `list.count` in C.
    """
    n = len(ids)
    chunks: list[Chunk] = []
    cursor = 0  # images consumed so far
    c0 = encoding.token_to_chars(0)[0] if n else 0
    for idx, start in enumerate(range(0, n, chunk_tokens)):
        end = min(start + chunk_tokens, n)
        if end - start < chunk_tokens and not keep_tail:
            break
        k = ids[start:end].count(placeholder_id)
        # A chunk starts where the previous one ended: a character split over
        # two byte-level tokens at a boundary belongs to the earlier chunk only.
        c1 = max(c0, encoding.token_to_chars(end - 1)[1])
        chunks.append(Chunk(idx, start, end - start, doc_string[c0:c1], images[cursor:cursor + k]))
        cursor += k
        c0 = c1
    return chunks


@dataclass
class BatchResult:
    rows: list[dict]
    drops: list[tuple[str, str]]  # (reason, example)
    docs_without_chunks: int


def chunk_batch(tok, placeholder_id: int, docs: list[dict], cfg) -> BatchResult:
    """Chunk a batch of documents (`doc_id`, `texts`, `image_ids`) into CHUNKS rows.

    `cfg` is a ChunkConfig. One `encode_batch` call per batch; drops are returned
    by name (short tails, chunks with more than `max_images` images).
    """
    laid = [layout(d["texts"], d["image_ids"], cfg.image_placeholder) for d in docs]
    encodings = tok.encode_batch([s for s, _ in laid], add_special_tokens=False)
    rows, drops, empty = [], [], 0
    for d, (doc_string, images), enc in zip(docs, laid, encodings, strict=True):
        ids = enc.ids
        chunks = cut(doc_string, images, ids, enc, placeholder_id, cfg.chunk_tokens, cfg.keep_tail)
        if not cfg.keep_tail and len(ids) % cfg.chunk_tokens:
            drops.append(("chunk_short_tail", d["doc_id"]))
        empty += not chunks
        for c in chunks:
            if len(c.image_ids) > cfg.max_images:
                drops.append(("chunk_too_many_images",
                              f"{d['doc_id']} chunk {c.chunk_index}: {len(c.image_ids)} images"))
                continue
            rows.append({
                "chunk_id": f"{d['doc_id']}-t{c.token_start:06d}", "doc_id": d["doc_id"],
                "chunk_index": c.chunk_index, "token_start": c.token_start, "n_tokens": c.n_tokens,
                "text": c.text, "image_ids": c.image_ids, "n_images": len(c.image_ids),
            })
    return BatchResult(rows, drops, empty)

"""`nyx import`: public training sets -> the triplet schema, under `<root>/datasets/<name>/`.

Layouts (paper: Nyx is trained on NyxQA plus MMEB-train and mmE5's synthetic data):

- `mmeb` (TIGER-Lab/MMEB-train, `<subset>/{original,diverse_instruction}-*.parquet`): string columns
  `qry`, `qry_image_path`, `pos_text`, `pos_image_path` and, in most subsets, `neg_text`,
  `neg_image_path`; Phi-3.5-V's `<|image_1|>` marks the image; paths such as
  `images/ImageNet_1K/Train/x.jpg` are relative to the unzipped `images_zip/<subset>.zip` folder;
  "" means no image / no negative.
- `mme5` (intfloat/mmE5-synthetic, `{Classification,Retrieval,VQA}/*.parquet`, images in
  `LAION_Synthetic.tar.gz`): the same six columns, all strings; lists (several negatives, several
  images) are Python-literal strings such as "['a', 'b']" (mmE5's loader `eval`s them).

Both parsers also accept real lists, so JSONL written by hand works too. A row's `source` is its
subset: the name of the folder holding its file (`ImageNet_1K`, `Retrieval`), which train sources
select, exclude and cap by (`select`, `exclude`, `max_rows_per_subset`). Each image is read once,
decoded with Pillow and stored content-addressed (image_id = sha256 of the bytes). A row is dropped
by named reason (missing_image_file, unreadable_image, empty_query, empty_positive, malformed_*),
never a crash; a negative whose image is unusable is skipped and counted. Output:
`part-00000.parquet` (TRIPLETS), `images-00000.parquet` (IMAGES), then `_MANIFEST.json` last.
"""

from __future__ import annotations

import ast
import datetime as dt
import hashlib
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from nyx_tasks.core.base import code_version
from nyx_tasks.core.config import FetchConfig
from nyx_tasks.core.hashing import stable_hash
from nyx_tasks.core.log import DropCounter, get_logger
from nyx_tasks.core.text import plain
from nyx_tasks.sources.fetch import decode_image
from nyx_tasks.sources.files import Malformed, expand_urls, iter_file_rows
from nyx_tasks.store.artifacts import ArtifactStore

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Phi-3.5-V's numbered token (MMEB, mmE5) and mllama's plain one.
SOURCE_IMAGE_TOKEN = r"<\|image(?:_\d+)?\|>"
BATCH_ROWS = 512


class ImportFailed(ValueError):
    """The input gave nothing usable; the message says what was read and dropped."""


@dataclass(frozen=True)
class Layout:
    name: str
    query: str = "qry"
    query_images: str = "qry_image_path"
    positive: str = "pos_text"
    positive_images: str = "pos_image_path"
    negatives: str = "neg_text"
    negative_images: str = "neg_image_path"


# Both public layouts share MMEB's column names (mmE5 concatenates its synthetic subsets with
# mmE5-MMEB-hardneg, so the columns must match); they differ in how lists are encoded, which
# `as_list` handles for both.
LAYOUTS = {"mmeb": Layout("mmeb"), "mme5": Layout("mme5")}


def as_list(value) -> list:
    """"" / None / "None" -> []; a list stays; "['a', 'b']" (mmE5) -> ['a', 'b']; "x" -> ['x']."""
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return list(value)
    s = str(value).strip()
    if not s or s.lower() == "none":
        return []
    if s[0] in "[(":
        try:
            parsed = ast.literal_eval(s)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return [value]
        return list(parsed) if isinstance(parsed, list | tuple) else [parsed]
    return [value]


def image_path_list(value) -> list[str]:
    return [str(p) for p in as_list(value) if p is not None and str(p).strip() and str(p).strip().lower() != "none"]


def doc_id(text: str, image_ids: list[str]) -> str:
    """A stable id for an imported document: two documents are the same when text and images are."""
    return "doc:" + hashlib.sha256("\x1f".join([text, *image_ids]).encode()).hexdigest()[:24]


@dataclass
class ImageReader:
    """Reads, decodes and stores each referenced image once; remembers failures by path."""

    store: ArtifactStore
    roots: list[str]
    fetch: FetchConfig
    rows: list[dict] = field(default_factory=list)  # IMAGES rows not yet written
    _seen: dict[str, tuple[str, str]] = field(default_factory=dict)  # path -> (image_id | "", reason)
    _stored: set[str] = field(default_factory=set)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # image_id -> (width, height)

    def __post_init__(self):
        import fsspec

        self._root_fs = [fsspec.core.url_to_fs(r) for r in self.roots]  # (fs, base path), once per root

    def _locate(self, path: str):
        """(url, fs, fs path) of the first root holding `path`; URLs and absolute paths as given."""
        import fsspec

        if "://" in path or path.startswith("/") or not self.roots:
            candidates = [(path, *fsspec.core.url_to_fs(path))]
        else:
            rel = path.removeprefix("./")
            candidates = [(f"{r.rstrip('/')}/{rel}", fs, f"{base.rstrip('/')}/{rel}")
                          for r, (fs, base) in zip(self.roots, self._root_fs, strict=True)]
        return next((c for c in candidates if c[1].isfile(c[2])), None)

    def get(self, path: str) -> tuple[str, str]:
        """(image_id, "") or ("", reason)."""
        if path not in self._seen:
            self._seen[path] = self._load(path)
        return self._seen[path]

    def _load(self, path: str) -> tuple[str, str]:
        found = self._locate(path)
        if found is None:
            return "", "missing_image_file"
        url, fs, p = found
        try:
            data = fs.cat_file(p)
        except OSError:
            return "", "missing_image_file"
        img = decode_image(url, data, self.fetch)
        if not img.ok:
            return "", "unreadable_image"
        self.sizes[img.image_id] = (img.width, img.height)
        if img.image_id not in self._stored:
            rel = self.store.put_image(img.image_id, img.ext, data)
            self._stored.add(img.image_id)
            self.rows.append({"image_id": img.image_id, "path": rel, "source_url": path, "mime": img.mime,
                              "width": img.width, "height": img.height, "num_bytes": len(data)})
        return img.image_id, ""


def encode_side(text, paths: list[str], images: ImageReader, token: re.Pattern, placeholder: str,
          extra: Counter) -> tuple[str, list[str], str]:
    """One query / document: (text with placeholders, image ids, failure reason or "").

    The text keeps one placeholder per image: tokens beyond the image count are removed (MMEB's
    WebQA queries carry a token but no image) and missing ones are put in front (an image-only
    negative has no text at all); both fixes are counted. The text between the tokens is text:
    spelled special tokens and placeholders in it are escaped (`core.text.plain`)."""
    ids = []
    for p in paths:
        iid, reason = images.get(p)
        if reason:
            return "", [], reason
        ids.append(iid)
    text = "" if text is None else str(text)
    n_tok = len(token.findall(text))
    if n_tok > len(ids):
        extra["image_tokens_removed"] += n_tok - len(ids)
    seen = 0

    def swap(_m: re.Match) -> str:
        nonlocal seen
        seen += 1
        return placeholder if seen <= len(ids) else ""

    pieces, last = [], 0  # the dataset's image tokens become placeholders; the text between them is text
    for m in token.finditer(text):
        pieces += [plain(text[last:m.start()]), swap(m)]
        last = m.end()
    text = "".join([*pieces, plain(text[last:])]).strip()
    if n_tok < len(ids):
        extra["image_tokens_added"] += len(ids) - n_tok
        text = (placeholder * (len(ids) - n_tok) + "\n" + text).strip()
    return text, ids, ""


def modality(n_query_images: int, n_pos_images: int) -> str:
    # The most images on one side: an image->text or text->image pair is single_image.
    n = max(n_query_images, n_pos_images)
    return "text_only" if n == 0 else "single_image" if n == 1 else "multi_image"


def subset_of(url: str) -> str:
    """A file's subset: the name of the folder holding it, as both public layouts store them
    (MMEB-train `ImageNet_1K/original-*.parquet`, mmE5-synthetic `Retrieval/*.parquet`)."""
    return PurePosixPath(url.split("://", 1)[-1].rstrip("/")).parent.name


def convert_row(raw: dict, i: int, name: str, layout: Layout, images: ImageReader, token: re.Pattern,
                placeholder: str, extra: Counter, subset: str = "") -> tuple[dict | None, str]:
    """One source row -> (TRIPLETS row, "") or (None, drop reason). The row's `source` is its
    subset (train sources select, exclude and cap by it), or the dataset's name without one."""
    q_text, q_ids, why = encode_side(raw.get(layout.query), image_path_list(raw.get(layout.query_images)), images, token,
                               placeholder, extra)
    if why:
        return None, why
    if not q_text and not q_ids:
        return None, "empty_query"
    p_text, p_ids, why = encode_side(raw.get(layout.positive), image_path_list(raw.get(layout.positive_images)), images, token,
                               placeholder, extra)
    if why:
        return None, why
    if not p_text and not p_ids:
        return None, "empty_positive"
    n_texts, n_paths = as_list(raw.get(layout.negatives)), as_list(raw.get(layout.negative_images))
    negs: list[tuple[str, list[str]]] = []
    for k in range(max(len(n_texts), len(n_paths))):
        text = n_texts[k] if k < len(n_texts) else ""
        paths = image_path_list(n_paths[k]) if k < len(n_paths) else []
        n_text, n_ids, why = encode_side(text, paths, images, token, placeholder, extra)
        if why:
            extra[f"negatives_skipped_{why}"] += 1
        elif n_text or n_ids:  # "" is how MMEB says "no negative"
            negs.append((n_text, n_ids))
    # Imported rows were not mined here: scores are 0.0 and ranks -1 ("not from a search"); the
    # negatives keep the layout's order, which the training mix treats as rank order.
    return {
        "source": subset or name, "qa_id": f"{name}-{i:08d}", "query": q_text, "query_image_ids": q_ids,
        "answer": "", "answers": [],  # neither layout carries answers
        "pos_chunk_id": doc_id(p_text, p_ids), "pos_text": p_text, "pos_image_ids": p_ids,
        "pos_score": 0.0, "pos_rank": -1,
        "neg_chunk_ids": [doc_id(t, ids) for t, ids in negs], "neg_texts": [t for t, _ in negs],
        "neg_image_ids": [ids for _, ids in negs], "neg_scores": [0.0] * len(negs), "neg_ranks": [-1] * len(negs),
        "split": "train", "modality": modality(len(q_ids), len(p_ids)),
        "miner_id": f"imported:{layout.name}", "miner_hash": f"imported:{layout.name}",
    }, ""


def dataset_rel(name: str) -> str:
    return f"datasets/{name}"


def import_dataset(layout: str, sources: list[str], name: str, store: ArtifactStore, image_roots: list[str] = (),
                   placeholder: str = "<image>", fetch: FetchConfig | None = None) -> dict:
    """Convert `sources` (Parquet / JSONL files, globs, fsspec URLs) of `layout` into
    `<root>/datasets/<name>/`; returns the manifest. Raises ImportFailed when no row is usable."""
    from nyx_tasks.core.schema import IMAGES, TRIPLETS  # pyarrow, only once rows are written

    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; layouts: {', '.join(LAYOUTS)}")
    if not NAME_RE.match(name):
        raise ValueError(f"dataset name {name!r} must match {NAME_RE.pattern}")
    lay, log = LAYOUTS[layout], get_logger("import")
    urls = expand_urls(list(sources), what=f"{layout} source")
    base = dataset_rel(name)
    store.remove(f"{base}/_MANIFEST.json")  # readers see "not imported" until the new manifest lands
    token = re.compile(f"{SOURCE_IMAGE_TOKEN}|{re.escape(placeholder)}")
    images = ImageReader(store, list(image_roots), fetch or FetchConfig())
    drops, extra = DropCounter(log), Counter()
    started, t0 = dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), time.monotonic()
    part = store.parquet_writer(f"{base}/{ArtifactStore.shard_file('part', 0)}", TRIPLETS, f"import/{name}")
    imgs = store.parquet_writer(f"{base}/{ArtifactStore.shard_file('images', 0)}", IMAGES, f"import/{name}/images")
    rows_in, buf, subsets = 0, [], Counter()
    try:
        for url in urls:
            subset = subset_of(url)
            for raw in iter_file_rows(url):
                i, rows_in = rows_in, rows_in + 1
                if isinstance(raw, Malformed):
                    drops.drop(f"malformed_{raw.reason}", f"{url}: {raw.detail}")
                    continue
                row, why = convert_row(raw, i, name, lay, images, token, placeholder, extra, subset)
                if why:
                    drops.drop(why, f"{url} row {i}")
                    continue
                subsets[row["source"]] += 1
                buf.append(row)
                if len(buf) >= BATCH_ROWS:
                    part.write_rows(buf)
                    imgs.write_rows(images.rows)
                    buf, images.rows = [], []
        part.write_rows(buf)
        imgs.write_rows(images.rows)
        if part.rows == 0:
            what = "no rows" if rows_in == 0 else f"{rows_in} rows, all dropped ({drops.as_dict()})"
            raise ImportFailed(f"nyx import {layout}: {what} in {urls}; check the files, the columns "
                               f"({lay.query}, {lay.positive}, ...) and --image-root {list(image_roots)}")
        outputs = {"part": [part.close()], "images": [imgs.close()]}
    except BaseException:
        part.abort()
        imgs.abort()
        raise
    manifest = {
        "dataset": name, "layout": layout, "status": "complete", "code_version": code_version(),
        "sources": urls, "image_roots": list(image_roots), "placeholder": placeholder,
        "rows_in": rows_in, "rows_out": outputs["part"][0]["rows"], "drops": drops.as_dict(),
        "extra": dict(sorted(extra.items())), "images": outputs["images"][0]["rows"],
        "subsets": dict(sorted(subsets.items())),
        "outputs": outputs, "schemas": {"part": "triplets", "images": "images"}, "location": store.url(base),
        "output_hash": stable_hash([(k, f["path"], f["sha256"]) for k, fs in outputs.items() for f in fs], 32),
        "timings": {"started_at": started, "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "seconds": round(time.monotonic() - t0, 3)},
    }
    store.write_json_atomic(f"{base}/_MANIFEST.json", manifest)  # last: the import is complete
    log.info("import %s (%s): %d in, %d out (by subset %s), %d images, drops %s -> %s", name, layout, rows_in,
             manifest["rows_out"], manifest["subsets"], manifest["images"], manifest["drops"] or "none",
             manifest["location"])
    return manifest

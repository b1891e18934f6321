"""`ingest` (paper: NyxQA construction, OBELICS source): read OBELICS rows, keep
every Nth document, fetch and verify every image, store each image once
(content-addressed), and drop a document whose image cannot be had.

Outputs per shard: `part-*.parquet` (schema DOCUMENTS) and `images-*.parquet`
(schema IMAGES). rows_in = documents selected by every_nth; every one of them is
either written or dropped with a named reason (rows_in == rows_out + drops).
"""

from __future__ import annotations

import json

from nyx_tasks.core.base import ShardSpec
from nyx_tasks.core.log import Progress
from nyx_tasks.runner import ShardOutputs, Stage, StageContext
from nyx_tasks.sources.fetch import ImageFetcher
from nyx_tasks.sources.files import Malformed
from nyx_tasks.sources.obelics import (
    Document,
    fingerprint_shards,
    iter_source_rows,
    list_source_shards,
    parse_row,
    source_image_root,
)


class IngestStage(Stage):
    name = "ingest"
    version = 2
    inputs = ()
    outputs = {"part": "documents", "images": "images"}
    execution_only = ("batch_docs", "fetch.concurrency")
    doc = ("Read OBELICS rows, keep every Nth, fetch + verify + store images, drop documents whose image "
           "fails.")
    flow = {
        "in": "OBELICS documents read (every Nth row)",
        "out": "documents kept (their images fetched and stored)",
        "drops": "documents (malformed, duplicate, or an image that could not be had)",
    }

    def plan_shards(self, ctx: StageContext) -> list[ShardSpec]:
        return list_source_shards(ctx.cfg.ingest.source)

    def input_fingerprint(self, ctx: StageContext) -> dict[str, str]:
        src = ctx.cfg.ingest.source
        return {"source": fingerprint_shards(list_source_shards(src), src)}

    def process(self, ctx: StageContext, shard: ShardSpec, out: ShardOutputs) -> None:
        cfg = ctx.cfg.ingest
        fetcher = ImageFetcher(cfg.fetch)
        image_root = source_image_root(cfg.source)  # relative image paths resolve here, never against the shard
        seen_docs: set[int] = set()  # 64-bit prefixes of doc ids: a third of the memory of the strings
        seen_images: set[str] = set()
        progress = Progress(ctx.log, f"ingest {shard['name']}", unit="docs")
        batch: list[Document] = []

        def flush() -> None:
            if batch:
                self._process_batch(ctx, fetcher, batch, out, seen_images)
                progress.update(len(batch))
                batch.clear()

        for i, row in iter_source_rows(shard, cfg.source):
            out.extra["rows_read"] += 1
            if i % cfg.every_nth:
                out.extra["rows_skipped_every_nth"] += 1
                continue
            out.rows_in += 1
            where = f"{shard['name']}#{i}"
            doc = row if isinstance(row, Malformed) else parse_row(row, where, image_root)
            if isinstance(doc, Malformed):
                out.drops.drop(f"malformed_{doc.reason}", f"{where}: {doc.detail}", source=shard["name"], row=i)
                continue
            key = int(doc.doc_id[:16], 16)
            if key in seen_docs:
                out.drops.drop("duplicate_document", where, item=doc.doc_id, source=shard["name"], row=i)
                continue
            seen_docs.add(key)
            batch.append(doc)
            if len(batch) >= cfg.batch_docs:
                flush()
        flush()
        progress.close()

    def _process_batch(self, ctx, fetcher, docs: list[Document], out: ShardOutputs, seen_images: set[str]) -> None:
        cfg = ctx.cfg.ingest
        urls = [u for d in docs for u in d.image_urls if u]
        results = fetcher.fetch_all(urls)
        for r in results.values():
            out.extra["images_fetched_ok" if r.ok else f"image_failed_{r.reason}"] += 1
        doc_rows, image_rows = [], []
        for doc in docs:
            failed = [results[u] for u in doc.image_urls if u and not results[u].ok]
            if failed and cfg.on_image_failure == "drop_document":
                f = failed[0]
                out.drops.drop(f"image_{f.reason}", f"{doc.source}: {f.url} {f.detail}", item=doc.doc_id,
                               source=doc.source)
                continue
            texts, image_ids, image_urls, meta = [], [], [], []
            for txt, url, m in zip(doc.texts, doc.image_urls, doc.metadata, strict=True):
                if url is not None:
                    r = results[url]
                    if not r.ok:
                        out.extra["images_dropped_from_kept_docs"] += 1
                        continue
                    path = ctx.store.put_image(r.image_id, r.ext, r.data)
                    if r.image_id not in seen_images:
                        seen_images.add(r.image_id)
                        image_rows.append({"image_id": r.image_id, "path": path, "source_url": url,
                                           "mime": r.mime, "width": r.width, "height": r.height,
                                           "num_bytes": len(r.data)})
                    image_ids.append(r.image_id)
                else:
                    image_ids.append(None)
                texts.append(txt)
                image_urls.append(url)
                meta.append(m)
            doc_rows.append({
                "doc_id": doc.doc_id, "source": doc.source, "url": doc.url, "texts": texts,
                "image_ids": image_ids, "image_urls": image_urls,
                "n_images": sum(1 for x in image_ids if x), "metadata_json": json.dumps(meta),
                "general_metadata_json": json.dumps(doc.general_metadata),
            })
        out.write(doc_rows)
        out.write(image_rows, kind="images")


STAGE = IngestStage()

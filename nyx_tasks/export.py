"""`nyx export nyxqa`: the NyxQA table in the HF-datasets Parquet layout, image
bytes embedded (the `datasets` Image feature: struct<bytes, path>), so that
`datasets.load_dataset("parquet", data_dir=OUT)` loads it with its splits."""

from __future__ import annotations

import json

from nyx_tasks.core.config import NyxConfig
from nyx_tasks.store.artifacts import ArtifactStore, image_paths, iter_stage_batches

# NyxQA split -> the HF split name (datasets reads a `dev` file as `validation` anyway).
SPLITS = {"train": "train", "dev": "validation", "test": "test"}


def export_nyxqa(cfg: NyxConfig, out_dir: str) -> dict:
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = ArtifactStore(cfg.artifact_root())
    paths = image_paths(store, cfg.partition)

    def image(iid: str) -> dict:
        with store.fs.open(store.path(paths[iid]), "rb") as f:
            return {"bytes": f.read(), "path": paths[iid].rsplit("/", 1)[-1]}

    image_t = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("qa_id", pa.string()), ("query", pa.string()), ("query_images", pa.list_(image_t)),
                        ("answer", pa.string()), ("options", pa.list_(pa.string())), ("correct_index", pa.int32()),
                        ("pos_chunk_id", pa.string()), ("pos_text", pa.string()), ("pos_images", pa.list_(image_t)),
                        ("modality", pa.string())])
    features = {"qa_id": {"dtype": "string", "_type": "Value"}, "query": {"dtype": "string", "_type": "Value"},
                "query_images": {"feature": {"_type": "Image"}, "_type": "List"},
                "answer": {"dtype": "string", "_type": "Value"},
                "options": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "List"},
                "correct_index": {"dtype": "int32", "_type": "Value"},
                "pos_chunk_id": {"dtype": "string", "_type": "Value"}, "pos_text": {"dtype": "string", "_type": "Value"},
                "pos_images": {"feature": {"_type": "Image"}, "_type": "List"},
                "modality": {"dtype": "string", "_type": "Value"}}
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    fs, base = fsspec.core.url_to_fs(out_dir)
    fs.makedirs(f"{base}/data", exist_ok=True)
    counts = dict.fromkeys(SPLITS.values(), 0)
    writers: dict = {}  # opened on a split's first row: an empty split file would break load_dataset
    try:
        for batch in iter_stage_batches(store, cfg.partition, "filter"):
            rows = batch.to_pylist()
            for s in SPLITS:
                part = [r for r in rows if r["split"] == s]
                if not part:
                    continue
                name = SPLITS[s]
                counts[name] += len(part)
                if name not in writers:
                    writers[name] = pq.ParquetWriter(fs.open(f"{base}/data/{name}-00000-of-00001.parquet", "wb"),
                                                     schema.with_metadata(meta))
                writers[name].write_table(pa.Table.from_pylist([{
                    "qa_id": r["qa_id"], "query": r["query"], "query_images": [image(i) for i in r["query_image_ids"]],
                    "answer": r["answer"], "options": r["options"], "correct_index": r["correct_index"],
                    "pos_chunk_id": r["pos_chunk_id"], "pos_text": r["pos_text"],
                    "pos_images": [image(i) for i in r["pos_image_ids"]], "modality": r["modality"],
                } for r in part], schema=schema.with_metadata(meta)))
    finally:
        for w in writers.values():
            w.close()
    return {"out": out_dir, "rows": counts}

"""The Parquet schemas of every artifact, in one place, checked on every write.

Mixed-modal text follows the paper's convention: a string holding one image
placeholder token per image, plus the ordered list of image ids (sha256 of the
image bytes, which is also where the image lives in the store).
"""

from __future__ import annotations

import pyarrow as pa

# One row per kept OBELICS document. `texts` and `image_ids` are parallel
# slot lists exactly as in OBELICS: each slot holds a text or an image.
DOCUMENTS = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # "<file>#<row>"
        pa.field("url", pa.string()),  # general_metadata.url when present
        pa.field("texts", pa.list_(pa.string()), nullable=False),
        pa.field("image_ids", pa.list_(pa.string()), nullable=False),
        pa.field("image_urls", pa.list_(pa.string()), nullable=False),
        pa.field("n_images", pa.int32(), nullable=False),
        pa.field("metadata_json", pa.string(), nullable=False),
        pa.field("general_metadata_json", pa.string(), nullable=False),
    ]
)

# One row per image stored by ingest (an image used twice appears once per shard).
IMAGES = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),  # sha256 hex of the bytes
        pa.field("path", pa.string(), nullable=False),  # relative to the artifact root
        pa.field("source_url", pa.string(), nullable=False),
        pa.field("mime", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("num_bytes", pa.int64(), nullable=False),
    ]
)

# One row per kept chunk of `chunk_tokens` tokens (paper: 200), images inline.
CHUNKS = pa.schema(
    [
        pa.field("chunk_id", pa.string(), nullable=False),  # "<doc_id>-t<token_start>"
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("chunk_index", pa.int32(), nullable=False),
        pa.field("token_start", pa.int32(), nullable=False),
        pa.field("n_tokens", pa.int32(), nullable=False),
        pa.field("text", pa.string(), nullable=False),  # placeholders mark the images
        pa.field("image_ids", pa.list_(pa.string()), nullable=False),
        pa.field("n_images", pa.int32(), nullable=False),
    ]
)

# The sampled subset: chunk rows plus the modality group they were drawn from.
SAMPLED_CHUNKS = CHUNKS.append(pa.field("modality", pa.string(), nullable=False))

SCHEMAS: dict[str, pa.Schema] = {
    "documents": DOCUMENTS,
    "images": IMAGES,
    "chunks": CHUNKS,
    "sampled_chunks": SAMPLED_CHUNKS,
}


class SchemaError(ValueError):
    pass


def check(table: pa.Table, schema: pa.Schema, name: str = "") -> pa.Table:
    """Raise SchemaError unless `table` has exactly `schema` and no nulls where forbidden."""
    if not table.schema.equals(schema, check_metadata=False):
        raise SchemaError(
            f"{name or 'table'}: schema mismatch\n got:      {table.schema}\n expected: {schema}"
        )
    for field in schema:
        if not field.nullable and table.column(field.name).null_count:
            raise SchemaError(f"{name or 'table'}: null in non-nullable column {field.name!r}")
    return table


def to_table(rows: list[dict], schema: pa.Schema, name: str = "") -> pa.Table:
    try:
        table = pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError) as e:
        raise SchemaError(f"{name or 'table'}: rows do not fit the schema: {e}") from e
    return check(table, schema, name)

# One row per synthesized QA item (before the rule filters): the question and
# its shortened answer, the distractors, and the chunk it was written from.
QA_CANDIDATES = pa.schema(
    [
        pa.field("qa_id", pa.string(), nullable=False),
        pa.field("chunk_id", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("modality", pa.string(), nullable=False),  # the chunk's group: text_only / single_image / multi_image
        pa.field("prompt", pa.string(), nullable=False),  # qa_text / qa_image / qa_multi_image
        pa.field("question", pa.string(), nullable=False),  # image references as <imageN>
        pa.field("answer", pa.string(), nullable=False),  # shortened
        pa.field("original_answer", pa.string(), nullable=False),
        pa.field("distractors", pa.list_(pa.string()), nullable=False),
        pa.field("chunk_text", pa.string(), nullable=False),
        pa.field("chunk_image_ids", pa.list_(pa.string()), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("prompt_version", pa.string(), nullable=False),
    ]
)

# NyxQA: one row per query after the rule filters, with options and the split.
NYXQA = pa.schema(
    [
        pa.field("qa_id", pa.string(), nullable=False),
        pa.field("query", pa.string(), nullable=False),  # image placeholders where the question cited images
        pa.field("query_image_ids", pa.list_(pa.string()), nullable=False),
        pa.field("answer", pa.string(), nullable=False),
        pa.field("options", pa.list_(pa.string()), nullable=False),  # 4, shuffled
        pa.field("correct_index", pa.int32(), nullable=False),
        pa.field("pos_chunk_id", pa.string(), nullable=False),
        pa.field("pos_text", pa.string(), nullable=False),
        pa.field("pos_image_ids", pa.list_(pa.string()), nullable=False),
        pa.field("n_images", pa.int32(), nullable=False),  # images in the positive chunk
        pa.field("modality", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),  # train / dev / test
    ]
)

SCHEMAS.update({"qa_candidates": QA_CANDIDATES, "nyxqa": NYXQA})

# Mined triplets, the training schema of every source: a query, its positive
# and hard negatives (paper: mmE5, top 20, first 10 ranks skipped, positive
# removed by id, 5 kept). NyxQA rows point at chunks; a text-only set's rows
# at its corpus (positive: the top-1 retrieved document).
TRIPLETS = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),  # "nyxqa" or a text-only set's name
        pa.field("qa_id", pa.string(), nullable=False),
        pa.field("query", pa.string(), nullable=False),
        pa.field("query_image_ids", pa.list_(pa.string()), nullable=False),
        pa.field("answer", pa.string(), nullable=False),
        pa.field("answers", pa.list_(pa.string()), nullable=False),  # every gold answer (text sets have several)
        pa.field("pos_chunk_id", pa.string(), nullable=False),  # a chunk id, or a text set's corpus doc id
        pa.field("pos_text", pa.string(), nullable=False),
        pa.field("pos_image_ids", pa.list_(pa.string()), nullable=False),
        pa.field("pos_score", pa.float32(), nullable=False),
        pa.field("pos_rank", pa.int32(), nullable=False),  # 0-based; -1 when outside the searched top
        pa.field("neg_chunk_ids", pa.list_(pa.string()), nullable=False),
        pa.field("neg_texts", pa.list_(pa.string()), nullable=False),
        pa.field("neg_image_ids", pa.list_(pa.list_(pa.string())), nullable=False),
        pa.field("neg_scores", pa.list_(pa.float32()), nullable=False),
        pa.field("neg_ranks", pa.list_(pa.int32()), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("modality", pa.string(), nullable=False),
        pa.field("miner_id", pa.string(), nullable=False),
        pa.field("miner_hash", pa.string(), nullable=False),
    ]
)

SCHEMAS["triplets"] = TRIPLETS

# A training run's log: one row per logging step (loss per Matryoshka dim,
# learning rate); the model itself lives under <root>/models/<run>/<stage>/.
TRAIN_LOG = pa.schema(
    [
        pa.field("step", pa.int64(), nullable=False),
        pa.field("epoch", pa.float64(), nullable=False),
        pa.field("loss", pa.float64(), nullable=False),
        pa.field("loss_per_dim", pa.map_(pa.int32(), pa.float64()), nullable=False),
        pa.field("learning_rate", pa.float64(), nullable=False),
        pa.field("grad_norm", pa.float64()),
        pa.field("run", pa.string(), nullable=False),
    ]
)

SCHEMAS["train_log"] = TRAIN_LOG

# Every VLM-feedback window (stage 2): the documents shown, the VLM's answer and its judged score.
FEEDBACK_WINDOWS = pa.schema(
    [
        pa.field("qa_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("window", pa.int32(), nullable=False),
        pa.field("doc_ids", pa.list_(pa.string()), nullable=False),
        pa.field("ranks", pa.list_(pa.int32()), nullable=False),  # 0-based retrieval ranks of doc_ids
        pa.field("answer", pa.string()),  # null when the response did not fit the schema
        pa.field("score", pa.float64(), nullable=False),  # option match (0/1) or token F1
        pa.field("judge", pa.string(), nullable=False),  # option_match / token_f1 (feedback.protocol)
    ]
)

# Evaluation results, long format: one value per model, dataset, split, dim and metric.
EVAL_RESULTS = pa.schema(
    [
        pa.field("model", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("dim", pa.int32(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("n", pa.int64(), nullable=False),
        pa.field("ci_low", pa.float64()),
        pa.field("ci_high", pa.float64()),
        pa.field("protocol", pa.string()),  # evaluate.protocol (paper / strict); the stage always sets it
        # the paired difference from the baseline retriever on the same queries (evaluation/report.py's
        # DELTA_COLUMNS): its name, value minus the baseline's, the 95% paired bootstrap interval; null where none
        pa.field("baseline", pa.string()),
        pa.field("delta", pa.float64()),
        pa.field("delta_ci_low", pa.float64()),
        pa.field("delta_ci_high", pa.float64()),
    ]
)

SCHEMAS.update({"feedback_windows": FEEDBACK_WINDOWS, "eval_results": EVAL_RESULTS})

# Every stage's record of what it dropped and why (`<stage>/attempts/<a>/_drops/part-<shard>.parquet`),
# committed with the snapshot under the manifest's `drops` output kind.
DROPS = pa.schema(
    [
        pa.field("shard", pa.string(), nullable=False),  # the shard's name
        pa.field("reason", pa.string(), nullable=False),
        pa.field("item", pa.string()),  # the dropped item's id where known (doc, chunk, qa id)
        pa.field("source", pa.string()),  # the input file / corpus where known
        pa.field("row", pa.int64()),  # its row in that source where known
        pa.field("detail", pa.string(), nullable=False),  # a short description (the log's example)
        pa.field("count", pa.int64(), nullable=False),  # items this record stands for (1 unless aggregated)
    ]
)
SCHEMAS["drops"] = DROPS

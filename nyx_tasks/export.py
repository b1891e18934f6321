"""`nyx export`: what the pipeline made, for use outside it.

`nyx export nyxqa`: the NyxQA table in the HF-datasets Parquet layout, image bytes embedded (the
`datasets` Image feature: struct<bytes, path>), so that `datasets.load_dataset("parquet",
data_dir=OUT)` loads it with its splits.

`nyx export model`: a trained retriever as a folder that carries its embedding recipe. The stage's
merged weights and tokenizer / processor, `nyx_model.json` (family, pooling, prompts or
instructions, Matryoshka dims, where it came from) and a model card (`README.md`: base model,
training data, recipe, the run's evaluation with intervals, usage). An encoder backbone's folder is
a sentence-transformers model that knows its prompts:

    model = SentenceTransformer(DIR, truncate_dim=192)
    q = model.encode(["what opens a URL?"], prompt_name="query", normalize_embeddings=True)
    d = model.encode(["Open a URL in the default browser."], prompt_name="document", normalize_embeddings=True)

Any folder (a VLM's too) loads with `nyx_tasks.embedding.load(DIR)`, which embeds as the
pipeline's stages do.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

from nyx_tasks.core.base import StageError
from nyx_tasks.core.config import NyxConfig
from nyx_tasks.embedding import vllm_serve_flags, write_serving_template
from nyx_tasks.store.artifacts import (
    ArtifactStore,
    image_paths,
    iter_stage_batches,
    read_manifest,
    read_stage_table,
)
from nyx_tasks.store.checkpoints import stage_checkpoint

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


RECIPE = "nyx_model.json"
HEADLINE = ("recall@1", "recall@10", "mrr")


def export_model(cfg: NyxConfig, stage: str, out_dir: str) -> dict:
    """Write `stage`'s published checkpoint of the partition into `out_dir` (a local folder, new or
    empty); returns the recipe written. The folder appears whole or not at all: it is written beside
    it (`.NAME.partial-PID`) and renamed into place; a killed export's partial folder is removed by
    the next export to the same place."""
    if stage not in ("train_stage1", "train_stage2"):
        raise StageError(f"export model: --stage must be train_stage1 or train_stage2, not {stage!r}")
    store = ArtifactStore(cfg.artifact_root())
    ckpt = stage_checkpoint(store, cfg.partition, stage)
    manifest = read_manifest(store, cfg.partition, stage)
    final = Path(out_dir).resolve()
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise StageError(f"export model: {final} is not empty; give a new folder")
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    out = final.parent / f".{final.name}.partial-{os.getpid()}"
    try:
        record = _write_model(store, cfg, stage, ckpt, manifest, out)
        if final.exists():
            final.rmdir()  # the empty folder the user made
        out.rename(final)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return record


def _write_model(store: ArtifactStore, cfg: NyxConfig, stage: str, ckpt: dict, manifest: dict, out: Path) -> dict:
    """The folder's files, written into `out` (the card names no path: "{this folder}")."""
    out.mkdir()
    merged = ckpt["merged"][len(store.root):].lstrip("/")
    store.fs.get(store.path(merged) + "/", str(out), recursive=True)
    trained = manifest.get("config") or {}
    recipe = ckpt.get("recipe") or {}
    family = ckpt.get("family", "vlm")
    record = {
        "family": family, "pooling": recipe.get("pooling"), "dims": recipe.get("dims") or trained.get("loss", {}).get("dims"),
        "normalize": True, "base_model": ckpt["base_model"], "stage": stage, "run": ckpt["run"],
        "partition": cfg.partition, "created_at": ckpt.get("created_at"),
    }
    if family == "encoder":
        record |= {"query_prefix": recipe.get("query_prefix", ""), "document_prefix": recipe.get("document_prefix", ""),
                   "max_seq_length": recipe.get("max_seq_length")}
        _sentence_transformers_prompts(out, record["query_prefix"], record["document_prefix"])
    else:
        record |= {key: trained.get(key) for key in ("query_instruction", "prompt_format", "image_placeholder",
                                                   "max_pixels")}
    (out / RECIPE).write_text(json.dumps(record, indent=2) + "\n")
    if family != "encoder":
        write_serving_template(str(out))
    (out / "README.md").write_text(model_card(store, cfg, stage, record, manifest, str(out)))
    return record


def _sentence_transformers_prompts(out: Path, query: str, document: str) -> None:
    """`prompt_name="query"` / `"document"` prepend what training prepended."""
    path = out / "config_sentence_transformers.json"
    conf = json.loads(path.read_text()) if path.is_file() else {}
    conf["prompts"] = {"query": query, "document": document}
    conf["default_prompt_name"] = None
    path.write_text(json.dumps(conf, indent=2) + "\n")


def _evaluation_rows(store: ArtifactStore, cfg: NyxConfig, stage: str) -> list[dict]:
    """The run's evaluate rows of this model at its full width (retrieval metrics), when evaluated."""
    name = stage.replace("train_", "")
    try:
        rows = read_stage_table(store, cfg.partition, "evaluate").to_pylist()
    except (FileNotFoundError, StageError):
        return []
    full = max((r["dim"] for r in rows if r["model"] == name), default=None)
    return [r for r in rows if r["model"] == name and r["dim"] == full and r["metric"] in HEADLINE]


def _cell(r: dict) -> str:
    ci = f" [{r['ci_low']:.3f}, {r['ci_high']:.3f}]" if r.get("ci_low") is not None else ""
    delta = ""
    if r.get("delta") is not None:
        dci = (f" [{r['delta_ci_low']:+.3f}, {r['delta_ci_high']:+.3f}]" if r.get("delta_ci_low") is not None else "")
        delta = f" ({r['delta']:+.3f}{dci} vs {r['baseline']})"
    return f"{r['value']:.3f}{ci}{delta}"


def serve_command(folder: str) -> str:
    """`vllm serve FOLDER` with the flags that make it embed as the folder's recipe says, as a shell line."""
    return shlex.join(["vllm", "serve", folder, *vllm_serve_flags(folder)])


def model_card(store: ArtifactStore, cfg: NyxConfig, stage: str, record: dict, manifest: dict,
               out_dir: str) -> str:
    trained = manifest.get("config") or {}
    sources = ", ".join(s.get("name", "?") for s in trained.get("sources", [])) or "?"
    loss = trained.get("loss", {})
    lines = [f"# Nyx retriever: {record['run']} ({stage})", "",
             f"A mixed-modal retriever trained by the Nyx pipeline (arXiv 2510.17354) from `{record['base_model']}` "
             f"({record['family']}, {record['pooling']} pooling), partition `{cfg.partition}`.", "",
             "## Training", "",
             f"- sources: {sources}; {manifest.get('rows_in', '?')} examples in, {manifest.get('rows_out', '?')} "
             "logged steps",
             f"- Matryoshka InfoNCE at dims {loss.get('dims')} (weights {loss.get('weights')}, temperature "
             f"{loss.get('temperature')}), {trained.get('epochs')} epoch(s), batch {trained.get('per_device_batch_size')}, "
             f"lr {trained.get('learning_rate')}", ""]
    rows = _evaluation_rows(store, cfg, stage)
    if rows:
        lines += ["## Evaluation (the run's own report: 95% bootstrap intervals, paired differences)", "",
                  "| dataset | split | n | metric | value |", "|---|---|---|---|---|"]
        rows.sort(key=lambda r: -r["n"])  # what carries information first
        lines += [f"| {r['dataset']} | {r['split']} | {r['n']}{' (noise)' if r['n'] < 30 else ''} | {r['metric']} | "
                  f"{_cell(r)} |" for r in rows]
        lines += ["", "Rows marked noise have fewer than 30 queries; the run's report says which sets carry "
                      "information.", ""]
    lines += ["## Use", ""]
    if record["family"] == "encoder":
        dim = (record.get("dims") or [None])[-1]
        lines += ["```python", "from sentence_transformers import SentenceTransformer", "",
                  f"model = SentenceTransformer(\"{{this folder}}\", truncate_dim={dim})",
                  "queries = model.encode([\"what opens a URL?\"], prompt_name=\"query\", normalize_embeddings=True)",
                  "docs = model.encode([\"Open a URL in the default browser.\"], prompt_name=\"document\", "
                  "normalize_embeddings=True)", "```", ""]
    lines += ["```python", "from nyx_tasks.embedding import MixedItem, load", "",
              "model = load(\"{this folder}\")   # embeds as the pipeline does; model.dim, model.embed(items, role)",
              *([f"items = [MixedItem(\"what opens a URL?\"), MixedItem.of_files(\"{record.get('image_placeholder') or '<image>'} "
                 "a chart of sales\", [\"chart.png\"])]   # one placeholder per image"]
                if record["family"] != "encoder" else []),
              "```", "",
              "## Serve", "",
              "vLLM's pooling runner serves this folder behind an OpenAI-compatible `/v1/embeddings`; the flags "
              "make it embed as the recipe says" + (" (the serving template: the prompt and its end-of-text token; "
                                                   "last-token pooling; the pixel cap)" if record["family"] != "encoder"
                                                   else "") + ":", "",
              "```bash", serve_command(out_dir).replace(out_dir, "{this folder}"), "```",
              "", "```python", "model = load(\"{this folder}\", server=\"http://127.0.0.1:8000/v1\")   # the same "
              "recipe; the server computes the vectors", "```", "",
              "## Limits", "",
              "Trained for retrieval over the pipeline's sources; a demo run trains on small sets and CPU budgets. "
              "Truncated dims are renormalised before search.", ""]
    return "\n".join(lines)

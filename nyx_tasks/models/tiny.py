"""`nyx models build-tiny DIR`: tiny, seeded, random-weight models of the real
architectures, built without any download, for the demo profile and the tests.

- `tokenizer/`: a byte-level BPE trained on the bundled corpus, with Qwen2's
  special tokens and the Qwen2.5-VL chat template;
- `qwen2_5_vl/`: Qwen2_5_VLForConditionalGeneration + the real Qwen2.5-VL
  processor (image processor, tokenizer, chat template);
- `qwen2/`: a text-only Qwen2ForCausalLM (what the vLLM CPU server serves);
- `internvl/`: InternVLForConditionalGeneration, the paper's synthesis VLM
  family (InternVL3), with the real InternVL processor and image tokens;
- `mllama/`: MllamaForConditionalGeneration (Llama-3.2-Vision, the backbone of
  mmE5, the paper's hard-negative miner) with the real Mllama processor and a
  tokenizer carrying Llama-3's special tokens.

The weights are random: generations are noise, but every code path (chat
template, image tokens, structured decoding, batching) is the real one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from nyx_tasks.core.config import load_config
from nyx_tasks.sources.obelics import iter_source_rows, list_source_shards

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>", "<|vision_pad|>"]
CHAT_TEMPLATE = (Path(__file__).with_name("qwen_chat_template.jinja")).read_text()


def corpus_texts() -> Iterable[str]:
    """Texts of the bundled sample corpus (plus JSON punctuation, so that
    structured outputs tokenize into sensible pieces)."""
    src = load_config("demo").ingest.source
    for shard in list_source_shards(src):
        for _, row in iter_source_rows(shard, src):
            if isinstance(row, dict) and isinstance(row.get("texts"), list):
                yield from (t for t in row["texts"] if isinstance(t, str))
    yield '{"qa_pairs": [{"question": "What is <image1>?", "answer": "a red circle"}]}' * 20


# InternVL's image tokens (the -hf layout): <img> <IMG_CONTEXT>*n </img>.
INTERNVL_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>",
                   "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
INTERNVL_CHAT_TEMPLATE = CHAT_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<IMG_CONTEXT>\n") \
    .replace("<|vision_start|><|video_pad|><|vision_end|>", "<video>\n")


def build_tokenizer(out: Path, vocab_size: int = 2048, internvl: bool = False):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = SPECIAL_TOKENS + (list(INTERNVL_TOKENS.values()) if internvl else [])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus_texts(), trainer=trainer)
    extra = INTERNVL_TOKENS if internvl else SPECIAL_TOKENS[1:]
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                 extra_special_tokens=extra, model_max_length=4096)
    hf.chat_template = INTERNVL_CHAT_TEMPLATE if internvl else CHAT_TEMPLATE
    hf.save_pretrained(out)
    return hf


def _text_config(vocab: int, tok) -> dict:
    # head_dim 64: the smallest the vLLM CPU attention kernels accept (16 is refused).
    return dict(vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
                eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"), tie_word_embeddings=True)


def build_qwen2(out: Path, tok, seed: int = 0) -> Path:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(**_text_config(len(tok), tok), rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    model = Qwen2ForCausalLM(cfg).eval()
    model.generation_config = GenerationConfig(eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_qwen2_5_vl(out: Path, tok, seed: int = 0, hidden_size: int = 128) -> Path:
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    torch.manual_seed(seed)
    text = _text_config(len(tok), tok)
    if hidden_size != text["hidden_size"]:  # the real width (Qwen2.5-VL-3B: 2048) on one layer, head_dim 128
        text.update(hidden_size=hidden_size, intermediate_size=512, num_hidden_layers=1,
                    num_attention_heads=hidden_size // 128, num_key_value_heads=2)
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    mrope = [head_dim // 8, head_dim * 3 // 16, head_dim * 3 // 16]  # Qwen's 16/24/24 split of head_dim/2
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope}
    cfg = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           out_hidden_size=text["hidden_size"], fullatt_block_indexes=[1]),
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    model.generation_config = GenerationConfig(eos_token_id=text["eos_token_id"], pad_token_id=text["pad_token_id"])
    model.save_pretrained(out)
    # Small images keep the tiny model fast: at most 64 patches of 28x28 per image.
    image_processor = Qwen2VLImageProcessor(min_pixels=4 * 28 * 28, max_pixels=64 * 28 * 28)
    video_processor = Qwen2VLVideoProcessor(min_pixels=4 * 28 * 28, max_pixels=64 * 28 * 28)
    proc = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tok,
                               video_processor=video_processor, chat_template=CHAT_TEMPLATE)
    proc.save_pretrained(out)
    return out


def build_internvl(out: Path, seed: int = 0) -> Path:
    """InternVLForConditionalGeneration (InternVL3's architecture, -hf layout) with
    a Qwen2 language model, 56x56 tiles and 4 image tokens per tile."""
    import torch
    from transformers import (
        GenerationConfig,
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
    )

    tok = build_tokenizer(out / "_tokenizer", internvl=True)
    torch.manual_seed(seed)
    text = _text_config(len(tok), tok)
    text.update(model_type="qwen2", rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    cfg = InternVLConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           image_size=[56, 56], patch_size=[14, 14]),
        text_config=text, image_token_id=tok.context_image_token_id, image_seq_length=4, downsample_ratio=0.5,
    )
    model = InternVLForConditionalGeneration(cfg).eval()
    model.generation_config = GenerationConfig(eos_token_id=text["eos_token_id"], pad_token_id=text["pad_token_id"])
    model.save_pretrained(out)
    proc = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size={"height": 56, "width": 56}, crop_to_patches=True,
                                              min_patches=1, max_patches=4),
        tokenizer=tok, video_processor=InternVLVideoProcessor(size={"height": 56, "width": 56}),
        image_seq_length=4, chat_template=INTERNVL_CHAT_TEMPLATE,
    )
    proc.save_pretrained(out)
    shutil.rmtree(out / "_tokenizer")
    return out


# Llama-3's special tokens, as the Mllama processor and mmE5 use them: the tokenizer itself
# prepends <|begin_of_text|> (like Llama-3's TemplateProcessing post-processor), the
# processor adds another after leading <|image|> tokens, padding is <|finetune_right_pad_id|>.
MLLAMA_SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "<|start_header_id|>",
                         "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>", "<|image|>"]


def build_mllama_tokenizer(out: Path, vocab_size: int = 2048):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=MLLAMA_SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus_texts(), trainer=trainer)
    bos = "<|begin_of_text|>"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, tok.token_to_id(bos))])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token="<|end_of_text|>",
                                 pad_token="<|finetune_right_pad_id|>", extra_special_tokens=MLLAMA_SPECIAL_TOKENS[3:],
                                 model_max_length=4096)
    hf.save_pretrained(out)
    return hf


def build_mllama(out: Path, seed: int = 0) -> Path:
    """MllamaForConditionalGeneration (Llama-3.2-Vision's architecture, mmE5's backbone):
    a 2-layer vision encoder (+1 global layer) on 56x56 tiles of 14x14 patches, up to 4
    tiles per image (the real aspect-ratio set), and a 3-layer text model whose middle
    layer cross-attends to the image. The tanh gates that the real init leaves at zero
    (cross-attention, tile and position embeddings) are set to random non-zero values,
    so images, tiles and aspect ratios all change the output."""
    import torch
    from transformers import (
        GenerationConfig,
        MllamaConfig,
        MllamaForConditionalGeneration,
        MllamaImageProcessor,
        MllamaProcessor,
    )

    tok = build_mllama_tokenizer(out / "_tokenizer")
    torch.manual_seed(seed)
    ids = tok.convert_tokens_to_ids
    text = dict(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                cross_attention_layers=[1], rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
                bos_token_id=ids("<|begin_of_text|>"), eos_token_id=ids("<|end_of_text|>"),
                pad_token_id=ids("<|finetune_right_pad_id|>"))
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1, attention_heads=2,
                  image_size=56, patch_size=14, max_num_tiles=4, intermediate_layers_indices=[0, 1],
                  vision_output_dim=32 * 3)  # final + 2 intermediate layers, concatenated
    cfg = MllamaConfig(text_config=text, vision_config=vision, image_token_index=ids("<|image|>"))
    model = MllamaForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gate"):  # cross_attn_{attn,mlp}_gate, the tile/position embeddings' gates
                p.uniform_(0.5, 1.5)
    model.generation_config = GenerationConfig(bos_token_id=text["bos_token_id"], eos_token_id=text["eos_token_id"],
                                               pad_token_id=text["pad_token_id"])
    model.save_pretrained(out)
    proc = MllamaProcessor(image_processor=MllamaImageProcessor(size={"height": 56, "width": 56}, max_image_tiles=4),
                           tokenizer=tok)
    proc.save_pretrained(out)
    shutil.rmtree(out / "_tokenizer")
    return out


TINY_VERSION = 4  # bump when the set or shape of tiny models changes: old builds are not reused


def tiny_dir() -> Path:
    """Where `tiny:` models live: $NYX_TINY_MODELS (else ~/.cache/nyx/tiny-models), per build version."""
    base = Path(os.environ.get("NYX_TINY_MODELS") or Path.home() / ".cache" / "nyx" / "tiny-models")
    return base / f"v{TINY_VERSION}"


def build_tiny(out_dir: str | Path, seed: int = 0) -> dict[str, str]:
    """Build every tiny model under `out_dir`; returns {name: path}. Idempotent, and
    safe when several processes race: each builds in a temp dir, the first rename wins."""
    out = Path(out_dir)
    done = out / "tiny_models.json"
    if done.exists():
        return json.loads(done.read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=out.parent))
    tok = build_tokenizer(tmp / "tokenizer")
    build_qwen2(tmp / "qwen2", tok, seed)
    build_qwen2_5_vl(tmp / "qwen2_5_vl", tok, seed)
    build_qwen2_5_vl(tmp / "qwen2_5_vl_2048", tok, seed, hidden_size=2048)  # the paper's Matryoshka dims need it
    build_internvl(tmp / "internvl", seed)
    build_mllama(tmp / "mllama", seed)
    names = {"tokenizer": "tokenizer", "qwen2": "qwen2", "qwen2_5_vl": "qwen2_5_vl",
             "qwen2_5_vl_2048": "qwen2_5_vl_2048", "internvl": "internvl", "mllama": "mllama"}
    (tmp / "tiny_models.json").write_text(json.dumps({k: str(out / v) for k, v in names.items()}, indent=2))
    try:
        tmp.rename(out)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return json.loads(done.read_text())

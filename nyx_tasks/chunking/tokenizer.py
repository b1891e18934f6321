"""The chunking tokenizer: a real HF tokenizer from config (paper: the
Qwen2.5-VL tokenizer), or a small byte-level BPE trained offline on the
corpus (demo and tests). Either way the image placeholder is one token."""

from __future__ import annotations

from collections.abc import Iterable

from nyx_tasks.embedding import resolve_model_path


def train_bpe(texts: Iterable[str], vocab_size: int, placeholder: str):
    """Train a byte-level BPE tokenizer on `texts` (deterministic for the same input)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", placeholder],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_pretrained(name_or_path: str, placeholder: str):
    """The fast (Rust) tokenizer behind an HF tokenizer: hub id, local path, or a tiny model's
    (`tiny:<name>`, as the model fields take them)."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))
    tok = hf.backend_tokenizer
    if tok.token_to_id(placeholder) is None:
        raise ValueError(
            f"tokenizer {name_or_path!r} has no token {placeholder!r}; set chunk.image_placeholder "
            "to one of its special tokens (Qwen2.5-VL: <|image_pad|>)"
        )
    return tok


def placeholder_id(tok, placeholder: str) -> int:
    pid = tok.token_to_id(placeholder)
    if pid is None:
        raise ValueError(f"tokenizer has no token for the image placeholder {placeholder!r}")
    ids = tok.encode(placeholder, add_special_tokens=False).ids
    if ids != [pid]:
        raise ValueError(f"image placeholder {placeholder!r} must encode to one token, got {ids}")
    return pid

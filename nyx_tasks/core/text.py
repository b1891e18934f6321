"""Text is text: web pages and text sets spell the special tokens of the models this pipeline runs
(`<|image_pad|>`, `<|im_start|>`, `<|endoftext|>`, `<|image|>`, `<IMG_CONTEXT>`, `<s>`, ...). Where
text enters the pipeline (OBELICS rows at ingest, text-set questions and passages) each spelled
token is split after its first character by an invisible WORD JOINER (U+2060), so no tokenizer or
processor reads it as a special token, an image slot or a chat turn, and a reader still sees the
same characters.

    >>> plain("a page about <|image_pad|> tokens")
    'a page about <\u2060|image_pad|> tokens'
"""

from __future__ import annotations

import re

JOINER = "\u2060"  # WORD JOINER: zero width; no model's special token contains it
# Qwen / ChatML / Llama-3 / mmE5 (`<|...|>`), InternVL (`<img>`, `</img>`, `<IMG_CONTEXT>`), Llama-2 /
# Mistral (`<s>`, `</s>`, `[INST]`, `<<SYS>>`).
SPELLED = re.compile(r"<\|[A-Za-z0-9_.:-]{1,48}\|>|</?(?:img|IMG_CONTEXT|s)>|\[/?INST\]|<</?SYS>>")
# LLaVA-style image / video placeholders, `<image>` being the pipeline's own default: escaped in text
# that never goes through chunking (text sets); chunking removes the configured placeholder from
# OBELICS text itself (`chunking.chunks.strip_placeholder`), whatever it is.
PLACEHOLDERS = ("<image>", "<video>")


def plain(text: str, placeholders: tuple[str, ...] = PLACEHOLDERS) -> str:
    """`text` with every spelled special token, and every literal of `placeholders`, split after its
    first character by `JOINER`."""
    if "<" not in text and "[" not in text:
        return text
    text = SPELLED.sub(lambda m: m.group(0)[0] + JOINER + m.group(0)[1:], text)
    for p in placeholders:
        text = text.replace(p, p[0] + JOINER + p[1:])
    return text

"""The Nyx embedder (paper: Nyx model): a Qwen2.5-VL backbone; the embedding is
the last layer's hidden state at the last non-padding token (right padding,
the chat template, an end-of-text token appended), L2-normalised; queries
carry the retrieval instruction; images are capped at `max_pixels`; Matryoshka truncation to any
configured dimension. Loads a merged checkpoint, or a base model plus a LoRA
adapter. The shared machinery lives in `vlm.VLMEmbedder`."""

from __future__ import annotations

from nyx_tasks.embedding.base import MixedItem
from nyx_tasks.embedding.vlm import VLMEmbedder, last_token_pool

__all__ = ["SERVING_TEMPLATE", "VISION", "NyxEmbedder", "cap_image_pixels", "last_token_pool", "nyx_prompt",
           "serving_template"]

VISION = "<|vision_start|><|image_pad|><|vision_end|>"
PROMPT_FORMAT = "chat-v1"  # part of model_id: a change of prompt invalidates cached embeddings
SERVING_TEMPLATE = "nyx_serving_template.jinja"  # in an exported VLM folder: `vllm serve --chat-template` takes it
# The plain format as a chat template: a system message (a query's instruction) and a newline, the user's text with
# a vision block per image, then the end-of-text token (vLLM hands an image part to the template as type "image").
PLAIN_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m.content is string -%}{{ m.content }}{%- else -%}{%- for c in m.content -%}"
    "{%- if c.type == 'text' -%}{{ c.text }}{%- else -%}" + VISION + "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- if m.role == 'system' -%}{{ '\\n' }}{%- endif -%}"
    "{%- endfor -%}")


def nyx_prompt(processor, text: str, role: str, instruction: str, placeholder: str, fmt: str = "chat") -> str:
    """The Nyx input for one query or document (training and embedding share it):
    the chat template with text and images interleaved where the placeholders
    stood, the retrieval instruction as the system message of queries
    (documents keep the template's default), the assistant turn opened, and the
    end-of-text token last, whose hidden state is the embedding (paper: EOS).
    `fmt="plain"` (the released code's input): no template, the instruction and a newline
    before a query's text, each placeholder a vision block, then the end-of-text token."""
    eos = processor.tokenizer.pad_token or "<|endoftext|>"
    if fmt == "plain":
        body = VISION.join(text.split(placeholder))
        return (f"{instruction}\n{body}" if role == "query" and instruction else body) + eos
    content: list[dict] = []
    for i, part in enumerate(text.split(placeholder)):
        if i:
            content.append({"type": "image"})
        if part:
            content.append({"type": "text", "text": part})
    messages = [{"role": "user", "content": content}]
    if role == "query" and instruction:
        messages.insert(0, {"role": "system", "content": instruction})
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + eos


def serving_template(processor, fmt: str = "chat") -> str:
    """The chat template under which a served model's requests render as `nyx_prompt` builds them: a
    query's instruction as the system message, each image part where its placeholder stood. The chat
    format is the processor's own template, the generation prompt opened; both end with the
    end-of-text token, whose hidden state vLLM's last-token pooling takes."""
    eos = processor.tokenizer.pad_token or "<|endoftext|>"
    body = PLAIN_TEMPLATE if fmt == "plain" else processor.chat_template.rstrip("\n")
    return body + "{{- " + repr(eos) + " }}"


def cap_image_pixels(processor, max_pixels: int) -> None:
    """The pixel cap per image (paper: 400 x 28 x 28) on Qwen2.5-VL's image processor."""
    ip = processor.image_processor
    ip.size = {"shortest_edge": min(ip.size.get("shortest_edge", 56 * 56), max_pixels), "longest_edge": max_pixels}


class NyxEmbedder(VLMEmbedder):
    kind = "nyx"

    @property
    def prompt_format(self) -> str:
        return PROMPT_FORMAT if self.cfg.prompt_format == "chat" else f"{self.cfg.prompt_format}-v1"

    def _setup(self) -> None:
        cap_image_pixels(self.processor, self.cfg.max_pixels)

    def _text(self, item: MixedItem, role: str) -> str:
        return nyx_prompt(self.processor, item.text, role, self.cfg.query_instruction, self.cfg.image_placeholder,
                          self.cfg.prompt_format)

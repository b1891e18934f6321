"""A served VLM embeds the pipeline's prompt: the conversation the `openai` embedder sends for an
item (`request: chat`), rendered under the serving template an export writes (as vLLM renders it:
each image part handed to the template as an image), is the text `nyx_prompt` builds in process -
for both prompt formats, both roles, text alone, images between text, two images, an image alone,
and a system message given as a string or as text parts. The vLLM CPU build checks the vectors
themselves (tests/integration/test_vllm_embeddings.py)."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from nyx_tasks.core.base import StageError
from nyx_tasks.core.config import EmbedderConfig
from nyx_tasks.embedding import MixedItem, resolve_model_path
from nyx_tasks.embedding.nyx import nyx_prompt, serving_template
from nyx_tasks.embedding.served import conversation
from tests.conftest import png_bytes

ITEMS = ["a chart of sales", "<image> a chart of sales", "before <image> between <image> after", "<image>",
         "<image><image>"]


@pytest.fixture(scope="module")
def processor():
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(resolve_model_path("tiny:qwen2_5_vl"))


def as_vllm_renders(messages: list[dict], system_as_parts: bool) -> list[dict]:
    """The messages a chat template sees: image parts as images, a string content as is or as text parts."""
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}] if system_as_parts else content
        else:
            content = [{"type": "image"} if c["type"] == "image_url" else c for c in content]
        out.append({"role": m["role"], "content": content})
    return out


@pytest.mark.parametrize("fmt", ["chat", "plain"])
@pytest.mark.parametrize("system_as_parts", [False, True])
def test_a_served_conversation_renders_as_the_pipelines_prompt(processor, tmp_path, fmt, system_as_parts):
    cfg = EmbedderConfig(kind="openai", model="m", base_url="http://127.0.0.1:9/v1", request="chat",
                         prompt_format=fmt, query_instruction="Find the matching document.")
    paths = []
    for i, colour in enumerate([(200, 30, 30), (30, 30, 200)]):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(png_bytes(40 + 8 * i, 32, colour))
    template = serving_template(processor, fmt)
    for text in ITEMS:
        item = MixedItem.of_files(text, paths[:text.count("<image>")])
        for role in ("query", "document"):
            messages = conversation(item, role, cfg)
            got = processor.apply_chat_template(as_vllm_renders(messages, system_as_parts), chat_template=template,
                                                tokenize=False, add_generation_prompt=True)
            want = nyx_prompt(processor, text, role, cfg.query_instruction, "<image>", fmt)
            assert got == want, (fmt, role, text)
        urls = [c["image_url"]["url"] for c in messages[-1]["content"] if c["type"] == "image_url"]
        for url, path in zip(urls, paths, strict=False):  # the pixels the server decodes are the file's
            decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
            assert decoded.tobytes() == Image.open(path).convert("RGB").tobytes()


def test_an_item_whose_placeholders_do_not_match_its_images_is_refused(tmp_path):
    cfg = EmbedderConfig(kind="openai", model="m", base_url="http://127.0.0.1:9/v1", request="chat")
    (tmp_path / "a.png").write_bytes(png_bytes())
    with pytest.raises(StageError, match="1 image"):
        conversation(MixedItem.of_files("no placeholder", [tmp_path / "a.png"]), "document", cfg)

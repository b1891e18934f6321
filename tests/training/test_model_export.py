"""`nyx export model`: a trained retriever as a folder that carries its recipe. An encoder's folder
is a sentence-transformers model whose `prompt_name="query" / "document"` embed exactly as the
pipeline embeds that checkpoint; any folder (the tiny VLM's too) loads with
`nyx_tasks.embedding.load`; the model card's usage example runs as written."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np

from nyx_tasks.core.config import EmbedderConfig
from nyx_tasks.embedding import MixedItem, load, vllm_serve_flags
from nyx_tasks.embedding.nyx import SERVING_TEMPLATE
from nyx_tasks.retrieval.corpora import checkpoint_embedder
from nyx_tasks.runner import run_stage
from nyx_tasks.stages import get_stage
from nyx_tasks.store.artifacts import ArtifactStore
from nyx_tasks.store.checkpoints import stage_checkpoint
from tests.conftest import REPO, VLM_TRAIN, demo_cfg, png_bytes

TEXTS = ["Return the absolute path of a file.", "Open a URL in the default browser and wait for it to close."]


def trained(built, tmp_path, *overrides):
    root = tmp_path / "artifacts"
    shutil.copytree(built, root)
    cfg = demo_cfg(root, "train_stage1.max_steps=2", *overrides)
    store = ArtifactStore(cfg.artifact_root())
    run_stage(get_stage("train_stage1"), cfg, store)
    return cfg, store


def export(cfg, out) -> subprocess.CompletedProcess:
    env = {**os.environ, "NYX_CONFIG_DIR": str(REPO / "configs")}
    return subprocess.run([sys.executable, "-m", "nyx_tasks", "export", "model", "--stage", "train_stage1",
                           "--to", str(out), "--root", cfg.artifact_root(), "--partition", cfg.partition],
                          env=env, capture_output=True, text=True)


def failed_exports_leave_nothing_behind(cfg, out, monkeypatch) -> None:
    """An export that fails half-way leaves no folder; a killed one's partial folder (its `finally` never
    ran) is swept by the next export to that place."""
    import pytest

    from nyx_tasks import export as export_module

    def broken_card(*_a, **_k):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(export_module, "model_card", broken_card)
        with pytest.raises(OSError, match="No space"):
            export_module.export_model(cfg, "train_stage1", str(out))
    assert not out.exists() and not list(out.parent.glob(".model.partial-*"))
    killed = out.parent / ".model.partial-4242"
    (killed / "1_Pooling").mkdir(parents=True)
    (killed / "model.safetensors").write_bytes(b"half a file")
    out.mkdir()  # an empty folder made by the user is fine


def test_an_encoder_exports_as_a_sentence_transformer_that_embeds_as_the_pipeline(built, tmp_path, monkeypatch):
    from sentence_transformers import SentenceTransformer

    cfg, store = trained(built, tmp_path, 'train_stage1.query_prefix="query: "',
                         'train_stage1.document_prefix="passage: "')
    out = tmp_path / "model"
    failed_exports_leave_nothing_behind(cfg, out, monkeypatch)
    done = export(cfg, out)
    assert not list(tmp_path.glob(".model.partial-*"))  # the killed export's folder is gone
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((out / "nyx_model.json").read_text())
    assert (record["family"], record["query_prefix"], record["document_prefix"]) == ("encoder", "query: ", "passage: ")
    pipeline = checkpoint_embedder(EmbedderConfig(kind="nyx", device="cpu"), stage_checkpoint(store, cfg.partition,
                                                                                              "train_stage1"), None)
    items = [MixedItem(t) for t in TEXTS]
    model = SentenceTransformer(str(out), device="cpu")
    for role in ("query", "document"):
        want = pipeline.embed(items, role)
        got = model.encode(TEXTS, prompt_name=role, normalize_embeddings=True)
        np.testing.assert_allclose(got, want, atol=1e-5)
        np.testing.assert_allclose(load(str(out), device="cpu").embed(items, role), want, atol=1e-5)
    assert not np.allclose(model.encode(TEXTS[:1], prompt_name="query"), model.encode(TEXTS[:1]), atol=1e-4)
    # the card's usage example, run as written
    card = (out / "README.md").read_text()
    assert "## Training" in card and "## Use" in card
    example = re.findall(r"```python\n(.*?)```", card, re.S)[0].replace("{this folder}", str(out))
    scope: dict = {}
    exec(example, scope)  # noqa: S102 - the card's own three lines
    assert scope["queries"].shape == (1, record["dims"][-1])
    assert abs(float(np.linalg.norm(scope["queries"][0])) - 1) < 1e-5
    assert export(cfg, out).returncode != 0  # a non-empty folder is refused


def test_a_vlm_exports_a_folder_that_loads_and_embeds_as_the_pipeline(built, tmp_path):
    cfg, store = trained(built, tmp_path, *VLM_TRAIN)
    out = tmp_path / "model"
    done = export(cfg, out)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((out / "nyx_model.json").read_text())
    assert record["family"] == "vlm" and record["query_instruction"] == cfg.train_stage1.query_instruction
    # how to serve it: the serving template written, the command in the card and on stderr
    flags = vllm_serve_flags(str(out))
    assert (out / SERVING_TEMPLATE).is_file() and str(out / SERVING_TEMPLATE) in flags
    assert f"serve it: {shlex.join(['vllm', 'serve', str(out), *flags])}" in done.stderr
    card = (out / "README.md").read_text()
    assert shlex.join(["vllm", "serve", str(out), *flags]).replace(str(out), "{this folder}") in card
    pipeline = checkpoint_embedder(cfg.evaluate.embedder, stage_checkpoint(store, cfg.partition, "train_stage1"),
                                   store)
    model = load(str(out), device="cpu", batch_size=cfg.evaluate.embedder.batch_size)
    # mixed items: text alone, text with one image, with two, an image alone; the pipeline reads its
    # images from the artifact root's store, the loaded model from plain files (MixedItem.of_files)
    stored = []
    for i, colour in enumerate([(200, 30, 30), (30, 30, 200)]):
        data = png_bytes(48 + 16 * i, 40, colour)
        image_id = hashlib.sha256(data).hexdigest()
        rel = store.image_rel(image_id, "png")
        store.write_bytes_atomic(rel, data)
        stored.append((image_id, rel))
    ph = cfg.evaluate.embedder.image_placeholder
    texts_images = [(TEXTS[0], []), (f"{ph} {TEXTS[1]}", stored[:1]), (f"{ph}{ph} two colours", stored), (ph, stored[1:])]
    theirs = [MixedItem.of_files(t, [store.path(rel) for _, rel in ims]) for t, ims in texts_images]
    ours = [MixedItem(t, tuple(ims)) for t, ims in texts_images]
    assert [x.images[0][0] for x in theirs if x.images] == [x.images[0][0] for x in ours if x.images]
    for role in ("query", "document"):
        mine = model.embed(theirs, role)
        np.testing.assert_allclose(mine, pipeline.embed(ours, role), atol=1e-5)
        other = MixedItem.of_files(texts_images[1][0], [store.path(stored[1][1])])  # the same text, the other image
        assert np.abs(mine[1] - model.embed([other], role)[0]).max() > 1e-3

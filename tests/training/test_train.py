"""Training end to end on the tiny Qwen2.5-VL (CPU): resume equivalence, the
demo run's loss falls, and the published checkpoint is what the embedder and
the re-miner load."""

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file

from nyx_tasks.runner import run_stage
from nyx_tasks.stages import get_stage
from nyx_tasks.store.artifacts import ArtifactStore, read_stage_table
from tests.conftest import VLM_TRAIN, demo_cfg


def spec_for(root, out_dir, **train):
    cfg = demo_cfg(root, *VLM_TRAIN, *(f"train_stage1.{k}={v}" for k, v in train.items()))
    return {"stage": "train_stage1", "partition": cfg.partition, "root": str(root), "run": "t",
            "out_dir": str(out_dir), "train": cfg.train_stage1.model_dump(mode="json"), "init_adapter": None}


def adapter(out_dir):
    return load_file(str(out_dir / "adapter" / "adapter_model.safetensors"))


def test_resume_gives_the_same_model_as_a_straight_run(built, tmp_path):
    """N steps straight vs N/2 steps, stop, resume from the checkpoint for N/2: same
    parameters and losses (the data order, RNG, optimizer and scheduler all restored)."""
    from transformers import TrainerCallback

    from nyx_tasks.training.driver import run

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                control.should_training_stop = True

    knobs = dict(max_steps=6, save_steps=3, per_device_batch_size=4, **{"lora.dropout": 0.1})
    straight = run(spec_for(built, tmp_path / "a", **knobs))
    first = run(spec_for(built, tmp_path / "b", **knobs), callbacks=(StopAt(),))
    assert first["train"]["train_loss"] and (tmp_path / "b/checkpoints/checkpoint-3").is_dir()
    assert not (tmp_path / "b/checkpoints/checkpoint-6").exists()
    resumed = run(spec_for(built, tmp_path / "b", **knobs))

    def losses(m):
        return {h["step"]: h["loss"] for h in m["log_history"] if "loss" in h}

    a, b = losses(straight), losses(resumed)
    assert set(a) == set(range(1, 7)) and {4, 5, 6} <= set(b)
    for step in (4, 5, 6):
        assert b[step] == pytest.approx(a[step], rel=1e-4)
    wa, wb = adapter(tmp_path / "a"), adapter(tmp_path / "b")
    assert wa.keys() == wb.keys() and len(wa) == 2 * 14  # A and B of 7 projections x 2 layers
    for k in wa:
        np.testing.assert_allclose(wb[k], wa[k], rtol=1e-4, atol=1e-6)
    assert json.loads((tmp_path / "b/checkpoints/checkpoint-6/nyx_run.json").read_text())["train"]["max_steps"] == 6


def test_demo_training_loss_falls_and_the_checkpoint_is_used_by_remining(built, tmp_path):
    from nyx_tasks.stages.mine import remine
    from nyx_tasks.store.checkpoints import latest_checkpoint

    root = tmp_path / "artifacts"
    shutil.copytree(built, root)
    cfg = demo_cfg(root, *VLM_TRAIN, "train_stage1.max_steps=8")
    store = ArtifactStore(cfg.artifact_root())
    m = run_stage(get_stage("train_stage1"), cfg, store).manifest
    log = read_stage_table(store, cfg.partition, "train_stage1").to_pylist()
    assert len(log) == m["rows_out"] == m["extra"]["steps"] >= 8
    losses = [r["loss"] for r in log]
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses
    assert {d for d, _ in log[0]["loss_per_dim"]} == {128, 64, 32, 16}

    ckpt = m["checkpoint"]
    assert latest_checkpoint(store)["run"] == ckpt["run"] and ckpt["metrics"]["last_loss"] == losses[-1]
    model_dir = root / "models" / ckpt["run"] / "train_stage1"
    for part in ("merged/config.json", "adapter/adapter_config.json", "metrics.json", "tensorboard"):
        assert (model_dir / part).exists(), part
    assert any((model_dir / "tensorboard").rglob("events.out.tfevents.*"))
    # the same config and inputs again: a no-op
    assert run_stage(get_stage("train_stage1"), cfg, store).status == "skipped"

    # re-mining picks up the new checkpoint: the merged export embeds the NyxQA corpus
    result, version, used = remine(cfg, store)
    assert used["run"] == ckpt["run"] and result.status == "computed"
    rows = read_stage_table(store, cfg.partition, f"negatives/{version}").to_pylist()
    assert rows and all(r["miner_id"].startswith("nyx:") and ckpt["merged"] in r["miner_id"] for r in rows)


def test_a_retried_attempt_resumes_from_the_newest_checkpoint(built, tmp_path, caplog):
    """The task died after its last checkpoint but before publishing: the retry resumes
    (no step is trained twice) and publishes."""
    root = tmp_path / "artifacts"
    shutil.copytree(built, root)
    cfg = demo_cfg(root, *VLM_TRAIN, "train_stage1.max_steps=4", "train_stage1.save_steps=2")
    store = ArtifactStore(cfg.artifact_root())
    kept = cfg.model_copy(update={"train_stage1": cfg.train_stage1.model_copy(update={"keep_checkpoints": True})})
    m = run_stage(get_stage("train_stage1"), kept, store).manifest  # the same run (an execution-only setting)
    run_dir = root / "models" / m["checkpoint"]["run"] / "train_stage1"
    # undo the publication, keep the checkpoints: what a crash after the last save leaves
    for rel in ("_CHECKPOINT.json", "metrics.json"):
        (run_dir / rel).unlink()
    shutil.rmtree(root / "partitions/demo/train_stage1")
    with caplog.at_level("INFO"):
        again = run_stage(get_stage("train_stage1"), cfg, store).manifest
    assert "resuming from" in caplog.text and "checkpoint-4" in caplog.text
    assert (run_dir / "_CHECKPOINT.json").exists() and again["extra"]["steps"] == 4
    assert again["checkpoint"]["run"] == m["checkpoint"]["run"] and not (run_dir / "checkpoints").exists()

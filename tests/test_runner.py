"""Idempotency, invalidation and crash-resume of the stage runner."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nyx_tasks.runner import run_stage
from nyx_tasks.stages import get_stage
from nyx_tasks.store.artifacts import ArtifactStore, read_stage_table, stage_files
from tests.conftest import REPO, long_text, obelics_row, png_bytes, write_jsonl


def _rows(store, cfg, stage, kind="part"):
    return sorted(map(str, read_stage_table(store, cfg.partition, stage, kind).to_pylist()))


def test_second_run_is_a_noop_that_says_so(make_cfg, caplog):
    cfg = make_cfg()
    store = ArtifactStore(cfg.artifact_root())
    first = run_stage(get_stage("ingest"), cfg, store)
    part = store.path(first.manifest["outputs"]["part"][0]["path"])
    assert "/ingest/attempts/" in part and part.endswith("/part-00000.parquet")
    mtime = os.path.getmtime(part)
    with caplog.at_level(logging.INFO, logger="nyx"):
        second = run_stage(get_stage("ingest"), cfg, store)
    assert (first.status, second.status) == ("computed", "skipped")
    assert "already complete" in caplog.text and "nothing to do" in caplog.text
    assert second.manifest == first.manifest
    assert os.path.getmtime(part) == mtime


def test_changed_config_recomputes_and_changed_input_cascades(make_cfg):
    cfg = make_cfg()
    store = ArtifactStore(cfg.artifact_root())
    for s in ("ingest", "chunk", "sample"):
        run_stage(get_stage(s), cfg, store)
    before = store.read_json("partitions/demo/chunk/_MANIFEST.json")
    # the chunk config changes: chunk recomputes, and sample (whose input changed) too
    cfg2 = make_cfg("chunk.chunk_tokens=100")
    assert run_stage(get_stage("ingest"), cfg2, store).status == "skipped"
    r = run_stage(get_stage("chunk"), cfg2, store)
    assert r.status == "computed" and r.manifest["config_hash"] != before["config_hash"]
    assert r.manifest["rows_out"] > before["rows_out"]
    assert run_stage(get_stage("sample"), cfg2, store).status == "computed"
    # force recomputes an unchanged stage, with identical output
    r2 = run_stage(get_stage("chunk"), make_cfg("chunk.chunk_tokens=100", "force=true"), store)
    assert r2.status == "computed" and r2.manifest["output_hash"] == r.manifest["output_hash"]


def test_downstream_refuses_to_run_without_its_input(make_cfg):
    from nyx_tasks.core.base import StageError

    with pytest.raises(StageError, match="Run `nyx ingest"):
        run_stage(get_stage("chunk"), make_cfg())


def _corpus(tmp_path, server):
    """3 shards x 4 docs; shard 1's third document's image blocks until released."""
    paths = []
    for s in range(3):
        rows = []
        for d in range(4):
            url = server.add(f"/s{s}d{d}.png", "ok", png_bytes(8 + s, 8 + d), "image/png")
            if (s, d) == (1, 2):
                url = server.add("/block.png", "block", png_bytes(99, 9))
            rows.append(obelics_row([long_text(s * 10 + d), None], [None, url]))
        paths.append(str(write_jsonl(tmp_path / f"in-{s}.jsonl", rows)))
    return paths


def test_killed_mid_stage_resumes_to_the_same_rows_and_never_exposes_partial_files(tmp_path, image_server, make_cfg):
    paths = _corpus(tmp_path, image_server)
    root = tmp_path / "crashed"
    sets = ["ingest.source.kind=files", f"ingest.source.paths=[{','.join(paths)}]",
            "ingest.batch_docs=2", "ingest.fetch.concurrency=1", "ingest.fetch.timeout_s=60"]
    cmd = [sys.executable, "-m", "nyx_tasks", "ingest", "--root", str(root)]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "NYX_CONFIG_DIR": str(REPO / "configs")}
    log = (tmp_path / "crash.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not image_server.blocked_hit.wait(0.2):
            assert proc.poll() is None, (tmp_path / "crash.log").read_text()
            assert time.monotonic() < deadline, "the stage never reached the blocking image"
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)  # a hard kill: no cleanup code runs
    finally:
        proc.wait(30)
    stage_dir = root / "partitions" / "demo" / "ingest"
    (attempt_dir,) = (stage_dir / "attempts").iterdir()
    names = sorted(p.name for p in attempt_dir.iterdir())
    # shard 0 finished (file + marker); shard 1 was in flight: only a temp file exists
    assert "part-00000.parquet" in names and "part-00001.parquet" not in names
    assert any(n.startswith("_tmp.part-00001") for n in names)
    assert sorted(p.name for p in (attempt_dir / "_shards").iterdir()) == ["00000.json"]
    assert not (stage_dir / "_MANIFEST.json").exists()
    assert json.loads((stage_dir / "_LEASE.json").read_text())["owner"].startswith("cli:")  # the dead run's
    store = ArtifactStore(str(root))
    with pytest.raises(FileNotFoundError):
        stage_files(store, "demo", "ingest")  # readers see nothing until the manifest exists

    image_server.block.set()  # the image now answers
    cfg = make_cfg(*sets, root=root)
    resumed = run_stage(get_stage("ingest"), cfg, store)
    assert resumed.status == "computed"
    assert image_server.requests.count("/s0d0.png") == 1  # the finished shard was not redone
    assert not any(p.name.startswith("_tmp.") for p in attempt_dir.iterdir())
    assert not (stage_dir / "_LEASE.json").exists()  # the dead CLI run's lease was taken over, then released

    clean_cfg = make_cfg(*sets, root=tmp_path / "clean")
    clean_store = ArtifactStore(clean_cfg.artifact_root())
    clean = run_stage(get_stage("ingest"), clean_cfg, clean_store)
    assert _rows(store, cfg, "ingest") == _rows(clean_store, clean_cfg, "ingest")
    assert _rows(store, cfg, "ingest", "images") == _rows(clean_store, clean_cfg, "ingest", "images")
    assert resumed.manifest["output_hash"] == clean.manifest["output_hash"]
    assert resumed.manifest["rows_out"] == 12


def test_a_reader_never_sees_a_partial_parquet(tmp_path):
    """While a writer is open its data lives under a _tmp. name; close() moves it."""
    from nyx_tasks.core.schema import IMAGES, SchemaError

    store = ArtifactStore(str(tmp_path))
    w = store.parquet_writer("p/images-00000.parquet", IMAGES)
    w.write_rows([{"image_id": "a" * 64, "path": "x", "source_url": "u", "mime": "image/png",
                   "width": 1, "height": 1, "num_bytes": 3}])
    assert not store.exists("p/images-00000.parquet")
    with pytest.raises(SchemaError):
        w.write_rows([{"image_id": None, "path": "x", "source_url": "u", "mime": "m",
                       "width": 1, "height": 1, "num_bytes": 3}])
    info = w.close()
    assert info["rows"] == 1 and store.exists("p/images-00000.parquet")
    assert [n for n in store.listdir("p") if n.startswith("_tmp.")] == []
    assert Path(store.path("p/images-00000.parquet")).stat().st_size > 0


def test_any_fsspec_root_works(make_cfg):
    """The whole pipeline on an in-memory fsspec file system: no local paths assumed."""
    import uuid

    import fsspec

    root = f"memory://nyx-{uuid.uuid4().hex[:8]}"
    cfg = make_cfg("sample.size=10", f"artifacts.root={root}")
    store = ArtifactStore(cfg.artifact_root())
    for s in ("ingest", "chunk", "sample"):
        run_stage(get_stage(s), cfg, store)
    rows = read_stage_table(store, cfg.partition, "sample").to_pylist()
    assert len(rows) == 10
    fs = fsspec.filesystem("memory")
    images = [p for p in fs.find(root.replace("memory://", "/")) if "/images/" in p]
    assert images and not any("_tmp." in p for p in fs.find(root.replace("memory://", "/")))
    assert run_stage(get_stage("sample"), cfg, store).status == "skipped"


def test_a_failure_logs_one_clear_line_first(make_cfg, caplog, monkeypatch):
    """What went wrong and what to do, as one ERROR line before the exception (and traceback) leaves."""
    from nyx_tasks.core.base import StageError
    from nyx_tasks.runner import run_stage
    from nyx_tasks.stages import get_stage

    cfg = make_cfg()
    with caplog.at_level("INFO"), pytest.raises(StageError):
        run_stage(get_stage("chunk"), cfg)  # no ingest yet
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "chunk FAILED (plan, partition demo)" in errors[0].getMessage()
    assert "Run `nyx ingest --partition demo` first" in errors[0].getMessage()

    caplog.clear()
    run_stage(get_stage("ingest"), cfg)
    stage = get_stage("chunk")
    monkeypatch.setattr(type(stage), "process", lambda self, ctx, shard, out: (_ for _ in ()).throw(
        OSError("disk full")))
    with caplog.at_level("INFO"), pytest.raises(OSError):
        run_stage(stage, cfg)
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "chunk FAILED (shard" in line and "OSError: disk full" in line and "Finished shards are kept" in line
    # plan, shard and commit logs each start with stage, partition, config hash and the resolved config's path
    context = [r.getMessage() for r in caplog.records
               if r.getMessage().startswith("chunk ") and " partition=demo config_hash=" in r.getMessage()]
    assert [m.split(":")[0] for m in context] == ["chunk plan", "chunk shard part-00000.parquet"]
    import yaml

    from nyx_tasks.runner import stage_config_hash

    path = context[0].rsplit("config=", 1)[1]
    assert context[1].endswith(f"config={path}") and f"config_hash={stage_config_hash(stage, cfg)}" in context[0]
    resolved = yaml.safe_load(Path(path.removeprefix("file://")).read_text())
    assert resolved["chunk"]["chunk_tokens"] == 200 and resolved["partition"] == "demo"


@pytest.mark.parametrize("bad, says", [
    ([{"shard": 0}], "needs an integer 'shard' and a non-empty 'name'"),
    ([{"shard": "0", "name": "a"}], "needs an integer 'shard'"),
    ([{"shard": 0, "name": "a"}, {"shard": 0, "name": "b"}], "share the index 0"),
])
def test_a_plan_with_a_malformed_shard_spec_is_refused_before_any_work(make_cfg, monkeypatch, bad, says):
    """The runner checks the ShardSpec contract (index and name) when a stage plans, so a stage
    bug fails at plan time with the stage named, not as a KeyError inside a mapped task."""
    from nyx_tasks.core.base import StageError

    cfg = make_cfg()
    store = ArtifactStore(cfg.artifact_root())
    stage = get_stage("ingest")
    monkeypatch.setattr(type(stage), "plan_shards", lambda self, ctx: bad)
    with pytest.raises(StageError, match=says) as e:
        run_stage(stage, cfg, store)
    assert str(e.value).startswith("ingest: ")
    assert not store.exists("partitions/demo/ingest/_PLAN.json")

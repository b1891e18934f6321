"""Artifacts you can trust: one writer per stage at a time (the lease), attempt
folders whose snapshot the manifest names exactly, reads checked against the manifest, a
status that reports damage instead of crashing, and stray attempt folders removed only when
provably dead. Every scenario runs the real runner (and, where a user would, the real CLI in a
subprocess) on the demo profile's sample corpus."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nyx_tasks.runner import RunOptions, run_stage
from nyx_tasks.stages import get_stage
from nyx_tasks.store.artifacts import ArtifactStore, SnapshotError, read_stage_table
from nyx_tasks.store.lease import Lease, LeaseHeld, stage_leases
from tests.conftest import REPO


def nyx(*args, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "NYX_CONFIG_DIR": str(REPO / "configs")}
    env.pop("NYX_ARTIFACTS_ROOT", None)
    return subprocess.run([sys.executable, "-m", "nyx_tasks", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300, env=env, **kw)


@pytest.fixture(scope="module")
def chunked(tmp_path_factory):
    """A root with ingest and chunk committed once for the module; tests work on copies."""
    from nyx_tasks.core.config import load_config

    root = tmp_path_factory.mktemp("snap") / "base"
    cfg = load_config("demo", [f"artifacts.root={root}"])
    store = ArtifactStore(str(root))
    for s in ("ingest", "chunk"):
        run_stage(get_stage(s), cfg, store)
    return root


@pytest.fixture
def root(chunked, tmp_path):
    dst = tmp_path / "root"
    shutil.copytree(chunked, dst)
    return dst


def _cfg(root: Path, *overrides: str):
    from nyx_tasks.core.config import load_config

    return load_config("demo", [f"artifacts.root={root}", *overrides])


def _part_files(store: ArtifactStore, stage: str) -> list[str]:
    m = store.read_json(f"partitions/demo/{stage}/_MANIFEST.json")
    return [e["path"] for e in m["outputs"]["part"]]


# ------------------------------------------------------------------------------ one writer


def test_a_second_writer_is_refused_in_one_line_naming_the_holder_and_writes_nothing(root):
    store = ArtifactStore(str(root))
    holder = Lease(store, "partitions/demo/chunk", "airflow:nyxqa_to_model/manual__1", ttl=60)
    holder.acquire()
    before = sorted(p.relative_to(root) for p in (root / "partitions/demo/chunk").rglob("*"))
    r = nyx("chunk", "--root", str(root), "--set", "chunk.chunk_tokens=100")
    assert r.returncode == 1
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert "another run is writing this output now: airflow:nyxqa_to_model/manual__1" in line and "--wait" in line
    assert "Traceback" not in r.stderr
    after = sorted(p.relative_to(root) for p in (root / "partitions/demo/chunk").rglob("*"))
    assert after == before  # no attempt folder, no plan: the committed snapshot is untouched


def test_wait_takes_the_stage_once_the_holder_commits(root):
    store = ArtifactStore(str(root))
    holder = Lease(store, "partitions/demo/chunk", "airflow:nyx_stage_chunk/backfill__2", ttl=60)
    holder.acquire()
    proc = subprocess.Popen([sys.executable, "-m", "nyx_tasks", "chunk", "--root", str(root), "--wait",
                             "--set", "chunk.chunk_tokens=100"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "NYX_CONFIG_DIR": str(REPO / "configs")})
    time.sleep(8)
    assert proc.poll() is None  # still waiting for the holder
    assert store.read_json("partitions/demo/chunk/_MANIFEST.json")["config"]["chunk_tokens"] == 200
    holder.release()
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    assert "waiting" in out
    assert store.read_json("partitions/demo/chunk/_MANIFEST.json")["config"]["chunk_tokens"] == 100


def test_concurrent_writers_with_different_configs_never_mix(root):
    """Two `nyx chunk` at once, one with chunk_tokens=100: each either commits or is refused in one
    line, and the committed snapshot is exactly what a clean run of its own config writes."""
    procs = [subprocess.Popen([sys.executable, "-m", "nyx_tasks", "chunk", "--root", str(root), "--force",
                               *(["--set", "chunk.chunk_tokens=100"] if i else [])], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "NYX_CONFIG_DIR": str(REPO / "configs")}) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0 or ("another run is writing this output now" in err and "Traceback" not in err), err
    assert any(p.returncode == 0 for p in procs)
    store = ArtifactStore(str(root))
    m = store.read_json("partitions/demo/chunk/_MANIFEST.json")
    assert {f.rsplit("/", 1)[0] for f in _part_files(store, "chunk")} == {
        f"partitions/demo/chunk/attempts/{m['attempt']}"}  # one attempt's files, nothing else
    clean_root = root.parent / "clean"
    shutil.copytree(root / "partitions/demo/ingest", clean_root / "partitions/demo/ingest")
    shutil.copytree(root / "images", clean_root / "images")
    clean = run_stage(get_stage("chunk"), _cfg(clean_root, f"chunk.chunk_tokens={m['config']['chunk_tokens']}"))
    assert clean.manifest["output_hash"] == m["output_hash"]
    assert not (root / "partitions/demo/chunk/_LEASE.json").exists()


def test_a_lease_expires_and_a_lost_lease_stops_the_old_writer(tmp_path):
    store = ArtifactStore(str(tmp_path))
    old = Lease(store, "partitions/p/chunk", "airflow:a/run1", ttl=0.5)
    old.acquire()
    new = Lease(store, "partitions/p/chunk", "airflow:b/run2", ttl=60)
    with pytest.raises(LeaseHeld, match="airflow:a/run1"):
        new.acquire()
    time.sleep(0.7)  # run1 stopped renewing
    new.acquire()
    assert store.read_json("partitions/p/chunk/_LEASE.json")["owner"] == "airflow:b/run2"
    with pytest.raises(LeaseHeld, match="lost the lease to airflow:b/run2"):
        old.renew()
    # the same run's other tasks share the lease; release by a stranger is a no-op
    Lease(store, "partitions/p/chunk", "airflow:b/run2").acquire()
    old.release()
    assert store.exists("partitions/p/chunk/_LEASE.json")


def test_a_cli_lease_whose_process_is_gone_is_taken_over_at_once(tmp_path):
    store = ArtifactStore(str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lease = Lease(store, "partitions/p/chunk", "cli:x", ttl=600)
    lease.acquire()
    record = store.read_json("partitions/p/chunk/_LEASE.json")
    store.write_json_atomic("partitions/p/chunk/_LEASE.json", {**record, "pid": int(dead.stdout)})
    Lease(store, "partitions/p/chunk", "cli:y", ttl=600).acquire()
    assert store.read_json("partitions/p/chunk/_LEASE.json")["owner"] == "cli:y"
    # an Airflow run's lease outlives its task processes: its pid says nothing
    store.write_json_atomic("partitions/p/chunk/_LEASE.json", {**record, "owner": "airflow:d/r",
                                                                "pid": int(dead.stdout)})
    with pytest.raises(LeaseHeld):
        Lease(store, "partitions/p/chunk", "cli:y", ttl=600).acquire()


def test_an_empty_lease_left_by_a_failed_write_is_taken_over_and_logged(root):
    """A full disk once left an empty `_LEASE.json` (the exclusive create succeeded, its write did not)
    and every later run failed on it until a person deleted the file. Now an empty or torn lease
    counts as expired: the next run moves it aside, says so, and completes."""
    lease_file = root / "partitions/demo/chunk/_LEASE.json"
    for torn in (b"", b'{"owner": "cli:x", "exp'):
        lease_file.write_bytes(torn)
        out = nyx("chunk", "--partition", "demo", "--root", str(root), "--force")
        assert out.returncode == 0, out.stderr[-2000:]
        assert "took over the lease of ? (it was empty or unreadable" in out.stderr
        assert not lease_file.exists() and not list(lease_file.parent.glob("_LEASE.*"))  # nothing left aside


def test_an_operator_lists_and_releases_a_gone_runs_lease(root):
    """A failed Airflow run's lease blocks the stage until it expires (10 minutes): `nyx lease list`
    shows who holds what, `nyx lease release` frees it, and the stage runs at once."""
    store = ArtifactStore(str(root))
    Lease(store, "partitions/demo/chunk", "airflow:nyxqa_to_model/manual__failed", ttl=600).acquire()
    (root / "partitions/demo/sample").mkdir(parents=True, exist_ok=True)
    (root / "partitions/demo/sample/_LEASE.json").write_bytes(b"")
    listed = nyx("lease", "list", "--root", str(root))
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert any(line.startswith("partitions/demo/chunk  airflow:nyxqa_to_model/manual__failed") and
               line.endswith("live") for line in lines), lines
    assert any(line.startswith("partitions/demo/sample  ?") and line.endswith("unreadable") for line in lines), lines
    refused = nyx("chunk", "--partition", "demo", "--root", str(root), "--force")
    assert refused.returncode != 0 and "another run is writing this output now" in refused.stderr
    released = nyx("lease", "release", "chunk", "--partition", "demo", "--root", str(root))
    assert released.returncode == 0 and "airflow:nyxqa_to_model/manual__failed" in released.stdout
    assert nyx("chunk", "--partition", "demo", "--root", str(root), "--force").returncode == 0
    assert "no lease on chunk" in nyx("lease", "release", "chunk", "--partition", "demo", "--root", str(root)).stdout


def test_a_lease_whose_write_fails_leaves_no_lease_behind(tmp_path, monkeypatch):
    """The record is complete when the lease appears: a write that fails (a full disk) leaves no
    lease file, on a local root (temp file + hard link) and on the exclusive-create path."""
    import errno

    store = ArtifactStore(str(tmp_path))
    real_open = open

    def full_disk(path, mode="r", *a, **kw):
        f = real_open(path, mode, *a, **kw)
        if "w" in mode and "_LEASE" in str(path):
            f.write = lambda data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
        return f

    monkeypatch.setattr("builtins.open", full_disk)
    with pytest.raises(OSError, match="No space left"):
        Lease(store, "partitions/p/chunk", "cli:x").acquire()
    monkeypatch.undo()
    assert not list((tmp_path / "partitions/p/chunk").iterdir())
    # no hard links on this file system: the exclusive create, whose half-written file is removed
    monkeypatch.setattr(os, "link", lambda *a: (_ for _ in ()).throw(OSError(errno.EPERM, "no links here")))
    real_fs_open = store.fs.open

    def failing_xb(path, mode="rb", **kw):
        f = real_fs_open(path, mode, **kw)
        if mode == "xb":
            f.write = lambda data: (_ for _ in ()).throw(OSError(errno.EIO, "Input/output error"))
        return f

    monkeypatch.setattr(store.fs, "open", failing_xb)
    with pytest.raises(OSError, match="Input/output error"):
        Lease(store, "partitions/p/chunk", "cli:x").acquire()
    assert not list((tmp_path / "partitions/p/chunk").iterdir())
    monkeypatch.setattr(store.fs, "open", real_fs_open)
    Lease(store, "partitions/p/chunk", "cli:x").acquire()  # the exclusive create, complete
    assert store.read_json("partitions/p/chunk/_LEASE.json")["owner"] == "cli:x"


def dags_module(name: str):
    """A module of dags/ (as Airflow imports it); importing Airflow configures its logging, which
    replaces the root logger's handlers: they are put back."""
    import importlib
    import logging

    root_logger = logging.getLogger()
    handlers, level = list(root_logger.handlers), root_logger.level
    sys.path.insert(0, str(REPO / "dags"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "dags"))
        root_logger.handlers[:] = handlers
        root_logger.setLevel(level)


def test_airflow_runs_share_a_lease_per_run_and_a_second_run_is_rescheduled_not_failed(monkeypatch, root):
    """The DAGs write through `run_options()` (owner = the Airflow run, so its plan, shard and commit
    tasks share the lease); a plan that finds another run's lease is rescheduled (up_for_reschedule,
    no worker slot held, no retry spent), and plans once the holder is gone."""
    stage_group = dags_module("nyx_airflow.stage_group")
    AirflowRescheduleException = dags_module("airflow.sdk.exceptions").AirflowRescheduleException  # noqa: N806

    class Dag:
        dag_id = "nyx_stage_chunk"

    monkeypatch.setattr(stage_group, "get_current_context", lambda: {"dag": Dag(), "run_id": "backfill__2026"})
    assert stage_group.run_options().owner == "airflow:nyx_stage_chunk/backfill__2026"
    store = ArtifactStore(str(root))
    holder = Lease(store, "partitions/demo/chunk", "airflow:nyxqa_to_model/manual__1", ttl=60)
    holder.acquire()
    cfg = _cfg(root, "force=true")
    plan_before = (root / "partitions/demo/chunk/_PLAN.json").read_text()
    with pytest.raises(AirflowRescheduleException) as e:
        stage_group.plan_or_reschedule("chunk", cfg)
    assert e.value.reschedule_date > dt.datetime.now(dt.UTC)
    assert (root / "partitions/demo/chunk/_PLAN.json").read_text() == plan_before  # nothing planned
    holder.release()
    assert stage_group.plan_or_reschedule("chunk", cfg)  # the holder committed: this run plans
    assert store.read_json("partitions/demo/chunk/_LEASE.json")["owner"] == "airflow:nyx_stage_chunk/backfill__2026"


def test_a_task_that_failed_for_good_releases_every_lease_its_run_holds_and_no_other(root):
    """The DAGs' `on_failure_callback` (every task, through DEFAULT_ARGS): the failed run's leases, in
    any partition, are removed at once, so the next run plans without waiting out the lease; another
    run's lease stays."""
    stage_group = dags_module("nyx_airflow.stage_group")
    DEFAULT_ARGS = dags_module("nyx_airflow.defaults").DEFAULT_ARGS
    assert DEFAULT_ARGS["on_failure_callback"] is stage_group.release_run_leases

    class Dag:
        dag_id = "nyxqa_to_model"

    store = ArtifactStore(str(root))
    ours = "airflow:nyxqa_to_model/manual__1"
    for rel in ("partitions/demo/chunk", "partitions/other/sample"):
        Lease(store, rel, ours, ttl=600).acquire()
    theirs = Lease(store, "partitions/demo/ingest", "airflow:nyx_stage_ingest/backfill__2", ttl=600)
    theirs.acquire()
    context = {"dag": Dag(), "run_id": "manual__1", "params": {"profile": "demo", "artifacts_root": str(root)},
               "ds": "2026-12-06"}
    stage_group.release_run_leases(context)
    assert [(rel, r["owner"]) for rel, r in stage_leases(store)] == [("partitions/demo/ingest", theirs.owner)]
    nxt = Lease(store, "partitions/demo/chunk", "airflow:nyxqa_to_model/manual__3", ttl=600)
    assert nxt.try_acquire() is None  # the next run takes the stage at once
    stage_group.release_run_leases({**context, "params": None})  # a broken context: logged, never raised


# ------------------------------------------------------------------------------ verified reads


def test_a_truncated_input_is_refused_in_one_line_naming_the_file(root):
    store = ArtifactStore(str(root))
    part = root / _part_files(store, "chunk")[0]
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    r = nyx("sample", "--root", str(root))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert str(part.name) in line and "bytes, the manifest says" in line
    assert "nyx chunk --partition demo --force" in line
    assert not (root / "partitions/demo/sample/_MANIFEST.json").exists()


def test_rows_that_differ_from_the_manifest_are_refused_by_every_reader(root):
    store = ArtifactStore(str(root))
    path = _part_files(store, "chunk")[0]
    table = pq.read_table(root / path)
    pq.write_table(pa.concat_tables([table, table]), root / path, compression="zstd")
    m = store.read_json("partitions/demo/chunk/_MANIFEST.json")
    m["outputs"]["part"][0].pop("bytes")  # an older manifest without sizes: the rows still catch it
    store.write_json_atomic("partitions/demo/chunk/_MANIFEST.json", m)
    with pytest.raises(SnapshotError, match=f"{2 * table.num_rows} rows, the manifest says {table.num_rows}"):
        read_stage_table(store, "demo", "chunk")


def test_verify_checks_sha256_and_a_clean_snapshot_passes(root):
    store = ArtifactStore(str(root))
    assert run_stage(get_stage("sample"), _cfg(root), store, RunOptions(verify=True)).status == "computed"
    path = root / _part_files(store, "chunk")[0]
    data = bytearray(path.read_bytes())
    i = len(data) // 3
    data[i] = (data[i] + 1) % 256  # same size, same footer: only the hash can tell
    path.write_bytes(bytes(data))
    assert nyx("status", "--root", str(root)).returncode == 0
    r = nyx("status", "--root", str(root), "--verify")
    assert r.returncode == 1 and f"PROBLEM corrupt: {_part_files(store, 'chunk')[0]}: sha256 differs" in r.stdout
    with pytest.raises(SnapshotError, match="sha256 differs"):
        run_stage(get_stage("sample"), _cfg(root, "force=true"), store, RunOptions(verify=True))


def test_status_reports_missing_corrupt_extra_and_stale_and_survives_a_bad_manifest(root):
    store = ArtifactStore(str(root))
    r = nyx("status", "--root", str(root))
    assert r.returncode == 0 and "PROBLEM" not in r.stdout, r.stdout + r.stderr
    ingest_parts, chunk_parts = _part_files(store, "ingest"), _part_files(store, "chunk")
    shutil.copy(root / chunk_parts[0], (root / chunk_parts[0]).with_name("part-00099.parquet"))  # extra
    (root / ingest_parts[0]).unlink()  # missing
    (root / "partitions/demo/chunk/attempts/0123abcd").mkdir()  # stale attempt
    (root / "partitions/demo/sample").mkdir(parents=True)
    (root / "partitions/demo/sample/_MANIFEST.json").write_text('{"stage": "sample", ')  # not JSON
    r = nyx("status", "--root", str(root))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    out = r.stdout
    assert f"PROBLEM missing: {ingest_parts[0]}" in out
    assert "PROBLEM extra: " in out and "part-00099.parquet" in out
    assert "note stale: partitions/demo/chunk/attempts/0123abcd" in out
    assert "[sample] manifest unreadable" in out and "PROBLEM unreadable manifest" in out


# ------------------------------------------------------------------------------ attempt folders


def test_a_changed_config_keeps_the_committed_snapshot_readable_until_the_new_commit(root):
    store = ArtifactStore(str(root))
    before = read_stage_table(store, "demo", "chunk").num_rows
    stage = get_stage("chunk")
    from nyx_tasks.runner import commit_stage, plan_stage, run_shard

    cfg = _cfg(root, "chunk.chunk_tokens=100")
    shards = plan_stage(stage, cfg, store)
    run_shard(stage, cfg, shards[0], store)
    assert read_stage_table(store, "demo", "chunk").num_rows == before  # readers still see the old snapshot
    for s in shards[1:]:
        run_shard(stage, cfg, s, store)
    new = commit_stage(stage, cfg, store).manifest
    assert read_stage_table(store, "demo", "chunk").num_rows == new["rows_out"] != before
    assert sorted(p.name for p in (root / "partitions/demo/chunk/attempts").iterdir()) == [new["attempt"]]


def test_stray_attempt_folders_are_removed_only_when_provably_dead(root):
    store = ArtifactStore(str(root))
    attempts = root / "partitions/demo/chunk/attempts"
    dead, live = attempts / "deadbeefdeadbeef", attempts / "livelivelivelive"
    for d in (dead, live):
        d.mkdir()
        (d / "part-00000.parquet").write_bytes(b"partial")
    old = time.time() - 3600
    os.utime(dead / "part-00000.parquet", (old, old))
    os.utime(dead, (old, old))
    result = run_stage(get_stage("chunk"), _cfg(root, "force=true"), store, RunOptions(lease_ttl=600))
    assert result.status == "computed"
    assert not dead.exists()  # nothing changed there for longer than a lease lives
    assert live.exists()  # changed a moment ago: a writer may still be filling it
    assert (attempts / result.manifest["attempt"]).exists()


# ------------------------------------------------------------------------------ drop record


def test_every_drop_is_recorded_with_the_snapshot_and_listed_by_reason(root):
    """The manifest's counts and the `_drops` record agree reason by reason; `nyx status --drops`
    names each dropped item with its source file and row."""
    from collections import Counter

    store = ArtifactStore(str(root))
    m = store.read_json("partitions/demo/ingest/_MANIFEST.json")
    records = read_stage_table(store, "demo", "ingest", kind="drops").to_pylist()
    counted = Counter()
    for r in records:
        counted[r["reason"]] += r["count"]
    assert dict(counted) == m["drops"] and sum(m["drops"].values()) > 0
    assert all(p.startswith(f"partitions/demo/ingest/attempts/{m['attempt']}/_drops/")
               for p in (e["path"] for e in m["outputs"]["drops"]))
    r = nyx("status", "--root", str(root), "--drops", "duplicate_document")
    assert r.returncode == 0, r.stderr
    lines = [x.split("\t") for x in r.stdout.splitlines()]
    assert len(lines) == m["drops"]["duplicate_document"]
    stage, reason, item, where, _ = lines[0]
    assert (stage, reason) == ("ingest", "duplicate_document") and len(item) == 24
    src, row = where.split("#")
    doc = (REPO / "nyx_tasks/data/sample_obelics" / src).read_text().splitlines()[int(row)]
    assert json.loads(doc)  # the named row is the duplicated document in the source file
    assert "1 item(s) dropped for 'duplicate_document'" in r.stderr


def test_a_file_taken_off_the_manifest_is_refused_by_the_next_stage_and_reported(root):
    """An edited manifest that lists 2 of its 3 files: readers would read 2 files' rows; the next
    stage's plan refuses the input (rows_out disagrees) and status reports it."""
    store = ArtifactStore(str(root))
    m = store.read_json("partitions/demo/ingest/_MANIFEST.json")
    assert len(m["outputs"]["part"]) >= 2
    m["outputs"]["part"] = m["outputs"]["part"][1:]
    store.write_json_atomic("partitions/demo/ingest/_MANIFEST.json", m)
    with pytest.raises(SnapshotError, match="part files hold .* rows but its rows_out is"):
        run_stage(get_stage("chunk"), _cfg(root, "force=true"), store)
    r = nyx("status", "--root", str(root))
    assert r.returncode == 1 and "rows_out is" in r.stdout


def test_gc_lists_then_removes_leftovers_and_never_a_committed_snapshot(root):
    """`nyx gc --dry-run` lists what killed writers left (a temp file, a corpus build no manifest
    names, an attempt folder neither committed nor planned) once nothing changed in it for
    `--min-age` seconds, and removes nothing; `nyx gc` removes exactly those; every committed
    snapshot still verifies."""
    old = time.time() - 3600

    def plant(rel: str, data: bytes = b"x" * 10) -> Path:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (old, old))
        return path

    plant("partitions/demo/chunk/attempts/committed-earlier/_shards/00000.json")  # abandoned attempt
    plant("partitions/demo/ingest/attempts/x/_tmp.part-00000.parquet.abcd1234")  # inside it: goes with it
    plant("images/ab/_tmp.abcdef.png.1234abcd")  # a temp file of a killed image write
    plant("corpora/k1/b-orphan/rows-00000.parquet")  # a build that lost the race
    plant("corpora/k1/b-named/rows-00000.parquet")
    (root / "corpora/k1/_CORPUS.json").write_text(json.dumps({"files": [{"path": "corpora/k1/b-named/rows-00000.parquet"}]}))
    fresh = root / "partitions/demo/chunk/attempts/being-written/_shards/00000.json"  # a live writer's
    fresh.parent.mkdir(parents=True)
    fresh.write_text("{}")
    listed = nyx("gc", "--dry-run", "--root", str(root))
    assert listed.returncode == 0, listed.stderr
    rels = [line.split()[-1] for line in listed.stdout.splitlines() if line.split()[0] in ("temp", "corpus", "attempt")]
    assert rels == ["corpora/k1/b-orphan", "images/ab/_tmp.abcdef.png.1234abcd",
                    "partitions/demo/chunk/attempts/committed-earlier", "partitions/demo/ingest/attempts/x"], rels
    assert "dry run: nothing removed" in listed.stdout and (root / "corpora/k1/b-orphan").exists()
    removed = nyx("gc", "--root", str(root))
    assert removed.returncode == 0 and "removed 4 leftover(s)" in removed.stdout, removed.stdout
    assert not any((root / r).exists() for r in rels)
    assert fresh.exists() and (root / "corpora/k1/b-named").exists()
    verify = nyx("status", "--partition", "demo", "--root", str(root), "--verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KB tmpfs (root only: skipped elsewhere), grown on request, unmounted after."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")

    def grow(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)

    try:
        yield mnt, grow
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_stops_ingest_in_one_line_and_the_next_run_after_freeing_it_completes(small_disk, tmp_path):
    """Ingest on a root that fills up (a real tmpfs): the command exits 1 with one line naming the
    full device and where; with the space grown, the same command completes without any manual
    step, `nyx status --verify` passes, and the output is the one a roomy disk gives."""
    mnt, grow = small_disk
    root = mnt / "root"
    full = nyx("ingest", "--root", str(root))
    assert full.returncode == 1, full.stdout + full.stderr
    last = full.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no space left on device while writing under ") and str(mnt) in last, last
    grow("64m")
    again = nyx("ingest", "--root", str(root))
    assert again.returncode == 0, again.stderr[-2000:]
    assert nyx("status", "--partition", "demo", "--root", str(root), "--verify").returncode == 0
    roomy = nyx("ingest", "--root", str(tmp_path / "roomy"))
    assert roomy.returncode == 0
    got, want = (json.loads((r / "partitions/demo/ingest/_MANIFEST.json").read_text())["output_hash"]
                 for r in (root, tmp_path / "roomy"))
    assert got == want

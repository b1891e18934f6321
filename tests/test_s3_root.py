"""An artifact root on an S3-compatible server, for real: moto's standalone server on 127.0.0.1
(a free port), the root `s3://<bucket>/<name>` through s3fs, with the guarantees a local disk has.
The lease is one conditional PUT (`If-None-Match: *`) of the whole record, so two writers racing for
a stage get exactly one winner and a reader never sees a partial lease; a torn lease is taken over;
stages commit attempt folders and a manifest that verifies, a second run is a no-op, and the output
hash is the local root's; two `nyx` processes racing for one stage leave one verified snapshot.

Every AWS client of the module (this process's and the `nyx` subprocesses') is pointed at the loopback
server by the standard variables (AWS_ENDPOINT_URL, test credentials, a region), with no credentials
or config file read, no instance metadata asked and no proxy: nothing leaves 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from nyx_tasks.cli import status_text
from nyx_tasks.core.config import load_config
from nyx_tasks.runner import run_stage
from nyx_tasks.stages import get_stage
from nyx_tasks.store.artifacts import (
    ArtifactStore,
    read_manifest,
    read_stage_table,
    snapshot_problems,
)
from nyx_tasks.store.lease import Lease, LeaseHeld
from tests.conftest import REPO, stand_in_sets

moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed: pip install -e '.[dev]'")
s3fs = pytest.importorskip("s3fs", reason="s3fs is not installed: pip install -e '.[dev]'")

BUCKET = "nyx-artifacts"
STAGES = ("ingest", "chunk", "sample")
RACE_ROUNDS = 30
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def _serialized_puts(mp: pytest.MonkeyPatch) -> None:
    """moto checks `If-None-Match: *` and then stores the object with no lock between (S3 itself
    decides a conditional put atomically): one PUT at a time gives the server S3's semantics, so a
    race this module sees is the client's, never the stand-in's."""
    from moto.s3.responses import S3Response

    lock, put_object = threading.Lock(), S3Response.put_object

    def serialized(self, *a, **kw):
        with lock:
            return put_object(self, *a, **kw)

    mp.setattr(S3Response, "put_object", serialized)


def _point_aws_at(mp: pytest.MonkeyPatch, endpoint: str, nowhere: Path) -> None:
    for name in [n for n in os.environ if n.startswith("AWS_")] + list(PROXY_VARIABLES):
        mp.delenv(name, raising=False)
    mp.setenv("AWS_ENDPOINT_URL", endpoint)
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
    mp.setenv("AWS_CONFIG_FILE", str(nowhere / "config"))  # neither exists: no file from HOME is read
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere / "credentials"))


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The loopback S3 server's endpoint with the bucket made, the AWS variables set for the module;
    the server stopped and the variables restored at the end."""
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.WARNING)  # else one log line per request
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        with pytest.MonkeyPatch.context() as mp:
            _serialized_puts(mp)
            _point_aws_at(mp, endpoint, tmp_path_factory.mktemp("no-aws-files"))
            s3fs.S3FileSystem.clear_instance_cache()
            fs = s3fs.S3FileSystem(skip_instance_cache=True)
            fs.mkdir(BUCKET)
            assert fs.s3.meta.endpoint_url == endpoint  # the client talks to the loopback server only
            yield endpoint
    finally:
        s3fs.S3FileSystem.clear_instance_cache()  # no later test reuses a client of the stopped server
        server.stop()
        werkzeug.setLevel(level)


def _store(root: str, own_client: bool = False) -> ArtifactStore:
    """The root's store; with `own_client`, on a file system instance of its own (its own connections
    and listing cache), as a second host would have."""
    store = ArtifactStore(root)
    if own_client:
        store.fs = s3fs.S3FileSystem(skip_instance_cache=True)
    return store


def _cfg(root: str, *overrides: str):
    return load_config("demo", [f"artifacts.root={root}", *stand_in_sets(), "sample.size=10", *overrides])


# ------------------------------------------------------------------------------------ the lease


def test_the_lease_is_one_conditional_put_of_the_whole_record_and_a_second_writer_is_refused(s3):
    """Taking the lease is one PUT of the whole record with `If-None-Match: *`; another host's PUT is
    refused, and that writer is told who holds the stage (even though its client listed the stage folder
    before the lease existed: s3fs keeps listings) and leaves the holder's lease as it was."""
    holder_store, other_store = _store(f"s3://{BUCKET}/one-put", True), _store(f"s3://{BUCKET}/one-put", True)
    holder_store.write_json_atomic("partitions/demo/chunk/_MANIFEST.json", {"stage": "chunk"})
    assert other_store.listdir("partitions/demo/chunk") == ["_MANIFEST.json"]  # now in its listing cache
    calls: list[tuple[str, dict]] = []
    for store in (holder_store, other_store):
        def recorded(method, *args, _real=store.fs.call_s3, **kw):
            calls.append((method, kw))
            return _real(method, *args, **kw)

        store.fs.call_s3 = recorded
    holder = Lease(holder_store, "partitions/demo/chunk", "airflow:holder/run1", ttl=60)
    holder.acquire()
    record = holder.read()
    with pytest.raises(LeaseHeld, match="another run is writing this output now: airflow:holder/run1"):
        Lease(other_store, "partitions/demo/chunk", "airflow:other/run2", ttl=60).acquire()
    lease_key = "one-put/partitions/demo/chunk/_LEASE.json"
    writes = [(m, kw) for m, kw in calls if kw.get("Key") == lease_key and not m.startswith(("get", "head"))]
    assert [m for m, _ in writes] == ["put_object", "put_object"]  # one PUT each; no multipart, no empty create
    assert all(kw.get("IfNoneMatch") == "*" for _, kw in writes)
    assert json.loads(writes[0][1]["Body"]) == record  # the whole record in the one PUT that creates it
    assert holder.read() == record  # the refused writer neither overwrote nor removed the holder's lease
    holder.release()
    assert holder.read() is None


def _race_round(stores: list[ArtifactStore], rel: str, n: int) -> list:
    """Each store's writer tries the lease at the same moment: None (it won), the holder's record
    (it lost), or the exception it raised."""
    barrier = threading.Barrier(len(stores))
    results: list = [RuntimeError("did not finish")] * len(stores)

    def writer(i: int) -> None:
        barrier.wait()
        try:
            results[i] = Lease(stores[i], rel, f"airflow:writer{i}/round{n}", ttl=60).try_acquire()
        except Exception as e:  # reported by the round's assertion
            results[i] = e

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def _watch(store: ArtifactStore, path: str, stop: threading.Event, seen: list) -> None:
    """Read the lease over and over: every version of it that appears must be a whole record."""
    while not stop.is_set():
        with contextlib.suppress(FileNotFoundError):
            data = store.fs.cat_file(path)
            try:
                seen.append(json.loads(data)["owner"])
            except (ValueError, KeyError):
                seen.append(("partial", data))
        stop.wait(0.005)


def test_two_writers_racing_for_a_lease_on_s3_exactly_one_wins_every_round(s3):
    """Each round two writers (their own S3 clients, as two hosts) take the lease at once: on a free
    stage, and every third round on a stage whose holder's lease expired (the take-over moves it aside,
    then the conditional put). Exactly one wins, the lease names it, its release frees the stage."""
    root, rel = f"s3://{BUCKET}/race-lease", "partitions/demo/chunk"
    stores = [_store(root, True) for _ in range(2)]
    path = stores[0].path(f"{rel}/_LEASE.json")
    stop, seen = threading.Event(), []
    watcher = threading.Thread(target=_watch, args=(_store(root, True), path, stop, seen), daemon=True)
    watcher.start()
    try:
        for n in range(RACE_ROUNDS):
            if n % 3 == 2:
                stores[0].write_json_atomic(f"{rel}/_LEASE.json", {"owner": "airflow:gone/run0", "nonce": f"n{n}",
                                                                  "expires": 0.0, "expires_at": "long ago"})
            results = _race_round(stores, rel, n)
            assert not [r for r in results if isinstance(r, BaseException)], f"round {n}: {results}"
            winners = [i for i, held in enumerate(results) if held is None]
            assert len(winners) == 1, f"round {n}: {results}"
            (w,) = winners
            owner = f"airflow:writer{w}/round{n}"
            assert results[1 - w]["owner"] == owner  # the loser was told who holds it
            assert stores[1 - w].read_json(f"{rel}/_LEASE.json")["owner"] == owner
            Lease(stores[w], rel, owner).release()
            assert Lease(stores[1 - w], rel, "?").read() is None
    finally:
        stop.set()
        watcher.join(10)
    assert not [s for s in seen if isinstance(s, tuple)], "a reader saw a partial lease"
    assert seen  # the watcher did see leases come and go


def test_a_torn_lease_on_s3_is_taken_over_renewed_and_released(s3, caplog):
    store, rel = _store(f"s3://{BUCKET}/torn", True), "partitions/demo/chunk"
    for torn in (b"", b'{"owner": "airflow:x/run1", "expi'):
        store.fs.pipe_file(store.path(f"{rel}/_LEASE.json"), torn)
        lease = Lease(store, rel, "cli:test", ttl=60, what="chunk (partition demo)")
        with caplog.at_level(logging.WARNING, logger="nyx"):
            lease.acquire()
        assert "took over the lease of ? (it was empty or unreadable" in caplog.text
        caplog.clear()
        first = lease.read()
        assert first["owner"] == "cli:test"
        lease.renew()
        assert lease.read()["expires"] >= first["expires"] and lease.read()["nonce"] != first["nonce"]
        assert store.listdir(rel) == ["_LEASE.json"]  # nothing left aside, no temp file
        lease.release()
        assert store.listdir(rel) == []


# ------------------------------------------------------------------------------------ the runner


@pytest.fixture(scope="module")
def committed(s3, tmp_path_factory):
    """ingest, chunk and sample committed once on the S3 root and once on a local root, same config."""
    s3_root, local_root = f"s3://{BUCKET}/runs", str(tmp_path_factory.mktemp("local-root"))
    results = {}
    for root in (s3_root, local_root):
        store = ArtifactStore(root)
        results[root] = {s: run_stage(get_stage(s), _cfg(root), store) for s in STAGES}
    return s3_root, local_root, results


def test_stages_on_s3_commit_a_verified_snapshot_with_the_local_roots_output_hash(committed):
    s3_root, local_root, results = committed
    store = ArtifactStore(s3_root)
    for stage in STAGES:
        on_s3, local = results[s3_root][stage], results[local_root][stage]
        assert on_s3.status == local.status == "computed"
        assert on_s3.manifest["output_hash"] == local.manifest["output_hash"], stage
        assert on_s3.manifest["rows_out"] == local.manifest["rows_out"] > 0
        folder = f"partitions/demo/{stage}/attempts/{on_s3.manifest['attempt']}/"
        assert all(e["path"].startswith(folder) for es in on_s3.manifest["outputs"].values() for e in es)
        assert snapshot_problems(store, read_manifest(store, "demo", stage), sha=True) == []
    text, problems = status_text(_cfg(s3_root), verify=True)  # `nyx status --verify`
    assert problems == 0, text
    keys = store.fs.find(store.path(""))
    assert not [k for k in keys if "/_tmp." in k or k.endswith("/_LEASE.json")]  # no temp file, no lease left
    rows = read_stage_table(store, "demo", "sample").to_pylist()
    assert rows == read_stage_table(ArtifactStore(local_root), "demo", "sample").to_pylist()


def test_a_second_run_on_s3_is_a_noop(committed):
    s3_root, _, results = committed
    store = ArtifactStore(s3_root)
    keys = sorted(store.fs.find(store.path(""), refresh=True))
    for stage in STAGES:
        again = run_stage(get_stage(stage), _cfg(s3_root), store)
        assert again.status == "skipped" and again.manifest == results[s3_root][stage].manifest
    store.fs.invalidate_cache()
    assert sorted(store.fs.find(store.path(""))) == keys  # nothing written (the config file exists already)


def test_two_nyx_processes_racing_for_one_stage_on_s3_leave_one_verified_snapshot(committed):
    """Two `nyx chunk --force` at once on the same S3 root: each commits or is refused in one line,
    and the committed snapshot is one attempt's files, verified, with the local root's output hash."""
    s3_root, local_root, results = committed
    root = f"s3://{BUCKET}/race-runs"
    store, committed_store = ArtifactStore(root), ArtifactStore(s3_root)
    for rel in ("images", "partitions/demo/ingest"):  # the committed ingest snapshot (server-side copies)
        store.fs.copy(committed_store.path(rel), store.path(rel), recursive=True)
    assert snapshot_problems(store, read_manifest(store, "demo", "ingest"), sha=True) == []
    sets = [a for s in stand_in_sets() for a in ("--set", s)]
    env = {**os.environ, "NYX_CONFIG_DIR": str(REPO / "configs")}  # the loopback endpoint included
    procs = [subprocess.Popen([sys.executable, "-m", "nyx_tasks", "chunk", "--root", root, "--force", *sets],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0 or ("another run is writing this output now" in err and "Traceback" not in err), err
    assert any(p.returncode == 0 for p in procs)
    store.fs.invalidate_cache()
    m = read_manifest(store, "demo", "chunk")
    assert {e["path"].rsplit("/", 1)[0] for e in m["outputs"]["part"]} == {
        f"partitions/demo/chunk/attempts/{m['attempt']}"}  # one attempt's files, nothing else
    assert snapshot_problems(store, m, sha=True) == []
    assert m["output_hash"] == results[local_root]["chunk"].manifest["output_hash"]
    text, problems = status_text(_cfg(root), verify=True)
    assert problems == 0, text
    assert not store.exists("partitions/demo/chunk/_LEASE.json")

"""Loud failure on unusable input: a stage that read rows and kept none, or lost
more of its input to a dependency (connection refused, timeouts, 5xx) than
`checks.max_dependency_failure_share`, fails in one line and commits nothing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from tests.conftest import REPO, long_text, obelics_row, write_jsonl


def nyx(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nyx_tasks", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300, env={**os.environ, "NYX_CONFIG_DIR": str(REPO / "configs")})


def _closed_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on exit: a connection there is refused


def test_a_corpus_whose_every_row_is_malformed_fails_in_one_line(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"texts": ["a"], "images": [}\n{not json\n' + '{"texts": ["x", "y"], "images": [null]}\n')
    root = tmp_path / "root"
    r = nyx("ingest", "--root", str(root), "--set", "ingest.source.kind=files", "--set", f"ingest.source.paths=[{src}]")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert "read 3 rows" in line and "kept none" in line and "malformed_" in line
    assert not (root / "partitions/demo/ingest/_MANIFEST.json").exists()


def test_an_image_server_that_is_down_fails_the_stage_but_a_few_failures_do_not(tmp_path, image_server):
    dead = f"http://127.0.0.1:{_closed_loopback_port()}"
    rows = [obelics_row([long_text(i), None], [None, f"{dead}/img{i}.png"]) for i in range(4)]
    src = write_jsonl(tmp_path / "down.jsonl", rows)
    common = ["--set", "ingest.source.kind=files", "--set", "ingest.fetch.retries=0"]
    r = nyx("ingest", "--root", str(tmp_path / "down"), *common, "--set", f"ingest.source.paths=[{src}]")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert "came from a dependency" in line and "image_connection_error=4" in line and "--force" in line
    assert not (tmp_path / "down/partitions/demo/ingest/_MANIFEST.json").exists()
    # one image of four unreachable: under the 0.5 default share, the stage commits and names the drop
    from tests.conftest import png_bytes

    good = [image_server.add(f"/ok{i}.png", "ok", png_bytes(10 + i, 10), "image/png") for i in range(3)]
    rows = [obelics_row([long_text(i), None], [None, u]) for i, u in enumerate([*good, f"{dead}/x.png"])]
    src = write_jsonl(tmp_path / "some.jsonl", rows)
    r = nyx("ingest", "--root", str(tmp_path / "some"), *common, "--set", f"ingest.source.paths=[{src}]")
    assert r.returncode == 0, r.stderr
    import json

    m = json.loads((tmp_path / "some/partitions/demo/ingest/_MANIFEST.json").read_text())
    assert m["drops"].get("image_connection_error") == 1 and m["rows_out"] >= 3


def test_failures_a_user_can_cause_end_in_one_line_and_debug_shows_the_traceback(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = [
        (["status", "--root", "nosuchproto://x"], "artifact root 'nosuchproto://x' cannot be opened"),
        (["ingest", "--root", str(a_file)], "is a file; give a directory"),
        (["status", "--root", str(a_file)], "is a file; give a directory"),
        (["ingest", "--root", str(tmp_path / "r"), "--set", "ingest.source.kind=files",
          "--set", f"ingest.source.paths=[{tmp_path / 'missing.jsonl'}]"], "matches no file"),
    ]
    for args, says in cases:
        r = nyx(*args)
        assert r.returncode == 1 and "Traceback" not in r.stderr, (args, r.stderr)
        (line,) = [x for x in r.stderr.splitlines() if x.startswith("error:")]
        assert says in line, (args, line)
    assert not (tmp_path / "r/partitions/demo/ingest/_LEASE.json").exists()  # a failed plan gives the lease back
    assert not (tmp_path / "r/partitions/demo/ingest/_PLAN.json").exists()
    r = nyx("--debug", "status", "--root", "nosuchproto://x")
    assert r.returncode == 1 and "Traceback" in r.stderr and "RootError" in r.stderr

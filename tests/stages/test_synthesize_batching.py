"""synthesize on the real tiny VLM: `generation.batch_size` is execution-only (left
out of the config hash), so the rows must not depend on it. Sampled decoding draws
each request's tokens with the request's own seed (inference/sampling.py), whatever
it is batched with."""

import shutil

from nyx_tasks.inference.cache import CACHE_PREFIX
from nyx_tasks.runner import run_stage
from nyx_tasks.stages import get_stage
from nyx_tasks.store.artifacts import ArtifactStore, read_stage_table

# Small: 3 chunks, short answers; the demo profile's sampled tiny Qwen2.5-VL.
SETS = ("sample.size=3", "synthesize.generation.max_tokens=160", "synthesize.max_qa_per_chunk=2")


def test_same_key_same_rows_at_any_batch_size(make_cfg):
    cfg = make_cfg(*SETS)
    assert cfg.synthesize.generation.backend == "hf" and cfg.synthesize.generation.temperature > 0  # sampled
    store = ArtifactStore(cfg.artifact_root())
    for s in ("ingest", "chunk", "sample"):
        run_stage(get_stage(s), cfg, store)
    results = {}
    for bs in (1, 3):
        shutil.rmtree(store.path(CACHE_PREFIX), ignore_errors=True)  # every request is generated again
        m = run_stage(get_stage("synthesize"), make_cfg(*SETS, f"synthesize.generation.batch_size={bs}",
                                                         "force=true"), store).manifest
        assert m["extra"]["cache_hits"] == 0 and m["extra"]["requests_qa"] >= 3
        rows = read_stage_table(store, cfg.partition, "synthesize").to_pylist()
        results[bs] = (m["key"], m["output_hash"], dict(m["drops"]), rows)
    (key1, hash1, drops1, rows1), (key3, hash3, drops3, rows3) = results[1], results[3]
    assert key1 == key3  # batch_size is execution-only: one key ...
    assert rows1 == rows3 and drops1 == drops3 and hash1 == hash3  # ... and one result
    assert rows1, "the tiny VLM left no rows: the comparison would prove little"

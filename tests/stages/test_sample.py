import pytest

from nyx_tasks.runner import run_stage
from nyx_tasks.stages import get_stage
from nyx_tasks.stages.sample import group_targets, modality
from nyx_tasks.store.artifacts import ArtifactStore, read_stage_table


@pytest.mark.parametrize("size", [1, 3, 10, 60, 10_000, 12_345])
def test_targets_sum_to_size_and_follow_the_paper_mix(size):
    t = group_targets(size, (0.6329, 0.2985, 1 - 0.6329 - 0.2985))
    assert sum(t.values()) == size
    if size == 10_000:
        assert t == {"text_only": 6329, "single_image": 2985, "multi_image": 686}


def _run(make_cfg, *over, root=None):
    cfg = make_cfg(*over, root=root)
    store = ArtifactStore(cfg.artifact_root())
    for s in ("ingest", "chunk", "sample"):
        m = run_stage(get_stage(s), cfg, store).manifest
    return m, read_stage_table(store, cfg.partition, "sample").to_pylist(), read_stage_table(store, cfg.partition, "chunk").to_pylist()


def test_sample_mix_seed_and_shortfall(tmp_path, make_cfg):
    m, rows, chunks = _run(make_cfg, "sample.size=20")
    groups = {g: sum(1 for r in rows if r["modality"] == g) for g in ("text_only", "single_image", "multi_image")}
    assert groups == group_targets(20, (0.6329, 0.2985, 1 - 0.6329 - 0.2985))
    assert all(modality(r["n_images"]) == r["modality"] for r in rows)
    assert {r["chunk_id"] for r in rows} <= {c["chunk_id"] for c in chunks}
    # same seed -> same rows; another seed -> another draw
    _, again, _ = _run(make_cfg, "sample.size=20", root=tmp_path / "b")
    _, other, _ = _run(make_cfg, "sample.size=20", "sample.seed=1", root=tmp_path / "c")
    assert [r["chunk_id"] for r in again] == [r["chunk_id"] for r in rows]
    assert {r["chunk_id"] for r in other} != {r["chunk_id"] for r in rows}
    # asking for more than exists: each group gives what it has, shortfall recorded
    m, rows, chunks = _run(make_cfg, "sample.size=100000", root=tmp_path / "d")
    assert len(rows) == len(chunks)
    assert m["extra"]["shortfall_text_only"] == 63290 - m["extra"]["available_text_only"]

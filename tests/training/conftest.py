"""Training fixtures: one demo partition built up to `mine` (NyxQA from the
scripted generator + the three text-only fixture sets), shared read-only."""

import pytest

from nyx_tasks.artifacts import ArtifactStore
from nyx_tasks.config import load_config

BUILD = ("sample.size=30", "synthesize.max_qa_per_chunk=4", "filter.eval_per_group=0")  # NyxQA all in train


def demo_cfg(root, *overrides):
    return load_config("demo", [f"artifacts.root={root}", *BUILD, *overrides])  # what make_cfg builds


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """One partition up to `mine` (NyxQA + the demo's three text-only sets), shared read-only;
    the scripted generator stands in for the VLM as the `scripted` fixture does."""
    from nyx_tasks.inference.cache import CachedBackend, RequestCache
    from nyx_tasks.runner import run_stage
    from nyx_tasks.stages import get_stage
    from nyx_tasks.stages import synthesize as synth
    from tests.conftest import Scripted

    root = tmp_path_factory.mktemp("train-data") / "artifacts"
    inner = Scripted()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(synth, "make_backend", lambda cfg, store, cache=True: CachedBackend(
            inner, RequestCache(store, inner.model_id)))
        cfg = demo_cfg(root)
        for s in ("ingest", "chunk", "sample", "synthesize", "filter", "mine"):
            run_stage(get_stage(s), cfg, ArtifactStore(cfg.artifact_root()))
    return root



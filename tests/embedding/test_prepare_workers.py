"""`prepare_workers`: the sentence-transformers embedder tokenises its batches in DataLoader worker
processes ahead of the model. The vectors equal `encode`'s (the in-line path) row for row, whatever
the batch size, lengths and order; the model id is the same (cached vectors stay valid); the
setting stays out of the stages' config hashes; the workers really are other processes."""

from __future__ import annotations

import os
import random

import numpy as np

from nyx_tasks.core.config import EmbedderConfig, load_config
from nyx_tasks.embedding import MixedItem, make_embedder
from nyx_tasks.embedding.st import PreparedBatches
from nyx_tasks.runner.contract import stage_config_hash as config_hash
from nyx_tasks.stages import get_stage

WORDS = ["open", "a", "file", "and", "read", "its", "lines", "socket", "thread", "queue", "json", "parse", "url"]


def texts(n: int) -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 90))) for _ in range(n)]


def test_workers_give_the_in_line_vectors_row_for_row():
    items = [MixedItem(t) for t in texts(83)]
    inline = make_embedder(EmbedderConfig(device="cpu", batch_size=16, query_prefix="query: "), None)
    ahead = make_embedder(EmbedderConfig(device="cpu", batch_size=16, query_prefix="query: ", prepare_workers=2), None)
    assert ahead.model_id == inline.model_id
    for role in ("query", "document"):
        want, got = inline.embed(items, role), ahead.embed(items, role)
        assert got.shape == want.shape == (83, inline.dim)
        np.testing.assert_allclose(got, want, atol=1e-5)
    odd = make_embedder(EmbedderConfig(device="cpu", batch_size=7, prepare_workers=3), None)
    np.testing.assert_allclose(odd.embed(items[:20], "document"), inline.embed(items[:20], "document"), atol=1e-5)
    assert odd.embed([], "document").shape == (0, inline.dim)


def test_batches_are_longest_first_and_prepared_in_other_processes():
    import torch

    class Pid:  # what a worker's `preprocess` sees: its process
        def preprocess(self, batch):
            return {"pid": os.getpid(), "n": len(batch)}

    data = texts(50)
    batches = PreparedBatches(Pid(), data, 8)
    assert len(batches) == 7 and sorted(np.concatenate([batches.rows(i) for i in range(7)])) == list(range(50))
    lengths = [len(data[j]) for i in range(7) for j in batches.rows(i)]
    assert lengths == sorted(lengths, reverse=True)
    seen = [f for _, f in torch.utils.data.DataLoader(batches, batch_size=None, num_workers=2)]
    assert sum(f["n"] for f in seen) == 50 and os.getpid() not in {f["pid"] for f in seen}


def test_the_setting_is_not_part_of_a_stage_config_hash():
    cfg = load_config("demo")
    tuned = load_config("demo", ["mine.text_embedder.prepare_workers=4", "evaluate.embedder.prepare_workers=2"])
    for stage in ("mine", "evaluate"):
        assert config_hash(get_stage(stage), tuned) == config_hash(get_stage(stage), cfg), stage

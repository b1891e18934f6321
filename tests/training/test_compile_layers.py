"""`compile_layers`: the language model's decoder layers, checkpointed, with DoRA and dropout, compile
into one graph (no graph break: a break inside a checkpointed layer would leave it eager) that gives
the eager step's loss and gradients. Its own file: compiling costs ~30 s, which the suite's other lane
absorbs (scripts/test.sh)."""

from __future__ import annotations

import pytest

from nyx_tasks.core.config import CheckpointLayers
from tests.training.test_checkpoint_layers import step


def test_compiled_layers_compute_the_same_step_without_a_graph_break(monkeypatch):
    """`compile_layers`: the decoder layers, checkpointed, with DoRA and dropout, compile into one graph
    per layer kind (no graph break: a break inside a checkpointed layer would leave it eager) and give
    the eager step's loss and gradients."""
    import torch._dynamo
    import torch._inductor.config

    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)  # eager's dropout masks, to compare
    ids = torch.randint(3, 90, (2, 11), generator=torch.Generator().manual_seed(0))
    text = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    _, eager, eager_loss = step(text, True, CheckpointLayers())
    _, compiled, compiled_loss = step(text, True, CheckpointLayers(), compiled=True)
    assert dict(torch._dynamo.utils.counters["graph_break"]) == {}
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-5)
    assert eager.keys() == compiled.keys() and any("language_model" in n for n in eager)
    for name, g in eager.items():
        assert torch.allclose(g, compiled[name], atol=1e-5, rtol=1e-3), name

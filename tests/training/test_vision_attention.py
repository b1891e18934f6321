"""Qwen2.5-VL's vision attention in one call per layer (nyx_tasks/models/vision_attention.py) gives the
per-window loop's numbers: the attention function itself on random blocks (empty blocks included),
and the tiny Qwen2.5-VL's vision tower on a batch of images of different sizes, forward and
backward, at fp32 on the CPU; and it makes one attention call per layer where the loop makes one
per window."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

from nyx_tasks.inference import resolve_model
from nyx_tasks.models.vision_attention import (
    block_diagonal_attention,
    use_one_call_vision_attention,
)


def per_block(q, k, v, cu, scale):
    return torch.cat([F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], scale=scale)
                      for a, b in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True) if b > a], dim=2)


@pytest.mark.parametrize("use_flex", [False, True])
def test_block_diagonal_attention_equals_one_call_per_block(use_flex):
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 4, 70, 8) for _ in range(3))
    cu = torch.tensor([0, 7, 16, 16, 30, 64, 70], dtype=torch.int32)  # uneven blocks, one empty
    got = block_diagonal_attention(q, k, v, cu, 0.3, use_flex=use_flex)
    assert got.shape == q.shape
    assert torch.allclose(got, per_block(q, k, v, cu, 0.3), atol=1e-6, rtol=0)


class CountSDPA:
    """Counts F.scaled_dot_product_attention calls (what transformers' sdpa path and ours call)."""

    def __init__(self, monkeypatch):
        self.calls, real = 0, F.scaled_dot_product_attention

        def counted(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(F, "scaled_dot_product_attention", counted)


def tower_outputs(mode: str, pixel_values, grid_thw, monkeypatch):
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(resolve_model("tiny:qwen2_5_vl"),
                                                                dtype=torch.float32, attn_implementation="sdpa")
    switched = use_one_call_vision_attention(model, mode)
    visual = model.model.visual
    counter = CountSDPA(monkeypatch)
    pixels = pixel_values.clone().requires_grad_(True)
    out = visual(pixels, grid_thw=grid_thw)
    out = out.pooler_output if hasattr(out, "pooler_output") else out
    out = torch.cat(list(out), dim=0) if isinstance(out, (list, tuple)) else out
    (out.float() ** 2).sum().backward()
    grads = visual.blocks[0].attn.qkv.weight.grad.clone()
    monkeypatch.undo()
    return switched, counter.calls, out.detach(), grads, pixels.grad


def test_the_tiny_vision_tower_gives_the_same_numbers_in_one_call_per_layer(monkeypatch):
    processor = AutoProcessor.from_pretrained(resolve_model("tiny:qwen2_5_vl"))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((252, 336), (140, 196))]
    batch = processor.image_processor(images=images, return_tensors="pt")
    pixel_values, grid_thw = batch["pixel_values"].float(), batch["image_grid_thw"]
    n_loop, calls_loop, out_loop, g_loop, px_loop = tower_outputs("per_window", pixel_values, grid_thw, monkeypatch)
    n_one, calls_one, out_one, g_one, px_one = tower_outputs("one_call", pixel_values, grid_thw, monkeypatch)
    depth = 2  # the tiny tower: one windowed layer, one full-attention layer
    assert (n_loop, n_one) == (0, depth)
    assert calls_one == depth < calls_loop  # the loop: one call per window, and per image in the full layer
    assert torch.allclose(out_one, out_loop, atol=1e-5, rtol=1e-5)
    assert torch.allclose(g_one, g_loop, atol=1e-5, rtol=1e-4)
    assert torch.allclose(px_one, px_loop, atol=1e-5, rtol=1e-4)

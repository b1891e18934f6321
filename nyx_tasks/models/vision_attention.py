"""Qwen2.5-VL's vision attention in one call per layer.

The vision tower attends within windows (112 x 112 pixels: 64 patches) in 28 of its 32 layers and
within each image in the other four; both come as `cu_seqlens`, the boundaries of the packed
sequence's blocks. Without flash-attention, transformers runs one SDPA call per block
(`Qwen2_5_VLVisionAttention.forward`): at the paper's pixel cap that is ~25 windows per image, so a
batch of 8 documents with images makes thousands of small calls per step, each a host round trip.
Here the blocks are one block-diagonal attention per layer:

- on a GPU, FlexAttention with a block mask built from the block ids (only the diagonal tiles are
  computed);
- elsewhere, SDPA over the blocks as one padded batch, padding keys masked (the same result: equal
  to the per-block loop up to float rounding; tests/training/test_vision_attention.py).

`use_one_call_vision_attention(model)` switches every vision attention layer of a loaded model
(`train_stage1,2.vision_attention = one_call`, the default; `per_window` keeps transformers' loop).
A model asked for flash-attention keeps its own varlen kernel.
"""

from __future__ import annotations

import functools
import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MODES = ("one_call", "per_window")


def block_ids(cu_seqlens: torch.Tensor, length: int) -> torch.Tensor:
    """(length,) int: the block of each position, from the blocks' cumulative boundaries."""
    import torch

    positions = torch.arange(length, device=cu_seqlens.device)
    return torch.bucketize(positions, cu_seqlens[1:].to(positions.dtype), right=True)


@functools.cache
def compiled_flex():
    """FlexAttention compiled once per process (dynamic shapes: the sequence length changes with
    every batch); uncompiled it would materialise the scores it exists to skip."""
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)


def _flex(q, k, v, ids: torch.Tensor, scaling: float):
    """FlexAttention with a block mask from the block ids: compiled on CUDA, eager elsewhere (tests)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def same_block(_b, _h, qi, ki):
        return ids[qi] == ids[ki]

    attend = compiled_flex() if q.is_cuda else flex_attention
    mask = create_block_mask(same_block, None, None, q.shape[2], k.shape[2], device=q.device, _compile=q.is_cuda)
    return attend(q, k, v, block_mask=mask, scale=scaling)


def block_diagonal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                             scaling: float, use_flex: bool | None = None) -> torch.Tensor:
    """(1, heads, S, d) x3 -> (1, heads, S, d): every position attends to the positions of its own
    block only (blocks given by `cu_seqlens`), in one call. `use_flex`: None picks FlexAttention on
    CUDA, the blocks as one padded SDPA batch elsewhere (`padded_block_attention`)."""
    if use_flex if use_flex is not None else q.is_cuda:
        return _flex(q, k, v, block_ids(cu_seqlens, q.shape[2]), scaling)
    return padded_block_attention(q, k, v, cu_seqlens, scaling)


def padded_block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                           scaling: float) -> torch.Tensor:
    """The blocks as one batch, each padded to the longest (its padding keys masked), in one SDPA
    call: memory grows with blocks x longest block squared, never with the whole sequence squared."""
    import torch
    import torch.nn.functional as F

    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.long)
    starts = cu_seqlens[:-1].to(torch.long)[lengths > 0]
    lengths = lengths[lengths > 0]
    span = torch.arange(int(lengths.max()), device=q.device)
    valid = span[None, :] < lengths[:, None]  # (blocks, longest)
    index = (starts[:, None] + span[None, :]).clamp(max=q.shape[2] - 1)
    qb, kb, vb = (t[0][:, index].transpose(0, 1) for t in (q, k, v))  # (blocks, heads, longest, d)
    out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=valid[:, None, None, :], scale=scaling)
    return out.transpose(0, 1)[:, valid].unsqueeze(0)  # (1, heads, S, d), the blocks back in order


def one_call_forward(self, hidden_states: torch.Tensor, cu_seqlens: torch.Tensor,
                     position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                     max_seqlen: int | None = None, **kwargs) -> torch.Tensor:
    """`Qwen2_5_VLVisionAttention.forward` with the per-block loop replaced by one call."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    seq_length = hidden_states.shape[0]
    q, k, v = self.qkv(hidden_states).reshape(seq_length, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
    q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
    out = block_diagonal_attention(q, k, v, cu_seqlens, self.scaling)
    out = out.squeeze(0).transpose(0, 1).reshape(seq_length, -1).contiguous()
    return self.proj(out)


def vision_attention_layers(model) -> list:
    """Every Qwen2.5-VL vision attention module under `model` (any peft wrapping)."""
    return [m for m in model.modules() if type(m).__name__ == "Qwen2_5_VLVisionAttention"]


def use_one_call_vision_attention(model, mode: str = "one_call") -> int:
    """Switch the vision tower's attention to one call per layer (`mode="one_call"`); returns how
    many layers now run so (0 for `per_window`, a model without a Qwen2.5-VL vision tower, or one
    running flash-attention, whose varlen kernel already takes the blocks in one call)."""
    if mode not in MODES:
        raise ValueError(f"vision_attention {mode!r}: one of {', '.join(MODES)}")
    layers = vision_attention_layers(model)
    if mode == "per_window" or not layers or "flash" in str(layers[0].config._attn_implementation or ""):
        return 0
    for layer in layers:
        layer.forward = types.MethodType(one_call_forward, layer)
    return len(layers)

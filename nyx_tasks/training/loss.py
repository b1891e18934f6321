"""The Matryoshka InfoNCE objective of Nyx stage-1 contrastive training (arXiv 2510.17354,
"Matryoshka InfoNCE objective"; stage 1).

Composable like sentence-transformers' MultipleNegativesRankingLoss + MatryoshkaLoss:
`infonce_from_embeddings` is InfoNCE on already-normalised embeddings (in-batch negatives plus
hard negatives), and `mrl_infonce_losses` / `mrl_infonce_loss` truncate the raw embeddings to each
Matryoshka dim, renormalise, and take the weighted mean of the per-dim InfoNCE losses.

Distributed: with an initialised process group of world size > 1 and `gather=True`, the
positives (and, with `share_negatives`, the hard negatives) of every rank are all-gathered WITH
gradient, so each query competes against the global batch; its target is `rank * B + i`. Each rank's
loss is the mean over its local queries, so under DDP's gradient averaging the gradients equal the
single-process gradients of the full batch. Gathering assumes the same B (and K) on every rank.

Examples with fewer hard negatives than others: `negatives` is padded to K per row and
`negative_mask` (B, K) marks the real ones; a padded slot scores -inf, so it adds nothing to the
softmax and each example's loss equals the one it would have alone with its own negatives.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_DIMS = (2048, 1024, 512, 256)
DEFAULT_WEIGHTS = (1.0, 1.0, 0.2, 0.2)


def _check_inputs(
    query: Tensor, positive: Tensor, negatives: Tensor | None, temperature: float,
    mask: Tensor | None = None,
) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if query.dim() != 2 or positive.shape != query.shape:
        raise ValueError(
            f"query and positive must both be (B, D); got {tuple(query.shape)} "
            f"and {tuple(positive.shape)}"
        )
    if negatives is not None and (
        negatives.dim() != 3
        or negatives.shape[0] != query.shape[0]
        or negatives.shape[2] != query.shape[1]
    ):
        raise ValueError(
            f"negatives must be (B, K, D) = ({query.shape[0]}, K, {query.shape[1]}); "
            f"got {tuple(negatives.shape)}"
        )
    if mask is not None and (negatives is None or tuple(mask.shape) != tuple(negatives.shape[:2])):
        raise ValueError(f"negative_mask must be (B, K) like the negatives; got {tuple(mask.shape)}")


def _world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) when not distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _all_gather(x: Tensor) -> Tensor:
    """(n, ...) on every rank -> (world * n, ...) in rank order, differentiable: the backward
    reduce-scatters (sums) the gradient of every rank's copy back onto its owner. Uses torch's
    functional collective `all_gather_single`, which carries autograd (its backward is checked on
    gloo by tests/training/test_loss.py). torch 2.14 deprecates the older
    `torch.distributed.nn.functional.all_gather` in its favour, and sentence-transformers'
    `all_gather_with_grad` is a wrapper of that deprecated one. Needs equal shapes on all ranks."""
    from torch.distributed import _functional_collectives as funcol

    return funcol.all_gather_single(x.contiguous(), 0, torch.distributed.group.WORLD)


def _gather(
    positive: Tensor, negatives: Tensor | None, share_negatives: bool, gather: bool,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None, int]:
    """Candidates of the global batch (and their negatives' mask) and this rank's target offset (rank * B)."""
    rank, world = _world()
    if not gather or world == 1:
        return positive, negatives, mask, 0
    positive = _all_gather(positive)  # (W*B, D)
    if share_negatives and negatives is not None:
        negatives = _all_gather(negatives)  # (W*B, K, D)
        if mask is not None:
            mask = _all_gather(mask.to(torch.uint8)).bool()  # (W*B, K)
    return positive, negatives, mask, rank * (positive.shape[0] // world)


def _infonce(
    query: Tensor,
    positive: Tensor,
    negatives: Tensor | None,
    temperature: float,
    share_negatives: bool,
    offset: int,
    mask: Tensor | None = None,
) -> Tensor:
    """Core InfoNCE on normalised, already-gathered candidates: query (B, D), positive (N, D),
    negatives (B, K, D) own or (N, K, D) shared, `mask` (B|N, K) their real slots (None: all);
    query i's target column is offset + i."""
    scores = [query @ positive.T]  # (B, N) in-batch negatives
    if negatives is not None and negatives.shape[1] > 0:
        if share_negatives:
            hard = query @ negatives.flatten(0, 1).T  # (B, N*K) every hard negative
            keep = None if mask is None else mask.flatten()[None, :]  # (1, N*K)
        else:
            hard = torch.einsum("bd,bkd->bk", query, negatives)  # (B, K) own negatives
            keep = mask
        scores.append(hard if keep is None else hard.masked_fill(~keep, float("-inf")))
    logits = torch.cat(scores, dim=1) / temperature  # (B, N + K) or (B, N + N*K)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # log-softmax of logits up to 1/temperature needs float32
    target = torch.arange(query.shape[0], device=query.device) + offset  # (B,)
    return F.cross_entropy(logits, target)


def infonce_from_embeddings(
    query: Tensor,
    positive: Tensor,
    negatives: Tensor | None,
    temperature: float = 0.02,
    share_negatives: bool = False,
    gather: bool = True,
    negative_mask: Tensor | None = None,
) -> Tensor:
    """InfoNCE with in-batch and hard negatives on L2-normalised embeddings.

    Inputs: query (B, D), positive (B, D), negatives (B, K, D) or None, all normalised.
    Query i is scored against every positive of the (global, if gathering) batch and against its
    own K hard negatives (`share_negatives=False`) or every hard negative of the batch (True);
    cross-entropy with target i on scores / temperature. Output: scalar loss, the mean over the
    local queries. Paper: the InfoNCE term of the Matryoshka InfoNCE objective (stage 1).
    """
    _check_inputs(query, positive, negatives, temperature, negative_mask)
    positive, negatives, mask, offset = _gather(positive, negatives, share_negatives, gather, negative_mask)
    return _infonce(query, positive, negatives, temperature, share_negatives, offset, mask)


def mrl_infonce_losses(
    query: Tensor,
    positive: Tensor,
    negatives: Tensor | None,
    dims: Sequence[int] = DEFAULT_DIMS,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    temperature: float = 0.02,
    share_negatives: bool = False,
    gather: bool = True,
    negative_mask: Tensor | None = None,
    normalize_weights: bool = True,
) -> tuple[Tensor, dict[int, Tensor]]:
    """Matryoshka InfoNCE (paper: Matryoshka InfoNCE objective; stage 1), with per-dim losses.

    Inputs: query (B, D), positive (B, D), negatives (B, K, D) or None, not normalised;
    `negative_mask` (B, K) bool marks real negatives when rows have fewer than K (None: all real).
    For each d in dims the three are truncated to their first d features, renormalised and scored
    as `infonce_from_embeddings` scores them (same core); the total is the weighted sum, the
    weights normalised to sum to 1 (`normalize_weights`, the default) or as given (the released
    code's `total_loss += weight * slice_loss`: a total 2.4x as large with 1/1/0.2/0.2).
    Outputs: (total scalar loss, {d: scalar InfoNCE loss at d}). Raises ValueError, before any
    computation, on a dim > D or <= 0, repeated dims, len(dims) != len(weights), a negative weight
    or a non-positive weight sum, or temperature <= 0. The all-gather (see module docstring) runs
    once on the full-width embeddings, not once per dim.
    """
    _check_inputs(query, positive, negatives, temperature, negative_mask)
    dims, weights, full = [int(d) for d in dims], [float(w) for w in weights], query.shape[1]
    if len(dims) != len(weights):
        raise ValueError(f"dims and weights differ in length: {len(dims)} vs {len(weights)}")
    if len(set(dims)) != len(dims):
        raise ValueError(f"dims must be distinct, got {dims}")
    for d in dims:
        if d <= 0 or d > full:
            raise ValueError(f"Matryoshka dim {d} is outside 1..D for embeddings of D={full}")
    if any(w < 0 for w in weights) or not sum(weights) > 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")

    positive, negatives, mask, offset = _gather(positive, negatives, share_negatives, gather, negative_mask)
    total, per_dim = query.new_zeros(()), {}
    scale = sum(weights) if normalize_weights else 1.0
    for d, w in zip(dims, weights, strict=True):
        q = F.normalize(query[:, :d], dim=-1)  # (B, d)
        p = F.normalize(positive[:, :d], dim=-1)  # (N, d)
        n = None if negatives is None else F.normalize(negatives[..., :d], dim=-1)  # (B|N, K, d)
        per_dim[d] = _infonce(q, p, n, temperature, share_negatives, offset, mask)
        total = total + (w / scale) * per_dim[d]
    return total, per_dim


def mrl_infonce_loss(
    query: Tensor,
    positive: Tensor,
    negatives: Tensor | None,
    dims: Sequence[int] = DEFAULT_DIMS,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    temperature: float = 0.02,
    share_negatives: bool = False,
    gather: bool = True,
    negative_mask: Tensor | None = None,
) -> Tensor:
    """The scalar Matryoshka InfoNCE loss; see `mrl_infonce_losses` for inputs and errors."""
    return mrl_infonce_losses(
        query, positive, negatives, dims, weights, temperature, share_negatives, gather, negative_mask
    )[0]

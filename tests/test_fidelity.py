"""docs/FIDELITY.md cannot drift from configs/paper.yaml: every `key = value` the page states is
what the paper profile loads, and every setting of the two training stages is on the page."""

import re

import pytest
import yaml

from nyx_tasks.core.config import TrainSource, load_config
from nyx_tasks.stages import get_stage
from tests.conftest import REPO

PAGE = REPO / "docs" / "FIDELITY.md"
SOURCE_DEFAULTS = TrainSource(name="x").model_dump(mode="json")


def flat(tree, prefix=""):
    """Dotted leaves; list items with a name are keyed by it: `train_stage1.sources[mmeb].select`,
    `evaluate.text_sets[hotpotqa].max_questions`."""
    for k, v in tree.items():
        if isinstance(v, list) and v and all(isinstance(x, dict) and "name" in x for x in v):
            for item in v:
                for f, x in item.items():
                    if f != "name":
                        yield f"{prefix}{k}[{item['name']}].{f}", x
        elif isinstance(v, dict) and v:
            yield from flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def page_settings(text: str) -> dict[str, object]:
    """`key = value` in the paper.yaml column of every table row; `train_stage1,2.x` is both stages."""
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) != 5 or cells[0] in ("setting", "---"):
            continue
        for item in re.findall(r"`([^`]+ = [^`]*)`", cells[3]):
            key, value = item.split(" = ", 1)
            value = yaml.safe_load(value.replace("\\|", "|"))
            keys = [key.replace("train_stage1,2.", f"train_stage{n}.") for n in (1, 2)] \
                if key.startswith("train_stage1,2.") else [key]
            for k in keys:
                assert k not in out, f"{k} stated twice on the page"
                out[k] = value
    return out


@pytest.fixture(scope="module")
def paper():
    return dict(flat(load_config("paper").model_dump(mode="json")))


@pytest.fixture(scope="module")
def stated():
    return page_settings(PAGE.read_text())


def same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def test_every_value_on_the_page_is_the_paper_profiles(paper, stated):
    assert len(stated) > 100
    unknown = sorted(k for k in stated if k not in paper)
    assert not unknown, f"the page names settings paper.yaml does not have: {unknown}"
    wrong = {k: (v, paper[k]) for k, v in stated.items() if not same(v, paper[k])}
    assert not wrong, f"page value vs paper.yaml: {wrong}"


def test_every_training_setting_is_on_the_page(paper, stated):
    cfg = load_config("paper")
    missing = []
    for stage in ("train_stage1", "train_stage2"):
        payload = get_stage(stage).config_payload(cfg)  # the recipe: execution-only fields left out
        for key, value in flat(payload, f"{stage}."):
            m = re.fullmatch(r".*\.sources\[(.+)\]\.(\w+)", key)
            if m and value == SOURCE_DEFAULTS[m.group(2)] and m.group(2) not in ("query_instruction",):
                continue  # a source field at its default (no cap, no subset list) needs no row
            if key not in stated:
                missing.append(key)
    assert not missing, f"training settings missing from docs/FIDELITY.md: {missing}"
    for key, value in paper.items():  # what the page says in prose about every source
        if re.fullmatch(r"train_stage\d\.sources\[.+\]\.split", key):
            assert value == "train", key
        if re.fullmatch(r"train_stage\d\.sources\[.+\]\.weight", key):
            assert value == 1.0, key


def test_a_drifted_value_is_caught(paper):
    text = PAGE.read_text().replace("`train_stage1,2.max_grad_norm = 5.0`", "`train_stage1,2.max_grad_norm = 1.0`")
    drifted = page_settings(text)
    assert not same(drifted["train_stage1.max_grad_norm"], paper["train_stage1.max_grad_norm"])

"""docs/FIDELITY.md cannot drift from configs/paper.yaml: every `key = value` the page states is
what the paper profile loads, every setting of the two training stages is on the page, and every
value recorded under "Released-code values (checked)" (the authors' code, file@commit) is the
paper profile's and sits in a row that claims no difference ("—")."""

import re
from pathlib import Path

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


CHECKED = "Released-code values (checked)"
READ = "Released code read"
NO_DIFFERENCE = "—"


def cells_of(line: str) -> list[str]:
    """A markdown table line's cells (`\\|` inside a cell is not a separator)."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]


def expand(key: str) -> list[str]:
    """`train_stage1,2.x` is both stages' `x`."""
    if key.startswith("train_stage1,2."):
        return [key.replace("train_stage1,2.", f"train_stage{n}.") for n in (1, 2)]
    return [key]


def yaml_value(text: str):
    return yaml.safe_load(text.replace("\\|", "|"))


def setting_rows(text: str) -> list[list[str]]:
    """The rows of the main tables: setting, paper, released code, paper.yaml, why they differ."""
    rows = [cells_of(line) for line in text.splitlines()]
    return [c for c in rows if len(c) == 5 and c[0] not in ("setting", "---")]


def row_settings(cell: str) -> list[tuple[str, object]]:
    """(key, value) of every `key = value` in a paper.yaml cell, `train_stage1,2.` expanded."""
    out = []
    for item in re.findall(r"`([^`]+ = [^`]*)`", cell):
        key, value = item.split(" = ", 1)
        out += [(k, yaml_value(value)) for k in expand(key)]
    return out


def page_settings(text: str) -> dict[str, object]:
    """`key = value` in the paper.yaml column of every table row; `train_stage1,2.x` is both stages."""
    out = {}
    for row in setting_rows(text):
        for k, value in row_settings(row[3]):
            assert k not in out, f"{k} stated twice on the page"
            out[k] = value
    return out


def section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end == -1 else text[start:end]


def recorded_values(text: str) -> dict[str, tuple[object, list[tuple[str, str]]]]:
    """The checked table: key -> (the code's value, [(file, commit prefix), ...])."""
    out = {}
    for line in section(text, CHECKED).splitlines():
        cells = cells_of(line)
        if len(cells) != 4 or cells[0] == "setting" or set(cells[0]) <= set("-"):
            continue
        value = yaml_value(cells[1].strip("`"))
        sources = re.findall(r"`([^`@\s]+)@([0-9a-f]{12,40})`", cells[2])
        for k in expand(cells[0].strip("`")):
            assert k not in out, f"{k} recorded twice"
            out[k] = (value, sources)
    return out


def code_mismatches(recorded: dict, paper: dict) -> dict[str, tuple[object, object]]:
    """Recorded code values that the paper profile does not have (or has another value for)."""
    return {k: (v, paper.get(k, "<missing>")) for k, (v, _) in recorded.items()
            if k not in paper or not same(v, paper[k])}


def rows_claiming_a_difference(recorded: dict, text: str) -> dict[str, str]:
    """Recorded keys whose row says they differ (or that no row states): key -> that row's last cell."""
    why = {k: row[4] for row in setting_rows(text) for k, _ in row_settings(row[3])}
    return {k: why.get(k, "<no row>") for k in recorded
            if not (why.get(k) == NO_DIFFERENCE or why.get(k, "").startswith(NO_DIFFERENCE + " "))}


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


@pytest.fixture(scope="module")
def recorded():
    return recorded_values(PAGE.read_text())


def test_the_recorded_code_values_are_the_paper_profiles(paper, recorded):
    assert len(recorded) > 80
    assert not code_mismatches(recorded, paper), f"released code vs paper.yaml: {code_mismatches(recorded, paper)}"
    unsourced = sorted(k for k, (_, sources) in recorded.items() if not sources)
    assert not unsourced, f"recorded values with no file@commit: {unsourced}"


def test_the_recorded_settings_sit_in_rows_claiming_no_difference(recorded):
    claimed = rows_claiming_a_difference(recorded, PAGE.read_text())
    assert not claimed, f"recorded as the code's value, but the row says otherwise: {claimed}"


def test_every_cited_commit_is_listed_in_full_with_its_file(recorded):
    read = section(PAGE.read_text(), READ)
    full = set(re.findall(r"\b[0-9a-f]{40}\b", read))
    for key, (_, sources) in recorded.items():
        for path, commit in sources:
            assert any(c.startswith(commit) for c in full), f"{key}: {commit} is not in '{READ}'"
            assert Path(path).name in read, f"{key}: {path} is not in '{READ}'"


def test_a_reopened_difference_is_caught(paper, recorded):
    changed = dict(paper, **{"train_stage1.learning_rate": 2e-5})
    assert set(code_mismatches(recorded, changed)) == {"train_stage1.learning_rate"}
    text = PAGE.read_text()
    row = "`train_stage1,2.max_grad_norm = 5.0` | — |"
    assert text.count(row) == 1
    claimed = rows_claiming_a_difference(recorded, text.replace(row, "`train_stage1,2.max_grad_norm = 5.0` | ours |"))
    assert set(claimed) == {"train_stage1.max_grad_norm", "train_stage2.max_grad_norm"}

"""The documentation a clone carries: README.md and docs/*.md link only to files that
exist in the repository, and no tracked file points outside it at `../shared` (a
workspace folder users who clone the repo do not have)."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

# [text](target) and ![alt](target); the target ends at whitespace or ')'
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...
OUTSIDE = "../shared"


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def relative_links(md: Path) -> list[str]:
    text = FENCE.sub("", md.read_text(encoding="utf-8"))  # code blocks hold shell, not links
    out = []
    for target in LINK.findall(text):
        if EXTERNAL.match(target) or target.startswith("#"):
            continue
        out.append(target)
    return out


def test_docs_exist_and_readme_links_design():
    assert (REPO / "docs" / "DESIGN.md").is_file()
    assert "docs/DESIGN.md" in relative_links(REPO / "README.md")


@pytest.mark.parametrize("md", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(md: Path):
    broken = []
    for target in relative_links(md):
        path = target.split("#", 1)[0]
        if not path:
            continue
        resolved = (md.parent / path).resolve()
        if not resolved.exists() or not resolved.is_relative_to(REPO):
            broken.append(target)
    assert not broken, f"{md.relative_to(REPO)}: links to files not in the repository: {broken}"


def tracked_files() -> list[str]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True)
    return [p for p in out.stdout.decode().split("\0") if p]


def test_no_tracked_file_refers_to_shared():
    me = Path(__file__).resolve()
    offenders = []
    for rel in tracked_files():
        path = REPO / rel
        if path.resolve() == me or not path.is_file():  # itself; or deleted in the working tree
            continue
        if OUTSIDE.encode() in path.read_bytes():
            offenders.append(rel)
    assert not offenders, f"tracked files refer to {OUTSIDE!r}, which a clone does not have: {offenders}"


def test_design_names_every_module_of_every_layer():
    """DESIGN.md's layer map is the one in tests/test_layers.py: every folder and module of LAYERS,
    every module of the library's top folder, and every module inside the folders of the lower
    layers (foundation, sources, models' chunking, jobs' retrieval and evaluation) is named there."""
    from tests.test_layers import LAYERS

    text = (REPO / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    para = text[text.index("- **The library (`nyx_tasks`)**"):text.index("- **The DAGs (`dags/`)**")]
    named = set(re.findall(r"[a-z_]+", para))
    listed = {m.split(".", 1)[1] for _, _, mods in LAYERS for m in mods if "." in m}
    on_disk = {p.stem if p.is_file() else p.name for p in (REPO / "nyx_tasks").iterdir()
               if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()}
    inner = {p.stem for folder in ("core", "store", "sources", "chunking", "retrieval", "evaluation", "runner")
             for p in (REPO / "nyx_tasks" / folder).glob("*.py") if p.stem != "__init__"}
    assert on_disk <= listed, f"modules in no layer of tests/test_layers.py: {sorted(on_disk - listed)}"
    assert listed | inner <= named, f"modules DESIGN.md's layer map does not name: {sorted(listed | inner - named)}"


def test_design_lists_every_dag_file():
    text = (REPO / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    section = text[text.index("## Airflow"):]
    section = section[:section.index("\n## ", 3)]
    files = sorted(p.name for p in (REPO / "dags").glob("*.py"))
    words = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight"]
    assert f"{words[len(files)].capitalize()} DAG files" in section, files
    for name in files:
        assert f"`dags/{name}`" in section, name


def test_readme_layout_names_every_dag_file_and_benchmark():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    layout = text[text.index("## Layout"):]
    layout = layout[:layout.index("\n## ", 3)]
    for folder in ("dags", "benchmarks"):
        for p in sorted((REPO / folder).glob("*.py")):
            assert p.name in layout, f"README's layout does not name {folder}/{p.name}"


def test_readme_stage_table_lists_the_registry_in_order():
    """README's "What exists today" table: one unbroken table, one row per registered stage, in the
    registry's (pipeline) order."""
    from nyx_tasks.stages import STAGE_NAMES

    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("| stage | paper | what it does |")
    table = text[start:text.index("\n\n", start)].splitlines()
    rows = [re.match(r"\| `([a-z_0-9]+)` \|", line) for line in table[2:]]
    assert all(rows), [line[:60] for line, m in zip(table[2:], rows, strict=True) if not m]
    assert [m.group(1) for m in rows] == list(STAGE_NAMES)



def test_readme_cli_block_shows_every_command():
    """README's "The CLI" block shows every `nyx` command and sub-command the app has (the stage
    commands, one per registered stage, by one example)."""
    import typer

    from nyx_tasks.cli import app
    from nyx_tasks.stages import STAGE_NAMES

    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("## The CLI")
    block = text[text.index("```bash", start):text.index("```\n", text.index("```bash", start) + 7)]
    shown = set()
    for line in re.findall(r"\.venv/bin/nyx ([^#\n]*)", block):
        words = [w for w in line.split() if re.fullmatch(r"[a-z][a-z0-9_-]*", w)]
        shown |= {" ".join(words[:1]), " ".join(words[:2])}
    group = typer.main.get_command(app)
    wanted = set()
    for name, cmd in group.commands.items():
        subs = getattr(cmd, "commands", None)
        wanted |= {f"{name} {sub}" for sub in subs} if subs else {name}
    stages = wanted & set(STAGE_NAMES)
    missing = sorted(wanted - stages - shown)
    assert not missing, f"nyx commands the README's CLI block does not show: {missing}"
    assert stages & shown, "no stage command shown"

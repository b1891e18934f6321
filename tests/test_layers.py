"""The package's layers: every module of nyx_tasks/ sits in one layer, and no module
imports from a layer above its own (imports within a layer are free). The import
graph is read with `ast` from the source, so it sees every `import nyx_tasks...` and
`from . / .. import ...`, at module level and inside functions alike.

`nyx_tasks.warm` and `nyx_tasks.stages` import modules by name (importlib); those
are strings, not imports, and are not part of the graph.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = "nyx_tasks"

# Bottom to top: each layer is a set of folders (and the few entry-point modules at the top).
# A module belongs to the entry that names it or its closest enclosing package.
LAYERS: list[tuple[str, str, tuple[str, ...]]] = [
    ("foundation", "core/ (settings, rules, logging, schemas, hashing, package paths, StageError), store/ (the "
                   "artifact root: snapshots, attempts, leases, checkpoint markers) and prompts/: what every "
                   "layer needs, needing nothing of the pipeline",
     ("nyx_tasks", "nyx_tasks.core", "nyx_tasks.store", "nyx_tasks.prompts")),
    ("sources", "sources/: what comes from outside: file readers, OBELICS, image fetching, text sets, corpus "
                "tables, imported datasets",
     ("nyx_tasks.sources",)),
    ("backends", "model backends and plain computation: inference/, models/ (tiny offline models), embedding/, "
               "chunking/",
     ("nyx_tasks.inference", "nyx_tasks.models", "nyx_tasks.embedding", "nyx_tasks.chunking")),
    ("jobs", "what a stage composes from models and sources: training/, retrieval/ (search, vector jobs, "
             "answering), evaluation/ (metrics, judges, reports, imported sets)",
     ("nyx_tasks.training", "nyx_tasks.retrieval", "nyx_tasks.evaluation")),
    ("runner", "plans, shards, skips and manifests for any stage; knows no concrete stage",
     ("nyx_tasks.runner",)),
    ("stages", "the concrete stages: the runner's Stage on top of the jobs",
     ("nyx_tasks.stages",)),
    ("entry points", "what people and Airflow call: the CLI, the NyxQA export, Airflow setup, the warm-import list",
     ("nyx_tasks.cli", "nyx_tasks.__main__", "nyx_tasks.export", "nyx_tasks.airflow_setup", "nyx_tasks.warm",
      "nyx_tasks.experiments")),
]


def module_name(path: Path, pkg_dir: Path) -> tuple[str, bool]:
    """(dotted name, is a package's __init__) of a .py file under `pkg_dir`."""
    parts = [pkg_dir.name, *path.relative_to(pkg_dir).with_suffix("").parts]
    is_pkg = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_pkg else parts), is_pkg


def imports_of(source: str, module: str, is_pkg: bool, known: set[str]) -> list[tuple[int, str]]:
    """(line, imported nyx_tasks module) for every import in `source`, relative ones resolved;
    `from pkg import name` counts as importing `pkg.name` when that is a module."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE:
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                found.append((node.lineno, sub if sub in known else target))
    return found


def import_graph(pkg_dir: Path) -> dict[str, list[tuple[int, str]]]:
    files = {module_name(p, pkg_dir): p for p in sorted(pkg_dir.rglob("*.py"))}
    known = {name for name, _ in files}
    return {name: imports_of(p.read_text(encoding="utf-8"), name, is_pkg, known)
            for (name, is_pkg), p in files.items()}


def layer_of(module: str) -> int | None:
    """Index in LAYERS of the entry naming `module` or its closest enclosing package
    (the package root itself only by exact name)."""
    best, best_len = None, -1
    for i, (_, _, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            covers = module == prefix or (prefix != PACKAGE and module.startswith(prefix + "."))
            if covers and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    return best


def layer_problems(graph: dict[str, list[tuple[int, str]]]) -> list[str]:
    """One line per module without a layer, per import of a module that does not exist, and
    per upward import."""
    problems = [f"{m}: in no layer; add it to LAYERS in tests/test_layers.py" for m in graph if layer_of(m) is None]
    for module, imports in graph.items():
        lo = layer_of(module)
        for line, target in imports:
            if target not in graph:
                problems.append(f"{module}:{line} imports {target}, which is not a module of the package")
                continue
            hi = layer_of(target)
            if lo is not None and hi is not None and hi > lo:
                problems.append(f"{module}:{line} ({LAYERS[lo][0]}) imports {target} ({LAYERS[hi][0]}), "
                                "a layer above it")
    return problems


def test_no_module_imports_from_a_layer_above_it():
    problems = layer_problems(import_graph(REPO / PACKAGE))
    assert not problems, "layering broken:\n" + "\n".join(problems)


def test_every_layer_entry_names_a_module():
    graph = import_graph(REPO / PACKAGE)
    stale = [p for _, _, prefixes in LAYERS for p in prefixes if p not in graph]
    assert not stale, f"LAYERS names modules that do not exist: {stale}"


def test_a_planted_upward_import_is_reported():
    graph = {"nyx_tasks.retrieval.search": [(3, "nyx_tasks.core.config")], "nyx_tasks.core.config": [],
             "nyx_tasks.stages": [], "nyx_tasks.stages.mine": [(5, "nyx_tasks.retrieval.search")]}
    assert layer_problems(graph) == []
    graph["nyx_tasks.retrieval.search"].append((9, "nyx_tasks.stages.mine"))
    assert layer_problems(graph) == ["nyx_tasks.retrieval.search:9 (jobs) imports nyx_tasks.stages.mine (stages), "
                                     "a layer above it"]


@pytest.mark.parametrize("planted, line, expected", [
    # relative, inside a function (how the old rag.py imported `parse` from a stage)
    ("def f():\n    from ..stages.synthesize import qa_schema\n", 2,
     "(backends) imports nyx_tasks.stages.synthesize (stages)"),
    # absolute, at module level
    ("import nyx_tasks.runner\n", 1, "(backends) imports nyx_tasks.runner (runner)"),
    # `from package import submodule`
    ("from .. import cli\n", 1, "(backends) imports nyx_tasks.cli (entry points)"),
])
def test_an_upward_import_planted_in_a_copy_of_the_package_is_reported(tmp_path, planted, line, expected):
    copy = tmp_path / PACKAGE
    for src in (REPO / PACKAGE).rglob("*.py"):
        dst = copy / src.relative_to(REPO / PACKAGE)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
    assert layer_problems(import_graph(copy)) == []
    target = copy / "inference" / "structured.py"
    text = target.read_text(encoding="utf-8")
    target.write_text(text + planted, encoding="utf-8")
    at = len(text.splitlines()) + line
    assert layer_problems(import_graph(copy)) == [f"nyx_tasks.inference.structured:{at} {expected}, a layer above it"]


def test_a_new_module_without_a_layer_and_a_stale_import_are_reported():
    graph = {"nyx_tasks.retrieval.search": [(1, "nyx_tasks.rag")], "nyx_tasks.newthing": []}
    assert layer_problems(graph) == [
        "nyx_tasks.newthing: in no layer; add it to LAYERS in tests/test_layers.py",
        "nyx_tasks.retrieval.search:1 imports nyx_tasks.rag, which is not a module of the package"]


# --- where imports sit -------------------------------------------------------------------------
# The project's own modules are imported at the top of the file, so its import lines show the
# dependency graph. An import inside a function pays off only for a heavy library (torch,
# transformers, vllm, faiss, airflow, pyarrow, ...: seconds or a process's worth of state), so an
# own module is imported lazily only when it stands for one (or a cycle or a light entry point
# needs it), and then the line says why in a comment.

SOURCE_DIRS = (PACKAGE, "dags", "plugins")


def _imports_own_module(node: ast.AST) -> bool:
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[0] == PACKAGE for a in node.names)
    if isinstance(node, ast.ImportFrom):
        return bool(node.level) or (node.module or "").split(".")[0] == PACKAGE
    return False


def unexplained_lazy_imports(source: str) -> list[int]:
    """Lines of imports of the project's own modules inside a function that carry no comment."""
    lines = source.splitlines()
    found = set()
    for fn in ast.walk(ast.parse(source)):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(fn):
                if _imports_own_module(node) and "#" not in lines[node.lineno - 1]:
                    found.add(node.lineno)
    return sorted(found)


def test_own_modules_are_imported_at_module_level_unless_the_line_says_why():
    problems = [f"{path.relative_to(REPO)}:{line}: {path.read_text(encoding='utf-8').splitlines()[line - 1].strip()}"
                for top in SOURCE_DIRS for path in sorted((REPO / top).rglob("*.py"))
                for line in unexplained_lazy_imports(path.read_text(encoding="utf-8"))]
    assert not problems, ("imports of the project's own modules inside functions; move them to the top of the "
                          "file, or say on the line why they must wait (a heavy library behind them, a cycle):\n"
                          + "\n".join(problems))


def test_a_planted_lazy_own_import_is_reported_and_a_reasoned_one_is_not():
    source = ("import json\n\nfrom .config import stable_hash\n\n\ndef f():\n    import torch\n"
              "    from .runner import run_stage\n    from .training.trainer import NyxTrainer  # torch\n\n\n"
              "class A:\n    async def g(self):\n        import nyx_tasks.retrieval.search\n")
    assert unexplained_lazy_imports(source) == [8, 14]

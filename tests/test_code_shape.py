"""The code's shape: no function in nyx_tasks/, dags/ or plugins/ longer than 60 lines
or taking more than 7 parameters (self / cls not counted), except the ones listed below with
the reason each is still so. The list only shrinks: an entry that no longer needs its exception
fails the test too, so it is taken off when its function is split."""

import ast
from pathlib import Path

from tests.conftest import REPO

MAX_LINES, MAX_PARAMS = 60, 7

EXCEPTIONS = {
    # the two halves of the loss mirror LossSettings field for field (dims, weights, temperature,
    # share_negatives, gather) next to the three tensors; tests call them with keywords
    "nyx_tasks/training/loss.py:mrl_infonce_losses": "LossSettings' fields beside the three tensors",
    "nyx_tasks/training/loss.py:mrl_infonce_loss": "LossSettings' fields beside the three tensors",
    # import: one loop over every source row with its writers, drops and manifest; its row converter
    # takes the layout's pieces one by one
    "nyx_tasks/sources/importers.py:import_dataset": "one streaming loop from the source rows to the manifest",
    "nyx_tasks/sources/importers.py:convert_row": "the layout's pieces, one per parameter",
    "nyx_tasks/cli.py:_import": "the `nyx import` options, one per parameter (typer)",
    "nyx_tasks/cli.py:index_cmd": "the `nyx index` options, one per parameter (typer)",
}


def functions(path: Path, rel: str | None = None):
    """(qualified name, lines, parameters) of every function in `path`, nested ones included."""
    rel = rel or path.relative_to(REPO).as_posix()

    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                a = child.args
                params = [x for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls")]
                yield f"{rel}:{prefix}{child.name}", child.end_lineno - child.lineno + 1, len(params)
                yield from walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")
            else:
                yield from walk(child, prefix)

    yield from walk(ast.parse(path.read_text()), "")


def oversized() -> dict[str, tuple[int, int]]:
    return {name: (lines, params) for folder in ("nyx_tasks", "dags", "plugins")
            for path in sorted((REPO / folder).rglob("*.py"))
            for name, lines, params in functions(path) if lines > MAX_LINES or params > MAX_PARAMS}


def test_no_function_is_too_long_or_takes_too_many_parameters():
    found = oversized()
    new = {k: v for k, v in found.items() if k not in EXCEPTIONS}
    assert not new, f"over {MAX_LINES} lines or {MAX_PARAMS} parameters (lines, parameters): {new}"
    stale = sorted(set(EXCEPTIONS) - set(found))
    assert not stale, f"within the limits now: take them off EXCEPTIONS: {stale}"


def test_the_check_sees_a_long_function_and_a_wide_one(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    src = tmp_path / "probe.py"
    src.write_text(f"def long():\n{body}\n\n\nclass C:\n    def wide(self, a, b, c, d, e, f, g, h):\n        pass\n")
    got = {name.split(":")[1]: (lines, params) for name, lines, params in functions(src, "probe.py")}
    assert got["long"][0] == MAX_LINES + 1 and got["C.wide"][1] == 8


def test_no_issue_numbers_in_code():
    """History belongs to git: no comment or docstring in the code says which issue it came from."""
    import re

    pattern = re.compile(r"\b[Ii]ssues? ?#?\d+|\(#\d+\)")
    found = [f"{p.relative_to(REPO)}:{i}: {line.strip()}"
             for top in ("nyx_tasks", "dags", "plugins", "benchmarks", "scripts", "tests")
             for p in sorted((REPO / top).rglob("*.py")) if "__pycache__" not in p.parts
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)
             and p.name != "test_code_shape.py"]
    assert not found, "\n".join(found)


def test_no_private_name_is_imported_across_modules():
    """A name with a leading underscore stays in its module: what another module needs is public."""
    found = []
    for top in ("nyx_tasks", "dags", "plugins", "benchmarks"):
        for p in sorted((REPO / top).rglob("*.py")):
            for node in ast.walk(ast.parse(p.read_text())):
                internal = isinstance(node, ast.ImportFrom) and (
                    node.level > 0 or (node.module or "").split(".")[0] in ("nyx_tasks", "nyx_airflow"))
                if internal:
                    found += [f"{p.relative_to(REPO)}:{node.lineno}: {a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, "\n".join(found)

"""The README's lists of ingest and chunk drop reasons name exactly the reasons the code emits.
The code's reasons are read from the source with `ast`: every `Malformed("<reason>", ...)` in
sources/files.py and sources/obelics.py (emitted as `malformed_<reason>`), every `FetchResult(url, False, "<reason>", ...)` in
fetch.py (`image_<reason>`; the f-string `http_{status}` is `image_http_<status>`), the stage's own
literals, and chunking's `("chunk_...", ...)` drops."""

import ast
import re

from tests.conftest import REPO

PKG = REPO / "nyx_tasks"


def _calls(path, name):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == name:
            yield node


def _text(arg) -> str | None:
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr):  # f"http_{r.status_code}" -> http_<status>
        return "".join(v.value if isinstance(v, ast.Constant) else "<status>" for v in arg.values)
    return None


def code_reasons() -> set[str]:
    reasons = {f"malformed_{_text(c.args[0])}" for f in ("sources/files.py", "sources/obelics.py")
               for c in _calls(PKG / f, "Malformed")}
    reasons |= {f"image_{_text(c.args[2])}" for c in _calls(PKG / "sources/fetch.py", "FetchResult")
                if len(c.args) > 2 and _text(c.args[2])}
    reasons |= set(re.findall(r'out\.drops\.drop\("([a-z_]+)"', (PKG / "stages/ingest.py").read_text()))
    reasons |= set(re.findall(r'\("(chunk_[a-z_]+)"', (PKG / "chunking/chunks.py").read_text()))
    return reasons - {"image_unknown"}  # the placeholder before the first attempt, never a final result


def readme_reasons() -> set[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("Drop reasons you will see in `ingest`")
    paragraph = text[start:text.index("\n\n", start)]
    return set(re.findall(r"`((?:image|malformed|duplicate|chunk)_[a-z0-9_<>]+)`", paragraph))


def test_the_readme_names_every_ingest_and_chunk_drop_reason_the_code_emits():
    code, readme = code_reasons(), readme_reasons()
    assert len(code) > 20
    assert not code - readme, f"reasons the README does not name: {sorted(code - readme)}"
    assert not readme - code, f"reasons the README names that the code never emits: {sorted(readme - code)}"


def test_the_check_sees_a_new_reason():
    tree = "def f():\n    return FetchResult(url, False, \"brand_new\", 'x')\n"
    (call,) = [n for n in ast.walk(ast.parse(tree)) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "FetchResult"]
    assert _text(call.args[2]) == "brand_new"

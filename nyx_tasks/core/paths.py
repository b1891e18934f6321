"""Where the package's own data lies: the bundled sample corpus and the `pkgdata:` files."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
SAMPLE_CORPUS_DIR = PACKAGE_DIR / "data" / "sample_obelics"


def resolve_pkgdata(path: str) -> str:
    """`pkgdata:<rel>` -> the file shipped in nyx_tasks/data (the demo's and paper-shape's inputs);
    any other path is returned as it is."""
    return str(PACKAGE_DIR / "data" / path[len("pkgdata:"):]) if path.startswith("pkgdata:") else path

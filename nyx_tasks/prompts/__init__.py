"""Versioned prompt templates (see README.md in this folder)."""

from __future__ import annotations

import functools
from pathlib import Path

PROMPTS_DIR = Path(__file__).resolve().parent
CHUNK_MARKER = "[[CHUNK]]"
QUESTION_IMAGES_MARKER = "[[QUESTION_IMAGES]]"  # v2 distractors: the images the question cites


@functools.cache
def _env(version: str):
    import jinja2

    folder = PROMPTS_DIR / version
    if not folder.is_dir():
        raise FileNotFoundError(f"prompt version {version!r} not found under {PROMPTS_DIR}")
    return jinja2.Environment(loader=jinja2.FileSystemLoader(folder), undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=False, autoescape=False)


def render(version: str, name: str, **kw) -> str:
    return _env(version).get_template(f"{name}.jinja").render(**kw).strip()


def fingerprint(version: str, names: tuple[str, ...] | None = None) -> dict[str, str]:
    """Content hashes of a version's templates (part of a stage's config hash):
    the ones named (a stage's own), or all of them."""
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16]
            for p in sorted((PROMPTS_DIR / version).glob("*.jinja")) if names is None or p.stem in names}

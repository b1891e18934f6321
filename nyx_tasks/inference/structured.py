"""Structured output: a model's JSON answer checked against the request's schema.

Every request the pipeline sends is schema-constrained; what still fails to
parse or validate is a counted drop for the caller, never an exception.
"""

from __future__ import annotations

import json


def parse(text: str, schema: dict) -> dict | None:
    """JSON that satisfies `schema`, or None (a counted drop, never an exception)."""
    import jsonschema

    try:
        # strict=False: grammar engines (xgrammar's length-bounded strings) can let raw
        # control characters into a string; accept them here and strip them below.
        obj = _strip_controls(json.loads(text, strict=False))
        jsonschema.validate(obj, schema)
    except (json.JSONDecodeError, jsonschema.ValidationError):
        return None
    return obj


_CONTROLS = dict.fromkeys(range(32))


def _strip_controls(obj):
    if isinstance(obj, str):
        return obj.translate(_CONTROLS)
    if isinstance(obj, list):
        return [_strip_controls(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _strip_controls(v) for k, v in obj.items()}
    return obj

"""JSON from outside (service JSON, token answers, tilemaps, root.json, AOI files), parsed with a
bounded nesting depth.

Why: Python's parser recurses once per ``[`` or ``{``; a hostile server's ``[[[[...`` (a few
kilobytes) ends in a RecursionError, a traceback instead of a one-line error, and anything that
walks the parsed value recursively later is exposed the same way. Real documents nest a handful of
levels (a GeoJSON MultiPolygon in a FeatureCollection: 8), so 64 leaves room for any honest one.

The depth is measured before parsing, at C speed: strings are cut out with one regular
expression, everything but brackets is dropped, and each pass of another removes the innermost
``[]``/``{}`` pairs, one level per pass, for at most ``max_depth`` passes.
"""
from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["MAX_JSON_DEPTH", "JSONTooDeepError", "loads"]

#: Deepest nesting accepted in a JSON document from outside.
MAX_JSON_DEPTH = 64

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_INNERMOST = re.compile(rb"\[\]|\{\}")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class JSONTooDeepError(ValueError):
    """A JSON document nested deeper than the limit (a ValueError, like a malformed document)."""


def _too_deep(raw: bytes, max_depth: int) -> bool:
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return False
    skeleton = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    for _ in range(max_depth):
        shorter = _INNERMOST.sub(b"", skeleton)
        if not shorter or len(shorter) == len(skeleton):  # all gone, or unbalanced: json says
            return False
        skeleton = shorter
    return True


def loads(data: str | bytes | bytearray, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads(data)``, refusing documents nested more than ``max_depth`` deep.

    Raises ValueError (``json.JSONDecodeError`` or :class:`JSONTooDeepError`) for anything that
    is not an acceptable document, so callers keep one ``except ValueError``.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if _too_deep(raw, max_depth):
        raise JSONTooDeepError(f"JSON nested more than {max_depth} levels deep")
    try:
        return json.loads(data)
    except RecursionError:  # the limit above makes this unreachable; never a traceback anyway
        raise JSONTooDeepError(f"JSON nested more than {max_depth} levels deep") from None

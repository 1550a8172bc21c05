"""Vector tile bytes: gzip as stored, a cheap shape check, and the layer/field summary for metadata.

Why not a full decoder here: cacheorch stores tiles byte for byte and only needs to know (a) that a
body is plausibly a tile and not an HTML error page, and (b) which layers and attribute fields the
tiles carry, for MBTiles' ``vector_layers`` and a vtpk's ``metadata.json``. Verification decodes
with an independent decoder instead (:mod:`cacheorch.vector.decode`).
"""
from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator

__all__ = ["GZIP_MAGIC", "is_gzip", "stored_form", "plain_form",
           "LayerSummary", "scan_layers", "merge_summaries", "vector_layers_json"]

GZIP_MAGIC = b"\x1f\x8b"
#: field name → MBTiles type name
LayerSummary = dict[str, dict[str, str]]


def is_gzip(data: bytes) -> bool:
    return data[:2] == GZIP_MAGIC


def stored_form(data: bytes) -> bytes:
    """The tile as vtpk bundles and ``pbf`` MBTiles hold it: gzip. Gzipped bytes are kept as
    served; an uncompressed tile (or one the HTTP layer inflated) is gzipped (mtime 0, so the
    same tile always gives the same bytes)."""
    return data if is_gzip(data) else gzip.compress(data, compresslevel=6, mtime=0)


def plain_form(data: bytes) -> bytes:
    """The uncompressed MVT protobuf; ValueError when gzip data is corrupt."""
    if not is_gzip(data):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"corrupt gzip ({exc})") from None


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of a protobuf message; bytes for length-delimited."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise ValueError("truncated field")
            yield number, wire, buf[pos:pos + size]
            pos += size
        elif wire == 5:
            pos += 4
        elif wire == 1:
            pos += 8
        else:
            raise ValueError(f"wire type {wire}")


#: MVT Value field number → MBTiles vector_layers type
_VALUE_TYPES = {1: "String", 2: "Number", 3: "Number", 4: "Number", 5: "Number", 6: "Number",
                7: "Boolean"}


def scan_layers(data: bytes) -> LayerSummary:
    """Layer name → {field: type} of one tile (gzip or not); ValueError when it is not MVT."""
    out: LayerSummary = {}
    for number, _, layer in _fields(plain_form(data)):
        if number != 3 or not isinstance(layer, bytes):
            continue
        name, keys, types = "", [], []
        tags: list[int] = []
        for n, _, v in _fields(layer):
            if n == 1 and isinstance(v, bytes):
                name = v.decode("utf-8", "replace")
            elif n == 3 and isinstance(v, bytes):
                keys.append(v.decode("utf-8", "replace"))
            elif n == 4 and isinstance(v, bytes):
                kinds = [_VALUE_TYPES.get(fn, "String") for fn, _, _ in _fields(v)]
                types.append(kinds[0] if kinds else "String")
            elif n == 2 and isinstance(v, bytes):
                for fn, _, fv in _fields(v):
                    if fn == 2 and isinstance(fv, bytes):  # packed key/value index pairs
                        pos = 0
                        while pos < len(fv):
                            value, pos = _varint(fv, pos)
                            tags.append(value)
        fields = out.setdefault(name, {})
        for k_index, v_index in zip(tags[::2], tags[1::2]):
            if k_index < len(keys) and v_index < len(types):
                fields.setdefault(keys[k_index], types[v_index])
    return out


def merge_summaries(into: LayerSummary, more: LayerSummary) -> LayerSummary:
    for name, fields in more.items():
        target = into.setdefault(name, {})
        for key, kind in fields.items():
            target.setdefault(key, kind)
    return into


def vector_layers_json(summary: LayerSummary, zooms: dict[str, tuple[int, int]]
                       ) -> list[dict[str, object]]:
    """MBTiles 1.3 ``vector_layers``: id, fields, minzoom/maxzoom (where each layer appears)."""
    out: list[dict[str, object]] = []
    for name in sorted(summary):
        entry: dict[str, object] = {"id": name, "fields": dict(sorted(summary[name].items()))}
        if name in zooms:
            entry["minzoom"], entry["maxzoom"] = zooms[name]
        out.append(entry)
    return out

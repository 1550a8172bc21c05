"""``verify`` for vector outputs: every tile decoded independently, the index and the style checked.

A .vtpk: each bundle's structure (the Compact V2 checks of :mod:`cacheorch.verify`), each tile
gzip and decodable by an independent decoder (:mod:`cacheorch.vector.decode`), the tile index
against the tiles really present (both ways, tile by tile), and the style's references (sprites
1x/2x, every glyph range listed, the tile source) resolved inside the package. A vector MBTiles:
each tile, and the ``json`` row's ``vector_layers`` against the layers the tiles hold.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin

from cacheorch.errors import FormatError
from cacheorch.formats.bundle import bundle_name, level_folder
from cacheorch.verify import BundleSink, Defect, LevelTally, VerifyReport, _Bytes, _v2_tiles
from cacheorch.vector.decode import decode_tile, decoder_name
from cacheorch.vector.mvt import is_gzip
from cacheorch.vector.package import ROOT
from cacheorch.vector.quadtree import QuadIndex
from cacheorch.vector.reader import VectorMBTilesReader, VtpkReader, is_vector_output, open_vector
from cacheorch.vector.resources import SPRITE_FILES, font_stacks, glyph_path

__all__ = ["is_vector_output", "verify_vector", "style_defects"]

Key = tuple[int, int, int]
#: Resolves the style's relative URLs as a client would, inside the package.
_STYLE_BASE = f"http://package/{ROOT}/resources/styles/root.json"
_RESOURCES = f"http://package/{ROOT}/resources/"


def _check_tile(data: bytes, row: int, col: int, sink: BundleSink, layers: set[str]) -> None:
    if not is_gzip(data):
        sink.tile("tile not gzip-compressed (vtpk and pbf MBTiles hold gzip)", row, col)
    try:
        layers.update(decode_tile(data))
    except ValueError as exc:
        sink.tile("tile does not decode as a vector tile", row, col, str(exc))


def style_defects(output: VtpkReader) -> list[Defect]:
    """Every reference of the packaged style that does not resolve inside the package."""
    raw = output.resource("styles/root.json")
    if raw is None:
        return [Defect("style", "no resources/styles/root.json")]
    try:
        style = json.loads(raw)
    except ValueError:
        return [Defect("style", "resources/styles/root.json is not JSON")]
    have = set(output.resources())
    out: list[Defect] = []

    def inside(url: str) -> str | None:
        full = unquote(urljoin(_STYLE_BASE, url))
        return full[len(_RESOURCES):] if full.startswith(_RESOURCES) else None

    sprite = style.get("sprite")
    if isinstance(sprite, str) and sprite:
        base = inside(sprite)
        for suffix in SPRITE_FILES:
            if base is None or base + suffix not in have:
                out.append(Defect("style", f"sprite {sprite}{suffix} is not in the package"))
    glyphs = style.get("glyphs")
    stacks = font_stacks(style)
    if stacks and not isinstance(glyphs, str):
        out.append(Defect("style", f"fonts {', '.join(stacks)} but no glyphs URL"))
    elif stacks:
        for stack in stacks:
            first = inside(glyphs.replace("{fontstack}", stack).replace("{range}", "0-255"))
            if first is None or first != glyph_path(stack, "0-255") or first not in have:
                out.append(Defect("style", f"font {stack!r}: glyph range 0-255 is not in the "
                                           f"package ({glyphs})"))
    listed = output.resource("info/root.json")
    for entry in (json.loads(listed).get("resourceInfo") or []) if listed else []:
        rel = unquote(urljoin(_RESOURCES + "info/root.json", entry))[len(_RESOURCES):]
        if rel not in have:
            out.append(Defect("resources", f"resources/info lists {entry}, which is not in the "
                                           f"package"))
    for name, source in (style.get("sources") or {}).items():
        if isinstance(source, dict) and source.get("type") == "vector":
            target = urljoin(_STYLE_BASE, str(source.get("url") or ""))
            if target.rstrip("/") != f"http://package/{ROOT}":
                out.append(Defect("style", f"source {name!r} points to {source.get('url')!r}, "
                                           "not the package's tiles"))
    return out


def _index_defects(output: VtpkReader, present: set[Key], levels: range) -> list[Defect]:
    data = output.index()
    if data is None:
        return [Defect("tilemap", "no tilemap/root.json; clients cannot tell leaves "
                                  "from holes")]
    try:
        index = QuadIndex.parse(data, "tilemap")
    except ValueError as exc:
        return [Defect("tilemap", str(exc))]
    out = []
    listed = {k for k in index.tiles(levels.stop - 1) if k[0] in levels}
    for key in sorted(listed - present)[:20]:
        out.append(Defect("tilemap", f"lists tile {key[0]}/{key[1]}/{key[2]} but no bundle holds it"))
    for key in sorted(k for k in present if index.has(*k) is False)[:20]:
        out.append(Defect("tilemap", f"says tile {key[0]}/{key[1]}/{key[2]} is absent, but a "
                                     f"bundle holds it"))
    return out


def _verify_vtpk(output: VtpkReader, report: VerifyReport) -> None:
    report.storage = f"vtpk (Compact V2 bundles, tiles decoded with {decoder_name()})"
    scheme = output.service.scheme
    tiled = scheme.tiled_levels or scheme.levels
    lo, hi = tiled[0], tiled[-1]
    present: set[Key] = set()
    members = output.bundle_members()
    for level, brow, bcol, member in members:
        where = f"{level_folder(level)}/{bundle_name(brow, bcol)}"
        sink = BundleSink(where)
        tally = report.levels.setdefault(level, LevelTally())
        tally.bundles += 1
        if not lo <= level <= hi:
            report.defects.append(Defect(where, f"level {level} is outside the levels "
                                                f"{lo}..{hi} root.json says hold tiles"))
        try:
            span = output.span(member)
        except FormatError as exc:
            report.defects.append(Defect(where, str(exc)))
            continue
        layers: set[str] = set()
        for row, col, data in _v2_tiles(_Bytes(span.path, span.base, span.length),
                                        (level, brow, bcol), sink):
            tally.tiles += 1
            tally.bytes += len(data)
            present.add((level, row, col))
            _check_tile(data, row, col, sink, layers)
        report.defects.extend(sink.defects())
    first = min((m[0] for m in members), default=lo)  # ancestors above it are index-only
    report.defects.extend(_index_defects(output, present, range(max(lo, first), hi + 1)))
    report.defects.extend(style_defects(output))


def _verify_mbtiles(output: VectorMBTilesReader, report: VerifyReport) -> None:
    report.storage = f"vector MBTiles (pbf, tiles decoded with {decoder_name()})"
    layers: set[str] = set()
    sinks: dict[int, BundleSink] = {}
    for (level, row, col), data in output.tiles():
        tally = report.levels.setdefault(level, LevelTally())
        tally.tiles += 1
        tally.bytes += len(data)
        sink = sinks.setdefault(level, BundleSink(f"zoom {level}"))
        _check_tile(data, row, col, sink, layers)
    for level in sorted(sinks):
        report.defects.extend(sinks[level].defects())
    try:
        declared = {str(entry["id"]) for entry in
                    json.loads(output.metadata.get("json") or "{}")["vector_layers"]}
    except (ValueError, KeyError, TypeError):
        report.defects.append(Defect("metadata", "no json row with vector_layers (required for "
                                                 "pbf; GDAL lists no layer without it)"))
        return
    for name in sorted(layers - declared):
        report.defects.append(Defect("metadata", f"layer {name!r} is in the tiles but not in "
                                                 f"vector_layers"))


def verify_vector(path: Path, report: VerifyReport | None = None) -> VerifyReport:
    """Verify a .vtpk or vector MBTiles into ``report`` (a new one when None)."""
    report = report if report is not None else VerifyReport(Path(path))
    output: Any = open_vector(path)
    try:
        if isinstance(output, VtpkReader):
            _verify_vtpk(output, report)
        else:
            _verify_mbtiles(output, report)
    finally:
        output.close()
    return report

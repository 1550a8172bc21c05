"""A demo cache and area of interest, so the README's first command works offline.

The tiles are drawn, not downloaded: each shows its level/row/column, a border, a graticule and a
crude "world" of land blobs that stays put across levels, so a person zooming through a served or
exported demo can see at a glance that tiles landed in the right place. The cache is written through
the real ``compact-v2`` exporter, so the demo also exercises the writer.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from cacheorch.errors import CacheorchError, LevelError
from cacheorch.formats.png import encode_png
from cacheorch.interfaces import Exporter, ExportRequest, Service
from cacheorch.tiling import BUNDLE_SIZE, WEB_MERCATOR_HALF, TilingScheme, web_mercator_scheme

__all__ = ["DEMO_AREA", "DEMO_LEVELS", "make_demo_cache", "write_demo_area", "demo_area_bounds", "draw_tile",
           "demo_tiles"]

#: Levels 0-5: 1 + 4 + 16 + 64 + 256 + 1024 = 1,365 tiles, 3.4 MB; about 3.5 CPU-seconds to draw,
#: spread over the cores (drawing is mostly zlib and numpy, which release the GIL).
DEMO_LEVELS = range(0, 6)
#: Highest level the demo accepts: level 8 already holds 65,536 tiles.
_MAX_DEMO_LEVEL = 8

#: The demo area of interest: the Alps, as a WGS84 GeoJSON polygon (RFC 7946: lon, lat; CCW outer ring).
DEMO_AREA: dict[str, Any] = {
    "type": "FeatureCollection",
    "features": [{
        "type": "Feature",
        "properties": {"name": "Alps (cacheorch demo area)"},
        "geometry": {"type": "Polygon", "coordinates": [[
            [5.2, 43.6], [7.6, 43.7], [10.5, 45.3], [13.8, 45.6], [16.2, 46.3], [16.5, 47.6],
            [13.0, 48.0], [10.0, 47.8], [7.5, 47.7], [5.8, 46.6], [5.2, 43.6],
        ]]},
    }],
}

_SIZE = 256
_EARTH_RADIUS = 6378137.0
# Land blobs: (lon, lat, half-width °, half-height °) - a rough continent for every one, so the
# demo looks like a map and the Alps area falls on land.
_BLOBS = np.array([
    (-100, 45, 30, 18), (-75, 60, 18, 12), (-42, 72, 14, 8),  # North America, Greenland
    (-60, -15, 16, 22), (-68, -42, 7, 12),  # South America
    (12, 48, 16, 9), (25, 58, 14, 8), (-3, 40, 6, 4),  # Europe
    (20, 5, 22, 26), (45, 15, 8, 8),  # Africa, Arabia
    (90, 50, 45, 16), (100, 25, 20, 12), (78, 20, 8, 10),  # Asia, India
    (135, -25, 18, 10), (0, -80, 180, 8), (138, 37, 3, 6),  # Australia, Antarctica, Japan
], dtype=np.float64)
#: How far past its half-axes a blob can reach once the coast wobble (at most 0.18) is added.
_REACH = 1.1
#: Colours by canvas index: water, land, graticule, ink (border, text), label background.
_PALETTE = np.array([(164, 201, 232), (205, 214, 160), (110, 110, 140), (40, 40, 60), (255, 255, 255)],
                    dtype=np.float64)
# A 3×5 bitmap font for the tile label (digits and the letters of "L R C").
_FONT = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001010010010",
    "8": "111101111101111", "9": "111101111001111", "L": "100100100100111", "R": "110101110101101",
    "C": "111100100100111", " ": "000000000000000",
}
_GLYPHS = {ch: np.array([int(b) for b in bits], dtype=bool).reshape(5, 3) for ch, bits in _FONT.items()}


def _graticule_step(level: int) -> float:
    """Degrees between graticule lines: a few lines per tile at every level."""
    return {0: 30.0, 1: 30.0, 2: 15.0, 3: 10.0, 4: 5.0, 5: 2.0}.get(level, 1.0)


def _label(text: str, scale: int = 2) -> np.ndarray:
    """A boolean bitmap of ``text`` in the 3×5 font."""
    glyphs = [_GLYPHS[ch] for ch in text]
    gap = np.zeros((5, 1), dtype=bool)
    row = np.hstack([part for g in glyphs for part in (g, gap)][:-1])
    return row.repeat(scale, axis=0).repeat(scale, axis=1)


def _land(lon: np.ndarray, lat: np.ndarray) -> np.ndarray | None:
    """The land mask of a tile (rows × cols), or None when no blob reaches it.

    Only blobs whose box meets the tile are tested: that keeps a deep-level tile to one or two
    ellipse tests instead of sixteen, which is most of the drawing time.
    """
    west, east, south, north = lon[0], lon[-1], lat[-1], lat[0]
    reach = _BLOBS[:, 2:] * _REACH
    near = ((_BLOBS[:, 0] - reach[:, 0] <= east) & (_BLOBS[:, 0] + reach[:, 0] >= west)
            & (_BLOBS[:, 1] - reach[:, 1] <= north) & (_BLOBS[:, 1] + reach[:, 1] >= south))
    if not near.any():
        return None
    blobs = _BLOBS[near].astype(np.float32)
    lon32, lat32 = lon.astype(np.float32), lat.astype(np.float32)
    # A wobble so coasts are not perfect ellipses.
    wobble = (0.18 * np.sin(np.radians(lon32) * 7))[None, :] * np.cos(np.radians(lat32) * 5)[:, None]
    nearest = None
    for cx, cy, rx, ry in blobs:
        dx = ((lon32 - cx) / rx) ** 2
        dy = ((lat32 - cy) / ry) ** 2
        dist = dy[:, None] + dx[None, :]
        nearest = dist if nearest is None else np.minimum(nearest, dist, out=nearest)
    assert nearest is not None
    return (nearest + wobble) < 1.0


def draw_tile(scheme: TilingScheme, level: int, row: int, col: int) -> bytes:
    """One 256×256 PNG tile: land blobs, graticule, a checkerboard tint, a border and its address."""
    xmin, ymin, xmax, ymax = scheme.tile_bounds(level, row, col)
    step = (xmax - xmin) / _SIZE
    xs = xmin + (np.arange(_SIZE) + 0.5) * step
    ys = ymax - (np.arange(_SIZE) + 0.5) * step
    lon = np.degrees(xs / _EARTH_RADIUS)
    lat = np.degrees(np.arctan(np.sinh(ys / _EARTH_RADIUS)))

    # Paint palette indexes, then look colours up once: far cheaper than painting RGB triples.
    canvas = np.zeros((_SIZE, _SIZE), dtype=np.uint8)  # 0 = water
    land = _land(lon, lat)
    if land is not None:
        canvas[land] = 1

    # Graticule: a pixel is on a line where the line index changes from its neighbour's.
    grat = _graticule_step(level)
    on_lon = np.zeros(_SIZE, dtype=bool)
    on_lat = np.zeros(_SIZE, dtype=bool)
    on_lon[1:] = np.diff(np.floor(lon / grat)) != 0
    on_lat[1:] = np.diff(np.floor(lat / grat)) != 0
    canvas[:, on_lon] = 2
    canvas[on_lat, :] = 2

    canvas[0, :] = canvas[-1, :] = canvas[:, 0] = canvas[:, -1] = 3  # tile border
    text = _label(f"L{level} R{row} C{col}")
    h, w = text.shape
    canvas[4:h + 12, 4:w + 12] = 4
    canvas[8:h + 8, 8:w + 8][text] = 3

    # A checkerboard of tile tints (and a hue per level), so neighbouring tiles are told apart.
    shade = 1.0 if (row + col) % 2 == 0 else 0.9
    hue = np.array([(level * 37) % 60, (level * 53) % 40, (level * 71) % 50], dtype=np.float64) - 20
    palette = _PALETTE.copy()
    palette[:2] = np.clip(palette[:2] * shade + hue, 0, 255)
    pixels = palette.astype(np.uint8).take(canvas, axis=0)
    return encode_png(_SIZE, _SIZE, pixels.tobytes(), 3, level=6)


def demo_tiles(scheme: TilingScheme, level: int) -> Iterator[tuple[int, int, int, int]]:
    """The bundles of one level and the tile range of each: (bundle_row, bundle_col, rows, cols)."""
    size = scheme.grid_size(level)
    assert size is not None  # Web Mercator always knows its grid end
    rows, cols = size
    for brow in range(0, rows, BUNDLE_SIZE):
        for bcol in range(0, cols, BUNDLE_SIZE):
            yield brow, bcol, min(rows - brow, BUNDLE_SIZE), min(cols - bcol, BUNDLE_SIZE)


def _compact_v2_exporter() -> type[Exporter]:
    """The built-in compact-v2 exporter class, found by its plugin name."""
    from cacheorch.plugins import export_compact_v2

    for value in vars(export_compact_v2).values():
        if isinstance(value, type) and issubclass(value, Exporter) and getattr(value, "name", None) \
                == "compact-v2":
            return value
    raise CacheorchError("the compact-v2 exporter plugin is missing from cacheorch.plugins")


def make_demo_cache(path: str | Path, levels: Iterable[int] = DEMO_LEVELS, *,
                    overwrite: bool = False) -> Path:
    """Write a Web Mercator compact-v2 cache of drawn PNG tiles at ``path``; return its path.

    Every tile of every level is written (the whole world), so any area of interest finds tiles.
    """
    wanted = sorted(set(levels))
    if not wanted:
        raise LevelError("the demo cache needs at least one level")
    if wanted[0] < 0 or wanted[-1] > _MAX_DEMO_LEVEL:
        raise LevelError(f"demo levels must be within 0-{_MAX_DEMO_LEVEL}, got {wanted[0]}-{wanted[-1]}")
    full = web_mercator_scheme(max_level=max(wanted), tile_format="PNG")
    scheme = full.with_levels(wanted)
    output = Path(path)
    service = Service(location=str(output), scheme=scheme, kind="cache", name="demo",
                      description="cacheorch demo tiles: drawn, not real map data",
                      copyright="cacheorch demo")
    exporter = _compact_v2_exporter()()
    request = ExportRequest(
        output=output, service=service, scheme=scheme, levels=scheme.lods,
        extent=(-WEB_MERCATOR_HALF, -WEB_MERCATOR_HALF, WEB_MERCATOR_HALF, WEB_MERCATOR_HALF),
        mode="overwrite" if overwrite else "create", title="cacheorch demo")
    session = exporter.open(request)
    # zlib and numpy release the GIL, so drawing in threads uses every core.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        try:
            for level in wanted:
                for brow, bcol, nrows, ncols in demo_tiles(scheme, level):
                    keys = [(row, col) for row in range(brow, brow + nrows)
                            for col in range(bcol, bcol + ncols)]
                    tiles = pool.map(lambda key, lv=level: draw_tile(scheme, lv, *key), keys)
                    sink = session.open_bundle(level, brow, bcol)
                    try:
                        for (row, col), data in zip(keys, tiles):
                            sink.add(row, col, data)
                    except BaseException:
                        sink.abort()
                        raise
                    sink.close()
            result = session.commit()
        finally:
            session.discard()
    return Path(result)


def write_demo_area(path: str | Path) -> Path:
    """Write :data:`DEMO_AREA` as a GeoJSON file (WGS84) for ``--aoi``; return its path."""
    out = Path(path)
    out.write_text(json.dumps(DEMO_AREA, indent=1) + "\n", encoding="utf-8")
    return out


def demo_area_bounds() -> tuple[float, float, float, float]:
    """(west, south, east, north) of the demo area in degrees."""
    ring = DEMO_AREA["features"][0]["geometry"]["coordinates"][0]
    lons = [p[0] for p in ring]
    lats = [p[1] for p in ring]
    return (min(lons), min(lats), max(lons), max(lats))

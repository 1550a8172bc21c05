"""MBTiles 1.3: tiles of the standard Web Mercator grid in SQLite, rows counted from the bottom (TMS).

Writing uses the deduplicating layout MapProxy and mbutil write: ``images`` holds each distinct
tile once (keyed by a hash of its bytes), ``map`` says which tile goes where, and a ``tiles`` view
joins them, which is what the specification and every reader (GDAL, QGIS, MapLibre) query. Open
water or blank land repeats thousands of times in a basemap, and is then stored once.

Only the standard grid fits: MBTiles has no place for an origin, a tile size other than the zoom
pyramid's or another spatial reference, so :func:`check_scheme` refuses anything else, naming why.
"""
from __future__ import annotations

import hashlib
import math
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from cacheorch.errors import ExportError, FormatError
from cacheorch.formats.sqlitetiles import SqliteTiles, table_names
from cacheorch.tiling import WEB_MERCATOR_HALF, LevelOfDetail, TilingScheme, web_mercator_scheme

__all__ = ["check_scheme", "tms_row", "create_schema", "MBTilesStore", "mbtiles_metadata",
           "is_mbtiles", "open_mbtiles_tiles", "read_mbtiles_scheme"]

_RES0_256 = 2 * WEB_MERCATOR_HALF / 256
_TOLERANCE = 1e-6

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS metadata (name TEXT, value TEXT)",
    "CREATE UNIQUE INDEX IF NOT EXISTS metadata_name ON metadata (name)",
    "CREATE TABLE IF NOT EXISTS images (tile_data BLOB, tile_id TEXT)",
    "CREATE UNIQUE INDEX IF NOT EXISTS images_id ON images (tile_id)",
    "CREATE TABLE IF NOT EXISTS map (zoom_level INTEGER, tile_column INTEGER, tile_row INTEGER, "
    "tile_id TEXT)",
    "CREATE UNIQUE INDEX IF NOT EXISTS map_index ON map (zoom_level, tile_column, tile_row)",
    "CREATE VIEW IF NOT EXISTS tiles AS SELECT map.zoom_level AS zoom_level, "
    "map.tile_column AS tile_column, map.tile_row AS tile_row, images.tile_data AS tile_data "
    "FROM map JOIN images ON images.tile_id = map.tile_id",
)


def check_scheme(scheme: TilingScheme, levels: Sequence[LevelOfDetail]) -> None:
    """Raise ExportError unless ``levels`` of ``scheme`` are zoom levels of the standard grid.

    The standard grid is Web Mercator (wkid 3857/102100), 256-pixel tiles, origin at the world's
    top-left corner, and resolution halving from 156543.03 m at level 0, so level N is zoom N.
    """
    hint = "; export to gpkg, which keeps any grid"
    sr = scheme.spatial_reference
    if not sr.is_web_mercator:
        raise ExportError(f"mbtiles holds only Web Mercator (wkid 3857/102100) tiles; this "
                          f"service is in {sr}{hint}")
    if (scheme.tile_cols, scheme.tile_rows) != (256, 256):
        raise ExportError(f"mbtiles holds 256×256-pixel tiles; this service has "
                          f"{scheme.tile_cols}×{scheme.tile_rows}{hint}")
    if not (math.isclose(scheme.origin_x, -WEB_MERCATOR_HALF, abs_tol=0.01)
            and math.isclose(scheme.origin_y, WEB_MERCATOR_HALF, abs_tol=0.01)):
        raise ExportError(f"mbtiles needs the grid origin at the world's top-left corner; this "
                          f"service's is ({scheme.origin_x}, {scheme.origin_y}){hint}")
    for lod in levels:
        want = _RES0_256 / 2 ** lod.level
        if not math.isclose(lod.resolution, want, rel_tol=_TOLERANCE):
            raise ExportError(f"mbtiles needs level N at zoom N of the standard series; level "
                              f"{lod.level} has resolution {lod.resolution:.10g}, zoom "
                              f"{lod.level} would be {want:.10g}{hint}")


def tms_row(level: int, row: int) -> int:
    """ArcGIS row (from the top) ↔ MBTiles tile_row (from the bottom); its own inverse."""
    return (1 << level) - 1 - row


def create_schema(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA:
        conn.execute(statement)


def _tile_id(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class MBTilesStore:
    """Writes tiles into an open (staging) MBTiles database; counts tiles stored only once."""

    format_name = "mbtiles"

    def __init__(self) -> None:
        #: Tiles whose bytes were already in ``images`` (stored once, referenced again).
        self.duplicates = 0
        self.formats: set[str] = set()

    def create(self, conn: sqlite3.Connection) -> None:
        create_schema(conn)

    def put(self, conn: sqlite3.Connection, level: int, row: int, col: int, data: bytes) -> None:
        tile_id = _tile_id(data)
        cur = conn.execute("INSERT OR IGNORE INTO images (tile_data, tile_id) VALUES (?, ?)",
                           (sqlite3.Binary(data), tile_id))
        if cur.rowcount == 0:
            self.duplicates += 1
        conn.execute("INSERT OR REPLACE INTO map (zoom_level, tile_column, tile_row, tile_id) "
                     "VALUES (?, ?, ?, ?)", (level, col, tms_row(level, row), tile_id))
        self.formats.add("jpg" if data[:3] == b"\xff\xd8\xff" else "png")

    def clear(self, conn: sqlite3.Connection, level: int, bundle_row: int, bundle_col: int,
              size: int) -> None:
        """Remove every tile of one block (a bundle redone after an interruption starts clean)."""
        lo, hi = sorted((tms_row(level, bundle_row), tms_row(level, bundle_row + size - 1)))
        conn.execute("DELETE FROM map WHERE zoom_level = ? AND tile_column BETWEEN ? AND ? AND "
                     "tile_row BETWEEN ? AND ?", (level, bundle_col, bundle_col + size - 1, lo, hi))

    def finish(self, conn: sqlite3.Connection, metadata: dict[str, str]) -> None:
        """Drop images no tile refers to (left by redone bundles) and write the metadata."""
        conn.execute("DELETE FROM images WHERE tile_id NOT IN (SELECT tile_id FROM map)")
        conn.execute("DELETE FROM metadata")
        conn.executemany("INSERT INTO metadata (name, value) VALUES (?, ?)", sorted(metadata.items()))


def mbtiles_metadata(*, name: str, description: str, tile_format: str, levels: Sequence[int],
                     wgs84: tuple[float, float, float, float] | None, attribution: str = ""
                     ) -> dict[str, str]:
    """The metadata rows MBTiles 1.3 asks for: name, format, bounds, center, minzoom, maxzoom..."""
    lo, hi = min(levels), max(levels)
    out = {"name": name, "format": tile_format, "minzoom": str(lo), "maxzoom": str(hi),
           "type": "baselayer", "version": "1.0", "description": description or name,
           "scheme": "tms"}
    if wgs84 is not None:
        # MBTiles bounds stop at the Web Mercator latitude limit
        limit = 85.0511287798066
        xmin, ymin, xmax, ymax = (max(wgs84[0], -180.0), max(wgs84[1], -limit),
                                  min(wgs84[2], 180.0), min(wgs84[3], limit))
        out["bounds"] = f"{xmin!r},{ymin!r},{xmax!r},{ymax!r}"
        out["center"] = f"{(xmin + xmax) / 2!r},{(ymin + ymax) / 2!r},{lo}"
    if attribution:
        out["attribution"] = attribution
    return out


# -- reading --------------------------------------------------------------------------------------

def is_mbtiles(conn: sqlite3.Connection) -> bool:
    names = table_names(conn)
    return "tiles" in names and "metadata" in names


def read_mbtiles_scheme(conn: sqlite3.Connection, where: str) -> tuple[TilingScheme, str, str]:
    """(scheme, name, description) of an MBTiles file: the standard grid down to its max zoom."""
    try:
        meta = {str(k): str(v) for k, v in conn.execute("SELECT name, value FROM metadata")}
        zooms = conn.execute("SELECT min(zoom_level), max(zoom_level) FROM tiles").fetchone()
    except sqlite3.Error as exc:
        raise FormatError(f"{where}: not a readable MBTiles file ({exc})") from None
    try:
        lo = int(meta["minzoom"]) if "minzoom" in meta else zooms[0]
        hi = int(meta["maxzoom"]) if "maxzoom" in meta else zooms[1]
    except ValueError:
        raise FormatError(f"{where}: metadata minzoom/maxzoom are not numbers") from None
    if lo is None or hi is None:
        raise FormatError(f"{where}: an MBTiles file with no tiles and no minzoom/maxzoom")
    if not 0 <= lo <= hi <= 30:
        raise FormatError(f"{where}: zoom levels {lo}-{hi} are outside 0-30")
    fmt = meta.get("format", "png").lower()
    tile_format = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG"}.get(fmt, fmt.upper())
    scheme = web_mercator_scheme(hi, tile_format=tile_format)
    from dataclasses import replace
    scheme = replace(scheme, min_lod=lo, max_lod=hi, _by_level={})
    return scheme, meta.get("name", ""), meta.get("description", "")


def open_mbtiles_tiles(path: Path) -> SqliteTiles:
    return SqliteTiles(path, "tiles", tms_row)

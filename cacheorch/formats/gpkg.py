"""OGC GeoPackage tiles (1.3): any ArcGIS grid, in its own spatial reference, readable by GDAL and QGIS.

A GeoPackage describes a tile pyramid with a tile matrix set (spatial reference and a bounding
box whose top-left corner is tile (0, 0) of every level) and one tile matrix per zoom level
(matrix size, tile size, pixel size). Pixel sizes may be anything: levels need not halve (the
"zoom other intervals" extension is registered when they do not), so an ArcGIS scheme with scales
8M, 6M, 4M maps one to one. We put the matrix set's top-left at the ArcGIS origin, so zoom_level,
tile_column and tile_row are ArcGIS's level, column and row, unchanged.

The bounding box's width is a whole number of tiles of the coarsest exported level, reaching past
the exported extent; finer levels get as many tiles as it takes to cover it. GeoPackage has no
standard way to store identical tiles once, so none is attempted: each tile is its own row.
"""
from __future__ import annotations

import math
import re
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cacheorch.errors import ExportError, FormatError
from cacheorch.formats.sqlitetiles import SqliteTiles, table_names
from cacheorch.tiling import (
    Envelope, LevelOfDetail, SpatialReference, TilingScheme, scale_of,
)

__all__ = ["APPLICATION_ID", "USER_VERSION", "table_name_for", "GpkgStore", "TileMatrixSet",
           "tile_matrix_set", "is_geopackage", "read_gpkg_scheme", "open_gpkg_tiles"]

#: ``PRAGMA application_id`` of a GeoPackage: 'GPKG' in ASCII.
APPLICATION_ID = 0x47504B47
#: ``PRAGMA user_version``: GeoPackage 1.3.0.
USER_VERSION = 10300
_ZOOM_OTHER = ("gpkg_zoom_other", "http://www.geopackage.org/spec/#extension_zoom_other_intervals")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS gpkg_spatial_ref_sys (srs_name TEXT NOT NULL, srs_id INTEGER "
    "PRIMARY KEY, organization TEXT NOT NULL, organization_coordsys_id INTEGER NOT NULL, "
    "definition TEXT NOT NULL, description TEXT)",
    "CREATE TABLE IF NOT EXISTS gpkg_contents (table_name TEXT NOT NULL PRIMARY KEY, data_type "
    "TEXT NOT NULL, identifier TEXT UNIQUE, description TEXT DEFAULT '', last_change DATETIME NOT "
    "NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')), min_x DOUBLE, min_y DOUBLE, max_x DOUBLE, "
    "max_y DOUBLE, srs_id INTEGER, CONSTRAINT fk_gc_r_srs_id FOREIGN KEY (srs_id) REFERENCES "
    "gpkg_spatial_ref_sys(srs_id))",
    "CREATE TABLE IF NOT EXISTS gpkg_tile_matrix_set (table_name TEXT NOT NULL PRIMARY KEY, srs_id "
    "INTEGER NOT NULL, min_x DOUBLE NOT NULL, min_y DOUBLE NOT NULL, max_x DOUBLE NOT NULL, max_y "
    "DOUBLE NOT NULL, CONSTRAINT fk_gtms_table_name FOREIGN KEY (table_name) REFERENCES "
    "gpkg_contents(table_name), CONSTRAINT fk_gtms_srs FOREIGN KEY (srs_id) REFERENCES "
    "gpkg_spatial_ref_sys (srs_id))",
    "CREATE TABLE IF NOT EXISTS gpkg_tile_matrix (table_name TEXT NOT NULL, zoom_level INTEGER NOT "
    "NULL, matrix_width INTEGER NOT NULL, matrix_height INTEGER NOT NULL, tile_width INTEGER NOT "
    "NULL, tile_height INTEGER NOT NULL, pixel_x_size DOUBLE NOT NULL, pixel_y_size DOUBLE NOT "
    "NULL, CONSTRAINT pk_ttm PRIMARY KEY (table_name, zoom_level), CONSTRAINT fk_tmm_table_name "
    "FOREIGN KEY (table_name) REFERENCES gpkg_contents(table_name))",
    "CREATE TABLE IF NOT EXISTS gpkg_extensions (table_name TEXT, column_name TEXT, extension_name "
    "TEXT NOT NULL, definition TEXT NOT NULL, scope TEXT NOT NULL, CONSTRAINT ge_tce UNIQUE "
    "(table_name, column_name, extension_name))",
)
_UNDEFINED_SRS = (
    ("Undefined cartesian SRS", -1, "NONE", -1, "undefined", "undefined cartesian coordinate reference system"),
    ("Undefined geographic SRS", 0, "NONE", 0, "undefined", "undefined geographic coordinate reference system"),
)


def table_name_for(stem: str) -> str:
    """A tiles table name from an output's name: letters, digits and ``_``, not ``gpkg_...``."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", stem).strip("_") or "tiles"
    if name[0].isdigit() or name.lower().startswith("gpkg_") or name.lower().startswith("sqlite_"):
        name = "t_" + name
    return name


def _tiles_ddl(table: str) -> str:
    return (f'CREATE TABLE IF NOT EXISTS "{table}" (id INTEGER PRIMARY KEY AUTOINCREMENT, zoom_level '
            "INTEGER NOT NULL, tile_column INTEGER NOT NULL, tile_row INTEGER NOT NULL, tile_data "
            "BLOB NOT NULL, UNIQUE (zoom_level, tile_column, tile_row))")


@dataclass(frozen=True)
class TileMatrixSet:
    """The matrix set's box and each exported level's matrix size (cols, rows)."""

    min_x: float
    min_y: float
    max_x: float
    max_y: float
    matrices: dict[int, tuple[int, int]]


def tile_matrix_set(scheme: TilingScheme, levels: Sequence[LevelOfDetail],
                    extent: tuple[float, float, float, float] | None) -> TileMatrixSet:
    """The box from the ArcGIS origin to past ``extent`` (whole tiles of the coarsest level).

    Without an extent the grid's own end is used (Web Mercator's world); without either, a
    single coarsest tile.
    """
    coarsest = max(levels, key=lambda lod: lod.resolution)
    span_x = scheme.tile_cols * coarsest.resolution
    span_y = scheme.tile_rows * coarsest.resolution
    reach = extent or scheme.grid_bounds()
    if reach is not None:
        cols = max(1, math.ceil((reach[2] - scheme.origin_x) / span_x - 1e-9))
        rows = max(1, math.ceil((scheme.origin_y - reach[1]) / span_y - 1e-9))
    else:
        cols = rows = 1
    width, height = cols * span_x, rows * span_y
    matrices = {}
    for lod in levels:
        tx, ty = scheme.tile_cols * lod.resolution, scheme.tile_rows * lod.resolution
        matrices[lod.level] = (max(1, math.ceil(width / tx - 1e-9)),
                               max(1, math.ceil(height / ty - 1e-9)))
    return TileMatrixSet(scheme.origin_x, scheme.origin_y - height, scheme.origin_x + width,
                         scheme.origin_y, matrices)


def _srs_row(sr: SpatialReference) -> tuple[str, int, str, int, str, str]:
    """(name, srs_id, organisation, code, WKT, description) for gpkg_spatial_ref_sys."""
    from pyproj import CRS
    from pyproj.enums import WktVersion

    code = sr.epsg
    try:
        crs = CRS.from_user_input(sr.crs_input())
    except Exception as exc:
        raise ExportError(f"cannot describe the spatial reference {sr} for a GeoPackage: {exc}") from None
    organisation = "EPSG" if code is not None and code < 100000 else "ESRI"
    if code is None:  # a WKT-only SR: a private code
        organisation, code = "NONE", 100000
    wkt = crs.to_wkt(WktVersion.WKT1_GDAL) or crs.to_wkt()
    return (crs.name, code, organisation, code, wkt, crs.name)


class GpkgStore:
    """Writes tiles into an open (staging) GeoPackage; one row per tile."""

    format_name = "gpkg"

    def __init__(self, table: str) -> None:
        self.table = table
        #: GeoPackage stores identical tiles separately (no standard dedupe), so always 0.
        self.duplicates = 0

    def create(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {USER_VERSION}")
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute(_tiles_ddl(self.table))

    def put(self, conn: sqlite3.Connection, level: int, row: int, col: int, data: bytes) -> None:
        conn.execute(f'INSERT OR REPLACE INTO "{self.table}" (zoom_level, tile_column, tile_row, '
                     "tile_data) VALUES (?, ?, ?, ?)", (level, col, row, sqlite3.Binary(data)))

    def clear(self, conn: sqlite3.Connection, level: int, bundle_row: int, bundle_col: int,
              size: int) -> None:
        conn.execute(f'DELETE FROM "{self.table}" WHERE zoom_level = ? AND tile_column BETWEEN ? '
                     "AND ? AND tile_row BETWEEN ? AND ?",
                     (level, bundle_col, bundle_col + size - 1, bundle_row, bundle_row + size - 1))

    def finish(self, conn: sqlite3.Connection, scheme: TilingScheme,
               levels: Sequence[LevelOfDetail], extent: Envelope | None, title: str,
               description: str) -> None:
        """Describe the pyramid: SR rows, contents (data extent), matrix set and matrices."""
        bounds = extent.bounds if extent is not None else None
        tms = tile_matrix_set(scheme, levels, bounds)
        srs = _srs_row(scheme.spatial_reference)
        conn.executemany("INSERT OR IGNORE INTO gpkg_spatial_ref_sys VALUES (?, ?, ?, ?, ?, ?)",
                         [*_UNDEFINED_SRS, _srs_row(SpatialReference(4326, 4326)), srs])
        data_box = bounds or (tms.min_x, tms.min_y, tms.max_x, tms.max_y)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        conn.execute("DELETE FROM gpkg_contents WHERE table_name = ?", (self.table,))
        conn.execute("INSERT INTO gpkg_contents (table_name, data_type, identifier, description, "
                     "last_change, min_x, min_y, max_x, max_y, srs_id) VALUES (?, 'tiles', ?, ?, ?, "
                     "?, ?, ?, ?, ?)", (self.table, title, description, stamp, *data_box, srs[1]))
        conn.execute("DELETE FROM gpkg_tile_matrix_set WHERE table_name = ?", (self.table,))
        conn.execute("INSERT INTO gpkg_tile_matrix_set VALUES (?, ?, ?, ?, ?, ?)",
                     (self.table, srs[1], tms.min_x, tms.min_y, tms.max_x, tms.max_y))
        conn.execute("DELETE FROM gpkg_tile_matrix WHERE table_name = ?", (self.table,))
        for lod in sorted(levels, key=lambda item: item.level):
            cols, rows = tms.matrices[lod.level]
            conn.execute("INSERT INTO gpkg_tile_matrix VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (self.table, lod.level, cols, rows, scheme.tile_cols, scheme.tile_rows,
                          lod.resolution, lod.resolution))
        if not _halving(levels):
            conn.execute("INSERT OR IGNORE INTO gpkg_extensions VALUES (?, NULL, ?, ?, 'read-write')",
                         (self.table, *_ZOOM_OTHER))


def _halving(levels: Sequence[LevelOfDetail]) -> bool:
    """Whether each exported level halves the pixel size of the one before (zoom N+1 = N / 2)."""
    ordered = sorted(levels, key=lambda lod: lod.level)
    return all(math.isclose(b.resolution * 2 ** (b.level - a.level), a.resolution, rel_tol=1e-6)
               for a, b in zip(ordered, ordered[1:]))


# -- reading --------------------------------------------------------------------------------------

def is_geopackage(conn: sqlite3.Connection) -> bool:
    return "gpkg_contents" in table_names(conn)


def read_gpkg_scheme(conn: sqlite3.Connection, where: str
                     ) -> tuple[TilingScheme, str, str, str]:
    """(scheme, table, name, description) of the GeoPackage's tile pyramid (the only one)."""
    try:
        tables = conn.execute("SELECT table_name, identifier, description, min_x, min_y, max_x, "
                              "max_y FROM gpkg_contents WHERE data_type = 'tiles'").fetchall()
    except sqlite3.Error as exc:
        raise FormatError(f"{where}: not a readable GeoPackage ({exc})") from None
    if not tables:
        raise FormatError(f"{where}: a GeoPackage without tiles (only features or attributes)")
    if len(tables) > 1:
        raise FormatError(f"{where}: holds {len(tables)} tile tables "
                          f"({', '.join(t[0] for t in tables[:3])}); cacheorch reads one")
    table, identifier, description, *box = tables[0]
    try:
        tms = conn.execute("SELECT s.srs_id, s.organization, s.organization_coordsys_id, "
                           "s.definition, m.min_x, m.min_y, m.max_x, m.max_y FROM "
                           "gpkg_tile_matrix_set m JOIN gpkg_spatial_ref_sys s ON s.srs_id = m.srs_id "
                           "WHERE m.table_name = ?", (table,)).fetchone()
        matrices = conn.execute("SELECT zoom_level, tile_width, tile_height, pixel_x_size FROM "
                                "gpkg_tile_matrix WHERE table_name = ? ORDER BY zoom_level",
                                (table,)).fetchall()
    except sqlite3.Error as exc:
        raise FormatError(f"{where}: not a readable GeoPackage ({exc})") from None
    if tms is None or not matrices:
        raise FormatError(f"{where}: table {table} has no tile matrix set or no tile matrices")
    _, org, code, definition, min_x, min_y, max_x, max_y = tms
    sizes = {(w, h) for _, w, h, _ in matrices}
    if len(sizes) != 1:
        raise FormatError(f"{where}: tile sizes differ between zoom levels ({sorted(sizes)})")
    tile_w, tile_h = sizes.pop()
    if str(org).upper() in ("EPSG", "ESRI") and int(code) > 0:
        sr = SpatialReference(int(code), int(code))
    else:
        sr = SpatialReference(wkt=str(definition))
    units = _units_of(sr)
    lods = tuple(LevelOfDetail(int(z), scale_of(float(res), 96, units), float(res))
                 for z, _, _, res in matrices)
    extent = None
    if all(v is not None for v in box):
        extent = Envelope(*map(float, box), spatial_reference=sr)
    scheme = TilingScheme(origin_x=float(min_x), origin_y=float(max_y), tile_cols=int(tile_w),
                          tile_rows=int(tile_h), dpi=96, spatial_reference=sr, lods=lods,
                          units=units, tile_end=(float(max_x), float(min_y)), full_extent=extent)
    return scheme, str(table), str(identifier or table), str(description or "")


def _units_of(sr: SpatialReference) -> str:
    try:
        from pyproj import CRS

        crs = CRS.from_user_input(sr.crs_input())
        if crs.is_geographic:
            return "esriDecimalDegrees"
        unit = (crs.axis_info[0].unit_name or "").lower() if crs.axis_info else ""
        return "esriFeet" if "foot" in unit else "esriMeters"
    except Exception:
        return "esriMeters"


def open_gpkg_tiles(path: Path, table: str) -> SqliteTiles:
    return SqliteTiles(path, table, lambda level, row: row)

"""Opening MBTiles and GeoPackage files as tile caches, for ``open_cache`` (and so serve, scales, verify).

The reader API is the bundle caches' one: tiles by ArcGIS (level, row, col) and 128×128 blocks
("bundles") found by range queries, so nothing above :func:`~cacheorch.formats.cache.open_cache`
needs to know that the tiles live in SQLite.
"""
from __future__ import annotations

import math
from pathlib import Path

from cacheorch.errors import FormatError
from cacheorch.formats.cache import BundleView, TileCache, _DelegateView, _Files, _Layout
from cacheorch.formats.gpkg import is_geopackage, open_gpkg_tiles, read_gpkg_scheme
from cacheorch.formats.mbtiles import is_mbtiles, open_mbtiles_tiles, read_mbtiles_scheme
from cacheorch.formats.sqlitetiles import SqliteTiles, connect_readonly, is_sqlite
from cacheorch.tiling import Envelope, SpatialReference

__all__ = ["MBTILES", "GEOPACKAGE", "is_sqlite", "open_sqlite_cache"]

#: ``TileCache.storage_format`` of the SQLite outputs.
MBTILES = "MBTiles"
GEOPACKAGE = "GeoPackage"


class _SqliteLayout(_Layout):
    def __init__(self, tiles: SqliteTiles, storage_format: str) -> None:
        self.tiles = tiles
        self.storage_format = storage_format

    def open_bundle(self, key: tuple[int, int, int]) -> BundleView | None:
        return _DelegateView(self.tiles.open_bundle(*key))

    def get_tile(self, level: int, row: int, col: int) -> bytes | None:
        return self.tiles.get(level, row, col)

    def bundle_keys(self) -> list[tuple[int, int, int]]:
        return self.tiles.bundle_keys()

    def levels(self) -> set[int]:
        return self.tiles.levels()

    def close(self) -> None:
        self.tiles.close()


def _mercator(bounds: str) -> Envelope | None:
    """MBTiles ``bounds`` (WGS84 "w,s,e,n") in Web Mercator metres."""
    try:
        w, s, e, n = (float(v) for v in bounds.split(","))
    except ValueError:
        return None
    r = 6378137.0

    def y(lat: float) -> float:
        lat = max(min(lat, 85.0511287798066), -85.0511287798066)
        return r * math.log(math.tan(math.pi / 4 + math.radians(lat) / 2))
    return Envelope(r * math.radians(w), y(s), r * math.radians(e), y(n), SpatialReference(102100, 3857))


def open_sqlite_cache(path: Path) -> TileCache:
    """Open an MBTiles or GeoPackage file; a FormatError says in one line why it is neither."""
    path = Path(path).absolute()
    where = str(path)
    conn = connect_readonly(path)
    try:
        if is_geopackage(conn):
            scheme, table, name, description = read_gpkg_scheme(conn, where)
            tiles, storage = open_gpkg_tiles(path, table), GEOPACKAGE
        elif is_mbtiles(conn):
            scheme, name, description = read_mbtiles_scheme(conn, where)
            bounds = dict(conn.execute("SELECT name, value FROM metadata")).get("bounds")
            extent = _mercator(str(bounds)) if bounds else None
            if extent is not None:
                from dataclasses import replace
                scheme = replace(scheme, full_extent=extent, _by_level={})
            tiles, storage = open_mbtiles_tiles(path), MBTILES
        else:
            raise FormatError(f"{where}: an SQLite file that is neither MBTiles nor a GeoPackage")
    finally:
        conn.close()
    return TileCache(path=path, scheme=scheme, name=name or path.stem, storage_format=storage,
                     full_extent=scheme.full_extent, layout=_SqliteLayout(tiles, storage),
                     files=_Files(), kind="package", description=description)

"""The ``mbtiles`` exporter: MBTiles 1.3 for Web Mercator services, identical tiles stored once.

MBTiles is what QGIS, OsmAnd, MapLibre and most offline map apps open; it only holds the standard
Web Mercator zoom pyramid, so a service on another grid is refused at once (before any fetching)
with a pointer to ``gpkg``, which holds any grid.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from cacheorch import hookimpl
from cacheorch.formats.mbtiles import MBTilesStore, check_scheme, mbtiles_metadata
from cacheorch.formats.rootjson import wgs84_bounds
from cacheorch.interfaces import ExportRequest, ExportSession, Exporter
from cacheorch.plugins._export_common import BlankOptions
from cacheorch.plugins._sqlite_staging import SqliteStagingSession
from cacheorch.plugins._staging import export_extent, title_of

__all__ = ["MBTilesExporter", "MBTilesSession", "cacheorch_register_exporters"]


class MBTilesSession(SqliteStagingSession):
    """An MBTiles file being built in ``<output>.partial/``."""

    exporter_name = "mbtiles"
    store: MBTilesStore

    def _finish_output(self, conn: sqlite3.Connection) -> None:
        request = self.request
        extent = export_extent(request)
        sr = request.service.scheme.spatial_reference
        wgs84 = wgs84_bounds(extent.bounds, sr) if extent is not None else None
        formats = self.store.formats or {"jpg" if request.scheme.tile_format.upper().startswith(
            ("JPEG", "JPG")) else "png"}
        # one value only: a MIXED service's tiles are read by their magic anyway
        tile_format = "png" if "png" in formats else "jpg"
        self.store.finish(conn, mbtiles_metadata(
            name=title_of(request), description=request.service.description,
            tile_format=tile_format, levels=[lod.level for lod in request.levels], wgs84=wgs84,
            attribution=request.service.copyright))


class MBTilesExporter(Exporter):
    """MBTiles (.mbtiles) for Web Mercator 256-px services: TMS rows, identical tiles stored once."""

    name = "mbtiles"
    extension = ".mbtiles"

    @dataclass
    class Options(BlankOptions):
        pass

    def open(self, request: ExportRequest) -> ExportSession:
        if request.service.scheme.tile_format.lower() == "pbf":  # a vector tile layer
            from cacheorch.vector.mbtiles import open_vector_mbtiles
            return open_vector_mbtiles(request)
        check_scheme(request.service.scheme, request.levels)
        return MBTilesSession(request, MBTilesStore(), skip_blank=self.options.skip_blank)


@hookimpl
def cacheorch_register_exporters() -> list[type[Exporter]]:
    return [MBTilesExporter]

"""The ``gpkg`` exporter: an OGC GeoPackage tile pyramid on the service's own grid and spatial reference.

GeoPackage keeps any grid (origin, tile size, pixel sizes that do not halve), so unlike MBTiles
it takes every ArcGIS service as it is, with zoom_level, tile_column and tile_row equal to the
ArcGIS level, column and row. QGIS, GDAL and ArcGIS Pro open it.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from cacheorch import hookimpl
from cacheorch.formats.gpkg import GpkgStore, table_name_for
from cacheorch.interfaces import ExportRequest, ExportSession, Exporter
from cacheorch.plugins._export_common import BlankOptions
from cacheorch.plugins._sqlite_staging import SqliteStagingSession
from cacheorch.plugins._staging import export_extent, title_of

__all__ = ["GpkgExporter", "GpkgSession", "cacheorch_register_exporters"]


class GpkgSession(SqliteStagingSession):
    """A GeoPackage being built in ``<output>.partial/``."""

    exporter_name = "gpkg"
    store: GpkgStore

    def _finish_output(self, conn: sqlite3.Connection) -> None:
        request = self.request
        self.store.finish(conn, request.service.scheme, request.levels, export_extent(request),
                          title_of(request), request.service.description)


class GpkgExporter(Exporter):
    """GeoPackage (.gpkg) tiles on the service's own grid and spatial reference (any scheme)."""

    name = "gpkg"
    extension = ".gpkg"

    @dataclass
    class Options(BlankOptions):
        pass

    def open(self, request: ExportRequest) -> ExportSession:
        table = table_name_for(Path(request.output).stem)
        return GpkgSession(request, GpkgStore(table), skip_blank=self.options.skip_blank)


@hookimpl
def cacheorch_register_exporters() -> list[type[Exporter]]:
    return [GpkgExporter]

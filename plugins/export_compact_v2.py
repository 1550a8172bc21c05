"""The ``compact-v2`` exporter: a Compact Cache V2 folder (conf.xml, conf.cdi, _alllayers/Lnn/*.bundle).

The folder is the same one ArcGIS writes for a cache dataset, so ArcGIS Pro/Server, GDAL (ESRIC),
GeoWebCache and MapProxy can read it as is. It is built in ``<output>.partial/`` and renamed into
place on commit, so the output name never shows a half-written cache.
"""
from __future__ import annotations

import math

from cacheorch import hookimpl
from cacheorch.formats.bundle import SPEC_RECORD_COUNT
from cacheorch.formats.confxml import conf_cdi_bytes, conf_xml_bytes
from cacheorch.interfaces import ExportRequest, ExportSession, Exporter
from cacheorch.plugins._staging import (
    MARKER, StagingSession, atomic_write, export_extent, listed_lods, publish_folder,
)
from cacheorch.tiling import Envelope, TilingScheme

__all__ = ["CompactV2Exporter", "CompactV2Session", "cacheorch_register_exporters"]


def _gdal_tile_end(scheme: TilingScheme, extent: Envelope | None) -> tuple[float, float] | None:
    """A TileEnd for grids GDAL cannot size on its own.

    Without TileEnd GDAL assumes the grid is symmetric about (0, 0), which gives no raster at all
    when the origin is not left of and above (0, 0). Then the export extent, snapped out to whole
    tiles of the coarsest level, bounds the grid instead.
    """
    if scheme.tile_end is not None or (scheme.origin_x < 0 < scheme.origin_y) or extent is None:
        return None
    span_x, span_y = scheme.tile_span(scheme.levels[0])
    cols = max(1, math.ceil((extent.xmax - scheme.origin_x) / span_x))
    rows = max(1, math.ceil((scheme.origin_y - extent.ymin) / span_y))
    return (scheme.origin_x + cols * span_x, scheme.origin_y - rows * span_y)


class CompactV2Session(StagingSession):
    """A cache folder being staged in ``<output>.partial/``."""

    bundles_dir = "_alllayers"
    # GDAL <= 3.10 reads bundles of a conf.xml cache only with the specification's record count.
    record_count = SPEC_RECORD_COUNT
    exporter_name = "compact-v2"

    def _write_metadata(self) -> None:
        scheme = self.request.service.scheme
        extent = export_extent(self.request)
        lods = listed_lods(self.request)
        atomic_write(self.staging / "conf.xml",
                     conf_xml_bytes(scheme, lods=lods, tile_end=_gdal_tile_end(scheme, extent)))
        if extent is not None:
            atomic_write(self.staging / "conf.cdi",
                         conf_cdi_bytes(extent, scheme.spatial_reference))

    def _publish(self) -> None:
        (self.staging / MARKER).unlink(missing_ok=True)
        publish_folder(self.staging, self.output)


class CompactV2Exporter(Exporter):
    """Compact Cache V2 folder (conf.xml, conf.cdi, _alllayers), readable by ArcGIS and GDAL."""

    name = "compact-v2"
    extension = None

    def open(self, request: ExportRequest) -> ExportSession:
        if request.service.scheme.tile_format.lower() == "pbf":  # a vector tile layer
            from cacheorch.plugins.export_vtpk import VectorFolderSession
            return VectorFolderSession(request)
        return CompactV2Session(request)


@hookimpl
def cacheorch_register_exporters() -> list[type[Exporter]]:
    return [CompactV2Exporter]

"""Vector MBTiles: ``format=pbf``, gzip tiles, and the ``json`` metadata row with ``vector_layers``.

MBTiles 1.3 requires ``vector_layers`` for pbf tiles (GDAL lists no layer without it, spec §3).
It is built at commit from the tiles actually stored (each layer's fields and the zooms it
appears at). Only the standard Web Mercator grid fits: 512-px vector level L is XYZ zoom L
(spec §1.2), so a 512-px Esri Web Mercator scheme maps level for level; any other grid is
refused before anything is fetched. The style, sprites and glyphs have no place in MBTiles;
export a ``vtpk`` to carry them.
"""
from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Sequence

from cacheorch.errors import ExportError
from cacheorch.formats.mbtiles import MBTilesStore, mbtiles_metadata
from cacheorch.formats.rootjson import wgs84_bounds
from cacheorch.interfaces import ExportRequest, ExportSession
from cacheorch.plugins._staging import export_extent, title_of
from cacheorch.plugins.export_mbtiles import MBTilesSession
from cacheorch.tiling import WEB_MERCATOR_HALF, LevelOfDetail, TilingScheme
from cacheorch.vector.mvt import LayerSummary, merge_summaries, scan_layers, vector_layers_json

__all__ = ["check_vector_scheme", "VectorMBTilesSession", "open_vector_mbtiles"]

_RES0_512 = 2 * WEB_MERCATOR_HALF / 512


def check_vector_scheme(scheme: TilingScheme, levels: Sequence[LevelOfDetail]) -> None:
    """ExportError unless ``levels`` are XYZ zooms of the 512-px Web Mercator vector grid."""
    sr = scheme.spatial_reference
    origin = (round(scheme.origin_x, 2), round(scheme.origin_y, 2))
    why = ""
    if not sr.is_web_mercator:
        why = f"it holds only Web Mercator tiles; this service is in {sr}"
    elif origin != (round(-WEB_MERCATOR_HALF, 2), round(WEB_MERCATOR_HALF, 2)):
        why = f"the grid origin must be the world's top-left corner, not {origin}"
    for lod in levels if not why else ():
        zoom_res = _RES0_512 / 2 ** lod.level * 512 / scheme.tile_cols
        if not math.isclose(lod.resolution, zoom_res, rel_tol=1e-6):
            why = (f"vector level {lod.level} (resolution {lod.resolution:.10g}, "
                   f"{scheme.tile_cols} px) is not zoom {lod.level} of the standard grid")
            break
    if why:
        raise ExportError(f"vector mbtiles: {why}; export a vtpk, which keeps any grid")


class VectorMBTilesSession(MBTilesSession):
    """An MBTiles file of gzip vector tiles being built in ``<output>.partial/``."""

    def _finish_output(self, conn: sqlite3.Connection) -> None:
        request = self.request
        summary: LayerSummary = {}
        zooms: dict[str, tuple[int, int]] = {}
        for zoom, data in conn.execute("SELECT zoom_level, tile_data FROM tiles"):
            try:
                layers = scan_layers(bytes(data))
            except ValueError as exc:
                raise ExportError(f"a stored tile at zoom {zoom} is not a vector tile ({exc})") \
                    from None
            merge_summaries(summary, layers)
            for name in layers:
                lo, hi = zooms.get(name, (zoom, zoom))
                zooms[name] = (min(lo, zoom), max(hi, zoom))
        extent = export_extent(request)
        sr = request.service.scheme.spatial_reference
        meta = mbtiles_metadata(
            name=title_of(request), description=request.service.description, tile_format="pbf",
            levels=[lod.level for lod in request.levels],
            wgs84=wgs84_bounds(extent.bounds, sr) if extent is not None else None,
            attribution=request.service.copyright)
        meta["type"] = "overlay"
        meta["json"] = json.dumps({"vector_layers": vector_layers_json(summary, zooms)})
        self.store.finish(conn, meta)


def open_vector_mbtiles(request: ExportRequest) -> ExportSession:
    """The ``mbtiles`` exporter's session for a vector tile layer."""
    check_vector_scheme(request.service.scheme, request.levels)
    return VectorMBTilesSession(request, MBTilesStore())

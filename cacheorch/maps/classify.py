"""Which layers of a map are exported, and why the others are not: one function, one place.

Vector tile layers are exported when they name an ArcGIS VectorTileServer (their tiles are read
from there); which exporter writes them is decided here too (:func:`layer_exporter`), because a
vector layer cannot go to the raster exporter the rest of the map uses.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from cacheorch.errors import AuthError, CacheorchError, ExportError, NotCachedError
from cacheorch.maps.model import MapLayer
from cacheorch.options import split_plugin_spec
from cacheorch.vector.service import vector_tile_service_url

if TYPE_CHECKING:
    from cacheorch.jobplan import JobPlan

__all__ = ["EXPORTED_KINDS", "skip_reason", "service_skip_reason", "layer_service",
           "layer_exporter", "mbtiles_cannot_hold", "VECTOR_EXPORTER", "VECTOR_EXPORTER_FOR"]

#: Kinds whose layers are exported (when their service turns out to be cached).
EXPORTED_KINDS = frozenset({"tiled-map", "tiled-image", "map-service", "vector-tile"})
#: The exporter of a vector tile layer when the map's exporter writes raster tiles only.
VECTOR_EXPORTER = "vtpk"
#: Map exporters whose vector layers go elsewhere: QGIS reads vector MBTiles, and GeoPackage
#: has no vector tiles (spec/vector-tiles.md §3), so a QGIS-bound map gets vector MBTiles.
VECTOR_EXPORTER_FOR = {"mbtiles": "mbtiles", "gpkg": "mbtiles"}

_REASONS = {
    "dynamic": "a dynamic map service: drawn on request, it has no cached tiles to copy",
    "feature": "a feature layer: vector features, not tiles",
    "wms": "a WMS/WMTS layer: not an ArcGIS cached service",
    "web-tiled": "a web tiled layer whose template is not an ArcGIS /tile/{level}/{row}/{col} "
                 "cache",
    "local": "a local file: already offline",
}
_THIRD_PARTY = ("openstreetmap", "bingmaps")


def skip_reason(layer: MapLayer) -> str | None:
    """Why ``layer`` is not exported, in words a user understands; None if it is a candidate
    (its service is read next, and may still be refused by :func:`service_skip_reason`)."""
    if layer.kind == "vector-tile" and layer.url and layer_service(layer) is None:
        if "/content/items/" in layer.url:
            return "a vector tile style saved as a portal item (no VectorTileServer URL): " \
                   "cacheorch reads vector tiles from a VectorTileServer only"
        return "a vector tile layer not served by an ArcGIS VectorTileServer"
    if layer.kind in EXPORTED_KINDS:
        return None if layer.url else "a tiled layer without a service URL"
    if layer.kind in _REASONS:
        return _REASONS[layer.kind]
    if layer.type.lower().startswith(_THIRD_PARTY):
        return f"a third-party basemap ({layer.type}): not an ArcGIS cached service"
    return f"a {layer.type or 'layer'} of a kind cacheorch does not export (not a tiled map " \
           "service)"


def service_skip_reason(layer: MapLayer, error: CacheorchError) -> str | None:
    """Why a candidate is skipped after reading its service failed with ``error``; None when
    the error is a failure of the layer (an unreachable server), not a reason to skip it."""
    if isinstance(error, NotCachedError):
        if layer.kind == "map-service":
            return "a dynamic map service: its service is not cached"
        if layer.kind == "vector-tile":
            return "a vector tile layer whose service is not a vector tile service"
        return "a tiled layer whose service is not cached (no tiling scheme)"
    if isinstance(error, AuthError):
        return f"the token cannot read its service ({error})"
    return None


def layer_service(layer: MapLayer) -> str | None:
    """The service a layer's job reads: a vector tile layer's VectorTileServer (its URL may be
    the style's), else the layer's URL."""
    if layer.kind == "vector-tile":
        return vector_tile_service_url(layer.url) if layer.url else None
    return layer.url


def layer_exporter(layer: MapLayer, map_exporter: str) -> str:
    """The exporter of ``layer`` when the map's is ``map_exporter`` (a layer override wins
    before this is asked): vector tile layers get ``vtpk``, or vector MBTiles when the map is
    written for QGIS (mbtiles, gpkg); every other layer the map's exporter."""
    if layer.kind != "vector-tile":
        return map_exporter
    return VECTOR_EXPORTER_FOR.get(split_plugin_spec(map_exporter)[0], VECTOR_EXPORTER)


def mbtiles_cannot_hold(layer: MapLayer, plan: JobPlan) -> bool:
    """Whether ``plan`` writes a vector tile layer to MBTiles, whose only grid is the 512-px
    Web Mercator one, though the layer's levels are on another grid: the map then gives the
    layer ``vtpk`` (which keeps any grid) instead of a job that would fail when it starts."""
    if layer.kind != "vector-tile" or plan.spec.exporter.name != "mbtiles":
        return False
    from cacheorch.vector.mbtiles import check_vector_scheme
    try:
        check_vector_scheme(plan.service.scheme, [lv.lod for lv in plan.levels])
    except ExportError:
        return True
    return False

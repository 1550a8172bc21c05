"""Which layers of a map are exported, and why the others are not: one function, one place.

Vector tile layers are skipped until cacheorch exports vector tiles; switching them on is
adding ``"vector-tile"`` to :data:`EXPORTED_KINDS` (and a tile source that reads them).
"""
from __future__ import annotations

from cacheorch.errors import AuthError, CacheorchError, NotCachedError
from cacheorch.maps.model import MapLayer

__all__ = ["EXPORTED_KINDS", "skip_reason", "service_skip_reason"]

#: Kinds whose layers are exported (when their service turns out to be cached).
EXPORTED_KINDS = frozenset({"tiled-map", "tiled-image", "map-service"})

_REASONS = {
    "dynamic": "a dynamic map service: drawn on request, it has no cached tiles to copy",
    "feature": "a feature layer: vector features, not tiles",
    "wms": "a WMS/WMTS layer: not an ArcGIS cached service",
    "vector-tile": "a vector tile layer: cacheorch does not export vector tiles yet",
    "web-tiled": "a web tiled layer whose template is not an ArcGIS /tile/{level}/{row}/{col} "
                 "cache",
    "local": "a local file: already offline",
}
_THIRD_PARTY = ("openstreetmap", "bingmaps")


def skip_reason(layer: MapLayer) -> str | None:
    """Why ``layer`` is not exported, in words a user understands; None if it is a candidate
    (its service is read next, and may still be refused by :func:`service_skip_reason`)."""
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
        return "a tiled layer whose service is not cached (no tiling scheme)"
    if isinstance(error, AuthError):
        return f"the token cannot read its service ({error})"
    return None

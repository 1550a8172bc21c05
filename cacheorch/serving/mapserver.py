"""The MapServer resource ``cacheorch serve`` answers for a cache: the service JSON and the names.

It exists apart from the HTTP code because the service document is pure data, built once from the
cache's tiling scheme and metadata: the server, the preview page and the WMTS capabilities all
read it, and none of it depends on how requests are parsed.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cacheorch.tiling import BUNDLE_SIZE, Envelope, TilingScheme

if TYPE_CHECKING:
    from cacheorch.formats.cache import TileCache

__all__ = ["SERVER_VERSION", "MAX_EXPORT_TILES", "ROOT", "SERVICES", "NAME_OK",
           "default_service_name", "error_body", "service_json"]

#: The ArcGIS Server version the service JSON imitates (11.1 is the first with ``storageInfo``).
SERVER_VERSION = 11.1
#: ``maxExportTilesCount``: ArcGIS's default.
MAX_EXPORT_TILES = 100000

ROOT = "/arcgis/rest"
SERVICES = ROOT + "/services"
_STORAGE_MODES = {
    "esrimapcachestoragemodecompactv2": "esriMapCacheStorageModeCompactV2",
    "esrimapcachestoragemodecompact": "esriMapCacheStorageModeCompact",
    "esrimapcachestoragemodeexploded": "esriMapCacheStorageModeExploded",
    "compact-v2": "esriMapCacheStorageModeCompactV2", "compactv2": "esriMapCacheStorageModeCompactV2",
    "compact-v1": "esriMapCacheStorageModeCompact", "compactv1": "esriMapCacheStorageModeCompact",
    "compact": "esriMapCacheStorageModeCompact", "exploded": "esriMapCacheStorageModeExploded",
}
NAME_OK = re.compile(r"[A-Za-z0-9_]+\Z")
_BUNDLE_STORAGE = ("esriMapCacheStorageModeCompactV2", "esriMapCacheStorageModeCompact")


def default_service_name(cache_path: str | Path) -> str:
    """The folder or package stem as a service name: ArcGIS allows only letters, digits and ``_``."""
    path = Path(cache_path)
    if path.name.lower() in ("conf.xml", "root.json"):  # a metadata file names its folder
        path = path.parent
    if path.name.lower() == "layers" and path.parent.name:  # ArcGIS: <service>/Layers/conf.xml
        path = path.parent
    stem = path.stem if path.suffix.lower() in (".tpkx", ".tpk") else path.name
    name = re.sub(r"[^A-Za-z0-9_]", "_", stem).strip("_")
    return name or "cache"



def error_body(code: int, message: str) -> bytes:
    """ArcGIS's error JSON shape, so clients that parse ``error.code`` understand us."""
    return json.dumps({"error": {"code": code, "message": message, "details": []}},
                      separators=(",", ":")).encode()


def _storage_format(value: str) -> str:
    return _STORAGE_MODES.get((value or "").lower(), "esriMapCacheStorageModeCompactV2")


def _bundle_extent(scheme: TilingScheme, bundles: list[tuple[int, int, int]]) -> Envelope | None:
    """The extent of the bundles of the coarsest level: a cache without an extent still needs one."""
    if not bundles:
        return None
    level = min(b[0] for b in bundles)
    boxes = [scheme.tile_bounds(level, r, c) for lv, r, c in bundles if lv == level]
    boxes += [scheme.tile_bounds(level, r + BUNDLE_SIZE - 1, c + BUNDLE_SIZE - 1)
              for lv, r, c in bundles if lv == level]
    xmin = min(b[0] for b in boxes)
    ymin = min(b[1] for b in boxes)
    xmax = max(b[2] for b in boxes)
    ymax = max(b[3] for b in boxes)
    grid = scheme.grid_bounds()
    if grid is not None:  # a bundle may run past the end of the grid
        xmin, ymin = max(xmin, grid[0]), max(ymin, grid[1])
        xmax, ymax = min(xmax, grid[2]), min(ymax, grid[3])
    return Envelope(xmin, ymin, xmax, ymax, scheme.spatial_reference)


def service_json(cache: TileCache, name: str, tiled_levels: list[int], source_name: str
                 ) -> dict[str, Any]:
    """The MapServer resource as ArcGIS 10.x/11 writes it for a cached, tiles-only service."""
    scheme: TilingScheme = cache.scheme
    sr = scheme.spatial_reference.to_json()
    full = cache.full_extent or scheme.full_extent or _bundle_extent(scheme, list(cache.bundle_keys()))
    if full is None and scheme.grid_bounds() is not None:
        full = Envelope(*scheme.grid_bounds(), scheme.spatial_reference)  # type: ignore[misc]
    initial = scheme.initial_extent or full
    levels = tiled_levels or list(scheme.tiled_levels) or list(scheme.levels)
    min_lod, max_lod = min(levels), max(levels)

    def extent(env: Envelope | None) -> dict[str, Any] | None:
        if env is None:
            return None
        out = env.to_json()
        out["spatialReference"] = (env.spatial_reference.to_json()
                                   if env.spatial_reference is not None else sr)
        return out

    return {
        "currentVersion": SERVER_VERSION,
        "serviceDescription": getattr(cache, "description", "") or "",
        "mapName": scheme.name or "Layers",
        "name": name,
        "description": f"Tiles of {source_name}, served by cacheorch.",
        "copyrightText": getattr(cache, "copyright", "") or "",
        "supportsDynamicLayers": False,
        "layers": [],
        "tables": [],
        "spatialReference": sr,
        "singleFusedMapCache": True,
        "tileInfo": scheme.to_json(),
        "initialExtent": extent(initial),
        "fullExtent": extent(full),
        "minScale": scheme.lod(min_lod).scale,
        "maxScale": scheme.lod(max_lod).scale,
        "minLOD": min_lod,
        "maxLOD": max_lod,
        "resampling": False,
        "units": scheme.units,
        # Map: /export is served (so not TilesOnly, which says it is not); Tilemap for bundles
        "capabilities": ("Map,Tilemap" if getattr(cache, "storage_format", "") in _BUNDLE_STORAGE
                         else "Map"),
        "supportedImageFormatTypes": "PNG32,PNG24,PNG,JPG",
        "maxImageHeight": 4096,
        "maxImageWidth": 4096,
        "storageInfo": {"storageFormat": _storage_format(getattr(cache, "storage_format", "")),
                        "packetSize": BUNDLE_SIZE},
        "tileServers": [],
        "exportTilesAllowed": False,
        "maxExportTilesCount": MAX_EXPORT_TILES,
    }

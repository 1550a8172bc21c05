"""The preview page at ``/`` of a served cache, its static assets, and the XYZ zoom table.

They live together because the page is what uses XYZ: a cache on the standard Web Mercator grid
is shown (and served at ``/{z}/{x}/{y}``) by zoom, any other by level. The assets are read from
the package (``cacheorch/static``), no CDN, so the page works offline.
"""
from __future__ import annotations

import html
import json
import math
from typing import TYPE_CHECKING, Any

from cacheorch.tiling import WEB_MERCATOR_HALF, TilingScheme

if TYPE_CHECKING:
    from cacheorch.formats.cache import TileCache

__all__ = ["STATIC_FILES", "static_file", "xyz_zooms", "preview_page"]

#: Files of the preview page, served under ``/static/`` (nothing else there is reachable).
STATIC_FILES = {"viewer.js": b"text/javascript; charset=utf-8",
                "viewer.css": b"text/css; charset=utf-8"}
_RES0_256 = 2 * WEB_MERCATOR_HALF / 256


def static_file(name: str) -> bytes:
    from importlib.resources import files
    return files("cacheorch").joinpath("static", name).read_bytes()


def xyz_zooms(scheme: TilingScheme) -> dict[int, int]:
    """zoom → level ID when the cache is on the standard Web Mercator grid, else empty.

    The standard grid is what every XYZ client assumes: Web Mercator, 256-pixel tiles, origin at
    the world's top-left corner, resolution halving from 156543.03 m. Levels are matched by
    resolution, not by ID, so a cache whose level IDs are offset still serves the right zoom.
    """
    if not scheme.spatial_reference.is_web_mercator or (scheme.tile_cols, scheme.tile_rows) != (256, 256):
        return {}
    if not (math.isclose(scheme.origin_x, -WEB_MERCATOR_HALF, abs_tol=0.01)
            and math.isclose(scheme.origin_y, WEB_MERCATOR_HALF, abs_tol=0.01)):
        return {}
    zooms: dict[int, int] = {}
    for lod in scheme.lods:
        zoom = round(math.log2(_RES0_256 / lod.resolution))
        if 0 <= zoom <= 30 and math.isclose(lod.resolution, _RES0_256 / 2 ** zoom, rel_tol=1e-6):
            zooms[zoom] = lod.level
    return zooms


def preview_page(cache: TileCache, service: dict[str, Any], service_path: str,
                 tiled_levels: list[int], zooms: dict[int, int]) -> bytes:
    """The preview HTML: the template with the service JSON inlined (no request before tiles)."""
    from cacheorch.serving.extent import data_extent
    scheme = cache.scheme
    grids = {}
    for level in tiled_levels:
        size = scheme.grid_size(level) if level in scheme.levels else None
        if size is not None:
            grids[str(level)] = list(size)
    config = {"service": service, "serviceUrl": service_path, "levels": tiled_levels,
              "grids": grids, "storage": getattr(cache, "storage_label", ""),
              "xyz": min((z for z, lv in zooms.items() if lv in tiled_levels), default=None),
              "dataExtent": data_extent(cache, tiled_levels)}
    # every "<" as \u003c: the JSON can neither close the script element nor open a comment
    text = json.dumps(config, separators=(",", ":")).replace("<", "\\u003c")
    page = static_file("preview.html").decode()
    page = page.replace("{{title}}", html.escape(str(service.get("name") or "cache")))
    return page.replace("{{config}}", text).encode()


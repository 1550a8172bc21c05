"""The route table of a served cache: everything a request needs, computed once.

Kept apart from the request handler so that the handler only looks things up: the service
documents are rendered to bytes, the preview page is built, and the ``/export`` and ``/WMTS``
handlers (:mod:`cacheorch.serving.routes`) are registered before the first request.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cacheorch.serving.mapserver import ROOT, SERVER_VERSION, SERVICES
from cacheorch.serving.preview import STATIC_FILES, preview_page, static_file, xyz_zooms

if TYPE_CHECKING:
    from cacheorch.formats.cache import TileCache
    from cacheorch.serving.routes import Handler

__all__ = ["RouteTable"]


class RouteTable:
    """Everything a request needs, computed once: the handler only looks things up."""

    def __init__(self, cache: TileCache, name: str, service: dict[str, Any], tiled_levels: list[int]
                 ) -> None:
        self.cache = cache
        self.name = name
        self.get_tile: Callable[[int, int, int], bytes | None] = cache.get_tile
        self.levels = frozenset(tiled_levels)
        self.service_path = f"{SERVICES}/{name}/MapServer".lower()
        self.tile_prefix = f"{SERVICES}/{name}/MapServer/tile/"
        self.tile_prefix_lower = self.tile_prefix.lower()
        self.tilemap_prefix = (f"{SERVICES}/{name}/MapServer/tilemap/".lower()
                               if "Tilemap" in service["capabilities"] else None)
        self.zooms = xyz_zooms(cache.scheme)
        grid = {level: cache.scheme.grid_size(level) for level in tiled_levels
                if level in cache.scheme.levels}
        self.grid = {level: size for level, size in grid.items() if size is not None}
        #: (rows, cols) of every level of the scheme; unbounded grids get a bound no tile reaches
        self.scheme_grid = {level: cache.scheme.grid_size(level) or (2 ** 31, 2 ** 31)
                            for level in cache.scheme.levels}
        page = preview_page(cache, service, f"{SERVICES}/{name}/MapServer", tiled_levels, self.zooms)
        self.assets: dict[str, tuple[bytes, bytes]] = {
            "": (b"text/html; charset=utf-8", page), "/preview": (b"text/html; charset=utf-8", page),
            **{f"/static/{file}": (ctype, static_file(file)) for file, ctype in STATIC_FILES.items()},
        }
        catalog = {"currentVersion": SERVER_VERSION, "folders": [],
                   "services": [{"name": name, "type": "MapServer"}]}
        info = {"currentVersion": SERVER_VERSION, "fullVersion": f"{SERVER_VERSION}.0",
                "authInfo": {"isTokenBasedSecurity": False}}
        self.documents: dict[str, tuple[bytes, bytes]] = {
            path: (json.dumps(doc, separators=(",", ":")).encode(), json.dumps(doc, indent=2).encode())
            for path, doc in ((self.service_path, service), (SERVICES, catalog),
                              (ROOT + "/info", info))
        }
        #: (lower-case path prefix, handler): /export and /WMTS (see cacheorch.serving.routes)
        self.handlers: list[tuple[str, Handler]] = []
        from cacheorch.serving.routes import add_handlers
        add_handlers(self, service, tiled_levels)

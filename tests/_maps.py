"""Test helpers for maps: loopback services of a map, a loopback portal, and GDAL read-backs.

Import as ``from _maps import ...`` (tests/ is on sys.path via conftest.py).
"""
from __future__ import annotations

import json
import threading
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import rasterio

from _gdal import decode_rgba, open_gdal, read_tile, solid_png
from _tiles import Tiles, mercator_service_json
from _tileserver import TileServer
from cacheorch.tiling import web_mercator_scheme

__all__ = ["MapServices", "Portal", "gdal_tiles_differ", "tiles_of", "install_stand_in_arcpy"]

LEVELS = (0, 1, 2)


def tiles_of(seed: int, levels=LEVELS) -> Tiles:
    """A pyramid whose colours are the server's own (so a mix-up of layers shows)."""
    return {(lv, r, c): solid_png(((seed * 70 + lv * 40) % 256, (r * 50 + seed) % 256,
                                   (c * 60 + 3 * seed) % 256), size=256)
            for lv in levels for r in range(2 ** lv) for c in range(2 ** lv)}


class MapServices:
    """Cached services Topo, Roads, Hillshade, and a MapServer without a cache (Soils), on
    separate loopback servers (separate hosts as far as a client can tell: other ports)."""

    def __init__(self, delay: float = 0.0, down: tuple[str, ...] = ()) -> None:
        self.stack = ExitStack()
        self.tiles: dict[str, Tiles] = {}
        self.servers: dict[str, TileServer] = {}
        self.delay, self.down = delay, down

    def __enter__(self) -> MapServices:
        for seed, name in enumerate(("Topo", "Roads", "Hillshade"), start=1):
            tiles = tiles_of(seed)
            self.tiles[name] = tiles
            service = mercator_service_json(max(LEVELS))
            fail = tiles.keys() if name in self.down else ()
            self.servers[name] = self.stack.enter_context(
                TileServer(tiles, name=name, service=service, delay=self.delay, fail_always=fail))
        soils = {"currentVersion": 10.81, "singleFusedMapCache": False,
                 "spatialReference": {"wkid": 102100}}
        self.servers["Soils"] = self.stack.enter_context(TileServer({}, name="Soils",
                                                                    service=soils))
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def url(self, name: str) -> str:
        return self.servers[name].url


class Portal:
    """A loopback portal: ``/sharing/rest/content/items/ID`` and ``.../data`` for its items,
    refusing requests without ``token`` when one is set (ArcGIS's 499 error body)."""

    def __init__(self, items: dict[str, tuple[dict[str, Any], Any]], token: str | None = None
                 ) -> None:
        self.items, self.token = items, token
        self.log: list[str] = []
        portal = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                portal.log.append(self.path)
                head = "/portal/sharing/rest/content/items/"
                body: Any = {"error": {"code": 400, "message": "Invalid URL", "details": []}}
                if portal.token and query.get("token", [""])[0] != portal.token:
                    body = {"error": {"code": 499, "message": "Token Required", "details": []}}
                elif parts.path.startswith(head):
                    item_id, _, rest = parts.path[len(head):].partition("/")
                    if item_id in portal.items:
                        info, data = portal.items[item_id]
                        body = data if rest == "data" else info
                    else:
                        body = {"error": {"code": 400, "message": "Item does not exist or is "
                                          "inaccessible.", "details": []}}
                raw = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/portal"

    def __enter__(self) -> Portal:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def gdal_tiles_differ(path: Path, tiles: Tiles) -> list[tuple[int, int, int]]:
    """Tiles whose pixels, as GDAL reads them from ``path`` at their own level, differ from the
    decoded source tile (tpkx and compact caches: ESRIC; GeoPackage and MBTiles: their driver)."""
    scheme = web_mercator_scheme(max(LEVELS))
    bad = []
    suffix = Path(path).suffix.lower()
    for level in sorted({k[0] for k in tiles}):
        if suffix in (".gpkg", ".mbtiles"):
            driver = "GPKG" if suffix == ".gpkg" else "MBTiles"
            ds = rasterio.open(path, driver=driver, ZOOM_LEVEL=str(level))
        else:
            ds = open_gdal(path)
        with ds:
            for key in (k for k in sorted(tiles) if k[0] == level):
                ours = decode_rgba(tiles[key])[:ds.count]
                if not np.array_equal(read_tile(ds, scheme, *key), ours):
                    bad.append(key)
    return bad


def install_stand_in_arcpy(monkeypatch, url: str) -> None:
    """A stand-in ``arcpy`` whose project (any .aprx, or "CURRENT" + importDocument of an .mxd)
    holds one map: a tiled Roads layer, a group, a hidden Topo basemap (25 % transparent)."""
    import sys
    import types

    from cacheorch.plugins.maps_readers import ArcpyMapReader

    class Layer:
        def __init__(self, name, definition, group=False, visible=True):
            self.name, self._definition = name, definition
            self.isGroupLayer, self.visible = group, visible

        def getDefinition(self, version):  # noqa: N802 - arcpy's name
            assert version == "V3"
            return self._definition

    class CIMTiledServiceLayer:
        def __init__(self, name, layer_type):
            self.name, self.layerType, self.visibility, self.transparency = name, layer_type, True, 25
            self.serviceConnection = type("CIMAGSServiceConnection", (), {})()
            self.serviceConnection.url, self.serviceConnection.objectType = url, "MapServer"

    layers = [Layer("Roads", CIMTiledServiceLayer("Roads", "Operational")),
              Layer("Group", None, group=True),
              Layer("Topo", CIMTiledServiceLayer("Topo", "BasemapBackground"), visible=False)]
    ns = types.SimpleNamespace
    project = ns(listMaps=lambda: [ns(name="Field", listLayers=lambda: layers)],
                 importDocument=lambda path: None)
    arcpy = types.ModuleType("arcpy")
    arcpy.mp = ns(ArcGISProject=lambda path: project)
    monkeypatch.setitem(sys.modules, "arcpy", arcpy)
    monkeypatch.setattr(ArcpyMapReader, "available", classmethod(lambda cls: True))

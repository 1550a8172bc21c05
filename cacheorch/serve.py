"""``cacheorch serve``: a local cache or package, served as an ArcGIS REST tiled MapServer.

Why a server at all: it lets ``run`` (and any ArcGIS client) read an offline cache through the same
``/tile/{level}/{row}/{col}`` path as a real service, so an export can be checked by exporting it
again, and a cache can be viewed in a web map without ArcGIS.

The request path is kept lean on purpose (the server is used in throughput benchmarks): the service
JSON is rendered once, headers are written as one pre-built block with the body in a single send,
there is no per-request logging, and the tile route is matched before anything else.

Besides the ArcGIS REST paths it answers, for any cache :func:`open_cache` reads:

* ``/tilemap/{level}/{row}/{col}/{width}/{height}`` (spec §2.3) for bundle caches (Compact V1
  and V2), answered from the bundle index alone, and listed as ``Tilemap`` in the capabilities;
* ``/{z}/{x}/{y}`` (XYZ, x = column, y = row) when the cache is on the standard Web Mercator
  grid, so web maps and QGIS's XYZ layers can show it;
* ``/`` (and ``/preview``): an HTML page with a small slippy map of the cache, its assets served
  from the package (``cacheorch/static``), no CDN: it works offline and in any spatial reference.
"""
from __future__ import annotations

import html
import json
import math
import re
import socket
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from cacheorch.errors import CacheorchError, FormatError, UsageError
from cacheorch.formats.png import JPEG_MAGIC, PNG_MAGIC
from cacheorch.tiling import BUNDLE_SIZE, WEB_MERCATOR_HALF, Envelope, TilingScheme

if TYPE_CHECKING:
    from cacheorch.formats.cache import TileCache
    from cacheorch.serving.routes import Handler

__all__ = ["CacheServer", "run_server", "default_service_name", "SERVER_VERSION", "xyz_zooms",
           "preview_page", "STATIC_FILES"]

#: The ArcGIS Server version the service JSON imitates (11.1 is the first with ``storageInfo``).
SERVER_VERSION = 11.1
#: ``maxExportTilesCount``: ArcGIS's default.
MAX_EXPORT_TILES = 100000
#: Seconds an idle keep-alive connection is held before the server drops it.
IDLE_TIMEOUT = 120.0
#: Request headers accepted before answering 431 (the stdlib's limit too).
_MAX_HEADERS = 100

_ROOT = "/arcgis/rest"
_SERVICES = _ROOT + "/services"
_STORAGE_MODES = {
    "esrimapcachestoragemodecompactv2": "esriMapCacheStorageModeCompactV2",
    "esrimapcachestoragemodecompact": "esriMapCacheStorageModeCompact",
    "esrimapcachestoragemodeexploded": "esriMapCacheStorageModeExploded",
    "compact-v2": "esriMapCacheStorageModeCompactV2", "compactv2": "esriMapCacheStorageModeCompactV2",
    "compact-v1": "esriMapCacheStorageModeCompact", "compactv1": "esriMapCacheStorageModeCompact",
    "compact": "esriMapCacheStorageModeCompact", "exploded": "esriMapCacheStorageModeExploded",
}
_NAME_OK = re.compile(r"[A-Za-z0-9_]+\Z")


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


def _content_type(data: bytes) -> bytes:
    """The image type from the magic bytes: MIXED caches hold both PNG and JPEG tiles."""
    if data.startswith(PNG_MAGIC):
        return b"image/png"
    if data.startswith(JPEG_MAGIC):
        return b"image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return b"image/webp"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return b"image/gif"
    return b"application/octet-stream"


#: Files of the preview page, served under ``/static/`` (nothing else there is reachable).
STATIC_FILES = {"viewer.js": b"text/javascript; charset=utf-8",
                "viewer.css": b"text/css; charset=utf-8"}
_RES0_256 = 2 * WEB_MERCATOR_HALF / 256
_XYZ = re.compile(r"/(\d{1,2})/(\d{1,10})/(\d{1,10})(?:\.(?:png|jpe?g|jpg|webp|image))?\Z")
_BUNDLE_STORAGE = ("esriMapCacheStorageModeCompactV2", "esriMapCacheStorageModeCompact")


def _static(name: str) -> bytes:
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
    page = _static("preview.html").decode()
    page = page.replace("{{title}}", html.escape(str(service.get("name") or "cache")))
    return page.replace("{{config}}", text).encode()


def _error_body(code: int, message: str) -> bytes:
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


class _Routes:
    """Everything a request needs, computed once: the handler only looks things up."""

    def __init__(self, cache: TileCache, name: str, service: dict[str, Any], tiled_levels: list[int]
                 ) -> None:
        self.cache = cache
        self.name = name
        self.get_tile: Callable[[int, int, int], bytes | None] = cache.get_tile
        self.levels = frozenset(tiled_levels)
        self.service_path = f"{_SERVICES}/{name}/MapServer".lower()
        self.tile_prefix = f"{_SERVICES}/{name}/MapServer/tile/"
        self.tile_prefix_lower = self.tile_prefix.lower()
        self.tilemap_prefix = (f"{_SERVICES}/{name}/MapServer/tilemap/".lower()
                               if "Tilemap" in service["capabilities"] else None)
        self.zooms = xyz_zooms(cache.scheme)
        grid = {level: cache.scheme.grid_size(level) for level in tiled_levels
                if level in cache.scheme.levels}
        self.grid = {level: size for level, size in grid.items() if size is not None}
        #: (rows, cols) of every level of the scheme; unbounded grids get a bound no tile reaches
        self.scheme_grid = {level: cache.scheme.grid_size(level) or (2 ** 31, 2 ** 31)
                            for level in cache.scheme.levels}
        page = preview_page(cache, service, f"{_SERVICES}/{name}/MapServer", tiled_levels, self.zooms)
        self.assets: dict[str, tuple[bytes, bytes]] = {
            "": (b"text/html; charset=utf-8", page), "/preview": (b"text/html; charset=utf-8", page),
            **{f"/static/{file}": (ctype, _static(file)) for file, ctype in STATIC_FILES.items()},
        }
        catalog = {"currentVersion": SERVER_VERSION, "folders": [],
                   "services": [{"name": name, "type": "MapServer"}]}
        info = {"currentVersion": SERVER_VERSION, "fullVersion": f"{SERVER_VERSION}.0",
                "authInfo": {"isTokenBasedSecurity": False}}
        self.documents: dict[str, tuple[bytes, bytes]] = {
            path: (json.dumps(doc, separators=(",", ":")).encode(), json.dumps(doc, indent=2).encode())
            for path, doc in ((self.service_path, service), (_SERVICES, catalog),
                              (_ROOT + "/info", info))
        }
        #: (lower-case path prefix, handler): /export and /WMTS (see cacheorch.serving.routes)
        self.handlers: list[tuple[str, Handler]] = []
        from cacheorch.serving.routes import add_handlers
        add_handlers(self, service, tiled_levels)


_TILE_MISSING = _error_body(404, "Tile not found")
_NOT_FOUND_HEAD = b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
_CORS = b"Access-Control-Allow-Origin: *\r\n"


class _Handler(BaseHTTPRequestHandler):
    """One connection; HTTP/1.1 so clients keep it alive between tiles."""

    protocol_version = "HTTP/1.1"
    server_version = "cacheorch"
    disable_nagle_algorithm = True  # header and body go out in one send; do not wait for an ACK
    timeout = IDLE_TIMEOUT
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Silent: logging every tile would cost more than serving it."""

    def parse_request(self) -> bool:
        """The stdlib parser minus the email-package header parse, which cost more than a tile read.

        Only ``Connection`` matters to a GET/HEAD-only server; other headers are skipped unparsed.
        """
        self.command = None  # type: ignore[assignment]  # as the stdlib does, for error replies
        self.host_header = ""
        self.request_version = "HTTP/0.9"
        self.close_connection = True
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = self.requestline.split()
        if len(words) != 3 or not words[2].startswith("HTTP/1."):
            if len(words) == 3 and words[2].startswith("HTTP/"):
                self.send_error(505, f"HTTP version {words[2]} not supported")
            else:
                self.send_error(400, f"Bad request line {self.requestline[:100]!r}")
            return False
        self.command, self.path, self.request_version = words
        keep_alive = self.request_version != "HTTP/1.0"
        readline = self.rfile.readline
        for _ in range(_MAX_HEADERS):
            line = readline(65537)
            if len(line) > 65536:
                self.send_error(431, "Header line too long")
                return False
            if line in (b"\r\n", b"\n", b""):
                break
            if line[:5].lower() == b"host:":
                self.host_header = line[5:].strip().decode("latin-1")
            elif line[:11].lower() == b"connection:":
                value = line[11:].strip().lower()
                keep_alive = value != b"close" and (keep_alive or value == b"keep-alive")
        else:
            self.send_error(431, "Too many headers")
            return False
        self.close_connection = not keep_alive
        return True

    # -- responses ------------------------------------------------------------------------------

    def _base_url(self) -> str:
        """``http://host[:port]`` as the client asked for it (for absolute URLs in documents)."""
        host = self.host_header
        if not host or any(c in host for c in "\"<>/ \\"):
            address = self.server.server_address
            host = f"[{address[0]}]:{address[1]}" if ":" in str(address[0]) else f"{address[0]}:{address[1]}"
        return f"http://{host}"

    def _send(self, head: bytes, content_type: bytes, body: bytes, head_only: bool) -> None:
        keep = b"" if not self.close_connection else b"Connection: close\r\n"
        self.wfile.write(b"".join((
            head, b"Content-Type: ", content_type, b"\r\nContent-Length: ", str(len(body)).encode(),
            b"\r\n", _CORS, keep, b"\r\n", b"" if head_only else body)))

    def _not_found(self, body: bytes, head_only: bool) -> None:
        self.wfile.write(b"".join((
            _NOT_FOUND_HEAD, b"Content-Length: ", str(len(body)).encode(), b"\r\n", _CORS,
            b"" if not self.close_connection else b"Connection: close\r\n", b"\r\n",
            b"" if head_only else body)))

    def _route(self, head_only: bool) -> None:
        routes: _Routes = self.server.routes
        path, _, query = self.path.partition("?")
        if path.startswith(routes.tile_prefix) or path.lower().startswith(routes.tile_prefix_lower):
            self._tile(routes, path[len(routes.tile_prefix):], head_only)
            return
        lower = path.lower()
        if routes.tilemap_prefix is not None and lower.startswith(routes.tilemap_prefix):
            self._tilemap(routes, path[len(routes.tilemap_prefix):], head_only)
            return
        xyz = _XYZ.match(path)
        if xyz is not None:
            self._xyz(routes, int(xyz.group(1)), int(xyz.group(2)), int(xyz.group(3)), head_only)
            return
        for prefix, handler in routes.handlers:
            if lower.startswith(prefix):
                answer = handler(path[len(prefix):], query, self._base_url())
                if isinstance(answer[0], int):  # (level, row, col): a tile
                    self._tile(routes, "/".join(map(str, answer)), head_only)
                else:
                    self._send(*answer, head_only)  # type: ignore[arg-type]
                return
        key = path.rstrip("/").lower()
        asset = routes.assets.get(key)
        if asset is not None:
            self._send(b"HTTP/1.1 200 OK\r\n", asset[0], asset[1], head_only)
            return
        document = routes.documents.get(key)
        if document is None:
            self._not_found(_error_body(404, f"Not found: {path}"), head_only)
            return
        pretty = "pjson" in query and "pjson" in parse_qs(query).get("f", ())
        self._send(b"HTTP/1.1 200 OK\r\n", b"application/json; charset=utf-8",
                   document[1] if pretty else document[0], head_only)

    def _tile(self, routes: _Routes, rest: str, head_only: bool) -> None:
        parts = rest.split("/")
        if len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts):
            self._not_found(_error_body(404, "Tile path must be tile/{level}/{row}/{col}"), head_only)
            return
        level, row, col = int(parts[0]), int(parts[1]), int(parts[2])
        if level not in routes.levels:
            self._no_tile(routes, level, row, col, head_only)
            return
        try:
            data = routes.get_tile(level, row, col)
        except CacheorchError as exc:  # a damaged bundle: say so, keep serving the others
            self._send(b"HTTP/1.1 500 Internal Server Error\r\n", b"application/json",
                       _error_body(500, str(exc)), head_only)
            return
        except (ValueError, OverflowError):  # a row or column no bundle name can hold
            data = None
        if data is None:
            self._no_tile(routes, level, row, col, head_only)
            return
        self._send(b"HTTP/1.1 200 OK\r\n", _content_type(data), data, head_only)

    def _no_tile(self, routes: _Routes, level: int, row: int, col: int, head_only: bool) -> None:
        """A tile of the grid the cache does not hold: 204, which GDAL's WMS driver (and ``run``)
        read as empty, where a 404 would fail the whole read; off the grid or the levels: 404."""
        grid = routes.scheme_grid.get(level)
        if grid is None or row >= grid[0] or col >= grid[1]:
            self._not_found(_TILE_MISSING, head_only)
            return
        self.wfile.write(b"".join((b"HTTP/1.1 204 No Content\r\n", _CORS,
                                   b"" if not self.close_connection else b"Connection: close\r\n", b"\r\n")))

    def _xyz(self, routes: _Routes, zoom: int, x: int, y: int, head_only: bool) -> None:
        if not routes.zooms:
            self._not_found(_error_body(404, "XYZ paths need a cache on the standard Web Mercator "
                                             "grid; use the MapServer's tile/{level}/{row}/{col}"),
                            head_only)
            return
        level = routes.zooms.get(zoom)
        if level is None or x >= 2 ** zoom or y >= 2 ** zoom:
            self._not_found(_TILE_MISSING, head_only)
            return
        self._tile(routes, f"{level}/{y}/{x}", head_only)

    def _tilemap(self, routes: _Routes, rest: str, head_only: bool) -> None:
        """``tilemap/{level}/{row}/{col}/{width}/{height}`` as ArcGIS answers it (spec §2.3).

        A block crossing a bundle line is clipped to the bundle of its top-left tile and marked
        ``adjusted``; a level without tiles is all zeros, not an error.
        """
        parts = rest.split("/")
        if len(parts) != 5 or not all(p.isascii() and p.isdigit() and len(p) < 10 for p in parts):
            self._not_found(_error_body(404, "Tilemap path must be "
                                             "tilemap/{level}/{row}/{col}/{width}/{height}"), head_only)
            return
        level, top, left, width, height = map(int, parts)
        if width < 1 or height < 1:
            self._send(b"HTTP/1.1 400 Bad Request\r\n", b"application/json",
                       _error_body(400, "tilemap width and height must be at least 1"), head_only)
            return
        w = min(width, BUNDLE_SIZE - left % BUNDLE_SIZE)
        h = min(height, BUNDLE_SIZE - top % BUNDLE_SIZE)
        data = [0] * (w * h)
        grid = routes.grid.get(level)
        if level in routes.levels:
            from cacheorch.verify import bundle_presence
            brow, bcol = top - top % BUNDLE_SIZE, left - left % BUNDLE_SIZE
            try:
                flags = bundle_presence(routes.cache, level, brow, bcol)
            except CacheorchError as exc:
                self._send(b"HTTP/1.1 500 Internal Server Error\r\n", b"application/json",
                           _error_body(500, str(exc)), head_only)
                return
            if flags is not None:
                for r in range(h):
                    row = top + r
                    base = (row % BUNDLE_SIZE) * BUNDLE_SIZE + left % BUNDLE_SIZE
                    for c in range(w):
                        if flags[base + c] and (grid is None or (row < grid[0] and left + c < grid[1])):
                            data[r * w + c] = 1
        body = json.dumps({"adjusted": (w, h) != (width, height), "valid": True, "data": data,
                           "location": {"left": left, "top": top, "width": w, "height": h}},
                          separators=(",", ":")).encode()
        self._send(b"HTTP/1.1 200 OK\r\n", b"application/json; charset=utf-8", body, head_only)

    # -- methods --------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._route(False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._route(True)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol errors (bad request line, 501, 431...) as ArcGIS error JSON, then hang up."""
        self.close_connection = True
        try:
            reason = HTTPStatus(code).phrase
        except ValueError:
            reason = "Error"
        extra = b"Allow: GET, HEAD\r\n" if code in (405, 501) else b""
        body = _error_body(code, message or reason)
        self.wfile.write(b"".join((
            f"HTTP/1.1 {code} {reason}\r\n".encode(), extra, b"Content-Type: application/json\r\n"
            b"Content-Length: ", str(len(body)).encode(), b"\r\nConnection: close\r\n\r\n", body)))

    def _refuse(self) -> None:
        # The request body is not read, so the connection cannot carry another request.
        self.send_error(405, f"Method {self.command} not allowed; use GET or HEAD")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse  # noqa: N815


class _Server(ThreadingHTTPServer):
    """Tracks open connections so that :meth:`CacheServer.stop` can end idle keep-alive ones."""

    daemon_threads = True
    request_queue_size = 128  # a benchmark opens many connections at once

    def __init__(self, address: tuple[str, int], routes: _Routes) -> None:
        self.routes = routes
        self._connections: set[socket.socket] = set()
        self._lock = threading.Condition()
        self._closing = False
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-answer is normal under load; only real bugs get a traceback."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    def track(self, conn: socket.socket, opened: bool) -> None:
        with self._lock:
            if opened:
                self._connections.add(conn)
                if self._closing:  # accepted just as the server stopped
                    _shutdown(conn)
            else:
                self._connections.discard(conn)
                self._lock.notify_all()

    def close_connections(self, wait: float = 5.0) -> None:
        """Wake every handler blocked on an idle connection and wait for them to finish."""
        with self._lock:
            self._closing = True
            for conn in list(self._connections):
                _shutdown(conn)
            self._lock.wait_for(lambda: not self._connections, timeout=wait)


def _shutdown(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Server6(_Server):
    address_family = socket.AF_INET6


class CacheServer:
    """Any cache :func:`open_cache` reads, served as ``/arcgis/rest/services/<name>/MapServer``
    (plus XYZ paths for Web Mercator caches and a preview page at ``/``).

    The socket is bound on construction (``port=0`` picks a free port), so :attr:`url` is known
    before serving starts. Entering the context starts serving in a background thread; leaving it
    stops the server and closes the cache.
    """

    def __init__(self, cache_path: str | Path, host: str = "127.0.0.1", port: int = 0,
                 service_name: str | None = None) -> None:
        path = Path(cache_path)
        if service_name is not None and not _NAME_OK.match(service_name):
            raise UsageError(f"service name {service_name!r} may hold only letters, digits and _")
        self.name = service_name or default_service_name(path)
        self.cache_path = path
        self.cache = _open(path)
        self._thread: threading.Thread | None = None
        self._serving = False
        self._stopped = False
        try:
            tiled_levels = sorted({key[0] for key in self.cache.bundle_keys()})
            self.service = service_json(self.cache, self.name, tiled_levels, path.name)
            routes = _Routes(self.cache, self.name, self.service, tiled_levels)
            server_cls = _Server6 if ":" in host else _Server
            try:
                self._httpd = server_cls((host, port), routes)
            except OSError as exc:
                raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        except BaseException:
            self.cache.close()
            raise
        self.host, self.port = host, self._httpd.server_address[1]

    # -- addresses ------------------------------------------------------------------------------

    @property
    def root_url(self) -> str:
        """``http://host:port`` as a client on this machine reaches it."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        host = "[::1]" if host == "::" else (f"[{host}]" if ":" in host else host)
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The MapServer URL, as ``run --service`` takes it."""
        return f"{self.root_url}{_SERVICES}/{self.name}/MapServer"

    @property
    def tile_url_template(self) -> str:
        return f"{self.url}/tile/{{level}}/{{row}}/{{col}}"

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> CacheServer:
        """Serve in a daemon thread and return at once (idempotent)."""
        if self._stopped:
            raise UsageError("the server was stopped; make a new CacheServer")
        if self._thread is None:
            self._serving = True
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                            name=f"cacheorch-serve-{self.port}", daemon=True)
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve until :meth:`stop` (or Ctrl-C), in this thread or by waiting on the started one."""
        if self._stopped:
            raise UsageError("the server was stopped; make a new CacheServer")
        if self._thread is not None:
            while self._thread.is_alive():
                self._thread.join(0.5)
            return
        self._serving = True
        self._httpd.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        """Stop serving, end open connections, close the cache. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        if self._serving:
            self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd.close_connections()
        if self._thread is not None:
            self._thread.join(5.0)
        self.cache.close()

    def __enter__(self) -> CacheServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"CacheServer({str(self.cache_path)!r}, url={self.url!r})"


def _open(path: Path) -> TileCache:
    """Open the cache, turning every way a path can be wrong into one line."""
    if not path.exists():
        raise FormatError(f"{path}: no such cache folder or package")
    from cacheorch.formats.cache import open_cache

    try:
        return open_cache(path)
    except CacheorchError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise FormatError(f"{path}: not a readable tile cache or package ({exc})") from None


def run_server(cache: str | Path, host: str = "127.0.0.1", port: int = 0, name: str | None = None,
               echo: Callable[[str], Any] = print) -> None:
    """The ``serve`` command: print where the service is, then serve until Ctrl-C."""
    from cacheorch.vector.reader import is_vector_output
    if is_vector_output(cache):  # .vtpk, pbf MBTiles: served as a VectorTileServer
        from cacheorch.vector.serve import run_vector_server
        return run_vector_server(cache, host, port, name, echo)
    server = CacheServer(cache, host=host, port=port, service_name=name)
    try:
        service = server.service
        echo(f"Serving {server.cache_path} (levels {service['minLOD']}-{service['maxLOD']}) at")
        echo(f"  {server.url}")
        echo(f"Preview in a browser: {server.root_url}/")
        if xyz_zooms(server.cache.scheme):
            echo(f"XYZ tiles: {server.root_url}/{{z}}/{{x}}/{{y}}")
        if server.cache.scheme.spatial_reference.epsg is not None:  # WMTS names its CRS by code
            echo(f"WMTS: {server.url}/WMTS/1.0.0/WMTSCapabilities.xml")
        echo(f"GDAL: WMS:{server.url}?f=json")
        if host not in ("127.0.0.1", "localhost", "::1"):
            echo(f"Note: listening on {host}, reachable from other machines.")
        echo("Press Ctrl-C to stop.")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            echo("Stopped.")
    finally:
        server.stop()

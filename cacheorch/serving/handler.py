"""The request handler of ``cacheorch serve``: one connection, its requests parsed and answered.

The request path is kept lean on purpose (the server is used in throughput benchmarks): headers
are written as one pre-built block with the body in a single send, there is no per-request
logging, and the tile route is matched before anything else. Everything it answers from is in
the route table (:mod:`cacheorch.serving.table`), built once.
"""
from __future__ import annotations

import json
import re
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

from cacheorch.errors import CacheorchError
from cacheorch.formats.png import JPEG_MAGIC, PNG_MAGIC
from cacheorch.serving.httpd import ThreadedServer, TrackedHandler
from cacheorch.serving.mapserver import error_body
from cacheorch.serving.table import RouteTable
from cacheorch.tiling import BUNDLE_SIZE

__all__ = ["MapServerHandler", "content_type", "IDLE_TIMEOUT"]

#: Seconds an idle keep-alive connection is held before the server drops it.
IDLE_TIMEOUT = 120.0
#: Request headers accepted before answering 431 (the stdlib's limit too).
_MAX_HEADERS = 100
_XYZ = re.compile(r"/(\d{1,2})/(\d{1,10})/(\d{1,10})(?:\.(?:png|jpe?g|jpg|webp|image))?\Z")


def content_type(data: bytes) -> bytes:
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


_TILE_MISSING = error_body(404, "Tile not found")
_NOT_FOUND_HEAD = b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
_CORS = b"Access-Control-Allow-Origin: *\r\n"


class MapServerHandler(TrackedHandler):
    """One connection; HTTP/1.1 so clients keep it alive between tiles."""

    protocol_version = "HTTP/1.1"
    server_version = "cacheorch"
    disable_nagle_algorithm = True  # header and body go out in one send; do not wait for an ACK
    timeout = IDLE_TIMEOUT
    server: ThreadedServer

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
        routes: RouteTable = self.server.routes
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
            self._not_found(error_body(404, f"Not found: {path}"), head_only)
            return
        pretty = "pjson" in query and "pjson" in parse_qs(query).get("f", ())
        self._send(b"HTTP/1.1 200 OK\r\n", b"application/json; charset=utf-8",
                   document[1] if pretty else document[0], head_only)

    def _tile(self, routes: RouteTable, rest: str, head_only: bool) -> None:
        parts = rest.split("/")
        if len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts):
            self._not_found(error_body(404, "Tile path must be tile/{level}/{row}/{col}"), head_only)
            return
        level, row, col = int(parts[0]), int(parts[1]), int(parts[2])
        if level not in routes.levels:
            self._no_tile(routes, level, row, col, head_only)
            return
        try:
            data = routes.get_tile(level, row, col)
        except CacheorchError as exc:  # a damaged bundle: say so, keep serving the others
            self._send(b"HTTP/1.1 500 Internal Server Error\r\n", b"application/json",
                       error_body(500, str(exc)), head_only)
            return
        except (ValueError, OverflowError):  # a row or column no bundle name can hold
            data = None
        if data is None:
            self._no_tile(routes, level, row, col, head_only)
            return
        self._send(b"HTTP/1.1 200 OK\r\n", content_type(data), data, head_only)

    def _no_tile(self, routes: RouteTable, level: int, row: int, col: int, head_only: bool) -> None:
        """A tile of the grid the cache does not hold: 204, which GDAL's WMS driver (and ``run``)
        read as empty, where a 404 would fail the whole read; off the grid or the levels: 404."""
        grid = routes.scheme_grid.get(level)
        if grid is None or row >= grid[0] or col >= grid[1]:
            self._not_found(_TILE_MISSING, head_only)
            return
        self.wfile.write(b"".join((b"HTTP/1.1 204 No Content\r\n", _CORS,
                                   b"" if not self.close_connection else b"Connection: close\r\n", b"\r\n")))

    def _xyz(self, routes: RouteTable, zoom: int, x: int, y: int, head_only: bool) -> None:
        if not routes.zooms:
            self._not_found(error_body(404, "XYZ paths need a cache on the standard Web Mercator "
                                             "grid; use the MapServer's tile/{level}/{row}/{col}"),
                            head_only)
            return
        level = routes.zooms.get(zoom)
        if level is None or x >= 2 ** zoom or y >= 2 ** zoom:
            self._not_found(_TILE_MISSING, head_only)
            return
        self._tile(routes, f"{level}/{y}/{x}", head_only)

    def _tilemap(self, routes: RouteTable, rest: str, head_only: bool) -> None:
        """``tilemap/{level}/{row}/{col}/{width}/{height}`` as ArcGIS answers it (spec §2.3).

        A block crossing a bundle line is clipped to the bundle of its top-left tile and marked
        ``adjusted``; a level without tiles is all zeros, not an error.
        """
        parts = rest.split("/")
        if len(parts) != 5 or not all(p.isascii() and p.isdigit() and len(p) < 10 for p in parts):
            self._not_found(error_body(404, "Tilemap path must be "
                                             "tilemap/{level}/{row}/{col}/{width}/{height}"), head_only)
            return
        level, top, left, width, height = map(int, parts)
        if width < 1 or height < 1:
            self._send(b"HTTP/1.1 400 Bad Request\r\n", b"application/json",
                       error_body(400, "tilemap width and height must be at least 1"), head_only)
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
                           error_body(500, str(exc)), head_only)
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
        body = error_body(code, message or reason)
        self.wfile.write(b"".join((
            f"HTTP/1.1 {code} {reason}\r\n".encode(), extra, b"Content-Type: application/json\r\n"
            b"Content-Length: ", str(len(body)).encode(), b"\r\nConnection: close\r\n\r\n", body)))

    def _refuse(self) -> None:
        # The request body is not read, so the connection cannot carry another request.
        self.send_error(405, f"Method {self.command} not allowed; use GET or HEAD")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse  # noqa: N815

"""A loopback ArcGIS VectorTileServer for tests: real MVT tiles, a style, sprites, glyphs, a tilemap.

Tiles are encoded by ``mapbox-vector-tile`` (not by cacheorch, which has no encoder), gzipped as
ArcGIS stores them, and sparse the way an indexed vector cache is: the quadtree ``/tilemap`` is
built from the tiles the server holds, so a leaf is a tile whose children do not exist. Every
tile carries its own address (``tile`` attribute: ``level/row/col``), so a tile written under the
wrong row or column is caught by reading it back.

    with VectorTileServer() as srv:
        ...cacheorch scales srv.url...   # .../arcgis/rest/services/Streets/VectorTileServer
"""
from __future__ import annotations

import gzip
import json
import threading
from collections import Counter
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import mapbox_vector_tile

from cacheorch.formats.png import encode_png

__all__ = ["VectorTileServer", "DEFAULT_TILES", "mvt_tile", "glyph_pbf", "FONT", "RANGES",
           "WATER", "ROAD", "BACKGROUND", "ICON"]

Key = tuple[int, int, int]
HALF = 20037508.342787
RES0 = 78271.516964
#: Font stack the style names, and the glyph ranges the server has for it.
FONT = "Arial Regular"
RANGES = ("0-255", "256-511")
#: Colours the style paints, and the sprite's ``dot`` icon (checked in screenshots).
BACKGROUND, WATER, ROAD, ICON = (250, 240, 200), (30, 90, 200), (220, 30, 30), (0, 160, 0)


def _sparse_tiles() -> list[Key]:
    """Level 0; all four of level 1; level 2 under the NW and SE quadrants; level 3 under one."""
    keys: list[Key] = [(0, 0, 0)] + [(1, r, c) for r in (0, 1) for c in (0, 1)]
    keys += [(2, r, c) for r in (0, 1) for c in (0, 1)]        # children of 1/0/0
    keys += [(2, r, c) for r in (2, 3) for c in (2, 3)]        # children of 1/1/1
    keys += [(3, r, c) for r in (2, 3) for c in (2, 3)]        # children of 2/1/1
    return keys


#: The tiles the default server holds (level, row, col).
DEFAULT_TILES: tuple[Key, ...] = tuple(_sparse_tiles())


def mvt_tile(level: int, row: int, col: int) -> bytes:
    """One uncompressed MVT tile whose features name their tile (``tile`` = ``level/row/col``)."""
    name = f"{level}/{row}/{col}"
    px, py = 1024 + (col * 37) % 2048, 1024 + (row * 53) % 2048
    layers = [
        {"name": "water", "features": [{
            "geometry": "POLYGON ((0 0, 2048 0, 2048 4096, 0 4096, 0 0))",
            "properties": {"_symbol": 0, "tile": name}}]},
        {"name": "roads", "features": [{
            "geometry": f"LINESTRING (2100 {100 + row % 7}, 4000 {3900 - col % 5})",
            "properties": {"_symbol": 1, "tile": name, "lanes": 2}}]},
        {"name": "places", "features": [{
            "geometry": f"POINT ({px} {py})",
            "properties": {"_symbol": 0, "tile": name, "label": f"P{level}-{row}-{col}"}}]},
    ]
    return mapbox_vector_tile.encode(layers, default_options={"y_coord_down": True})


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _uint(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def glyph_pbf(stack: str, rng: str) -> bytes:
    """A glyph range as MapLibre reads it (glyphs.proto): one space glyph, no bitmap."""
    first = int(rng.split("-")[0])
    glyph = _uint(1, first + 32 if first == 0 else first) + _uint(3, 0) + _uint(4, 0) + _uint(7, 6)
    stack_msg = _field(1, stack.encode()) + _field(2, rng.encode()) + _field(3, glyph)
    return _field(1, stack_msg)


def _sprite(ratio: int) -> tuple[bytes, bytes]:
    """A sprite sheet with two icons, ``dot`` (green) and ``square`` (blue), and its index."""
    size = 16 * ratio
    width, height = 2 * size, size
    pixels = bytearray()
    for _ in range(height):
        pixels += bytes(ICON) * size + bytes(WATER) * size
    index = {"dot": {"x": 0, "y": 0, "width": size, "height": size, "pixelRatio": ratio},
             "square": {"x": size, "y": 0, "width": size, "height": size, "pixelRatio": ratio}}
    return encode_png(width, height, bytes(pixels)), json.dumps(index).encode()


def style_json(font: str = FONT) -> dict[str, Any]:
    """An Esri-like root.json: relative sprite, glyphs and source URL (spec §1.4)."""
    return {
        "version": 8,
        "sprite": "../sprites/sprite",
        "glyphs": "../fonts/{fontstack}/{range}.pbf",
        "sources": {"esri": {"type": "vector", "url": "../../"}},
        "layers": [
            {"id": "background", "type": "background",
             "paint": {"background-color": "rgb({},{},{})".format(*BACKGROUND)}},
            {"id": "water", "type": "fill", "source": "esri", "source-layer": "water",
             "filter": ["==", "_symbol", 0],
             "paint": {"fill-color": "rgb({},{},{})".format(*WATER)}},
            {"id": "roads", "type": "line", "source": "esri", "source-layer": "roads",
             "paint": {"line-color": "rgb({},{},{})".format(*ROAD), "line-width": 6}},
            {"id": "places", "type": "symbol", "source": "esri", "source-layer": "places",
             "layout": {"icon-image": "dot", "text-field": "{label}", "text-font": [font],
                        "text-offset": [0, 1.5]}},
        ],
    }


def service_json(max_level: int = 3, *, export: bool = False) -> dict[str, Any]:
    lods = [{"level": z, "resolution": RES0 / 2 ** z, "scale": 295828763.7957775 / 2 ** z}
            for z in range(0, 16)]
    sr = {"wkid": 102100, "latestWkid": 3857}
    world = {"xmin": -HALF, "ymin": -HALF, "xmax": HALF, "ymax": HALF, "spatialReference": sr}
    out: dict[str, Any] = {
        "currentVersion": 11.1, "name": "Streets", "capabilities": "TilesOnly",
        "type": "indexedVector", "tileMap": "tilemap", "defaultStyles": "resources/styles",
        "tiles": ["tile/{z}/{y}/{x}.pbf"], "exportTilesAllowed": export,
        "initialExtent": world, "fullExtent": world, "minScale": 295828763.7957775,
        "maxScale": 0, "minLOD": 0, "maxLOD": max_level, "maxzoom": 15,
        "copyrightText": "Test data",
        "tileInfo": {"rows": 512, "cols": 512, "dpi": 96, "format": "pbf",
                     "origin": {"x": -HALF, "y": HALF}, "spatialReference": sr, "lods": lods},
        "resourceInfo": {"styleVersion": 8, "tileCompression": "gzip",
                         "cacheInfo": {"storageInfo": {"packetSize": 128,
                                                       "storageFormat": "compactV2"}}},
    }
    if export:
        out["maxExportTilesCount"] = 10000
    return out


def tilemap_index(keys: Iterable[Key]) -> dict[str, Any]:
    """The quadtree ``{"index": [NW, NE, SW, SE]}`` of level 1 (spec §1.8) for ``keys``."""
    present = set(keys)

    def node(level: int, row: int, col: int) -> Any:
        if (level, row, col) not in present:
            return 0
        kids = [node(level + 1, 2 * row + dr, 2 * col + dc) for dr, dc in
                ((0, 0), (0, 1), (1, 0), (1, 1))]
        return kids if any(k != 0 for k in kids) else 1

    return {"index": [node(1, dr, dc) for dr, dc in ((0, 0), (0, 1), (1, 0), (1, 1))]}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True


class VectorTileServer:
    """``/arcgis/rest/services/<name>/VectorTileServer`` on 127.0.0.1, with scriptable faults.

    :param tiles: the tiles held (default :data:`DEFAULT_TILES`), each encoded by :func:`mvt_tile`.
    :param encoding: ``gzip`` (gzip body, no Content-Encoding, as ArcGIS stores tiles),
        ``http`` (raw MVT sent with ``Content-Encoding: gzip``), ``raw`` (uncompressed MVT).
    :param token: when set, every request must carry it (else ArcGIS's 499, as JSON).
    :param bad_tiles: keys answered with bytes that are gzip but not MVT.
    :param tilemap_extra: keys the tilemap lists although the server answers 404 for them.
    :param drop: resource paths (below ``resources/``) answered 404 (a sprite, a glyph range).
    :param tile_info: another ``tileInfo`` (a grid other than Web Mercator).
    :param export: say ``exportTilesAllowed`` and run exportTiles jobs (one job, ``j1_et``, whose
        package holds the asked levels' tiles; parameters kept in ``export_params``).
    """

    def __init__(self, tiles: Iterable[Key] = DEFAULT_TILES, *, name: str = "Streets",
                 encoding: str = "gzip", token: str | None = None, bad_tiles: Iterable[Key] = (),
                 tilemap_extra: Iterable[Key] = (), drop: Iterable[str] = (),
                 max_level: int = 3, export: bool = False, font: str = FONT,
                 tile_info: dict[str, Any] | None = None) -> None:
        self.keys = tuple(tiles)
        self.raw = {key: mvt_tile(*key) for key in self.keys}
        self.name, self.encoding, self.token = name, encoding, token
        self.bad_tiles, self.drop = set(bad_tiles), set(drop)
        self.index = tilemap_index(set(self.keys) | set(tilemap_extra))
        self.service = service_json(max_level, export=export)
        if tile_info is not None:  # another grid (the tiles keep their addresses)
            self.service["tileInfo"] = tile_info
            for key in ("fullExtent", "initialExtent"):
                self.service[key] = dict(self.service[key], spatialReference=tile_info[
                    "spatialReference"])
        self.export = export
        #: Parameters of every exportTiles request.
        self.export_params: list[dict[str, str]] = []
        self.style = style_json(font)
        self.resources: dict[str, bytes] = {"styles/root.json": json.dumps(self.style).encode()}
        for suffix, ratio in (("", 1), ("@2x", 2)):
            png, index = _sprite(ratio)
            self.resources[f"sprites/sprite{suffix}.png"] = png
            self.resources[f"sprites/sprite{suffix}.json"] = index
        for rng in RANGES:
            self.resources[f"fonts/{FONT}/{rng}.pbf"] = glyph_pbf(FONT, rng)
        listing = sorted("../" + path for path in self.resources if not path.startswith("styles"))
        self.resources["info/root.json"] = json.dumps({"resourceInfo": listing}).encode()
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server: _Server | None = None

    @property
    def prefix(self) -> str:
        return f"/arcgis/rest/services/{self.name}/VectorTileServer"

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}{self.prefix}"

    def served(self, key: Key) -> bytes:
        """The tile's MVT bytes (uncompressed)."""
        return self.raw[key]

    def start(self) -> VectorTileServer:
        self._server = _Server(("127.0.0.1", 0), _handler(self))
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> VectorTileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def tile_requests(self) -> int:
        return sum(n for path, n in self.requests.items() if "/tile/" in path)

    # -- answers -----------------------------------------------------------------------------
    def answer(self, h: BaseHTTPRequestHandler, path: str, query: dict[str, list[str]]) -> None:
        if self.token is not None and query.get("token", [""])[0] != self.token:
            body = {"error": {"code": 499, "message": "Token Required", "details": []}}
            return _send(h, 499 if "/tile/" in path else 200, json.dumps(body).encode(),
                         "application/json")
        rest = path[len(self.prefix):].strip("/")
        if not path.startswith(self.prefix):
            return _send(h, 404, b"not found", "text/plain")
        if rest == "":
            return _send(h, 200, json.dumps(self.service).encode(), "application/json")
        if rest == "tilemap":
            return _send(h, 200, json.dumps(self.index).encode(), "application/json")
        if rest.startswith("tile/"):
            return self._tile(h, rest[5:])
        if self.export and (rest == "exportTiles" or rest.startswith("jobs/")):
            return self._job(h, rest, query)
        if rest.startswith("resources/"):
            res = unquote(rest[len("resources/"):])
            if res in ("styles", "styles/"):
                res = "styles/root.json"
            if res in ("info", "info/"):
                res = "info/root.json"
            if res in self.resources and res not in self.drop:
                ctype = "image/png" if res.endswith(".png") else (
                    "application/json" if res.endswith(".json") else "application/x-protobuf")
                return _send(h, 200, self.resources[res], ctype)
        return _send(h, 404, b"not found", "text/plain")

    def _job(self, h: BaseHTTPRequestHandler, rest: str, query: dict[str, list[str]]) -> None:
        """exportTiles as Enterprise answers it: a job, then ``results/out_service_url``."""
        if rest == "exportTiles":
            self.export_params.append({k: v[0] for k, v in query.items()})
            body: dict[str, Any] = {"jobId": "j1_et", "jobStatus": "esriJobSubmitted"}
        elif rest == "jobs/j1_et":
            body = {"jobId": "j1_et", "jobStatus": "esriJobSucceeded",
                    "messages": [{"type": "esriJobMessageTypeInformative",
                                  "description": "Export vector tiles finished"}],
                    "results": {"out_service_url": {"paramUrl": "results/out_service_url"}}}
        elif rest == "jobs/j1_et/results/out_service_url":
            body = {"paramName": "out_service_url", "value": self.url + "/jobs/j1_et/Streets.vtpk"}
        elif rest == "jobs/j1_et/Streets.vtpk":
            return _send(h, 200, self._package(), "application/octet-stream")
        else:
            return _send(h, 404, b"not found", "text/plain")
        return _send(h, 200, json.dumps(body).encode(), "application/json")

    def _package(self) -> bytes:
        """The export's .vtpk: the asked levels' tiles, written by cacheorch's vtpk exporter."""
        import tempfile
        from pathlib import Path

        from cacheorch.interfaces import ExportRequest
        from cacheorch.plugins.export_vtpk import VtpkExporter
        from cacheorch.vector.service import vector_service_from_json
        from cacheorch.config import parse_level_set
        levels = sorted(parse_level_set(self.export_params[-1]["levels"], "levels"))
        service = vector_service_from_json(self.url, self.service, lambda url: self.resources.get(
            unquote(url.split("/resources/", 1)[-1])))
        scheme = service.scheme
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "Streets.vtpk"
            session = VtpkExporter().open(ExportRequest(
                output=out, service=service, scheme=scheme.with_levels(levels),
                levels=tuple(scheme.lod(n) for n in levels)))
            for level in levels:
                keys = [k for k in self.keys if k[0] == level]
                if keys:
                    sink = session.open_bundle(level, 0, 0)
                    for _, row, col in keys:
                        sink.add(row, col, gzip.compress(self.raw[(level, row, col)], mtime=0))
                    sink.close()
            session.commit()
            session.discard()
            return out.read_bytes()

    def _tile(self, h: BaseHTTPRequestHandler, rest: str) -> None:
        parts = rest.removesuffix(".pbf").split("/")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            return _send(h, 404, b"not found", "text/plain")
        key = (int(parts[0]), int(parts[1]), int(parts[2]))
        if key in self.bad_tiles:
            return _send(h, 200, gzip.compress(b"\x1a\x05garbage-not-a-tile"),
                         "application/x-protobuf")
        raw = self.raw.get(key)
        if raw is None:
            return _send(h, 404, b"not found", "text/plain")
        if self.encoding == "raw":
            return _send(h, 200, raw, "application/x-protobuf")
        if self.encoding == "http":
            return _send(h, 200, gzip.compress(raw), "application/x-protobuf",
                         {"Content-Encoding": "gzip"})
        return _send(h, 200, gzip.compress(raw, mtime=0), "application/octet-stream")


def _send(h: BaseHTTPRequestHandler, code: int, body: bytes, ctype: str,
          headers: dict[str, str] | None = None) -> None:
    h.send_response(code)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(body)))
    h.send_header("Access-Control-Allow-Origin", "*")
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(body)


def _handler(server: VectorTileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_GET(self) -> None:  # noqa: N802
            parts = urlsplit(self.path)
            with server._lock:
                server.requests[unquote(parts.path)] += 1
            server.answer(self, parts.path, parse_qs(parts.query))

        def do_POST(self) -> None:  # noqa: N802 - exportTiles is posted
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode()) if length else {}
            with server._lock:
                server.requests[unquote(parts.path)] += 1
            server.answer(self, parts.path, {**parse_qs(parts.query), **form})

        def log_message(self, *args: Any) -> None:
            pass
    return Handler

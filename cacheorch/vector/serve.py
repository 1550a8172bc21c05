"""``cacheorch serve`` for vector outputs: a .vtpk or vector MBTiles as an ArcGIS VectorTileServer.

It answers what a VectorTileServer does (spec §1): the service JSON, ``tile/{z}/{y}/{x}.pbf``
(gzip bytes as stored, sent with ``Content-Encoding: gzip`` so browsers and HTTP clients inflate
them), ``tilemap``, and ``resources/`` (the packaged style with its relative paths, sprites,
fonts, info), so ArcGIS clients, QGIS and cacheorch itself read it like a live service. ``/`` is a
preview drawn by MapLibre GL JS (vendored in ``static/``, no CDN): the packaged style with its
URLs made absolute (MapLibre wants an absolute glyphs URL and tile URLs, spec §1.4), or, for an
MBTiles, a plain style drawing every layer.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from cacheorch.serving.httpd import ServerLifecycle, TrackedHandler
from cacheorch.serving.mapserver import default_service_name
from cacheorch.vector.reader import VectorOutput, open_vector
from cacheorch.vector.resources import PACKAGE_GLYPHS, PACKAGE_SPRITE
from cacheorch.vector.service import DEFAULT_TILE_TEMPLATE

__all__ = ["VectorServer", "run_vector_server", "maplibre_style", "preview_html", "STATIC"]

#: Vendored files served under ``/static/vector/``.
STATIC = {"maplibre-gl.js": "text/javascript; charset=utf-8",
          "maplibre-gl.css": "text/css; charset=utf-8"}
_TILE = re.compile(r"tile/(\d{1,2})/(\d{1,10})/(\d{1,10})(?:\.pbf)?\Z")
#: Colours of the plain style for outputs without one (MBTiles), cycled over the layers.
_PALETTE = ("#1f78b4", "#e31a1c", "#33a02c", "#ff7f00", "#6a3d9a", "#b15928")


def _service_json(output: VectorOutput, name: str) -> dict[str, Any]:
    out = dict(output.root)
    out.update({"name": name, "tiles": [DEFAULT_TILE_TEMPLATE], "defaultStyles": "resources/styles",
                "exportTilesAllowed": False, "capabilities": "TilesOnly"})
    if output.index() is not None:
        out["tileMap"] = "tilemap"
    else:
        out.pop("tileMap", None)
    return out


def _plain_style(output: VectorOutput) -> dict[str, Any]:
    """A style drawing every layer of an output that has none: fills, lines and circles."""
    layers: list[dict[str, Any]] = [{"id": "background", "type": "background",
                                     "paint": {"background-color": "#f8f4f0"}}]
    meta = getattr(output, "metadata", {})
    try:
        names = [entry["id"] for entry in json.loads(meta.get("json") or "{}")["vector_layers"]]
    except (ValueError, KeyError, TypeError):
        names = []
    for i, name in enumerate(names):
        colour = _PALETTE[i % len(_PALETTE)]
        for kind, geom, paint in (("fill", "Polygon", {"fill-color": colour, "fill-opacity": 0.6}),
                                  ("line", "LineString", {"line-color": colour, "line-width": 2}),
                                  ("circle", "Point", {"circle-color": colour, "circle-radius": 4})):
            layers.append({"id": f"{name}-{kind}", "type": kind, "source": "esri",
                           "source-layer": name, "filter": ["==", "$type", geom], "paint": paint})
    return {"version": 8, "sources": {"esri": {"type": "vector", "url": "../../"}},
            "layers": layers}


def maplibre_style(style: dict[str, Any], service_url: str, min_zoom: int, max_zoom: int
                   ) -> dict[str, Any]:
    """The style with absolute URLs and an inline tile source, as MapLibre needs it.

    Tiles beyond ``max_zoom`` are overzoomed by MapLibre, as Esri clients do below a leaf.
    """
    out = json.loads(json.dumps(style))
    base = service_url.rstrip("/") + "/resources/"
    if out.get("sprite"):
        out["sprite"] = base + PACKAGE_SPRITE[3:]
    if out.get("glyphs"):
        out["glyphs"] = base + PACKAGE_GLYPHS[3:]
    for source in (out.get("sources") or {}).values():
        if isinstance(source, dict) and source.get("type") == "vector":
            source.pop("url", None)
            source.update({"tiles": [service_url.rstrip("/") + "/tile/{z}/{y}/{x}.pbf"],
                           "minzoom": min_zoom, "maxzoom": max_zoom})
    return out


def preview_html(title: str, style_url: str, center: tuple[float, float], zoom: float) -> bytes:
    """The preview page: MapLibre GL JS drawing the style; ``document.title`` says when done."""
    config = json.dumps({"style": style_url, "center": center, "zoom": zoom}).replace("<", "\\u003c")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{json.dumps(title)[1:-1].replace("<", "")}</title>
<meta name="viewport" content="width=device-width,initial-scale=1">
<link rel="stylesheet" href="/static/vector/maplibre-gl.css">
<script src="/static/vector/maplibre-gl.js"></script>
<style>html,body,#map{{margin:0;height:100%;width:100%}}</style></head>
<body><div id="map"></div><script>
const cfg = {config};
const map = new maplibregl.Map({{container: "map", style: cfg.style, center: cfg.center,
  zoom: cfg.zoom, fadeDuration: 0, attributionControl: false}});
map.on("idle", () => {{ document.body.dataset.state = "idle"; }});
map.on("error", (e) => {{ console.error(e.error && e.error.message); }});
</script></body></html>
""".encode()


class VectorServer(ServerLifecycle):
    """A vector output served on ``host:port`` (0: any free port) until :meth:`stop`."""

    def __init__(self, path: str | Path, host: str = "127.0.0.1", port: int = 0,
                 service_name: str | None = None) -> None:
        self.path = Path(path)
        self.output = open_vector(self.path)
        self.name = service_name or default_service_name(self.path.with_suffix(".tpkx"))
        self.service = _service_json(self.output, self.name)
        style = self.output.resource("styles/root.json")
        self.style = json.loads(style) if style else _plain_style(self.output)
        self._listen(host, port, _handler(self))

    @property
    def levels(self) -> tuple[int, int]:
        """The first and last level holding tiles (MapLibre overzooms past the last)."""
        scheme = self.output.service.scheme
        tiled = scheme.tiled_levels or scheme.levels
        return tiled[0], tiled[-1]

    @property
    def prefix(self) -> str:
        return f"/arcgis/rest/services/{self.name}/VectorTileServer"

    @property
    def url(self) -> str:
        return self.root_url + self.prefix

    # start, serve_forever, stop and the context manager: ServerLifecycle
    def _release(self) -> None:
        self.output.close()

    # -- answers ----------------------------------------------------------------------------
    def answer(self, path: str, host: str) -> tuple[int, str, bytes, dict[str, str]]:
        """(status, content type, body, extra headers) for a GET of ``path``."""
        if path in ("/", "/preview"):
            return self._preview(host)
        if path.startswith("/static/vector/") and path.rsplit("/", 1)[1] in STATIC:
            name = path.rsplit("/", 1)[1]
            return 200, STATIC[name], files("cacheorch.vector").joinpath("static", name).read_bytes(), {}
        if path == "/preview/style.json":
            lo, hi = self.levels
            style = maplibre_style(self.style, f"http://{host}{self.prefix}", lo, hi)
            return 200, "application/json", json.dumps(style).encode(), {}
        if not (path == self.prefix or path.startswith(self.prefix + "/")):
            return _not_found()
        rest = path[len(self.prefix):].strip("/")
        if rest == "":
            return 200, "application/json", json.dumps(self.service).encode(), {}
        match = _TILE.match(rest)
        if match:
            level, row, col = map(int, match.groups())
            data = self.output.tile(level, row, col)
            if data is None:
                return _not_found()
            headers = {"Content-Encoding": "gzip"} if data[:2] == b"\x1f\x8b" else {}
            return 200, "application/x-protobuf", data, headers
        if rest == "tilemap" and self.output.index() is not None:
            return 200, "application/json", json.dumps(self.output.index()).encode(), {}
        if rest.startswith("resources/"):
            return self._resource(unquote(rest[len("resources/"):]))
        return _not_found()

    def _resource(self, rel: str) -> tuple[int, str, bytes, dict[str, str]]:
        rel = {"styles": "styles/root.json", "info": "info/root.json"}.get(rel.rstrip("/"), rel)
        if rel == "styles/root.json":
            return 200, "application/json", json.dumps(self.style).encode(), {}
        if ".." in rel.split("/"):
            return _not_found()
        data = self.output.resource(rel)
        if data is None:
            return _not_found()
        kind = "image/png" if rel.endswith(".png") else (
            "application/json" if rel.endswith(".json") else "application/x-protobuf")
        return 200, kind, data, {}

    def _preview(self, host: str) -> tuple[int, str, bytes, dict[str, str]]:
        lo = self.levels[0]
        extent = self.service.get("fullExtent") or {}
        center = (0.0, 0.0)
        if all(k in extent for k in ("xmin", "ymin", "xmax", "ymax")):
            x = (extent["xmin"] + extent["xmax"]) / 2
            y = (extent["ymin"] + extent["ymax"]) / 2
            r = 6378137.0
            center = (math.degrees(x / r), math.degrees(2 * math.atan(math.exp(y / r)) - math.pi / 2))
        return 200, "text/html; charset=utf-8", preview_html(
            self.name, "/preview/style.json", center, max(lo, 0.5)), {}


def _not_found() -> tuple[int, str, bytes, dict[str, str]]:
    return 404, "application/json", b'{"error":{"code":404,"message":"Not found"}}', {}


def _handler(server: VectorServer) -> type[TrackedHandler]:
    class Handler(TrackedHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_GET(self) -> None:  # noqa: N802 - stdlib naming
            self._reply(head_only=False)

        def do_HEAD(self) -> None:  # noqa: N802
            self._reply(head_only=True)

        def _reply(self, head_only: bool) -> None:
            path = urlsplit(self.path).path
            host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
            try:
                code, kind, body, extra = server.answer(path, host)
            except Exception as exc:  # a damaged package: answer, do not kill the thread
                code, kind, extra = 500, "application/json", {}
                body = json.dumps({"error": {"code": 500, "message": str(exc)}}).encode()
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Access-Control-Allow-Origin", "*")
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()
            if not head_only:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass
    return Handler


def run_vector_server(path: str | Path, host: str, port: int, name: str | None,
                      echo: Callable[[str], Any]) -> None:
    """The ``serve`` command for a vector output: say where, then serve until Ctrl-C."""
    server = VectorServer(path, host, port, name)
    try:
        echo(f"Serving {server.path} (vector tiles, levels {server.levels[0]}-"
             f"{server.levels[1]}) at")
        echo(f"  {server.url}")
        echo(f"Preview in a browser: {server.root_url}/")
        server.serve_until_interrupted(echo)
    finally:
        server.stop()

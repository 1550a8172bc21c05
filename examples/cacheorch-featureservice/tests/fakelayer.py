"""A tiny loopback FeatureServer layer for the plugin's own tests (stdlib only).

It pages the way ArcGIS does: at most ``max_record_count`` features per query, and
``exceededTransferLimit`` while more remain. ``where`` understands ``1=1`` and ``FIELD = n``.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

PREFIX = "/arcgis/rest/services/Parcels/FeatureServer/0"


class FakeLayer:
    """``features``: (rings in EPSG:3857, attributes). Use as a context manager; ``url`` is the layer."""

    def __init__(self, features: list[tuple[list[list[list[float]]], dict[str, Any]]], *,
                 max_record_count: int = 2, geometry_type: str = "esriGeometryPolygon",
                 error: tuple[int, str] | None = None) -> None:
        self.features = [(i + 1, rings, attrs) for i, (rings, attrs) in enumerate(features)]
        self.max_record_count, self.geometry_type, self.error = max_record_count, geometry_type, error
        self.queries: list[dict[str, str]] = []
        layer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                body = json.dumps(layer.answer(parts.path, q)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}{PREFIX}"

    def answer(self, path: str, q: dict[str, str]) -> dict[str, Any]:
        if self.error:
            return {"error": {"code": self.error[0], "message": self.error[1]}}
        if path == PREFIX:
            return {"type": "Feature Layer", "geometryType": self.geometry_type,
                    "objectIdField": "OBJECTID", "maxRecordCount": self.max_record_count}
        self.queries.append(q)
        where = q.get("where", "1=1").replace(" ", "")
        rows = [f for f in self.features
                if where == "1=1" or "=" in where and
                str(f[2].get(where.split("=")[0])) == where.split("=")[1]]
        offset = int(q.get("resultOffset", 0))
        count = min(int(q.get("resultRecordCount", self.max_record_count)), self.max_record_count)
        page = rows[offset:offset + count]
        out: dict[str, Any] = {"spatialReference": {"wkid": 102100, "latestWkid": 3857},
                               "features": [{"attributes": {"OBJECTID": oid},
                                             "geometry": {"rings": rings}}
                                            for oid, rings, _ in page]}
        if offset + len(page) < len(rows):
            out["exceededTransferLimit"] = True
        return out

    def __enter__(self) -> FakeLayer:
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def square(x: float, y: float, size: float) -> list[list[list[float]]]:
    """One clockwise ring (an Esri exterior) with its lower-left corner at (x, y)."""
    return [[[x, y], [x, y + size], [x + size, y + size], [x + size, y], [x, y]]]

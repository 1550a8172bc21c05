"""A loopback server answering a FeatureServer polygon layer (JSON + paged ``query``) and, on the same
port, a tiled MapServer (everything :class:`_tileserver.TileServer` does).

It behaves the way ArcGIS does where clients go wrong: it never returns more than
``maxRecordCount`` features, says ``exceededTransferLimit`` when more remain, answers errors as
HTTP 200 with an ``{"error": ...}`` body, and wants a token when given one.

    with FeatureServer([(poly, {"DISTRICT": 7})], max_record_count=2, tiles=...) as srv:
        srv.layer_url   # .../FeatureServer/0
        srv.url         # .../MapServer (the tiles)
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from _tileserver import TileServer
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry
from shapely.geometry.polygon import orient

__all__ = ["FeatureServer", "esri_polygon", "square"]

_CLAUSE = re.compile(r"^\s*(\w+)\s*(=|>|<|>=|<=|<>)\s*('?)([^']*)\3\s*$")


def esri_polygon(geom: BaseGeometry) -> dict[str, Any]:
    """Esri JSON rings: exteriors clockwise, holes counter-clockwise, all in one flat list."""
    rings: list[list[list[float]]] = []
    polys = geom.geoms if isinstance(geom, MultiPolygon) else [geom]
    for poly in polys:
        poly = orient(poly, sign=-1.0)
        rings.append([list(p) for p in poly.exterior.coords])
        rings.extend([list(p) for p in ring.coords] for ring in poly.interiors)
    return {"rings": rings}


class FeatureServer(TileServer):
    """A MapServer's tiles plus a FeatureServer layer at ``/arcgis/rest/services/<layer>/FeatureServer/0``.

    :param features: (geometry in EPSG:3857, attributes) per feature; OBJECTIDs are 1, 2, ...
    :param max_record_count: the layer's maxRecordCount (the most one query answers).
    :param geometry_type: what the layer says it holds (``esriGeometryPolyline`` to test refusal).
    :param supports_pagination: ``advancedQueryCapabilities.supportsPagination``.
    :param token: when set, every FeatureServer request must carry it (499 without, 498 wrong).
    :param layer_error: answer this ``(code, message)`` error to every layer request.
    :param layer_name: the feature service's name in its URL.
    Other keyword arguments go to :class:`TileServer`.
    """

    def __init__(self, features: Sequence[tuple[BaseGeometry, dict[str, Any]]] = (), *,
                 max_record_count: int = 1000, geometry_type: str = "esriGeometryPolygon",
                 supports_pagination: bool = True, token: str | None = None,
                 layer_error: tuple[int, str] | None = None, layer_name: str = "Parcels",
                 **tile_server: Any) -> None:
        super().__init__(**tile_server)
        self.features = [(i + 1, geom, dict(attrs)) for i, (geom, attrs) in enumerate(features)]
        self.max_record_count = max_record_count
        self.geometry_type = geometry_type
        self.supports_pagination = supports_pagination
        self.token = token
        self.layer_error = layer_error
        self.layer_name = layer_name
        #: Query parameters of every ``/query`` request, in order.
        self.queries: list[dict[str, str]] = []

    @property
    def layer_prefix(self) -> str:
        return f"/arcgis/rest/services/{self.layer_name}/FeatureServer/0"

    @property
    def layer_url(self) -> str:
        return self.url.replace(self.prefix, self.layer_prefix)

    def _answer(self, h: BaseHTTPRequestHandler, path: str) -> None:
        if not path.startswith(self.layer_prefix):
            return super()._answer(h, path)
        query = {k: v[-1] for k, v in parse_qs(urlsplit(h.path).query, keep_blank_values=True).items()}
        if self.token is not None and query.get("token") != self.token:
            code, message = (499, "Token Required") if "token" not in query else (498, "Invalid Token")
            return self._json(h, {"error": {"code": code, "message": message, "details": []}})
        if self.layer_error is not None:
            code, message = self.layer_error
            return self._json(h, {"error": {"code": code, "message": message, "details": []}})
        rest = path[len(self.layer_prefix):].strip("/")
        if rest == "":
            return self._json(h, self._layer_json())
        if rest == "query":
            with self._lock:
                self.queries.append(query)
            return self._json(h, self._query(query))
        return self._send(h, 404, b"not found", "text/html")

    def _json(self, h: BaseHTTPRequestHandler, data: dict[str, Any]) -> None:
        self._send(h, 200, json.dumps(data).encode(), "application/json; charset=utf-8")

    def _layer_json(self) -> dict[str, Any]:
        return {"currentVersion": 11.1, "id": 0, "name": self.layer_name, "type": "Feature Layer",
                "geometryType": self.geometry_type, "objectIdField": "OBJECTID",
                "maxRecordCount": self.max_record_count,
                "advancedQueryCapabilities": {"supportsPagination": self.supports_pagination},
                "fields": [{"name": "OBJECTID", "type": "esriFieldTypeOID"}],
                "extent": {"xmin": -2e7, "ymin": -2e7, "xmax": 2e7, "ymax": 2e7,
                           "spatialReference": {"wkid": 102100, "latestWkid": 3857}}}

    def _matches(self, where: str, oid: int, attrs: dict[str, Any]) -> bool:
        if where.strip() in ("", "1=1"):
            return True
        m = _CLAUSE.match(where)
        if not m:
            raise ValueError(where)
        field, op, quoted, value = m.groups()
        have = oid if field.upper() == "OBJECTID" else attrs.get(field)
        if have is None:
            raise ValueError(field)
        want: Any = value if quoted else float(value)
        have = have if quoted else float(have)
        return {"=": have == want, "<>": have != want, ">": have > want, "<": have < want,
                ">=": have >= want, "<=": have <= want}[op]

    def _query(self, q: dict[str, str]) -> dict[str, Any]:
        try:
            rows = [(oid, geom, attrs) for oid, geom, attrs in self.features
                    if self._matches(q.get("where", ""), oid, attrs)]
        except ValueError:
            return {"error": {"code": 400, "message": "Unable to complete operation.",
                              "details": ["'where' parameter is invalid"]}}
        if q.get("objectIds"):
            wanted = {int(i) for i in q["objectIds"].split(",")}
            rows = [r for r in rows if r[0] in wanted]
        if q.get("returnIdsOnly") == "true":
            return {"objectIdFieldName": "OBJECTID", "objectIds": [r[0] for r in rows]}
        offset = int(q.get("resultOffset") or 0)
        count = min(int(q.get("resultRecordCount") or self.max_record_count), self.max_record_count)
        page = rows[offset:offset + count]
        out = {"objectIdFieldName": "OBJECTID", "geometryType": self.geometry_type,
               "spatialReference": {"wkid": 102100, "latestWkid": 3857},
               "features": [{"attributes": {"OBJECTID": oid}, "geometry": esri_polygon(geom)}
                            for oid, geom, _ in page]}
        if offset + len(page) < len(rows):
            out["exceededTransferLimit"] = True
        return out


def square(x: float, y: float, size: float) -> Polygon:
    """A square with its lower-left corner at (x, y), in map units."""
    return Polygon([(x, y), (x + size, y), (x + size, y + size), (x, y + size)])

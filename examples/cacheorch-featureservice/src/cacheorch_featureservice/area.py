"""The ``featureservice`` area: the union of a polygon layer's features that match a where clause.

Spec: ``LAYER_URL[?where=CLAUSE]`` where LAYER_URL is a FeatureServer or MapServer layer
(``.../FeatureServer/0``). The where clause is URL-query text: percent-encode ``&`` (%26),
``+`` (%2B) and ``#`` (%23); spaces and ``=`` may stay as they are. In cacheorch.ini::

    [aoi:parcels]
    generator = featureservice
    url = https://host/arcgis/rest/services/Parcels/FeatureServer/0
    where = DISTRICT = 7

Why the query runs the way it does: a layer answers at most ``maxRecordCount`` features per
request and says ``exceededTransferLimit`` when more remain, so the generator pages with
``resultOffset``/``resultRecordCount`` (ordered by the object id, so pages neither overlap nor
skip), or by object id batches where the layer cannot page. Geometries are asked for in the
tiling scheme's spatial reference (``outSR``), so the server projects them; a server that
answers in another one is projected here. Tokens come from the job's
:class:`~cacheorch.connection.Connection` (``--token``, ``ARCGIS_TOKEN``, a token provider),
never from the spec, which the catalog stores.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import shapely
from shapely.geometry.base import BaseGeometry

from cacheorch.areas import area_from, crs_of
from cacheorch.connection import Connection
from cacheorch.errors import AreaError, CacheorchError
from cacheorch.esri_json import read_esri_json
from cacheorch.interfaces import AOIGenerator, Service
from cacheorch.tiling import SpatialReference

__all__ = ["FeatureServiceArea", "LayerQuery", "parse_spec"]

#: What a layer that does not say its maxRecordCount is assumed to answer per page.
DEFAULT_PAGE = 1000
#: A runaway server (exceededTransferLimit forever) stops here.
MAX_PAGES = 100_000
_KEYS = {"where"}


def parse_spec(spec: str) -> tuple[str, str]:
    """``URL?where=A%3D1`` → (URL, "A=1"); an AreaError for anything that is not a layer URL."""
    text = spec.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise AreaError(f"featureservice:{spec}: expected a layer URL such as "
                        "https://host/arcgis/rest/services/NAME/FeatureServer/0?where=...")
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) < 2 or not segments[-1].isdigit() or \
            segments[-2].lower() not in ("featureserver", "mapserver"):
        raise AreaError(f"featureservice:{spec}: the URL must name a layer (…/FeatureServer/0)")
    query = parse_qsl(parts.query, keep_blank_values=True)
    keys = {k.lower() for k, _ in query}
    if "token" in keys:
        raise AreaError("featureservice: a token in the area spec would be stored with the job; "
                        "give it with --token or ARCGIS_TOKEN")
    unknown = sorted(keys - _KEYS)
    if unknown:
        raise AreaError(f"featureservice: unknown parameter {unknown[0]!r} (parameters: where)")
    where = next((v for k, v in query if k.lower() == "where"), "").strip() or "1=1"
    layer = urlunsplit(parts._replace(query="", fragment="")).rstrip("/")
    return layer, where


class LayerQuery:
    """One layer's metadata and its paged ``query``, over the job's connection."""

    def __init__(self, url: str, connection: Connection, what: str) -> None:
        self.url, self.connection, self.what = url, connection, what
        self.info = self._get(url, {})
        if self.info.get("type") not in (None, "Feature Layer") and "geometryType" not in self.info:
            raise AreaError(f"{what}: {url} is a {self.info.get('type')}, not a feature layer")
        geometry = self.info.get("geometryType")
        if geometry != "esriGeometryPolygon":
            raise AreaError(f"{what}: the layer holds {geometry or 'no geometry'}, not polygons")
        self.page = int(self.info.get("maxRecordCount") or DEFAULT_PAGE)
        self.oid = self._oid_field()
        caps = self.info.get("advancedQueryCapabilities") or {}
        self.pages = bool(caps.get("supportsPagination", True))

    def _oid_field(self) -> str:
        if self.info.get("objectIdField"):
            return str(self.info["objectIdField"])
        for f in self.info.get("fields") or ():
            if f.get("type") == "esriFieldTypeOID":
                return str(f["name"])
        return "OBJECTID"

    def _get(self, url: str, params: dict[str, Any]) -> dict[str, Any]:
        """GET ``url?f=json&…`` with the token; ArcGIS errors (HTTP 200 + error JSON) raise."""
        conn = self.connection
        try:  # a refused token is renewed once there, as for every other request
            response = conn.request("GET", url, {"f": "json", **params})
        except CacheorchError as exc:
            raise AreaError(f"{self.what}: {conn.redact(exc)}") from None
        try:
            data = response.json()
        except ValueError:
            raise AreaError(f"{self.what}: {url} answered HTTP {response.status_code} with "
                            f"something that is not JSON") from None
        error = data.get("error") if isinstance(data, dict) else None
        if error is None and response.status_code >= 400:
            error = {"code": response.status_code, "message": response.reason}
        if error is None:
            if not isinstance(data, dict):
                raise AreaError(f"{self.what}: {url} answered JSON that is not an object")
            return data
        message = " ".join(str(error.get("message") or "error").split())
        details = "; ".join(str(d) for d in error.get("details") or () if d)
        text = f"{self.what}: the layer answered error {error.get('code')}: {message}" + \
            (f" ({details})" if details else "")
        raise AreaError(conn.redact(text))

    def _query(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._get(self.url + "/query", params)

    def features(self, where: str, out_sr: SpatialReference) -> Iterator[dict[str, Any]]:
        """Each page of the query result (a FeatureSet dict), until no more remain."""
        sr = json.dumps(out_sr.to_json()) if out_sr.wkid is None else str(out_sr.wkid)
        common = {"where": where, "outFields": self.oid, "returnGeometry": "true", "outSR": sr}
        if self.pages:
            yield from self._by_offset(common)
        else:
            yield from self._by_ids(common, where)

    def _by_offset(self, common: dict[str, Any]) -> Iterator[dict[str, Any]]:
        offset = 0
        for _ in range(MAX_PAGES):
            page = self._query({**common, "orderByFields": f"{self.oid} ASC",
                                "resultOffset": offset, "resultRecordCount": self.page})
            features = page.get("features") or []
            yield page
            offset += len(features)
            if not page.get("exceededTransferLimit"):
                return
            if not features:
                raise AreaError(f"{self.what}: the layer says more features remain but sent none")
        raise AreaError(f"{self.what}: more than {MAX_PAGES} pages; narrow the where clause")

    def _by_ids(self, common: dict[str, Any], where: str) -> Iterator[dict[str, Any]]:
        ids = self._query({"where": where, "returnIdsOnly": "true"}).get("objectIds") or []
        ids = sorted(ids)
        for start in range(0, len(ids), self.page):
            chunk = ids[start:start + self.page]
            yield self._query({**common, "where": "1=1",
                               "objectIds": ",".join(str(i) for i in chunk)})


class FeatureServiceArea(AOIGenerator):
    """Polygons of a FeatureServer layer matching a where clause: featureservice:URL?where=..."""

    name = "featureservice"

    @classmethod
    def accepts(cls, spec: str) -> bool:
        return False  # a bare URL is a service, not an area: always name this generator

    def area(self, spec: str, service: Service, connection: Connection) -> BaseGeometry:
        layer, where = parse_spec(spec)
        what = f"featureservice {layer} where {where}"
        query = LayerQuery(layer, connection, what)
        scheme_sr = service.scheme.spatial_reference
        parts: list[BaseGeometry] = []
        answered: SpatialReference | None = None
        count = 0
        for page in query.features(where, scheme_sr):
            features = page.get("features") or []
            count += len(features)
            if not features:
                continue
            area = read_esri_json({"features": features,
                                   "spatialReference": page.get("spatialReference")}, what)
            answered = answered or area.spatial_reference
            parts.append(area.geometry)
        if not count:
            raise AreaError(f"{what}: no feature matches")
        if not parts:
            raise AreaError(f"{what} has no polygon")
        union = parts[0] if len(parts) == 1 else shapely.union_all(parts)
        src = None
        if answered is not None and answered.epsg != scheme_sr.epsg:
            src = crs_of(answered, what)  # the server ignored outSR: project here
        return area_from(union, src, service.scheme, what)

"""The ``file`` area: polygons from a GeoJSON, Esri JSON or WKT file, projected into the scheme's SR.

Which format a file holds is read from its content, not its name: Esri tools write Esri JSON into
``.json`` files as readily as GeoJSON, so a document with ``rings``, ``geometryType`` or a
``spatialReference`` is Esri JSON, one with a GeoJSON ``type`` is GeoJSON, and text starting with a
WKT keyword (``.wkt`` files) is WKT.

The spatial reference, first match wins:

- a ``@wkid`` suffix on the path: ``parcels.json@2056``, ``area.wkt@EPSG:32632``;
- what the file says: Esri JSON's ``spatialReference`` (on the document or its features), a
  GeoJSON ``crs`` member (GeoJSON 2008), an EWKT ``SRID=n;`` prefix;
- the format's default: GeoJSON is WGS84 longitude/latitude (RFC 7946); WKT is in the tiling
  scheme's own spatial reference (as ``bbox`` without ``@wkid``); Esri JSON has no default, and a
  document naming none is refused rather than guessed.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any

import shapely
import shapely.errors
from shapely.geometry import shape
from pyproj import CRS
from shapely.geometry.base import BaseGeometry

from cacheorch import hookimpl
from cacheorch.areas import (VECTOR_SUFFIXES, area_from, crs_from_text, crs_of, read_wkt, repair,
                             split_crs)
from cacheorch.connection import Connection
from cacheorch.errors import AreaError
from cacheorch.esri_json import is_esri_json, read_esri_json
from cacheorch.interfaces import AOIGenerator, Service
from cacheorch.jsonlimits import loads

__all__ = ["FileArea"]

_SUFFIXES = (".geojson", ".json", ".esrijson", ".wkt")
_WKT_START = re.compile(r"^\s*(SRID\s*=|MULTIPOLYGON|POLYGON|GEOMETRYCOLLECTION)", re.IGNORECASE)


def _geometries(data: Any, name: str) -> list[Any]:
    kind = data.get("type") if isinstance(data, dict) else None
    if kind == "FeatureCollection":
        features = data.get("features")
        if not isinstance(features, list):
            raise AreaError(f"{name}: FeatureCollection without a features list")
        return [g for f in features for g in _geometries(f, name)]
    if kind == "Feature":  # its geometry may itself be a GeometryCollection
        geom = data.get("geometry")
        return _geometries(geom, name) if isinstance(geom, dict) else []
    if kind == "GeometryCollection":
        return [g for member in data.get("geometries") or [] if isinstance(member, dict)
                for g in _geometries(member, name)]
    if kind in ("Polygon", "MultiPolygon", "Point", "MultiPoint", "LineString", "MultiLineString"):
        return [data]
    raise AreaError(f"{name}: not GeoJSON (type {kind!r})")


def _geojson(data: Any, name: str) -> BaseGeometry:
    shapes = []
    for geom in _geometries(data, name):
        if not isinstance(geom, dict) or geom.get("type") not in ("Polygon", "MultiPolygon"):
            continue
        try:
            polygon = shape(geom)
        except (ValueError, TypeError, AttributeError, IndexError, KeyError,
                shapely.errors.ShapelyError) as exc:
            raise AreaError(f"{name}: malformed {geom.get('type')} ({exc})") from None
        if not polygon.is_empty:  # repair first: a union of invalid rings can fail in GEOS
            shapes.append(repair(polygon, name))
    if not shapes:
        raise AreaError(f"{name} has no polygon")
    return shapely.union_all(shapes)


def _geojson_crs(data: Any, name: str) -> str | None:
    """The CRS a GeoJSON 2008 ``crs`` member names (``urn:ogc:def:crs:EPSG::2056``), if any."""
    member = data.get("crs") if isinstance(data, dict) else None
    if not isinstance(member, dict):
        return None
    props = member.get("properties") or {}
    value = props.get("name") if isinstance(props, dict) else None
    if member.get("type") != "name" or not isinstance(value, str) or not value.strip():
        raise AreaError(f"{name}: unsupported GeoJSON crs member (only named CRSs, "
                        "e.g. urn:ogc:def:crs:EPSG::2056)")
    if re.search(r"CRS84$", value.strip(), re.IGNORECASE):
        return "EPSG:4326"
    return value.strip()


def _check_lon_lat(geom: BaseGeometry, name: str, why: str) -> None:
    xmin, ymin, xmax, ymax = geom.bounds
    if not (-180 <= xmin and xmax <= 180 and -90 <= ymin and ymax <= 90):
        raise AreaError(f"{name}: coordinates are not longitude/latitude ({why}); "
                        f"bounds {xmin:g},{ymin:g},{xmax:g},{ymax:g}")


class FileArea(AOIGenerator):
    """Polygons from a GeoJSON, Esri JSON or WKT file (PATH or PATH@wkid)."""

    name = "file"

    @classmethod
    def accepts(cls, spec: str) -> bool:
        path = split_crs(spec)[0]
        lower = path.lower().rstrip("/\\")
        if lower.endswith(_SUFFIXES):
            return True
        if lower.endswith(VECTOR_SUFFIXES):
            return False
        return os.path.isfile(path)

    def area(self, spec: str, service: Service, connection: Connection):  # noqa: ANN201
        path, override = split_crs(spec)
        name = os.path.basename(path) or path
        try:
            with open(path, encoding="utf-8-sig") as f:
                text = f.read()
        except FileNotFoundError:
            raise AreaError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise AreaError(f"{path}: cannot read it ({exc})") from None
        geom, src = _parse(text, path, name, override)
        return area_from(geom, src, service.scheme, name)


def _parse(text: str, path: str, name: str, override: str | None) -> tuple[BaseGeometry, CRS | None]:
    """The file's polygons and the CRS they are in (None: the tiling scheme's own)."""
    if path.lower().endswith(".wkt") or _WKT_START.match(text):
        geom, srid = read_wkt(text, name)
        crs_text = override or srid
        return geom, crs_from_text(crs_text, name) if crs_text else None
    try:
        data = loads(text)
    except json.JSONDecodeError as exc:
        raise AreaError(f"{name}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except ValueError as exc:  # nested too deep
        raise AreaError(f"{name}: {exc}") from None
    if is_esri_json(data):
        esri = read_esri_json(data, name)
        if override:
            return esri.geometry, crs_from_text(override, name)
        if esri.spatial_reference is None:
            raise AreaError(f"{name}: Esri JSON without a spatialReference; add one, or name it: "
                            f"{name}@wkid")
        return esri.geometry, crs_of(esri.spatial_reference, name)
    geom = _geojson(data, name)
    crs_text = override or _geojson_crs(data, name)
    if crs_text:
        return geom, crs_from_text(crs_text, name)
    geom = repair(geom, name)
    _check_lon_lat(geom, name, "GeoJSON is WGS84")
    return geom, crs_of(4326, name)


@hookimpl
def cacheorch_register_aoi_generators() -> list[type[AOIGenerator]]:
    return [FileArea]

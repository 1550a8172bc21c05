"""The ``file`` area: polygons from a GeoJSON file (WGS84, RFC 7946), projected into the scheme's SR."""
from __future__ import annotations

import json
import os
from typing import Any

import shapely
import shapely.errors
from shapely.geometry import shape

from cacheorch import hookimpl
from cacheorch.areas import crs_of, finish_area, polygonal, project
from cacheorch.connection import Connection
from cacheorch.errors import AreaError
from cacheorch.interfaces import AOIGenerator, Service

__all__ = ["FileArea"]

_SUFFIXES = (".geojson", ".json")


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


class FileArea(AOIGenerator):
    """Polygons from a GeoJSON file in WGS84 (Feature, FeatureCollection or bare geometry)."""

    name = "file"

    @classmethod
    def accepts(cls, spec: str) -> bool:
        return spec.lower().endswith(_SUFFIXES) or os.path.isfile(spec)

    def area(self, spec: str, service: Service, connection: Connection):  # noqa: ANN201
        name = os.path.basename(spec) or spec
        try:
            with open(spec, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise AreaError(f"{spec}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise AreaError(f"{spec}: cannot read it ({exc})") from None
        except json.JSONDecodeError as exc:
            raise AreaError(f"{name}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
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
                shapes.append(shapely.make_valid(polygon) if not polygon.is_valid else polygon)
        if not shapes:
            raise AreaError(f"{name} has no polygon")
        geom = polygonal(shapely.union_all(shapes), name)
        xmin, ymin, xmax, ymax = geom.bounds
        if not (-180 <= xmin and xmax <= 180 and -90 <= ymin and ymax <= 90):
            raise AreaError(f"{name}: coordinates are not longitude/latitude (GeoJSON is WGS84); "
                            f"bounds {xmin:g},{ymin:g},{xmax:g},{ymax:g}")
        scheme = service.scheme
        dst = crs_of(scheme.spatial_reference, "the tiling scheme")
        projected = project(geom, crs_of(4326, name), dst, name, densify=0.25)
        return finish_area(polygonal(projected, name), scheme, name)


@hookimpl
def cacheorch_register_aoi_generators() -> list[type[AOIGenerator]]:
    return [FileArea]

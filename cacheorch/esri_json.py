"""Esri JSON geometries (ArcGIS REST ``query`` results, FeatureSets, bare polygons) as shapely.

Esri polygons are a flat list of rings: exterior rings run clockwise, holes counter-clockwise,
and which hole belongs to which exterior is left to the reader. So rings are classified by
orientation and each hole goes to the smallest exterior containing it. A file whose rings all run
counter-clockwise (written by a tool that follows GeoJSON's rule instead) is read by nesting:
a ring inside an even number of others is an exterior.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import shapely
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

from cacheorch.areas import repair
from cacheorch.errors import AreaError, SchemeError
from cacheorch.tiling import SpatialReference

__all__ = ["is_esri_json", "read_esri_json", "polygon_from_rings", "EsriArea"]

_GEOMETRY_KEYS = ("rings", "curveRings", "paths", "curvePaths", "points", "x", "xmin")


class EsriArea:
    """What an Esri JSON document holds: its polygons (unprojected) and its spatial reference."""

    def __init__(self, geometry: BaseGeometry, spatial_reference: SpatialReference | None) -> None:
        self.geometry = geometry
        self.spatial_reference = spatial_reference


def is_esri_json(data: Any) -> bool:
    """Whether a parsed JSON document is Esri JSON rather than GeoJSON (which always has "type")."""
    if not isinstance(data, dict):
        return False
    if any(key in data for key in _GEOMETRY_KEYS) or "geometryType" in data \
            or "spatialReference" in data:
        return True
    if "type" in data:
        return False

    def esri_feature(f: Any) -> bool:
        return isinstance(f, dict) and ("attributes" in f or isinstance(f.get("geometry"), dict)
                                        and "type" not in f["geometry"])

    features = data.get("features")
    if isinstance(features, list):
        return any(esri_feature(f) for f in features)
    return esri_feature(data)


def _sr(data: Any, name: str) -> SpatialReference | None:
    if not isinstance(data, dict):
        return None
    try:
        sr = SpatialReference.from_json(data) \
            if any(k in data for k in ("wkid", "latestWkid", "wkt")) else None
    except (TypeError, ValueError, SchemeError):
        raise AreaError(f"{name}: spatialReference wkid {data.get('wkid')!r} is not a number") \
            from None
    if sr is not None and sr.wkid is None and sr.latest_wkid is None and not sr.wkt:
        raise AreaError(f"{name}: spatialReference has neither a wkid nor a wkt")
    return sr


def _ring(points: Any, name: str) -> list[tuple[float, float]] | None:
    if not isinstance(points, list):
        raise AreaError(f"{name}: a ring is not a list of points")
    out = []
    for p in points:
        if not isinstance(p, (list, tuple)) or len(p) < 2:
            raise AreaError(f"{name}: a ring point is not [x, y]")
        try:
            x, y = float(p[0]), float(p[1])
        except (TypeError, ValueError):
            raise AreaError(f"{name}: a ring point is not [x, y]") from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise AreaError(f"{name}: a ring point is not a finite number")
        out.append((x, y))
    if len(out) and out[0] != out[-1]:
        out.append(out[0])  # Esri rings are closed; tolerate one that is not
    return out if len(out) >= 4 else None


def _signed_area(ring: list[tuple[float, float]]) -> float:
    """Shoelace: positive counter-clockwise (x right, y up), negative clockwise."""
    return 0.5 * sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:]))


def polygon_from_rings(rings: Iterable[list[tuple[float, float]]], name: str) -> BaseGeometry:
    """Esri rings → (Multi)Polygon: clockwise exteriors, each hole in the smallest exterior
    around it; by nesting when no ring runs clockwise."""
    shells: list[Polygon] = []
    holes: list[Polygon] = []
    all_rings = [r for r in rings if len(set(r)) >= 3]
    if not all_rings:
        return Polygon()
    signed = [_signed_area(r) for r in all_rings]
    if not any(a < 0 for a in signed):
        return _by_nesting(all_rings, name)
    for ring, area in zip(all_rings, signed):  # a figure-of-eight (area 0) is an exterior to repair
        (shells if area <= 0 else holes).append(Polygon(ring))
    interiors: list[list[Any]] = [[] for _ in shells]
    for shell in shells:
        shapely.prepare(shell)
    for hole in holes:
        # the exterior whose filled ring holds the whole hole (an island inside a lake holds the
        # lake's middle, never its ring); failing that (rings that cross), one holding a vertex
        owners = [i for i, shell in enumerate(shells) if shell.covers(hole)] or \
            [i for i, shell in enumerate(shells) if shell.covers(shapely.Point(hole.exterior.coords[0]))]
        if not owners:  # a hole with no exterior around it: Esri would flip it; so do we
            shells.append(hole)
            interiors.append([])
            continue
        interiors[min(owners, key=lambda i: shells[i].area)].append(hole.exterior.coords)
    parts = [Polygon(shell.exterior.coords, inner) for shell, inner in zip(shells, interiors)]
    return _union(parts, name)


def _by_nesting(rings: list[list[tuple[float, float]]], name: str) -> BaseGeometry:
    polys = [Polygon(r) for r in rings]
    for p in polys:
        shapely.prepare(p)
    depth = [0] * len(polys)
    for i, p in enumerate(polys):
        point = shapely.Point(rings[i][0])
        depth[i] = sum(1 for j, q in enumerate(polys) if j != i and q.area > p.area
                       and q.covers(point))
    parts = []
    for i, p in enumerate(polys):
        if depth[i] % 2:
            continue
        inner = [polys[j].exterior.coords for j in range(len(polys))
                 if depth[j] == depth[i] + 1 and p.covers(shapely.Point(rings[j][0]))]
        parts.append(Polygon(p.exterior.coords, inner))
    return _union(parts, name)


def _union(parts: list[Polygon], name: str) -> BaseGeometry:
    parts = [repair(p, name) for p in parts if not p.is_empty]
    if not parts:
        return Polygon()
    if len(parts) == 1:
        return parts[0]
    return shapely.union_all(parts)


def _geometry(geom: Any, name: str) -> BaseGeometry | None:
    """One Esri geometry → polygons, or None when it is not polygonal (points, paths)."""
    if not isinstance(geom, dict):
        return None
    if "curveRings" in geom:
        raise AreaError(f"{name}: true curves (curveRings) are not supported; densify the "
                        "polygon first (ArcGIS: Densify)")
    if "rings" in geom:
        rings = geom["rings"]
        if not isinstance(rings, list):
            raise AreaError(f"{name}: rings is not a list")
        return polygon_from_rings((r for r in (_ring(p, name) for p in rings) if r), name)
    if all(k in geom for k in ("xmin", "ymin", "xmax", "ymax")):
        try:
            xmin, ymin, xmax, ymax = (float(geom[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            raise AreaError(f"{name}: envelope corners are not numbers") from None
        if not (xmin < xmax and ymin < ymax):
            return None
        return box(xmin, ymin, xmax, ymax)
    return None


def read_esri_json(data: Any, name: str) -> EsriArea:
    """The polygons of a FeatureSet, a ``query`` result, a feature, or a bare polygon/envelope.

    The spatial reference comes from the document, else from its features' geometries (all
    must agree); None when nothing names one.
    """
    if not isinstance(data, dict):
        raise AreaError(f"{name}: not Esri JSON")
    sr = _sr(data.get("spatialReference"), name)
    geoms: list[BaseGeometry] = []
    srs: list[SpatialReference] = []
    features = data.get("features")
    if isinstance(features, list):
        shapes = [f.get("geometry") if isinstance(f, dict) else None for f in features]
    elif isinstance(data.get("geometry"), dict):  # a single feature
        shapes = [data["geometry"]]
    else:  # a bare geometry (its own spatialReference is the document's)
        shapes = [data]
    for geom in shapes:
        own = _sr(geom.get("spatialReference"), name) if isinstance(geom, dict) else None
        if own is not None:
            srs.append(own)
        polygon = _geometry(geom, name)
        if polygon is not None:
            geoms.append(polygon)
    if sr is None and srs:
        sr = srs[0]
    if any(_key(other) != _key(sr) for other in srs):
        raise AreaError(f"{name}: features in different spatial references")
    geoms = [g for g in geoms if not g.is_empty]
    if not geoms:
        raise AreaError(f"{name} has no polygon")
    union = geoms[0] if len(geoms) == 1 else shapely.union_all(geoms)
    if not isinstance(union, (Polygon, MultiPolygon)) and not union.is_empty:
        parts = [g for g in getattr(union, "geoms", []) if isinstance(g, (Polygon, MultiPolygon))]
        union = shapely.union_all(parts) if parts else Polygon()
    return EsriArea(union, sr)


def _key(sr: SpatialReference | None) -> object:
    return None if sr is None else (sr.epsg, None if sr.epsg else sr.wkt)

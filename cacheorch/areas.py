"""Projecting and checking areas of interest: shapely geometries carried into the scheme's SR."""
from __future__ import annotations

import functools

import numpy as np

import shapely
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

from cacheorch.errors import AreaError
from cacheorch.tiling import SpatialReference, TilingScheme

__all__ = ["crs_of", "project", "polygonal", "finish_area", "rectangle", "WEB_MERCATOR_MAX_LAT"]

#: Web Mercator stops at ±85.0511°; beyond it the projection runs to infinity.
WEB_MERCATOR_MAX_LAT = 85.05112877980659


@functools.lru_cache(maxsize=64)
def _crs(text: str) -> CRS:
    return CRS.from_user_input(text)


def crs_of(sr: SpatialReference | int | str, what: str) -> CRS:
    """The pyproj CRS of a spatial reference or wkid; an unknown one is an AreaError naming it."""
    text = sr.crs_input() if isinstance(sr, SpatialReference) else \
        SpatialReference(int(sr)).crs_input() if isinstance(sr, int) or str(sr).isdigit() else str(sr)
    try:
        return _crs(text)
    except CRSError:
        raise AreaError(f"{what}: unknown spatial reference {text!r}") from None


@functools.lru_cache(maxsize=64)
def _transformer(src: CRS, dst: CRS) -> Transformer:
    return Transformer.from_crs(src, dst, always_xy=True)


def project(geom: BaseGeometry, src: CRS, dst: CRS, what: str, densify: float | None = None
            ) -> BaseGeometry:
    """Project ``geom``; edges are densified first so long straight edges bend as they should."""
    if src == dst:
        return geom
    if dst.to_epsg() == 3857 and src.is_geographic:
        lim = WEB_MERCATOR_MAX_LAT
        geom = shapely.intersection(geom, box(-180.0, -lim, 180.0, lim))  # see finish_area
    if densify:
        geom = shapely.segmentize(geom, densify)
    fwd = _transformer(src, dst)
    try:
        out = shapely.transform(geom, lambda xy: np.column_stack(fwd.transform(xy[:, 0], xy[:, 1])))
    except Exception as exc:  # pyproj raises several types for points outside a projection
        raise AreaError(f"{what}: cannot project into the service's spatial reference ({exc})") \
            from None
    if not out.is_empty and not all(map(lambda v: v == v and abs(v) != float("inf"), out.bounds)):
        raise AreaError(f"{what}: projects outside the service's spatial reference")
    return out


def polygonal(geom: BaseGeometry, what: str) -> BaseGeometry:
    """The polygons of ``geom`` (repaired when invalid); an AreaError when there are none."""
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    parts = [g for g in getattr(geom, "geoms", [geom]) if isinstance(g, (Polygon, MultiPolygon))]
    parts = [p for p in parts if not p.is_empty and p.area > 0]
    if not parts:
        raise AreaError(f"{what} has no polygon")
    return parts[0] if len(parts) == 1 else shapely.union_all(parts)


def finish_area(geom: BaseGeometry, scheme: TilingScheme, what: str) -> BaseGeometry:
    """Clip to the grid (when its end is known) and refuse an area that misses the grid."""
    bounds = scheme.grid_bounds()
    if bounds is not None:
        # an overlay, not clip_by_rect: the fast clip returns a self-touching ring for a vertex
        # on the grid's corner, and clips of that can turn inside out
        if not geom.is_valid:  # a projection can fold a ring; the overlay needs a valid input
            geom = shapely.make_valid(geom)
        geom = shapely.intersection(geom, box(*bounds))
        if geom.is_empty or geom.area <= 0:
            raise AreaError(f"{what} lies outside the tiling scheme's grid")
    elif geom.is_empty:
        raise AreaError(f"{what} is empty")
    return geom


def rectangle(xmin: float, ymin: float, xmax: float, ymax: float) -> Polygon:
    """An axis-aligned area (a bbox or an extent) as a polygon, ready to densify and project."""
    return box(xmin, ymin, xmax, ymax)

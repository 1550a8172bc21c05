"""Projecting and checking areas of interest: shapely geometries carried into the scheme's SR."""
from __future__ import annotations

import functools
import logging
import re

import numpy as np

import shapely
import shapely.errors
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

from cacheorch.errors import AreaError
from cacheorch.tiling import SpatialReference, TilingScheme

__all__ = ["crs_of", "project", "polygonal", "finish_area", "rectangle", "WEB_MERCATOR_MAX_LAT",
           "repair", "split_crs", "crs_from_text", "into_scheme", "area_from", "read_wkt", "VECTOR_SUFFIXES"]

log = logging.getLogger("cacheorch.areas")

#: Files read as layers through GDAL (pyogrio), not parsed by cacheorch itself.
VECTOR_SUFFIXES = (".shp", ".gpkg", ".gdb", ".fgb", ".sqlite", ".kml", ".gml", ".tab", ".mif")

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


def repair(geom: BaseGeometry, what: str) -> BaseGeometry:
    """``geom`` made valid, with a warning naming the area and GEOS's reason when it was not.

    Why warn: a repaired bow-tie or self-overlap may cover less (or more) than the user drew,
    and the tile counts change with it; silence would hide that.
    """
    if geom.is_empty or geom.is_valid:
        return geom
    log.warning("%s: invalid geometry repaired (%s)", what, shapely.is_valid_reason(geom))
    return shapely.make_valid(geom)


def polygonal(geom: BaseGeometry, what: str) -> BaseGeometry:
    """The polygons of ``geom`` (repaired when invalid); an AreaError when there are none."""
    geom = repair(geom, what)
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


_CRS_SUFFIX = re.compile(r"^(?P<body>.*)@\s*(?P<crs>(?:(?:EPSG|ESRI)\s*:\s*)?\d+)\s*$", re.IGNORECASE | re.DOTALL)


def split_crs(spec: str) -> tuple[str, str | None]:
    """``town.shp@2056`` → ("town.shp", "2056"); ``POLYGON(...)@EPSG:4326`` → (…, "EPSG:4326").

    Only a wkid (optionally ``EPSG:``/``ESRI:``) counts as a suffix, so a path with an ``@`` in a
    folder name stays whole.
    """
    m = _CRS_SUFFIX.match(spec)
    if not m:
        return spec, None
    return m.group("body").rstrip(), re.sub(r"\s+", "", m.group("crs")).upper()


def into_scheme(geom: BaseGeometry, src: CRS | None, scheme: TilingScheme, what: str,
                densify: float | None = None) -> BaseGeometry:
    """Repair, project (``src`` None: already in the scheme's SR), check and clip an area.

    One path for every generator, so each gives the same errors: an area that projects to
    nothing (wholly beyond the Web Mercator latitudes, say) or misses the grid names itself.
    """
    geom = polygonal(geom, what)
    if src is not None:
        dst = crs_of(scheme.spatial_reference, "the tiling scheme")
        projected = project(geom, src, dst, what, densify=densify)
        if projected.is_empty or projected.area <= 0:
            raise AreaError(f"{what} projects to nothing in the tiling scheme's spatial reference "
                            f"({scheme.spatial_reference})")
        geom = polygonal(projected, what)
    return finish_area(geom, scheme, what)


_EWKT_SRID = re.compile(r"^\s*SRID\s*=\s*(\d+)\s*;", re.IGNORECASE)


def read_wkt(text: str, what: str) -> tuple[BaseGeometry, str | None]:
    """A WKT (or EWKT ``SRID=n;…``) geometry and the wkid its SRID names, if any."""
    srid = None
    m = _EWKT_SRID.match(text)
    if m:
        srid, text = m.group(1), text[m.end():]
    try:
        geom = shapely.from_wkt(text.strip())
    except (shapely.errors.ShapelyError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AreaError(f"{what}: not valid WKT ({first})") from None
    if geom is None or geom.is_empty:
        raise AreaError(f"{what}: the WKT geometry is empty")
    return geom, srid


def crs_from_text(text: str, what: str) -> CRS:
    """The CRS a wkid, ``EPSG:n``, ``ESRI:n``, URN or WKT names; an AreaError naming ``what``.

    Numbers go through :class:`SpatialReference` as ArcGIS numbers them: Esri's Web Mercator
    wkids are EPSG:3857, other wkids of 100000 and above are ESRI codes.
    """
    m = re.fullmatch(r"(?:(?:EPSG|ESRI)\s*:+\s*)?(\d+)", text.strip(), re.IGNORECASE)
    if m:
        return crs_of(int(m.group(1)), what)
    return crs_of(text.strip(), what)


#: Densifying step for geographic sources, in degrees (a long edge bends when projected).
DEGREE_STEP = 0.25


def area_from(geom: BaseGeometry, src: CRS | None, scheme: TilingScheme, what: str) -> BaseGeometry:
    """An area read in ``src`` (None: the scheme's own SR), checked, densified and projected.

    Densifying in 1/128 of the area's larger side (0.25° for degrees) keeps long straight edges
    true after projection at any size of area.
    """
    if src is None:
        return into_scheme(geom, None, scheme, what)
    geom = repair(geom, what)
    xmin, ymin, xmax, ymax = geom.bounds
    if src.is_geographic:
        if not (-180 <= xmin and xmax <= 180 and -90 <= ymin and ymax <= 90):
            raise AreaError(f"{what}: coordinates are not longitude/latitude (its spatial reference "
                            f"{src.name} is geographic); bounds {xmin:g},{ymin:g},{xmax:g},{ymax:g}")
        step: float | None = DEGREE_STEP
    else:
        step = max(xmax - xmin, ymax - ymin) / 128 or None
    return into_scheme(geom, src, scheme, what, densify=step)

"""The ``buffer`` area: another area grown (or shrunk) by a distance: ``buffer:DISTANCE:AREA``.

``DISTANCE`` is a number with a unit: ``m``, ``km``, ``ft`` (international foot) or ``tiles``;
``AREA`` is any other ``--aoi`` spec, so buffers compose with everything::

    --aoi 10-15=buffer:500m:town.geojson
    --aoi 12-18=buffer:2tiles:bbox:5.9,45.8,10.5,47.8@4326
    --aoi 0-9=buffer:-1km:county.shp          (negative: shrink)

    [aoi:town-margin]
    generator = buffer
    spec = 500m:town.geojson

In metres, the buffer is a true ground distance whatever the scheme's units (Web Mercator
stretches a metre by 1/cos(latitude)): the area is projected into an azimuthal equidistant
projection centred on it, buffered there and projected back. That is exact at the centre and
within a few per cent up to ~3000 km away, so areas spanning more than 90° are refused.

In tiles, the distance is that many tiles *of each level* (in map units: tiles × tile width), so
``buffer:2tiles:…`` adds about two rings of tiles at every level of its range: the margin a map
needs to pan past its edge. The corners are rounded (a true distance), so beyond 3 tiles a
corner's diagonal tile may be left out.
"""
from __future__ import annotations

import math
import re

import numpy as np
import shapely
from pyproj import CRS, Transformer
from shapely.geometry.base import BaseGeometry

from cacheorch import hookimpl
from cacheorch.areas import crs_of, finish_area
from cacheorch.connection import Connection
from cacheorch.errors import AreaError
from cacheorch.interfaces import AOIGenerator, AreaResolver, Service
from cacheorch.tiling import LevelOfDetail

__all__ = ["BufferArea", "parse_buffer"]

_DISTANCE = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)\s*"
                       r"(m|km|ft|tiles?)\s*:(.+)$", re.IGNORECASE | re.DOTALL)
_METRES = {"m": 1.0, "km": 1000.0, "ft": 0.3048}
#: Vertices per quarter circle of a rounded corner.
_QUAD_SEGS = 8
#: Widest area (degrees of longitude or latitude) a metre buffer accepts.
_MAX_SPAN_DEGREES = 90.0


def parse_buffer(spec: str) -> tuple[float, str, str]:
    """``500m:town.geojson`` → (500.0, "m", "town.geojson"); units m, km, ft, tiles."""
    m = _DISTANCE.match(spec)
    if not m:
        raise AreaError(f"buffer:{spec}: expected buffer:DISTANCE:AREA, DISTANCE with a unit m, km, "
                        "ft or tiles (e.g. buffer:500m:town.geojson, buffer:2tiles:extent)")
    unit = m.group(2).lower()
    unit = "tiles" if unit.startswith("tile") else unit
    inner = m.group(3).strip()
    if not inner:
        raise AreaError(f"buffer:{spec}: no area to buffer after the distance")
    return float(m.group(1)), unit, inner


def _metre_buffer(area: BaseGeometry, metres: float, scheme_crs: CRS, what: str) -> BaseGeometry:
    wgs84 = crs_of(4326, what)
    to_ll = Transformer.from_crs(scheme_crs, wgs84, always_xy=True)
    xmin, ymin, xmax, ymax = area.bounds
    lons, lats = to_ll.transform([xmin, xmax, xmin, xmax, (xmin + xmax) / 2],
                                 [ymin, ymin, ymax, ymax, (ymin + ymax) / 2])
    if not all(map(math.isfinite, [*lons, *lats])):
        raise AreaError(f"{what}: cannot place the area on the globe to buffer it in metres")
    if max(lons) - min(lons) > _MAX_SPAN_DEGREES or max(lats) - min(lats) > _MAX_SPAN_DEGREES:
        raise AreaError(f"{what}: the area spans more than {_MAX_SPAN_DEGREES:g}°; a buffer in "
                        "metres is only true near its centre, buffer in tiles instead")
    centre = area.centroid
    clon, clat = to_ll.transform(centre.x, centre.y)
    local = CRS.from_proj4(f"+proj=aeqd +lat_0={clat} +lon_0={clon} +datum=WGS84 +units=m +no_defs")
    fwd = Transformer.from_crs(scheme_crs, local, always_xy=True)
    back = Transformer.from_crs(local, scheme_crs, always_xy=True)

    def through(t: Transformer, geom: BaseGeometry) -> BaseGeometry:
        return shapely.transform(geom, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))

    # densify first: an edge straight in the scheme's SR is curved in the local projection
    step = max(xmax - xmin, ymax - ymin) / 256 or None
    near = through(fwd, shapely.segmentize(area, step) if step else area)
    grown = shapely.buffer(shapely.make_valid(near), metres, quad_segs=_QUAD_SEGS)
    if grown.is_empty or grown.area <= 0:
        raise AreaError(f"{what} is empty: a buffer of {metres:g} m leaves nothing")
    out = through(back, shapely.segmentize(grown, max(abs(metres) / 4, 1.0)))
    return shapely.make_valid(out) if not out.is_valid else out


class BufferArea(AOIGenerator):
    """Another area grown by a distance: buffer:500m:town.geojson, buffer:2tiles:AREA."""

    name = "buffer"

    def varies_by_level(self, spec: str) -> bool:
        """In tiles, yes; in metres, only when it wraps a buffer that does (the one built-in
        area that varies), so a metre buffer is built once for all its levels."""
        try:
            _, unit, inner = parse_buffer(spec)
        except AreaError:
            return False
        return unit == "tiles" or (inner.lower().startswith("buffer:")
                                   and self.varies_by_level(inner.partition(":")[2]))

    def area(self, spec: str, service: Service, connection: Connection):  # noqa: ANN201
        raise AreaError(f"buffer:{spec}: a buffer wraps another area and needs the job's levels; "
                        "use it in --aoi or an [aoi:NAME] section")

    def area_at(self, spec: str, service: Service, connection: Connection, lod: LevelOfDetail,
                resolve: AreaResolver) -> BaseGeometry:
        distance, unit, inner = parse_buffer(spec)
        what = f"buffer:{spec}"
        area = resolve(inner, lod)
        if distance == 0:
            return area
        scheme = service.scheme
        if unit == "tiles":
            span_x, span_y = scheme.tile_span(lod.level)
            grown = shapely.buffer(area, distance * max(span_x, span_y), quad_segs=_QUAD_SEGS)
            if grown.is_empty or grown.area <= 0:
                raise AreaError(f"{what} is empty at level {lod.level}: the buffer leaves nothing")
        else:
            grown = _metre_buffer(area, distance * _METRES[unit],
                                  crs_of(scheme.spatial_reference, "the tiling scheme"), what)
        return finish_area(grown, scheme, what)


@hookimpl
def cacheorch_register_aoi_generators() -> list[type[AOIGenerator]]:
    return [BufferArea]

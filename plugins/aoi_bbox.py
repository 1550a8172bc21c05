"""The ``bbox`` area: ``bbox:xmin,ymin,xmax,ymax[@wkid]`` (default: the scheme's spatial reference)."""
from __future__ import annotations

from cacheorch import hookimpl
from cacheorch.areas import crs_of, finish_area, project, rectangle
from cacheorch.connection import Connection
from cacheorch.errors import AreaError
from cacheorch.interfaces import AOIGenerator, Service

__all__ = ["BBoxArea"]


class BBoxArea(AOIGenerator):
    """A rectangle: bbox:xmin,ymin,xmax,ymax[@wkid], e.g. bbox:5.9,45.8,10.5,47.8@4326."""

    name = "bbox"

    def area(self, spec: str, service: Service, connection: Connection):  # noqa: ANN201
        what = f"bbox:{spec}"
        coords, _, wkid = spec.partition("@")
        try:
            xmin, ymin, xmax, ymax = (float(v) for v in coords.split(","))
        except ValueError:
            raise AreaError(f"{what}: expected bbox:xmin,ymin,xmax,ymax[@wkid]") from None
        if not (xmin < xmax and ymin < ymax):
            raise AreaError(f"{what}: xmin must be below xmax and ymin below ymax")
        geom = rectangle(xmin, ymin, xmax, ymax)
        scheme = service.scheme
        if wkid.strip():
            src = crs_of(wkid.strip(), what)
            if src.is_geographic and not (-180 <= xmin and xmax <= 180 and -90 <= ymin and ymax <= 90):
                raise AreaError(f"{what}: longitudes must be within ±180 and latitudes within ±90")
            dst = crs_of(scheme.spatial_reference, "the tiling scheme")
            geom = project(geom, src, dst, what, densify=max(xmax - xmin, ymax - ymin) / 128)
        return finish_area(geom, scheme, what)


@hookimpl
def cacheorch_register_aoi_generators() -> list[type[AOIGenerator]]:
    return [BBoxArea]

"""The ``extent`` area: the service's full extent, clipped to the tiling grid."""
from __future__ import annotations

from cacheorch import hookimpl
from cacheorch.areas import crs_of, finish_area, project, rectangle
from cacheorch.connection import Connection
from cacheorch.errors import AreaError
from cacheorch.interfaces import AOIGenerator, Service

__all__ = ["ExtentArea"]


class ExtentArea(AOIGenerator):
    """The service's full extent (extent, or extent:initial), clipped to the grid."""

    name = "extent"

    def area(self, spec: str, service: Service, connection: Connection):  # noqa: ANN201
        which = (spec or "full").strip().lower()
        scheme = service.scheme
        if which not in ("full", "initial"):
            raise AreaError(f"extent:{spec}: expected extent, extent:full or extent:initial")
        env = scheme.full_extent if which == "full" else scheme.initial_extent
        if env is None:  # the whole grid would be a guess, and on a world cache a huge one
            raise AreaError(f"{service.location} gives no {which} extent; name an area with --aoi "
                            "(bbox:xmin,ymin,xmax,ymax[@wkid] or a GeoJSON file)")
        geom = rectangle(*env.bounds)
        if env.spatial_reference is not None and (env.spatial_reference.epsg or env.spatial_reference.wkt) \
                and env.spatial_reference.epsg != scheme.spatial_reference.epsg:
            src = crs_of(env.spatial_reference, f"the {which} extent")
            dst = crs_of(scheme.spatial_reference, "the tiling scheme")
            span = max(env.xmax - env.xmin, env.ymax - env.ymin) / 128 or None
            geom = project(geom, src, dst, f"the {which} extent", densify=span)
        return finish_area(geom, scheme, f"the service's {which} extent")


@hookimpl
def cacheorch_register_aoi_generators() -> list[type[AOIGenerator]]:
    return [ExtentArea]

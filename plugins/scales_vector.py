"""The ``vector`` scale source: an ArcGIS VectorTileServer's ``?f=json`` (hosted or ArcGIS Server).

It reads the 512-px ``tileInfo``, the tile URL template, ``minLOD``/``maxLOD``, where the quadtree
tilemap and the default style are, and keeps a reader for the style's resources (sprites, glyphs)
bound to the same connection, so tokens are renewed for those as for the tiles. ``scales``,
``plan``, policies and areas then work as for a raster service: the scheme is the same
:class:`~cacheorch.tiling.TilingScheme`. Mind the level offset: vector level L has the resolution of
256-px raster level L+1 (spec §1.2); match levels across layers by scale, not by number.
"""
from __future__ import annotations

from functools import partial

from cacheorch import hookimpl
from cacheorch.connection import Connection
from cacheorch.interfaces import ScaleSource, Service
from cacheorch.plugins.scales_rest import clean_location
from cacheorch.vector.resources import get_bytes
from cacheorch.vector.service import vector_service_from_json, vector_tile_service_url

__all__ = ["VectorScaleSource", "cacheorch_register_scale_sources"]


class VectorScaleSource(ScaleSource):
    """Levels of an ArcGIS VectorTileServer (?f=json tileInfo, 512-px pbf tiles)."""

    name = "vector"

    @classmethod
    def accepts(cls, location: str) -> bool:
        return vector_tile_service_url(location) is not None

    def read(self, location: str, connection: Connection) -> Service:
        url = vector_tile_service_url(location) or clean_location(location)
        return vector_service_from_json(url, connection.get_json(url),
                                        fetch=partial(get_bytes, connection))


@hookimpl
def cacheorch_register_scale_sources() -> list[type[ScaleSource]]:
    return [VectorScaleSource]

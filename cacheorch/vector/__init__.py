"""ArcGIS vector tile layers (VectorTileServer): service JSON, quadtree tilemap, style resources, vtpk.

See ``README.md`` ("Vector tiles") and ``/spec/vector-tiles.md``. The tiling scheme is the same
:class:`~cacheorch.tiling.TilingScheme` as for raster services (512-px tiles, ``format`` pbf); what
a vector layer adds is a resource set (style, sprites, glyphs) that an export copies next to the
bundles, and a quadtree tilemap that says which tiles exist.
"""
from cacheorch.vector.service import (
    VectorService, is_vector_scheme, is_vector_tile_layer, vector_tile_service_url,
)

__all__ = ["VectorService", "is_vector_scheme", "is_vector_tile_layer", "vector_tile_service_url"]

"""cacheorch plugin: an area of interest from an ArcGIS FeatureServer (or MapServer) polygon layer.

``--aoi 15-19=featureservice:https://host/arcgis/rest/services/Parcels/FeatureServer/0?where=DISTRICT%3D7``
exports levels 15 to 19 only where the parcels of district 7 are. The package registers itself
through the entry point group ``cacheorch`` (see pyproject.toml); this module holds the hook.
"""
from __future__ import annotations

from cacheorch import hookimpl
from cacheorch.interfaces import AOIGenerator

from cacheorch_featureservice.area import FeatureServiceArea

__all__ = ["FeatureServiceArea", "cacheorch_register_aoi_generators"]
__version__ = "0.1.0"


@hookimpl
def cacheorch_register_aoi_generators() -> list[type[AOIGenerator]]:
    return [FeatureServiceArea]

"""Whole maps offline: read a map (web map, portal item, .mapx, QGIS project...), export each of its
cached tiled layers as a job of its own, and write a manifest and an offline copy of the map.

``model`` the plain value a map is read into; ``interfaces`` the reader and writer plugin kinds;
``registry`` how a map is read; ``classify`` which layers are exported; ``plan`` and ``run`` the
map job; ``hosts`` the per-host budget; ``manifest`` map.json; ``webmap``, ``cim``, ``qgis`` the
formats; ``offline_qgis`` the offline QGIS project.
"""
from cacheorch.maps.model import MapDocument, MapLayer

__all__ = ["MapDocument", "MapLayer"]

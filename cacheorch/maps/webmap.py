"""ArcGIS web map JSON (a portal item's data) → map layers, top first.

A web map stores each array bottom first (index 0 is drawn first), basemap layers under every
operational layer unless ``isReference`` puts them on top (spec/maps.md §1.2). Group layers nest;
a child shows only when every ancestor does, and opacities multiply.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from cacheorch.errors import MapError
from cacheorch.maps.model import MapDocument, MapLayer
from cacheorch.vector.service import vector_tile_service_url

__all__ = ["webmap_document", "webmap_layer_kind", "ARCGIS_TILE_TEMPLATE"]

#: An XYZ template that is an ArcGIS cache's own ``/tile/{level}/{row}/{col}`` (or QGIS's
#: ``{z}/{y}/{x}``): the layer is that MapServer / ImageServer, exported like a tiled layer.
ARCGIS_TILE_TEMPLATE = re.compile(
    r"^(?P<service>https?://.+?/(?:MapServer|ImageServer))/tile/"
    r"(?:\{level\}|\{z\})/(?:\{row\}|\{y\})/(?:\{col\}|\{x\})/?(?:\?.*)?$", re.I)

_KINDS = {
    "arcgistiledmapservicelayer": "tiled-map",
    "arcgistiledimageservicelayer": "tiled-image",
    "arcgismapservicelayer": "dynamic",
    "arcgisimageservicelayer": "dynamic",
    "arcgisimageservicevectorlayer": "dynamic",
    "vectortilelayer": "vector-tile",
    "arcgisfeaturelayer": "feature", "arcgisstreamlayer": "feature", "csv": "feature",
    "kml": "feature", "geojson": "feature", "georss": "feature", "wfs": "feature",
    "ogcfeaturelayer": "feature", "subtypegrouplayer": "feature",
    "wms": "wms",
}


def webmap_layer_kind(entry: dict[str, Any]) -> tuple[str, str | None]:
    """(kind, service URL) of one web map layer entry."""
    layer_type = str(entry.get("layerType") or entry.get("type") or "")
    url = entry.get("url")
    if layer_type == "WebTiledLayer":
        template = str(entry.get("templateUrl") or "")
        match = ARCGIS_TILE_TEMPLATE.match(template)
        if match:
            return "tiled-map", match.group("service")
        return "web-tiled", template or url
    if layer_type == "VectorTileLayer":
        # the VectorTileServer when ``url`` or ``styleUrl`` names one (either may be a portal
        # item's style instead), else what the layer says, for the skip reason
        return "vector-tile", vector_tile_service_url(entry) or url or entry.get("styleUrl")
    return _KINDS.get(layer_type.lower(), "other"), url


def _title(entry: dict[str, Any], fallback: str) -> str:
    title = entry.get("title") or entry.get("id")
    if not title and entry.get("url"):
        parts = [p for p in str(entry["url"]).rstrip("/").split("/") if p]
        title = parts[-2] if len(parts) >= 2 and parts[-1].endswith("Server") else parts[-1]
    return str(title or fallback)


def _leaves(entries: Any, role: str, where: str, visible: bool = True, opacity: float = 1.0,
            group: tuple[str, ...] = ()) -> Iterator[MapLayer]:
    """Leaf layers of ``entries`` bottom first (the array's own order), groups flattened."""
    if entries is None:
        return
    if not isinstance(entries, list):
        raise MapError(f"{where}: is not a list of layers")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise MapError(f"{where}[{i}]: is not a layer object")
        shown = visible and entry.get("visibility", True) is not False
        alpha = opacity * float(entry.get("opacity", 1.0) if entry.get("opacity") is not None
                                else 1.0)
        layer_type = str(entry.get("layerType") or entry.get("type") or "")
        if layer_type == "GroupLayer" or (not layer_type and isinstance(entry.get("layers"), list)
                                          and not entry.get("url")):
            title = _title(entry, f"group {i + 1}")
            yield from _leaves(entry.get("layers"), role, f"{where}[{i}].layers", shown, alpha,
                               group + (title,))
            continue
        kind, url = webmap_layer_kind(entry)
        this_role = "reference" if role == "basemap" and entry.get("isReference") else role
        yield MapLayer(title=_title(entry, f"layer {i + 1}"), url=url, role=this_role,
                       visibility=shown, opacity=round(alpha, 6), kind=kind, type=layer_type,
                       ref={"id": entry.get("id")}, group=group)


def webmap_document(data: Any, source: str, *, title: str | None = None, format: str = "webmap",
                    path: str | None = None) -> MapDocument:
    """The MapDocument of web map JSON ``data``.

    :raises MapError: ``data`` is not a web map (no ``operationalLayers`` nor ``baseMap``).
    """
    if not isinstance(data, dict) or not ("operationalLayers" in data or "baseMap" in data):
        raise MapError(f"{source}: not a web map (no operationalLayers or baseMap)")
    basemap = data.get("baseMap") or {}
    if not isinstance(basemap, dict):
        raise MapError(f"{source}: baseMap is not an object")
    base = list(_leaves(basemap.get("baseMapLayers"), "basemap", "baseMap.baseMapLayers"))
    operational = list(_leaves(data.get("operationalLayers"), "operational", "operationalLayers"))
    # top first: reference basemap layers, then operational layers, then the basemap
    ordered = [lyr for lyr in reversed(base) if lyr.role == "reference"] + \
        list(reversed(operational)) + [lyr for lyr in reversed(base) if lyr.role == "basemap"]
    name = title or str(data.get("title") or basemap.get("title") or "map")
    return MapDocument(title=name, source=source, layers=tuple(ordered), format=format, path=path)

"""ArcGIS Pro CIM JSON (a ``.mapx`` map document) → map layers, top first.

``mapDefinition.layers`` lists layer URIs in table-of-contents order (top first); each names an
entry of ``layerDefinitions`` by its ``uRI``. Real files use lower-camel keys (``uRI``, ``url``)
where the spec writes ``URI``/``URL``, so keys are matched without regard to case.
"""
from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cacheorch.errors import MapError
from cacheorch.maps.model import MapDocument, MapLayer

__all__ = ["cim_document", "cim_map_document", "cim_layer", "aprx_document"]

_ROLES = {"operational": "operational", "basemapbackground": "basemap",
          "basemaptopreference": "reference"}
_KINDS = {"cimvectortilelayer": "vector-tile", "cimfeaturelayer": "feature",
          "cimwmslayer": "wms", "cimmapserverlayer": "dynamic", "cimservicelayer": "dynamic",
          "cimimageservicelayer": "dynamic", "cimrasterlayer": "local",
          "cimstreamlayer": "feature", "cimsubtypegrouplayer": "feature"}


def _get(obj: Any, key: str, default: Any = None) -> Any:
    """``obj[key]`` with the key matched regardless of case (``uRI``, ``URI``, ``uri``)."""
    if not isinstance(obj, dict):
        return default
    if key in obj:
        return obj[key]
    low = key.lower()
    for k, v in obj.items():
        if k.lower() == low:
            return v
    return default


def _kind(definition: dict[str, Any]) -> tuple[str, str | None]:
    layer_type = str(_get(definition, "type", ""))
    if layer_type == "CIMTiledServiceLayer":
        connection = _get(definition, "serviceConnection") or {}
        if _get(connection, "type") == "CIMAGSServiceConnection":
            object_type = str(_get(connection, "objectType", "MapServer"))
            return ("tiled-image" if object_type == "ImageServer" else "tiled-map"), \
                _get(connection, "url")
        return "wms", _get(connection, "url") or _get(connection, "templateUrl")
    if layer_type == "CIMVectorTileLayer":
        return "vector-tile", _get(_get(definition, "dataConnection") or {}, "uri")
    url = _get(_get(definition, "serviceConnection") or {}, "url")
    return _KINDS.get(layer_type.lower(), "other"), url


def cim_layer(definition: dict[str, Any], visible: bool = True, opacity: float = 1.0,
              group: tuple[str, ...] = ()) -> MapLayer:
    """One CIM layer definition as a MapLayer (``visible``/``opacity``: its ancestors')."""
    uri = str(_get(definition, "uri") or "")
    transparency = float(_get(definition, "transparency", 0) or 0)
    kind, url = _kind(definition)
    role = _ROLES.get(str(_get(definition, "layerType", "Operational")).lower(), "operational")
    return MapLayer(title=str(_get(definition, "name") or uri), url=url, role=role,
                    visibility=visible and _get(definition, "visibility", True) is not False,
                    opacity=round(opacity * max(0.0, 1.0 - transparency / 100.0), 6), kind=kind,
                    type=str(_get(definition, "type", "")), ref={"uri": uri}, group=group)


def cim_document(data: Any, source: str, path: str | None = None) -> MapDocument:
    """The MapDocument of a ``CIMMapDocument`` (a ``.mapx`` file's JSON).

    :raises MapError: not a CIM map document, or a layer URI that names no definition.
    """
    if not isinstance(data, dict) or _get(data, "type") != "CIMMapDocument":
        raise MapError(f"{source}: not an ArcGIS Pro map document (type is not CIMMapDocument)")
    definitions = {str(_get(d, "uri")): d for d in _get(data, "layerDefinitions") or ()
                   if isinstance(d, dict)}
    return cim_map_document(_get(data, "mapDefinition") or {}, definitions, source, "mapx", path)


def cim_map_document(map_definition: dict[str, Any], definitions: dict[str, Any], source: str,
                     format: str, path: str | None = None) -> MapDocument:
    """The MapDocument of a ``CIMMap`` whose layer URIs name entries of ``definitions``
    (a .mapx's ``layerDefinitions`` by ``uRI``; an .aprx's members as ``CIMPATH=member``)."""
    def leaves(uris: Any, visible: bool, opacity: float, group: tuple[str, ...]
               ) -> Iterator[MapLayer]:
        for uri in uris or ():
            definition = definitions.get(str(uri))
            if definition is None:
                raise MapError(f"{source}: layer {uri} is listed but not defined")
            if _get(definition, "type") == "CIMGroupLayer":
                group_layer = cim_layer(definition, visible, opacity)
                yield from leaves(_get(definition, "layers"), group_layer.visibility,
                                  group_layer.opacity, group + (group_layer.title,))
                continue
            yield cim_layer(definition, visible, opacity, group)

    layers = tuple(leaves(_get(map_definition, "layers"), True, 1.0, ()))
    title = str(_get(map_definition, "name") or "map")
    return MapDocument(title=title, source=source, layers=layers, format=format, path=path)


def aprx_document(path: Path, source: str) -> MapDocument:
    """The first map of an ArcGIS Pro 3.x project (``.aprx``: a zip of JSON CIM members).

    ``CIMPATH=x`` names the zip member ``x`` (spec/maps.md §2.2). Pro 2.x projects hold CIM XML
    instead: refused with a line saying how to get a readable file.

    :raises MapError: not a zip, no JSON CIM map in it, or a CIM XML (Pro 2.x) project.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            members: dict[str, Any] = {}
            for name in names:
                if name.lower().endswith(".json"):
                    try:
                        members[name] = json.loads(archive.read(name).decode("utf-8-sig"))
                    except (ValueError, UnicodeDecodeError):
                        continue
    except (zipfile.BadZipFile, OSError) as exc:
        raise MapError(f"{source}: not a readable ArcGIS Pro project (zip): {exc}") from None
    maps = sorted(name for name, data in members.items() if _get(data, "type") == "CIMMap")
    if not maps:
        if any(n.lower().endswith(".xml") for n in names):
            raise MapError(f"{source}: an ArcGIS Pro 2.x project (CIM XML), readable only with "
                           "arcpy here; save it in ArcGIS Pro 3, or share the map as .mapx")
        raise MapError(f"{source}: no map in the project (no CIMMap member)")
    definitions = {f"CIMPATH={name}": data for name, data in members.items()}
    return cim_map_document(members[maps[0]], definitions, source, "aprx", str(path))

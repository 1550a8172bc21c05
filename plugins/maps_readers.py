"""Built-in map readers: web map JSON files, portal web map items, ``.mapx``, QGIS projects, Pro 3.x
``.aprx`` (a zip of JSON CIM, read without arcpy), and ``.mxd`` (and Pro 2.x ``.aprx``) through arcpy
where arcpy exists.

Each reader only recognises its format and hands the parsed JSON or XML to the format's module in
:mod:`cacheorch.maps`; classification and planning happen later, on the MapDocument.
"""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from cacheorch.errors import AuthError, MapError, ServiceError
from cacheorch.hookspecs import hookimpl
from cacheorch.maps.cim import aprx_document, cim_document
from cacheorch.maps.interfaces import MapReader
from cacheorch.maps.model import MapDocument, MapLayer
from cacheorch.maps.qgis import qgis_document
from cacheorch.maps.webmap import webmap_document

if TYPE_CHECKING:
    from cacheorch.connection import Connection

__all__ = ["WebMapFileReader", "PortalItemReader", "MapxReader", "QgisProjectReader",
           "AprxReader", "ArcpyMapReader", "portal_item", "cacheorch_register_map_readers"]

_ITEM_ID = re.compile(r"^[0-9a-f]{32}$", re.I)


def _json_file(location: str) -> Any:
    path = Path(location)
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise MapError(f"{location}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MapError(f"{location}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise MapError(f"{location}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _has_suffix(location: str, *suffixes: str) -> bool:
    return not location.lower().startswith(("http://", "https://")) and \
        Path(location).suffix.lower() in suffixes


class _FileMapReader(MapReader):
    """A reader of map files recognised by their suffix."""

    suffixes: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def accepts(cls, location: str) -> bool:
        return _has_suffix(location, *cls.suffixes)


class WebMapFileReader(_FileMapReader):
    """An ArcGIS web map saved as JSON (a portal item's data: operationalLayers, baseMap)."""

    name = "webmap"
    formats = "web map JSON (.json)"
    suffixes = (".json", ".webmap")

    def read(self, location: str, connection: Connection) -> MapDocument:
        return webmap_document(_json_file(location), location, title=Path(location).stem,
                               path=location)


def portal_item(location: str) -> tuple[str, str] | None:
    """(portal root, item id) of a URL users paste for a web map item, or None.

    ``…/home/item.html?id=ID``, ``…/home/webmap/viewer.html?webmap=ID``,
    ``…/apps/mapviewer/index.html?webmap=ID``, ``…/sharing/rest/content/items/ID[/data]``.
    """
    parts = urlsplit(location.strip())
    if parts.scheme not in ("http", "https"):
        return None
    path = parts.path
    query = parse_qs(parts.query)
    for marker in ("/sharing/rest/content/items/", "/sharing/content/items/"):
        if marker in path:
            head, _, tail = path.partition(marker)
            item = tail.split("/")[0]
            return (f"{parts.scheme}://{parts.netloc}{head}", item) if _ITEM_ID.match(item) \
                else None
    for marker in ("/home/", "/apps/"):
        if marker in path:
            item = (query.get("webmap") or query.get("id") or [""])[0]
            if _ITEM_ID.match(item):
                head = path.partition(marker)[0]
                return f"{parts.scheme}://{parts.netloc}{head}", item
    return None


class PortalItemReader(MapReader):
    """A web map item of ArcGIS Online or Enterprise, from any URL users paste for it."""

    name = "portal"
    formats = "portal web map item URL"

    @classmethod
    def accepts(cls, location: str) -> bool:
        return portal_item(location) is not None

    def read(self, location: str, connection: Connection) -> MapDocument:
        found = portal_item(location)
        if found is None:
            raise MapError(f"{location}: not a portal item URL")
        root, item_id = found
        item_url = f"{root}/sharing/rest/content/items/{item_id}"
        try:
            item = connection.get_json(item_url)
            if item.get("type") != "Web Map":
                raise MapError(f"item {item_id} ({item.get('title') or 'untitled'}) is a "
                               f"{item.get('type') or 'item of unknown type'}, not a web map")
            data = connection.get_json(item_url + "/data")
        except AuthError as exc:
            raise MapError(f"the token cannot read web map item {item_id}: {exc}") from None
        except ServiceError as exc:
            raise MapError(f"web map item {item_id}: {exc}") from None
        return webmap_document(data, item_url, title=item.get("title"), format="portal")


class MapxReader(_FileMapReader):
    """An ArcGIS Pro map file (.mapx: CIM JSON)."""

    name = "mapx"
    formats = "ArcGIS Pro map file (.mapx)"
    suffixes = (".mapx",)

    def read(self, location: str, connection: Connection) -> MapDocument:
        return cim_document(_json_file(location), location, path=location)


class QgisProjectReader(_FileMapReader):
    """A QGIS project (.qgs, or .qgz holding one)."""

    name = "qgis"
    formats = "QGIS project (.qgs, .qgz)"
    suffixes = (".qgs", ".qgz")

    def read(self, location: str, connection: Connection) -> MapDocument:
        path = Path(location)
        if not path.is_file():
            raise MapError(f"{location}: no such file")
        return qgis_document(path, location)


class AprxReader(_FileMapReader):
    """An ArcGIS Pro 3.x project (.aprx, its first map), read without arcpy."""

    name = "aprx"
    formats = "ArcGIS Pro 3.x project (.aprx)"
    suffixes = (".aprx",)

    def read(self, location: str, connection: Connection) -> MapDocument:
        path = Path(location)
        if not path.is_file():
            raise MapError(f"{location}: no such file")
        try:
            return aprx_document(path, location)
        except MapError:
            if ArcpyMapReader.available():  # a Pro 2.x project: arcpy reads those
                return ArcpyMapReader().read(location, connection)
            raise


class ArcpyMapReader(_FileMapReader):
    """An ArcMap document (.mxd), or a Pro 2.x project (.aprx) the aprx reader refers, via arcpy."""

    name = "arcpy-map"
    formats = "ArcMap document (.mxd)"
    suffixes = (".mxd",)

    @classmethod
    def available(cls) -> bool:
        return importlib.util.find_spec("arcpy") is not None

    def read(self, location: str, connection: Connection) -> MapDocument:
        import arcpy  # type: ignore[import-not-found]
        path = str(Path(location).absolute())
        try:
            if path.lower().endswith(".mxd"):
                project = arcpy.mp.ArcGISProject("CURRENT")
                project.importDocument(path)
            else:
                project = arcpy.mp.ArcGISProject(path)
            maps = project.listMaps()
        except Exception as exc:  # arcpy raises OSError/RuntimeError with its own text
            raise MapError(f"{location}: arcpy cannot open it: {exc}") from None
        if not maps:
            raise MapError(f"{location}: the project holds no map")
        return MapDocument(title=maps[0].name, source=location, format="arcpy", path=location,
                           layers=tuple(_arcpy_layers(maps[0])))


def _arcpy_layers(arcpy_map: Any) -> list[MapLayer]:
    """Leaf layers of an arcpy.mp Map, top first (listLayers' order), read from their CIM."""
    from cacheorch.maps.cim import cim_layer
    out = []
    for layer in arcpy_map.listLayers():
        if getattr(layer, "isGroupLayer", False):
            continue
        out.append(cim_layer(_cim_dict(layer.getDefinition("V3")), getattr(layer, "visible", True)))
    return out


def _cim_dict(obj: Any) -> Any:
    """An arcpy CIM object as plain dicts (its public attributes, recursively)."""
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, (list, tuple)):
        return [_cim_dict(v) for v in obj]
    out = {"type": type(obj).__name__}
    for key in dir(obj):
        if not key.startswith("_"):
            value = getattr(obj, key)
            if not callable(value):
                out[key] = _cim_dict(value)
    return out


@hookimpl
def cacheorch_register_map_readers() -> list[type[MapReader]]:
    return [WebMapFileReader, PortalItemReader, MapxReader, QgisProjectReader, AprxReader,
            ArcpyMapReader]

"""QGIS projects (``.qgs`` XML, ``.qgz`` = a zip holding one ``.qgs``) → map layers, top first.

The layer tree (``<layer-tree-group>``) gives the order (its first child is drawn on top) and the
visibility (``checked``); each ``<maplayer>`` gives the provider and datasource (spec/maps.md §3).
Tiled ArcGIS inputs are ``arcgismapserver`` layers, ``wms`` XYZ layers whose template is a
cache's ``/tile/{z}/{y}/{x}``, and vector tile layers of an ArcGIS VectorTileServer.
"""
from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl
from xml.etree import ElementTree as ET

from cacheorch.errors import FormatError, MapError
from cacheorch.formats.confxml import parse_xml
from cacheorch.maps.model import MapDocument, MapLayer
from cacheorch.maps.webmap import ARCGIS_TILE_TEMPLATE

__all__ = ["read_project_text", "qgis_document", "layer_source"]

_PLAIN_DOCTYPE = re.compile(r"<!DOCTYPE\s+qgis\b[^\[>]*>", re.I)
_INTERNAL_SUBSET = re.compile(r"<!DOCTYPE[^>]*\[|<!\s*ENTITY", re.I)
_AMS_PAIR = re.compile(r"(\w+)='((?:[^'\\]|\\.)*)'")
_LOCAL_PROVIDERS = {"gdal", "ogr", "spatialite", "delimitedtext", "memory", "virtual", "mdal",
                    "pdal", "gpx"}
#: Vector tile layers: ``vectortile`` up to QGIS 3.2x; later releases name the source's provider.
_VECTOR_TILE_PROVIDERS = {"vectortile", "arcgisvectortileservice", "xyzvectortiles",
                          "mbtilesvectortiles", "vtpkvectortiles"}


def read_project_text(path: Path) -> tuple[str, str | None]:
    """The project XML of a ``.qgs`` or ``.qgz`` and, for a ``.qgz``, the member it came from."""
    if path.suffix.lower() == ".qgz":
        try:
            with zipfile.ZipFile(path) as archive:
                members = [n for n in archive.namelist() if n.lower().endswith(".qgs")]
                if not members:
                    raise MapError(f"{path}: the .qgz holds no .qgs project "
                                   f"(members: {', '.join(archive.namelist()[:5]) or 'none'})")
                return archive.read(members[0]).decode("utf-8"), members[0]
        except (zipfile.BadZipFile, OSError) as exc:
            raise MapError(f"{path}: not a readable .qgz (zip) file: {exc}") from None
    try:
        return path.read_text(encoding="utf-8"), None
    except (OSError, UnicodeDecodeError) as exc:
        raise MapError(f"{path}: cannot read the project: {exc}") from None


def layer_source(provider: str, datasource: str) -> tuple[str, str | None]:
    """(kind, service URL) of a QGIS layer from its provider and datasource string."""
    if provider == "arcgismapserver":
        pairs = dict(_AMS_PAIR.findall(datasource))
        return "map-service", pairs.get("url")
    if provider == "wms":
        query = dict(parse_qsl(datasource, keep_blank_values=True))
        url = query.get("url", "")
        if query.get("type") == "xyz":
            match = ARCGIS_TILE_TEMPLATE.match(url)
            return ("tiled-map", match.group("service")) if match else ("web-tiled", url)
        if query.get("type") == "mbtiles":
            return "local", url
        return "wms", url or None
    if provider == "arcgisfeatureserver":
        return "feature", dict(_AMS_PAIR.findall(datasource)).get("url")
    if provider in _VECTOR_TILE_PROVIDERS:
        # QGIS 3.22 saves an ArcGIS vector tile service as
        # ``type=xyz&serviceType=arcgis&url=…/VectorTileServer`` (obs) and a file as
        # ``type=mbtiles&url=./x.mbtiles`` or ``type=vtpk&url=…``
        query = dict(parse_qsl(datasource))
        if query.get("type") in ("mbtiles", "vtpk"):
            return "local", query.get("url")
        return "vector-tile", query.get("url")
    if provider in _LOCAL_PROVIDERS:
        return "local", None
    return "other", None


def _opacity(maplayer: ET.Element) -> float:
    renderer = maplayer.find("pipe/rasterrenderer")
    value = renderer.get("opacity") if renderer is not None else None
    if value is None:
        node = maplayer.find("layerOpacity")
        value = node.text if node is not None else None
    try:
        return float(value) if value is not None else 1.0
    except ValueError:
        return 1.0


def qgis_document(path: Path, source: str) -> MapDocument:
    """The MapDocument of the QGIS project at ``path``.

    :raises MapError: unreadable, not XML, or not a QGIS project.
    """
    text, _ = read_project_text(path)
    # QGIS writes `<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>`: that plain
    # declaration is dropped before the guarded parser; one with an internal subset (entities,
    # the way to an expansion bomb) is refused like any other XML cacheorch reads.
    if _INTERNAL_SUBSET.search(text):
        raise MapError(f"{path}: refusing a project that declares XML entities")
    try:
        root = parse_xml(_PLAIN_DOCTYPE.sub("", text, count=1).encode("utf-8"), str(path))
    except FormatError as exc:
        raise MapError(f"{path}: not a QGIS project ({str(exc).split(': ', 1)[-1]})") from None
    if root.tag != "qgis":
        raise MapError(f"{path}: not a QGIS project (root element <{root.tag}>, not <qgis>)")
    maplayers = {}
    for node in root.iter("maplayer"):
        layer_id = (node.findtext("id") or "").strip()
        if layer_id:
            maplayers[layer_id] = node
    tree = root.find("layer-tree-group")

    def leaves(group: ET.Element, visible: bool, names: tuple[str, ...]) -> Iterator[MapLayer]:
        for child in group:
            checked = child.get("checked", "Qt::Checked") != "Qt::Unchecked"
            if child.tag == "layer-tree-group":
                yield from leaves(child, visible and checked, names + (child.get("name", ""),))
            elif child.tag == "layer-tree-layer":
                layer_id = child.get("id", "")
                node = maplayers.get(layer_id)
                if node is None:
                    continue
                provider = (node.findtext("provider") or "").strip()
                kind, url = layer_source(provider, (node.findtext("datasource") or "").strip())
                title = (node.findtext("layername") or child.get("name") or layer_id).strip()
                yield MapLayer(title=title, url=url, role="operational",
                               visibility=visible and checked, opacity=_opacity(node), kind=kind,
                               type=provider or node.get("type", ""), ref={"id": layer_id},
                               group=names)

    layers = tuple(leaves(tree, True, ())) if tree is not None else ()
    title = root.get("projectname") or root.findtext("title") or path.stem
    return MapDocument(title=title.strip() or path.stem, source=source, layers=layers,
                       format="qgis", path=str(path))

"""What a .vtpk holds besides bundles: ``p12/root.json``, the tile index, ``metadata.json``, esriinfo.

Layout (spec §2, from a Pro 2.6 listing and the readers QGIS, openvtpk and vtpk-reader): a STORED
zip with ``esriinfo/{iteminfo.xml,item.pkinfo,thumbnail/thumbnail.png}`` and a ``p12/`` tree that
mirrors the REST service: ``root.json`` (the service JSON), ``tile/Lnn/RrrrrCcccc.bundle`` (Compact
V2, gzip tiles), ``tilemap/root.json`` (quadtree index), ``resources/{styles,sprites,fonts,info}``.
Esri publishes no specification of it; the esriinfo XML follows what readers parse (QGIS reads
iteminfo.xml's name, guid, tags, extent), and item.pkinfo follows a writer tested with Pro.
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from cacheorch.formats.bundle import BundleReader
from cacheorch.tiling import Envelope
from cacheorch.vector.mvt import LayerSummary, merge_summaries, scan_layers, vector_layers_json
from cacheorch.vector.service import DEFAULT_TILE_TEMPLATE, VectorService

__all__ = ["ROOT", "vtpk_root_json", "iteminfo_xml", "item_pkinfo", "scan_bundles"]

#: The package's service folder (Esri's name; every reader looks there).
ROOT = "p12"


def vtpk_root_json(service: VectorService, levels: Sequence[int], extent: Envelope | None
                   ) -> dict[str, Any]:
    """The service JSON as the package's ``p12/root.json``: relative tile template, tilemap and
    style paths, Compact V2 storage with packetSize 128 (QGIS divides by it), gzip tiles.

    Every LOD of the scheme stays listed with minLOD..maxLOD spanning them all, and ``maxzoom``
    says the deepest packaged level, as a writer tested with ArcGIS Pro does (swisstopo's
    mbtiles2vtpk: Pro resolves scales against the whole table and overzooms past ``maxzoom``).
    """
    out = {k: v for k, v in service.source_json.items()
           if k not in ("exportTilesAllowed", "maxExportTilesCount", "tileServers")}
    scheme = service.scheme
    sr = scheme.spatial_reference.to_json()
    out.update({
        "currentVersion": out.get("currentVersion", 10.91), "name": service.name,
        "capabilities": "TilesOnly", "type": out.get("type", "indexedVector"),
        "tileMap": "tilemap", "defaultStyles": "resources/styles",
        "tiles": [DEFAULT_TILE_TEMPLATE], "minLOD": scheme.levels[0],
        "maxLOD": scheme.levels[-1], "maxzoom": max(levels),
        "tileInfo": {"rows": scheme.tile_rows, "cols": scheme.tile_cols, "dpi": scheme.dpi,
                     "format": "pbf", "origin": {"x": scheme.origin_x, "y": scheme.origin_y},
                     "spatialReference": sr, "lods": [lod.to_json() for lod in scheme.lods]},
        "resourceInfo": {"styleVersion": 8, "tileCompression": "gzip",
                         "cacheInfo": {"storageInfo": {"packetSize": 128,
                                                       "storageFormat": "compactV2"}}},
    })
    if extent is not None:
        env = extent.to_json()
        env.setdefault("spatialReference", sr)
        out["fullExtent"] = out["initialExtent"] = env
    return out


def iteminfo_xml(*, name: str, title: str, description: str, extent_wgs84: tuple[float, ...] | None,
                 guid: str, tags: str = "vector tiles, cacheorch") -> bytes:
    """``esriinfo/iteminfo.xml`` with what QGIS reads (name, guid, tags, extent in degrees)."""
    parts = ['<?xml version="1.0" encoding="utf-8"?>',
             '<ESRI_ItemInformation Culture="en-US">',
             f"<name>{escape(name)}</name>", f"<guid>{guid}</guid>",
             "<catalogpath></catalogpath>", f"<title>{escape(title)}</title>",
             "<type>Vector Tile Package</type>",
             "<typekeywords><typekeyword>Vector Tile Package</typekeyword>"
             "<typekeyword>vtpk</typekeyword></typekeywords>",
             f"<description>{escape(description)}</description>",
             f"<tags>{escape(tags)}</tags>", "<snippet></snippet>",
             "<accessinformation></accessinformation>", "<licenseinfo></licenseinfo>",
             "<thumbnail>thumbnail/thumbnail.png</thumbnail>"]
    if extent_wgs84 is not None:
        xmin, ymin, xmax, ymax = extent_wgs84
        parts.append(f"<extent><xmin>{xmin!r}</xmin><ymin>{ymin!r}</ymin><xmax>{xmax!r}</xmax>"
                     f"<ymax>{ymax!r}</ymax></extent>")
    parts.append("</ESRI_ItemInformation>")
    return "\n".join(parts).encode("utf-8")


def item_pkinfo(name: str, guid: str) -> bytes:
    """``esriinfo/item.pkinfo`` (``pkinfo`` root, type "Vector Tile Package"; spec §2, UNCONFIRMED
    which elements ArcGIS Pro requires)."""
    created = time.strftime("%Y-%m-%dT%H:%M:%S")
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<pkinfo Culture="en-US">\n<ID>{guid}</ID>\n'
            f"<name>{escape(name)}</name>\n<version>2.6</version>\n<size>-1</size>\n"
            f"<created>{created}</created>\n<type>Vector Tile Package</type>\n"
            f"<servable>false</servable>\n<packagelocation></packagelocation>\n"
            f"<pkinfolocation></pkinfolocation>\n<documenttypes>\n<documenttype>Lyr"
            f"</documenttype>\n</documenttypes>\n</pkinfo>\n").encode("utf-8")


def new_guid() -> str:
    return "{" + str(uuid.uuid4()).upper() + "}"


def scan_bundles(bundles: Iterable[Path]) -> tuple[list[tuple[int, int, int]], LayerSummary,
                                                    dict[str, tuple[int, int]]]:
    """Every tile key in the staged bundles, the layers and fields they carry, and the levels
    each layer appears at: what the tile index and ``metadata.json`` are built from."""
    keys: list[tuple[int, int, int]] = []
    summary: LayerSummary = {}
    zooms: dict[str, tuple[int, int]] = {}
    for path in bundles:
        level = int(path.parent.name[1:])
        reader = BundleReader(path)
        try:
            for row, col, data in reader.tiles():
                keys.append((level, row, col))
                layers = scan_layers(data)
                merge_summaries(summary, layers)
                for name in layers:
                    lo, hi = zooms.get(name, (level, level))
                    zooms[name] = (min(lo, level), max(hi, level))
        finally:
            reader.close()
    return keys, summary, zooms


def metadata_json(summary: LayerSummary, zooms: dict[str, tuple[int, int]]) -> bytes:
    """``p12/metadata.json``: ``{"vector_layers": [...]}`` (as a Pro-tested writer does)."""
    return json.dumps({"vector_layers": vector_layers_json(summary, zooms)}).encode()

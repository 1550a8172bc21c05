"""The ``tpk`` exporter: a legacy Tile Package (Compact V1 bundles + bundlx in a STORED zip).

ArcMap, ArcGIS Runtime 10.x and older field apps read .tpk, not .tpkx. The layout follows the
packages ArcGIS 10.3 writes: ``v101/Layers/`` holds conf.xml, conf.cdi, conf.properties and
``_alllayers/Lnn/RrrrrCcccc.bundle`` + ``.bundlx``; ``esriinfo/`` the item description and
thumbnail; ``servicedescriptions/mapserver/mapserver.json`` the map service description (with
``singleFusedMapCache`` false and no tileInfo, as ArcGIS writes it: the tiling lives in conf.xml).
The .lyr files ArcMap adds are binary ArcObjects and are not written.

Bundles are staged in ``<output>.partial/_alllayers/`` (each pair under temporary names, the
bundlx renamed first, so a staged ``.bundle`` always has its index); commit packs everything into
``<output>.tmp-<pid>`` and renames that into place, as the tpkx exporter does.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from cacheorch import hookimpl
from cacheorch.errors import FormatError
from cacheorch.formats.bundle_v1 import (
    BUNDLX_SIZE, V1_HEADER_SIZE, BundleV1Reader, BundleV1Writer, bundlx_name, read_v1_header,
)
from cacheorch.formats.confxml import COMPACT_V1, conf_cdi_bytes, conf_xml_bytes
from cacheorch.formats.rootjson import wgs84_bounds
from cacheorch.interfaces import BundleSink, ExportRequest, ExportSession, Exporter
from cacheorch.plugins._export_common import BlankOptions
from cacheorch.plugins._staging import StagedBundle, export_extent, title_of
from cacheorch.plugins.export_tpkx import TpkxSession, _zip_info

__all__ = ["TpkExporter", "TpkSession", "MAP_FOLDER", "cacheorch_register_exporters"]

#: Where the cache lives in the package: ``v101/<map name>/``; ArcGIS names it after the data frame.
MAP_FOLDER = "v101/Layers"
_COPY_CHUNK = 1 << 20
_TMP = ".tmp"
_NS = "http://www.esri.com/schemas/ArcGIS/10.3"
_XML = '<?xml version="1.0" encoding="utf-8" ?>'


class _StagedV1Bundle(StagedBundle):
    """A bundle + bundlx pair written under ``.tmp`` names and renamed into place on close."""

    def __init__(self, final: Path, bundle_row: int, bundle_col: int, on_done) -> None:
        self.final = final
        self.final_x = final.with_name(bundlx_name(bundle_row, bundle_col))
        self._writer = BundleV1Writer(final.with_name(final.name + _TMP),  # type: ignore[assignment]
                                      self.final_x.with_name(self.final_x.name + _TMP),
                                      bundle_row, bundle_col)
        self._on_done = on_done
        self._done = False

    def _move_into_place(self) -> None:
        os.replace(self._writer.bundlx_path, self.final_x)  # the index first: see module doc
        os.replace(self._writer.path, self.final)


def _iteminfo_xml(name: str, title: str, description: str,
                  extent: tuple[float, float, float, float] | None, sr_name: str) -> bytes:
    """esriinfo/iteminfo.xml as ArcGIS 10.3 writes it (extent in WGS84 degrees)."""
    lines = [_XML, "<ESRI_ItemInformation Culture='en-US'>",
             f"<name>{escape(name)}</name>", f"<guid>{str(uuid.uuid4()).upper()}</guid>",
             "<catalogpath></catalogpath>", f"<snippet>{escape(title)}</snippet>",
             f"<description>{escape(description)}</description>", f"<summary>{escape(title)}</summary>",
             f"<title>{escape(title)}</title>", "<tags>cacheorch</tags>", "<type>Tile Package</type>",
             "<typekeywords>"]
    lines += [f"<typekeyword>{k}</typekeyword>" for k in ("Data", "Tile Package", "ArcMap", "tpk")]
    lines += ["</typekeywords>", "<thumbnail>thumbnail/thumbnail.png</thumbnail>",
              "<documentation></documentation>", "<url></url>",
              "<datalastmodifiedtime></datalastmodifiedtime>"]
    if extent is not None:
        lines += ["<extent>"] + [f"<{k}>{v!r}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"),
                                                                      extent)] + ["</extent>"]
    lines += [f"<spatialreference>{escape(sr_name)}</spatialreference>",
              "<accessinformation></accessinformation>", "<licenseinfo></licenseinfo>",
              "</ESRI_ItemInformation>"]
    return ("\n".join(lines) + "\n").encode("utf-8")


def _pkinfo_xml(guid: str, name: str) -> bytes:
    return (f"{_XML}\n<pkinfo Culture='en-US'>\n<ID>{guid}</ID>\n<name>{escape(name)}</name>\n"
            "<version>10.3</version>\n<size>-1</size>\n<created></created>\n"
            "<type>Tile Package</type>\n<servable>false</servable>\n<packagelocation></packagelocation>"
            "\n<pkinfolocation></pkinfolocation>\n</pkinfo>\n").encode("utf-8")


def _conf_properties() -> bytes:
    """conf.properties: tells ArcGIS the cache holds map tiles (not elevation)."""
    return (f"{_XML}<PropertySet xsi:type='typens:PropertySet' "
            "xmlns:xsi='http://www.w3.org/2001/XMLSchema-instance' "
            f"xmlns:xs='http://www.w3.org/2001/XMLSchema' xmlns:typens='{_NS}'>"
            "<PropertyArray xsi:type='typens:ArrayOfPropertySetProperty'>"
            "<PropertySetProperty xsi:type='typens:PropertySetProperty'><Key>CacheTileContentType"
            "</Key><Value xsi:type='xs:string'>Map</Value></PropertySetProperty></PropertyArray>"
            "</PropertySet>").encode("utf-8")


class TpkSession(TpkxSession):
    """A .tpk being staged in ``<output>.partial/``."""

    bundles_dir = "_alllayers"
    exporter_name = "tpk"

    def has_bundle(self, level: int, bundle_row: int, bundle_col: int) -> bool:
        """Both files staged and whole: the bundle as long as its header says (our writer keeps
        that exact), the bundlx of its fixed size; else the bundle is fetched again."""
        path = self.bundle_path(level, bundle_row, bundle_col)
        try:
            with open(path, "rb") as f:
                header = read_v1_header(f.read(V1_HEADER_SIZE), path.name)
                whole = header.file_size == os.fstat(f.fileno()).st_size
            bundlx = path.with_name(bundlx_name(bundle_row, bundle_col))
            return whole and bundlx.stat().st_size == BUNDLX_SIZE
        except (OSError, FormatError):
            return False

    def _sink(self, final: Path, bundle_row: int, bundle_col: int,
              on_done: Callable[[], None]) -> BundleSink:
        return _StagedV1Bundle(final, bundle_row, bundle_col, on_done)

    def _reader(self, path: Path, bundle_row: int, bundle_col: int) -> BundleV1Reader | None:
        bundlx = path.with_name(bundlx_name(bundle_row, bundle_col))
        return BundleV1Reader.from_paths(path, bundlx) if bundlx.is_file() else None

    def _metadata(self) -> dict[str, bytes]:
        request = self.request
        scheme = request.service.scheme
        extent = export_extent(request)
        name = Path(request.output).stem
        title = title_of(request)
        sr = scheme.spatial_reference
        wgs84 = wgs84_bounds(extent.bounds, sr) if extent else None
        guid = str(uuid.uuid4()).upper()
        files = {
            "esriinfo/item.pkinfo": _pkinfo_xml(guid, name),
            "esriinfo/iteminfo.xml": _iteminfo_xml(name, title, request.service.description,
                                                   wgs84, _sr_name(sr)),
            "esriinfo/thumbnail/thumbnail.png": self.thumbnail(extent),
            "servicedescriptions/mapserver/mapserver.json":
                json.dumps(_mapserver_json(request, extent, wgs84), ensure_ascii=False).encode("utf-8"),
            f"{MAP_FOLDER}/conf.xml": conf_xml_bytes(scheme, lods=request.levels,
                                                    storage_format=COMPACT_V1, packet_size=128),
            f"{MAP_FOLDER}/conf.properties": _conf_properties(),
        }
        if extent is not None:
            files[f"{MAP_FOLDER}/conf.cdi"] = conf_cdi_bytes(extent, sr)
        return files

    # conf.xml lists the exported levels only: no .tpk reader positions levels the way GDAL's
    # ESRIC does for Compact V2 (see listed_lods), and ``scales`` then shows what the package holds.

    def _pack(self, target: Path) -> None:
        # ArcGIS-made .tpk files have no directory entries; every member is stored.
        with open(target, "wb") as raw:
            with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                for name, data in self._files.items():
                    zf.writestr(_zip_info(name), data)
                for bundle in self.staged_bundles():
                    level_dir = bundle.parent.name
                    for path in (bundle, bundle.with_suffix(".bundlx")):
                        stat = path.stat()
                        info = _zip_info(f"{MAP_FOLDER}/_alllayers/{level_dir}/{path.name}",
                                         stat.st_mtime)
                        info.file_size = stat.st_size
                        with open(path, "rb") as src, zf.open(
                                info, "w", force_zip64=stat.st_size >= zipfile.ZIP64_LIMIT) as dst:
                            shutil.copyfileobj(src, dst, _COPY_CHUNK)
            raw.flush()
            os.fsync(raw.fileno())


def _sr_name(sr) -> str:
    try:
        from pyproj import CRS

        return CRS.from_user_input(sr.crs_input()).name.replace(" ", "_")
    except Exception:
        return str(sr)


def _mapserver_json(request: ExportRequest, extent, wgs84) -> dict:
    """servicedescriptions/mapserver/mapserver.json: the map service as a .tpk describes it."""
    scheme = request.service.scheme
    sr = scheme.spatial_reference.to_json()
    env = None if extent is None else extent.to_json() | {"spatialReference": sr}
    geo = None if wgs84 is None else dict(zip(("xmin", "ymin", "xmax", "ymax"), wgs84))
    contents = {
        "currentVersion": 10.31, "serviceDescription": request.service.description,
        "mapName": MAP_FOLDER.rsplit("/", 1)[1], "description": request.service.description,
        "copyrightText": request.service.copyright, "supportsDynamicLayers": False,
        "layers": [], "tables": [], "spatialReference": sr, "singleFusedMapCache": False,
        "initialExtent": env, "fullExtent": env, "minScale": 0, "maxScale": 0,
        "units": scheme.units, "capabilities": "Map", "exportTilesAllowed": False,
    }
    resource_info = {"geoFullExtent": geo, "geoInitialExtent": geo}
    return {"name": "MapServer", "contents": contents, "resourceInfo": resource_info,
            "resources": [{"name": "layers", "contents": {"layers": [], "tables": []}},
                          {"name": "legend", "contents": {"layers": []}}]}


class TpkExporter(Exporter):
    """Tile Package (.tpk): Compact V1 bundles + bundlx in a STORED zip, for ArcMap and Runtime 10.x."""

    name = "tpk"
    extension = ".tpk"

    @dataclass
    class Options(BlankOptions):
        pass

    def open(self, request: ExportRequest) -> ExportSession:
        return TpkSession(request, skip_blank=self.options.skip_blank)


@hookimpl
def cacheorch_register_exporters() -> list[type[Exporter]]:
    return [TpkExporter]

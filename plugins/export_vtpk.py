"""The ``vtpk`` exporter: a Vector Tile Package (STORED zip) with the layer's style, sprites and glyphs.

Bundles are staged in ``<output>.partial/p12/tile/`` as for a tpkx. The resources are fetched when
the session opens, before any tile, so a style whose sprites or fonts are missing stops the job at
once naming them (and a resumed job finds them staged). At commit the staged bundles are read
back to build the tile index (``p12/tilemap/root.json``: what the package really holds, so a
client never asks for a tile that is not there) and ``metadata.json``; then everything is packed
and renamed into place, so the output name only ever holds a complete package.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from cacheorch import hookimpl
from cacheorch.errors import ExportError
from cacheorch.formats.rootjson import wgs84_bounds
from cacheorch.interfaces import ExportRequest, ExportSession, Exporter
from cacheorch.plugins._staging import MARKER, atomic_write, export_extent, publish_folder, title_of
from cacheorch.plugins.export_tpkx import TpkxSession, _zip_info, store_file, thumbnail_png
from cacheorch.vector.package import (
    ROOT, item_pkinfo, iteminfo_xml, metadata_json, new_guid, scan_bundles, vtpk_root_json,
)
from cacheorch.vector.quadtree import build_index
from cacheorch.vector.resources import collect_resources
from cacheorch.tiling import Envelope
from cacheorch.vector.service import VectorService, is_vector_scheme

__all__ = ["VtpkExporter", "VtpkSession", "VectorFolderSession", "stage_resources", "vector_service_of",
           "cacheorch_register_exporters"]

#: Written once every resource is staged; a resume that finds it does not fetch them again.
_RESOURCES_DONE = ".resources-complete"


def vector_service_of(request: ExportRequest, exporter: str) -> VectorService:
    """The request's vector service, or an ExportError saying the exporter needs one."""
    service = request.service
    if not isinstance(service, VectorService) or not is_vector_scheme(service.scheme):
        raise ExportError(f"{exporter} exports vector tile layers (VectorTileServer); "
                          f"{service.location} is a {service.kind}")
    return service


def stage_resources(service: VectorService, folder: Path) -> None:
    """Fetch the style's resources into ``folder`` (``…/resources``) unless already staged."""
    if (folder / _RESOURCES_DONE).is_file():
        return
    if service.fetch is None:
        raise ExportError(f"{service.location}: no way to read the style's resources")
    files = collect_resources(service.location, service.style_url, service.fetch)
    for rel, data in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)
    atomic_write(folder / _RESOURCES_DONE, b"")


class VtpkSession(TpkxSession):
    """A vector tile package being staged in ``<output>.partial/`` (the ``p12`` tree as is)."""

    #: The service tree's folder inside the output ("" for a cache folder).
    tree = ROOT
    bundles_dir = f"{ROOT}/tile"
    exporter_name = "vtpk"

    def __init__(self, request: ExportRequest) -> None:
        self.service = vector_service_of(request, self.exporter_name)
        super().__init__(request)
        stage_resources(self.service, self.staging / self.tree / "resources")

    def _prepare(self) -> None:
        (self.staging / self.tree).mkdir(parents=True, exist_ok=True)
        super()._prepare()

    def _write_metadata(self) -> None:
        request = self.request
        extent = export_extent(request)
        keys, summary, zooms = scan_bundles(self.staged_bundles())
        root = self.staging / self.tree
        (root / "tilemap").mkdir(exist_ok=True)
        files = {
            root / "root.json": json.dumps(vtpk_root_json(self.service, self.levels(), extent)),
            root / "tilemap" / "root.json": json.dumps(build_index(keys)),
            root / "metadata.json": metadata_json(summary, zooms),
        }
        for path, data in files.items():
            atomic_write(path, data.encode() if isinstance(data, str) else data)
        if self.tree:
            self._write_esriinfo(extent)

    def _write_esriinfo(self, extent: Envelope | None) -> None:
        request = self.request
        guid = new_guid()
        name, title = Path(request.output).stem, title_of(request)
        wgs84 = wgs84_bounds(extent.bounds, request.service.scheme.spatial_reference) \
            if extent else None
        info = self.staging / "esriinfo"
        (info / "thumbnail").mkdir(parents=True, exist_ok=True)
        atomic_write(info / "iteminfo.xml", iteminfo_xml(
            name=name, title=title, description=request.service.description, extent_wgs84=wgs84,
            guid=guid))
        atomic_write(info / "item.pkinfo", item_pkinfo(name, guid))
        atomic_write(info / "thumbnail" / "thumbnail.png", thumbnail_png())

    def _pack(self, target: Path) -> None:
        skip = {MARKER, _RESOURCES_DONE}
        with open(target, "wb") as raw:
            with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                for folder, dirs, names in os.walk(self.staging):
                    dirs.sort()
                    rel_dir = Path(folder).relative_to(self.staging).as_posix()
                    prefix = "" if rel_dir == "." else rel_dir + "/"
                    if prefix:
                        zf.writestr(_zip_info(prefix), b"")
                    for fname in sorted(set(names) - skip):
                        store_file(zf, prefix + fname, Path(folder) / fname)
            raw.flush()
            os.fsync(raw.fileno())


class VectorFolderSession(VtpkSession):
    """The same tree unpacked, as the ``compact-v2`` exporter writes for a vector tile layer: a
    vector tile cache folder (``root.json``, ``tile/Lnn/*.bundle``, ``tilemap/``, ``resources/``;
    what ArcGIS Pro's Extract Package makes of a vtpk), published by renaming the staging folder."""

    tree = ""
    bundles_dir = "tile"
    exporter_name = "compact-v2"

    def _publish(self) -> None:
        (self.staging / "resources" / _RESOURCES_DONE).unlink(missing_ok=True)
        (self.staging / MARKER).unlink(missing_ok=True)
        publish_folder(self.staging, self.output)


class VtpkExporter(Exporter):
    """Vector Tile Package (.vtpk): bundles, tile index, style, sprites and glyphs, for ArcGIS/QGIS."""

    name = "vtpk"
    extension = ".vtpk"

    def open(self, request: ExportRequest) -> ExportSession:
        return VtpkSession(request)


@hookimpl
def cacheorch_register_exporters() -> list[type[Exporter]]:
    return [VtpkExporter]

"""Area files uploaded from the page: read with the CLI's area generators, kept in a temporary folder.

A zip is unpacked (refusing members that would land outside its folder) and its shapefile, GeoJSON,
Esri JSON or GeoPackage is read; the area comes back in the service's spatial reference, to be drawn
and then sent as a tier's ``geojson`` area like a drawn polygon.
"""
from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cacheorch.errors import UsageError

if TYPE_CHECKING:
    from cacheorch.pluginmanager import Plugins
    from cacheorch.workbench.sources import OpenSource

__all__ = ["MAX_UPLOAD", "area_of_upload"]

#: Uploads larger than this are refused (an area file, not a dataset).
MAX_UPLOAD = 50 * 1024 * 1024


def area_of_upload(plugins: Plugins, src: OpenSource, uploads: Path, name: str, data: bytes
                   ) -> dict[str, Any]:
    """Read an uploaded area with the CLI's area generators; return it as GeoJSON in the scheme's SR."""
    from shapely.geometry import mapping

    from cacheorch.config import AreaSpec
    from cacheorch.jobplan import resolve_areas
    folder = Path(tempfile.mkdtemp(dir=uploads))
    path = folder / name
    path.write_bytes(data)
    if name.lower().endswith(".zip"):
        path = _unzipped(path, folder / "unzipped")
    lod = src.service.scheme.lods[0]
    geom, _ = resolve_areas(plugins, src.service, [lod], [AreaSpec(None, str(path), name)],
                            src.connection)[lod.level]
    if geom.is_empty:
        raise UsageError(f"{name}: no polygon inside the service's grid")
    return {"name": name, "geometry": mapping(geom)}


def _unzipped(archive: Path, folder: Path) -> Path:
    """The shapefile (or other area file) inside a zip, extracted safely."""
    try:
        with zipfile.ZipFile(archive) as z:
            members = [m for m in z.infolist() if not m.is_dir()]
            if sum(m.file_size for m in members) > 4 * MAX_UPLOAD:
                raise UsageError(f"{archive.name}: too large once unzipped")
            for m in members:
                target = (folder / m.filename).resolve()
                if not target.is_relative_to(folder.resolve()):
                    raise UsageError(f"{archive.name}: refuses the member {m.filename!r}")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(m))
    except zipfile.BadZipFile:
        raise UsageError(f"{archive.name}: not a zip file") from None
    for suffix in (".shp", ".geojson", ".json", ".gpkg", ".wkt"):
        found = sorted(folder.rglob(f"*{suffix}"))
        if found:
            return found[0]
    raise UsageError(f"{archive.name}: holds no shapefile, GeoJSON, Esri JSON or GeoPackage")

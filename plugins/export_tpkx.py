"""The ``tpkx`` exporter: a Compact Tile Package (zip, every entry STORED) readable by ArcGIS and GDAL.

Bundles are staged in ``<output>.partial/tile/`` exactly as for a cache folder; commit writes
root.json, iteminfo.json and a thumbnail, packs everything into ``<output>.tmp-<pid>`` and renames
that over the output, so the output name only ever holds a complete package.
"""
from __future__ import annotations

import glob
import io
import json
import os
import shutil
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cacheorch import hookimpl
from cacheorch.formats.bundle import ARCGIS_RECORD_COUNT, BundleReader
from cacheorch.formats.png import encode_png
from cacheorch.formats.rootjson import iteminfo_json, root_json, wgs84_bounds
from cacheorch.interfaces import ExportRequest, ExportSession, Exporter
from cacheorch.plugins._staging import StagingSession, export_extent, publish_file, title_of
from cacheorch.tiling import BUNDLE_SIZE, Envelope, TilingScheme

__all__ = ["TpkxExporter", "TpkxSession", "thumbnail_png", "rendered_thumbnail", "store_file",
           "cacheorch_register_exporters"]

_COPY_CHUNK = 1 << 20
#: Thumbnail size of Esri's packages.
THUMBNAIL_SIZE = (200, 133)


def thumbnail_png(rgb: tuple[int, int, int] = (0x3C, 0x78, 0xB4)) -> bytes:
    """A plain-colour thumbnail: portals want one, and drawing the map would cost a tile render."""
    width, height = THUMBNAIL_SIZE
    return encode_png(width, height, bytes(rgb) * (width * height))


def rendered_thumbnail(scheme: TilingScheme, levels: Sequence[int], extent: Envelope | None,
                       get_tile: Callable[[int, int, int], bytes | None]) -> bytes:
    """The package's own tiles over its extent as a PNG thumbnail; a plain colour when no level
    draws it within the tile budget, or the tiles cannot be decoded."""
    if extent is None or not levels:
        return thumbnail_png()
    from cacheorch.serving.export import BadExportRequest, pick_level, stitch
    width, height = THUMBNAIL_SIZE
    xmin, ymin, xmax, ymax = extent.bounds
    # widen the extent to the thumbnail's shape, centred
    res = max((xmax - xmin) / width, (ymax - ymin) / height)
    cx, cy = (xmin + xmax) / 2, (ymin + ymax) / 2
    bbox = (cx - width * res / 2, cy - height * res / 2, cx + width * res / 2, cy + height * res / 2)
    first = pick_level(scheme, levels, res)
    image = None
    # from the level that fits the thumbnail towards finer ones, until one has tiles there
    for level in sorted((lv for lv in levels if scheme.lod(lv).resolution <= scheme.lod(first).resolution),
                        key=lambda lv: -scheme.lod(lv).resolution):
        try:
            image = stitch(scheme, get_tile, level, bbox, width, height)
        except BadExportRequest:  # too many tiles from here on
            break
        except (OSError, ValueError):  # a tile Pillow cannot decode
            return thumbnail_png()
        if image.getchannel("A").getbbox() is not None:
            break
        image = None
    if image is None:
        return thumbnail_png()
    from PIL import Image
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    out = io.BytesIO()
    Image.alpha_composite(background, image).convert("RGB").save(out, "PNG")
    return out.getvalue()


def _zip_info(name: str, when: float | None = None) -> zipfile.ZipInfo:
    stamp = time.localtime(when if when is not None else time.time())
    # Zip timestamps start in 1980.
    date_time = tuple(stamp[:6]) if stamp.tm_year >= 1980 else (1980, 1, 1, 0, 0, 0)
    info = zipfile.ZipInfo(name, date_time=date_time)  # type: ignore[arg-type]
    info.compress_type = zipfile.ZIP_STORED
    if name.endswith("/"):
        info.external_attr = 0o40755 << 16 | 0x10
    else:
        info.external_attr = 0o644 << 16
    return info


def store_file(zf: zipfile.ZipFile, name: str, path: Path) -> None:
    """Copy a staged file into the package as a STORED member (its mtime kept), in chunks."""
    stat = path.stat()
    info = _zip_info(name, stat.st_mtime)
    info.file_size = stat.st_size
    with open(path, "rb") as src, \
            zf.open(info, "w", force_zip64=stat.st_size >= zipfile.ZIP64_LIMIT) as dst:
        shutil.copyfileobj(src, dst, _COPY_CHUNK)


def _remove_dead_packings(output: Path) -> None:
    """Delete ``<output>.tmp-<pid>`` files left by a process killed while packing (resume)."""
    for leftover in output.parent.glob(f"{glob.escape(output.name)}.tmp-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # that process is alive: another job's packing, not ours to touch
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        leftover.unlink(missing_ok=True)


class TpkxSession(StagingSession):
    """A tile package being staged in ``<output>.partial/``."""

    bundles_dir = "tile"
    record_count = ARCGIS_RECORD_COUNT
    exporter_name = "tpkx"

    def _metadata(self) -> dict[str, bytes]:
        request = self.request
        scheme = request.service.scheme
        levels = self.levels()
        extent = export_extent(request)
        name = Path(request.output).stem
        title = title_of(request)
        root = root_json(scheme, name=name, min_lod=levels[0], max_lod=levels[-1],
                         full_extent=extent, initial_extent=extent,
                         description=request.service.description)
        wgs84 = wgs84_bounds(extent.bounds, scheme.spatial_reference) if extent else None
        item = iteminfo_json(name=name, title=title, extent_wgs84=wgs84,
                             description=request.service.description)
        return {
            "iteminfo.json": json.dumps(item, ensure_ascii=False).encode("utf-8"),
            "root.json": json.dumps(root, ensure_ascii=False).encode("utf-8"),
            "thumbnail.png": self.thumbnail(extent),
        }

    def thumbnail(self, extent: Envelope | None) -> bytes:
        """Drawn from the staged bundles: the package's own tiles over its extent."""
        readers: dict[Path, Any] = {}

        def get_tile(level: int, row: int, col: int) -> bytes | None:
            brow, bcol = row - row % BUNDLE_SIZE, col - col % BUNDLE_SIZE
            path = self.bundle_path(level, brow, bcol)
            if path not in readers:
                readers[path] = self._reader(path, brow, bcol) if path.is_file() else None
            reader = readers[path]
            return None if reader is None else reader.get(row, col)

        try:
            return rendered_thumbnail(self.request.scheme, self.levels(), extent, get_tile)
        finally:
            for reader in readers.values():
                if reader is not None and hasattr(reader, "close"):
                    reader.close()

    def _reader(self, path: Path, bundle_row: int, bundle_col: int) -> Any:
        return BundleReader(path, bundle_row=bundle_row, bundle_col=bundle_col)

    def _write_metadata(self) -> None:
        self._files = self._metadata()

    def _pack(self, target: Path) -> None:
        bundles = self.staged_bundles()
        with open(target, "wb") as raw:
            with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                for name, data in self._files.items():
                    zf.writestr(_zip_info(name), data)
                zf.writestr(_zip_info("tile/"), b"")
                seen_levels: set[str] = set()
                for path in bundles:
                    level_dir = path.parent.name
                    if level_dir not in seen_levels:
                        seen_levels.add(level_dir)
                        zf.writestr(_zip_info(f"tile/{level_dir}/"), b"")
                    store_file(zf, f"tile/{level_dir}/{path.name}", path)
            raw.flush()
            os.fsync(raw.fileno())

    def _publish(self) -> None:
        output = self.output
        _remove_dead_packings(output)
        tmp = output.with_name(f"{output.name}.tmp-{os.getpid()}")
        try:
            self._pack(tmp)
            publish_file(tmp, output, self.request.mode, what="packing")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        shutil.rmtree(self.staging, ignore_errors=True)


class TpkxExporter(Exporter):
    """Compact Tile Package (.tpkx): Compact V2 bundles in a STORED zip, for ArcGIS and GDAL."""

    name = "tpkx"
    extension = ".tpkx"

    def open(self, request: ExportRequest) -> ExportSession:
        return TpkxSession(request)


@hookimpl
def cacheorch_register_exporters() -> list[type[Exporter]]:
    return [TpkxExporter]

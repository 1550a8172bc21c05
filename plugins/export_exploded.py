"""The ``exploded`` exporter: an ArcGIS exploded cache folder, one file per tile.

``_alllayers/Lnn/R<row:08x>/C<col:08x>.png|jpg`` beside conf.xml (StorageFormat
esriMapCacheStorageModeExploded, PacketSize 0) and conf.cdi: the layout ArcGIS Server wrote
before compact caches, which MapProxy, GeoWebCache, OpenLayers' ArcGISCache and plain web servers
read without any index. Each file's extension comes from its bytes (a MIXED service gives both).

The folder is built in ``<output>.partial/`` and renamed into place on commit, like compact-v2.
Tiles of a bundle are written straight to their names; when the bundle closes they are fsync'ed
and a marker ``.cacheorch-done/Lnn/RrrrrCcccc.bundle`` records it as whole (what resume trusts).
A bundle opened again after an interruption first removes whatever tiles it had left.
"""
from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cacheorch import hookimpl
from cacheorch.errors import ExportError
from cacheorch.formats.bundle import bundle_name, level_folder
from cacheorch.formats.confxml import EXPLODED, conf_cdi_bytes, conf_xml_bytes
from cacheorch.formats.exploded import ExplodedBundle, TILE_EXTENSIONS, row_folder, tile_file
from cacheorch.formats.png import JPEG_MAGIC, PNG_MAGIC
from cacheorch.interfaces import BundleSink, ExportRequest, ExportSession, Exporter
from cacheorch.plugins._export_common import BlankOptions
from cacheorch.plugins._staging import atomic_write, export_extent, fsync_dir, listed_lods
from cacheorch.plugins.export_compact_v2 import CompactV2Session, _gdal_tile_end

__all__ = ["ExplodedExporter", "ExplodedSession", "DONE_DIR", "tile_extension",
           "cacheorch_register_exporters"]

log = logging.getLogger(__name__)

#: Markers of finished bundles inside the staging folder; removed before the folder is published.
DONE_DIR = ".cacheorch-done"


def tile_extension(data: bytes, default: str = "png") -> str:
    """``png`` or ``jpg`` from the tile's magic bytes; ``default`` for anything else."""
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpg"
    return default


class _ExplodedSink(BundleSink):
    """Writes the tiles of one 128×128 block as files; durable and marked done on close."""

    def __init__(self, level_dir: Path, marker: Path, default_ext: str,
                 on_done: Callable[[], None]) -> None:
        self.level_dir = level_dir
        self.marker = marker
        self.default_ext = default_ext
        self._written: list[Path] = []
        self._bytes = 0
        self._on_done = on_done
        self._done = False

    def add(self, row: int, col: int, data: bytes) -> None:
        if not data:
            raise ExportError(f"tile row {row} col {col} is empty; not stored")
        folder = self.level_dir / row_folder(row)
        path = folder / tile_file(col, tile_extension(data, self.default_ext))
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        except OSError as exc:
            raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from None
        self._written.append(path)
        self._bytes += len(data)

    def close(self) -> int:
        if self._done:
            raise ExportError(f"{self.marker.name}: bundle already closed")
        try:
            folders = set()
            for path in self._written:  # durable before the marker says so
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                folders.add(path.parent)
            for folder in folders:
                fsync_dir(folder)
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.marker, str(len(self._written)).encode())
        except OSError as exc:
            self._remove()
            raise ExportError(f"cannot finish {self.marker.name}: {exc.strerror or exc}") from None
        finally:
            self._finish()
        return self._bytes

    def abort(self) -> None:
        try:
            self._remove()
        finally:
            self._finish()

    def _remove(self) -> None:
        for path in self._written:
            path.unlink(missing_ok=True)

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._on_done()


class ExplodedSession(CompactV2Session):
    """An exploded cache folder being staged in ``<output>.partial/``."""

    exporter_name = "exploded"

    def __init__(self, request: ExportRequest, skip_blank: bool = False) -> None:
        super().__init__(request, skip_blank)
        fmt = request.service.scheme.tile_format.upper()
        self._default_ext = "jpg" if fmt.startswith(("JPEG", "JPG")) else "png"

    def bundle_path(self, level: int, bundle_row: int, bundle_col: int) -> Path:
        """The marker of a finished block (has_bundle looks for it)."""
        return self.staging / DONE_DIR / level_folder(level) / bundle_name(bundle_row, bundle_col)

    def has_bundle(self, level: int, bundle_row: int, bundle_col: int) -> bool:
        return self.bundle_path(level, bundle_row, bundle_col).is_file()  # a marker, not a bundle

    def _sink(self, final: Path, bundle_row: int, bundle_col: int,
              on_done: Callable[[], None]) -> BundleSink:
        """``final`` is the block's marker; tiles go to ``_alllayers`` (a redone block starts clean)."""
        level_dir = self.staging / self.bundles_dir / final.parent.name
        final.unlink(missing_ok=True)
        self._clear_block(level_dir, bundle_row, bundle_col)
        return _ExplodedSink(level_dir, final, self._default_ext, on_done)

    @staticmethod
    def _clear_block(level_dir: Path, bundle_row: int, bundle_col: int) -> None:
        """Remove tiles an interrupted attempt at this block left (resume starts it clean)."""
        if not level_dir.is_dir():
            return
        block = ExplodedBundle(level_dir, bundle_row, bundle_col, TILE_EXTENSIONS)
        for row, cols in block._listing().items():
            for col in cols:  # every extension: a tile may be present under two
                for ext in TILE_EXTENSIONS:
                    (level_dir / row_folder(row) / tile_file(col, ext)).unlink(missing_ok=True)

    def _write_metadata(self) -> None:
        scheme = self.request.service.scheme
        extent = export_extent(self.request)
        atomic_write(self.staging / "conf.xml",
                     conf_xml_bytes(scheme, lods=listed_lods(self.request),
                                    tile_end=_gdal_tile_end(scheme, extent),
                                    storage_format=EXPLODED, packet_size=0))
        if extent is not None:
            atomic_write(self.staging / "conf.cdi", conf_cdi_bytes(extent, scheme.spatial_reference))
        (self.staging / self.bundles_dir).mkdir(exist_ok=True)

    def _publish(self) -> None:
        shutil.rmtree(self.staging / DONE_DIR, ignore_errors=True)
        super()._publish()


class ExplodedExporter(Exporter):
    """Exploded cache folder (conf.xml + _alllayers/Lnn/Rrrrrrrrr/Ccccccccc.png|jpg), one file per tile."""

    name = "exploded"
    extension = None

    @dataclass
    class Options(BlankOptions):
        pass

    def open(self, request: ExportRequest) -> ExportSession:
        return ExplodedSession(request, skip_blank=self.options.skip_blank)


@hookimpl
def cacheorch_register_exporters() -> list[type[Exporter]]:
    return [ExplodedExporter]

"""Staging shared by the compact-v2 and tpkx exporters: bundles land beside the output, then move in.

A session writes into ``<output>.partial/``. Each bundle is written as ``<name>.bundle.tmp``,
fsync'ed, and renamed to its final name on close, so a staged ``.bundle`` is always whole; that is
what makes resume trustworthy (a ``.bundle`` present means done, a ``.tmp`` means start again).
A marker file records the grid the staging belongs to, so a resume never mixes two schemes.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from cacheorch.errors import ExportError, FormatError, OutputExistsError
from cacheorch.formats.blank import BlankCounter
from cacheorch.formats.bundle import HEADER_SIZE, BundleWriter, bundle_name, level_folder, read_header
from cacheorch.interfaces import BundleSink, ExportRequest, ExportSession, staging_path
from cacheorch.plugins._export_common import BundleGuard, SkippingSink
from cacheorch.tiling import Envelope, LevelOfDetail, SpatialReference

__all__ = ["STAGING_SUFFIX", "MARKER", "staging_path", "fsync_dir", "publish_file", "publish_folder", "atomic_write",
           "check_marker", "StagedBundle", "StagingSession", "export_extent", "listed_lods", "title_of"]

log = logging.getLogger(__name__)

STAGING_SUFFIX = ".partial"  # what cacheorch.interfaces.staging_path appends
#: Written in the staging folder; never part of the output.
MARKER = ".cacheorch-staging.json"
_TMP = ".tmp"


def fsync_dir(path: Path) -> None:
    """Make a rename or new entry in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish_folder(staging: Path, output: Path) -> None:
    """Rename a finished staging folder to its output name, replacing what was there.

    The old output is renamed aside first and put back if the rename fails, so a failed publish
    leaves the earlier output whole; it is deleted only once the new one is in place.
    """
    old: Path | None = None
    if os.path.lexists(output):
        old = output.with_name(f"{output.name}.old-{os.getpid()}")
        os.rename(output, old)
    try:
        os.rename(staging, output)
    except OSError:
        if old is not None:
            os.rename(old, output)
        raise
    fsync_dir(output.parent)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def publish_file(source: Path, output: Path, mode: str, *, what: str = "") -> Path:
    """Move a finished file to its output name and make the rename durable.

    In ``create`` mode a hard link, which refuses to replace, so an output another writer put
    there meanwhile is never clobbered (a plain replace where the file system has no hard links);
    otherwise a replace.

    :param what: what the output was waiting for (``packing``), for the error message.
    """
    if mode == "create":
        try:
            os.link(source, output)
            source.unlink()
        except FileExistsError:
            raise OutputExistsError(f"{output} appeared{' while ' + what if what else ''}; "
                                    f"choose another output or overwrite it") from None
        except OSError:  # file systems without hard links
            os.replace(source, output)
    else:
        os.replace(source, output)
    fsync_dir(output.parent)
    return output


def atomic_write(path: Path, data: bytes) -> None:
    """Write a small file whole or not at all (temporary name, fsync, rename)."""
    tmp = path.with_name(path.name + _TMP)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def check_marker(marker_path: Path, expected: dict[str, str]) -> None:
    """Refuse a staging folder whose marker names another exporter or grid (none yet is fine)."""
    if not marker_path.is_file():
        return
    found = json.loads(marker_path.read_text("utf-8"))
    if found != expected:
        raise ExportError(f"{marker_path.parent} holds a partial export of another service or "
                          f"format ({found.get('exporter')}, grid {found.get('scheme')}); remove "
                          f"it to start over")


class StagedBundle(BundleSink):
    """One bundle written under ``.tmp`` and renamed into place when closed."""

    def __init__(self, final: Path, bundle_row: int, bundle_col: int, record_count: int,
                 on_done: Callable[[], None]) -> None:
        self.final = final
        self._tmp = final.with_name(final.name + _TMP)
        self._writer = BundleWriter(self._tmp, bundle_row, bundle_col, record_count=record_count)
        self._on_done = on_done
        self._done = False

    def add(self, row: int, col: int, data: bytes) -> None:
        self._writer.add(row, col, data)

    def close(self) -> int:
        if self._done:
            raise ExportError(f"{self.final.name}: bundle already closed")
        try:
            size = self._writer.finish()
            self._move_into_place()
            fsync_dir(self.final.parent)
        except OSError as exc:
            self._writer.abort()
            raise ExportError(f"cannot write {self.final}: {exc.strerror or exc}") from None
        finally:
            self._finish()
        return size

    def _move_into_place(self) -> None:
        """Rename the finished file(s) to their final names (a subclass may have two)."""
        os.replace(self._tmp, self.final)

    def abort(self) -> None:
        try:
            self._writer.abort()
        finally:
            self._finish()

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._on_done()


def export_extent(request: ExportRequest) -> Envelope | None:
    """The output's extent in the scheme SR: the areas' union, else the service's full extent.

    Clamped to the grid when the grid's end is known: world services advertise full extents
    far beyond the tiling grid, and GDAL crops a .tpkx to its fullExtent.
    """
    scheme = request.service.scheme
    sr = scheme.spatial_reference
    if request.extent is not None:
        bounds = tuple(request.extent)
    elif request.service.full_extent is not None:
        bounds = _in_sr(request.service.full_extent, sr)
    elif scheme.grid_bounds() is not None:
        bounds = scheme.grid_bounds()  # type: ignore[assignment]
    else:
        return None
    grid = scheme.grid_bounds()
    if grid is not None:
        clamped = (max(bounds[0], grid[0]), max(bounds[1], grid[1]),
                   min(bounds[2], grid[2]), min(bounds[3], grid[3]))
        if clamped[0] < clamped[2] and clamped[1] < clamped[3]:
            bounds = clamped
    return Envelope(*bounds, spatial_reference=sr)  # type: ignore[misc]


def _in_sr(envelope: Envelope, sr: SpatialReference) -> tuple[float, float, float, float]:
    """An envelope's bounds in ``sr`` (services may give their full extent in another SR)."""
    own = envelope.spatial_reference
    if own is None or own == sr or (own.epsg is not None and own.epsg == sr.epsg):
        return envelope.bounds
    try:
        from pyproj import CRS, Transformer

        transformer = Transformer.from_crs(CRS.from_user_input(own.crs_input()),
                                           CRS.from_user_input(sr.crs_input()), always_xy=True)
        xmin, ymin, xmax, ymax = transformer.transform_bounds(*envelope.bounds, densify_pts=21)
        return (xmin, ymin, xmax, ymax)
    except Exception as exc:
        log.warning("could not project the full extent from %s to %s (%s); using it as is",
                    own, sr, exc)
        return envelope.bounds


def listed_lods(request: ExportRequest) -> list[LevelOfDetail]:
    """Levels to list in conf.xml: every level of the full scheme up to the finest exported one.

    GDAL's ESRIC driver ignores LevelID and names a level's folder by its position in the sorted
    LOD list (``L%02d`` of the index from the coarsest), so a list starting above level 0 or with
    gaps would send it to the wrong folders; ArcGIS, in turn, wants LevelID to match the folder.
    Listing the scheme's own levels 0..finest satisfies both. Levels finer than the finest
    exported one are left out because GDAL (<= 3.10) refuses a cache whose finest level makes the
    raster wider than 2**31 pixels (level 23 of 256-px Web Mercator), and they hold no tiles.
    """
    finest = max(lod.level for lod in request.levels)
    full = {lod.level: lod for lod in request.service.scheme.lods}
    for lod in request.levels:  # a narrowed scheme should never add levels, but be safe
        full.setdefault(lod.level, lod)
    return [full[level] for level in sorted(full) if level <= finest]


def _whole_bundle(path: Path) -> bool:
    """Whether ``path`` is a Compact V2 bundle as long as its header says (64 bytes read)."""
    try:
        with open(path, "rb") as f:
            header = read_header(f.read(HEADER_SIZE), path.name)
            return header.file_size == os.fstat(f.fileno()).st_size
    except (OSError, FormatError):
        return False


class StagingSession(ExportSession):
    """Common staging behaviour; subclasses write metadata and publish the output.

    ``bundles_dir`` is where level folders go inside the staging folder (``_alllayers`` for a
    cache folder, ``tile`` for a package), ``record_count`` the bundle header's record count.
    """

    bundles_dir: str = "_alllayers"
    record_count: int = 0
    exporter_name: str = ""

    def __init__(self, request: ExportRequest, skip_blank: bool = False) -> None:
        if not request.levels:
            raise ExportError("nothing to export: no levels selected")
        self.request = request
        self.output = Path(request.output)
        self.staging = staging_path(self.output)
        self._guard = BundleGuard({lod.level for lod in request.levels}, self.output)
        self._blank = BlankCounter(skip_blank)
        if request.mode == "create" and self._output_exists():
            raise OutputExistsError.at(self.output)
        self._prepare()

    #: Tiles stored once because an identical one was already stored (no staged format shares).
    duplicates = 0

    @property
    def skipped_blank(self) -> int:
        """Tiles left out because they were blank (``skip_blank``)."""
        return self._blank.skipped

    # -- staging --------------------------------------------------------------------------------

    def _output_exists(self) -> bool:
        return os.path.lexists(self.output)

    def _marker(self) -> dict[str, str]:
        return {"exporter": self.exporter_name,
                "scheme": self.request.service.scheme.fingerprint()}

    def _prepare(self) -> None:
        marker_path = self.staging / MARKER
        try:
            if self.staging.is_dir():
                check_marker(marker_path, self._marker())
                self._remove_temporaries()
            else:
                self.staging.parent.mkdir(parents=True, exist_ok=True)
                self.staging.mkdir()
            (self.staging / self.bundles_dir).mkdir(exist_ok=True)
            if not marker_path.is_file():
                atomic_write(marker_path, json.dumps(self._marker()).encode())
        except ExportError:
            raise
        except (OSError, ValueError) as exc:
            raise ExportError(f"cannot prepare staging folder {self.staging}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None

    def _remove_temporaries(self) -> None:
        for tmp in self.staging.rglob("*" + _TMP):
            try:
                tmp.unlink()
            except OSError as exc:
                log.warning("could not remove leftover %s: %s", tmp, exc)

    def bundle_path(self, level: int, bundle_row: int, bundle_col: int) -> Path:
        return self.staging / self.bundles_dir / level_folder(level) / bundle_name(bundle_row,
                                                                                   bundle_col)

    def staged_bundles(self) -> list[Path]:
        """Finished bundles in the staging folder, in level then name order."""
        root = self.staging / self.bundles_dir
        return sorted(root.glob("L*/*.bundle"))

    # -- ExportSession --------------------------------------------------------------------------

    def has_bundle(self, level: int, bundle_row: int, bundle_col: int) -> bool:
        """A staged bundle counts only when whole: a readable header whose file size is the
        file's (a bundle cut short or overwritten after it was staged is fetched again)."""
        return _whole_bundle(self.bundle_path(level, bundle_row, bundle_col))

    def open_bundle(self, level: int, bundle_row: int, bundle_col: int) -> BundleSink:
        key = (level, bundle_row, bundle_col)

        def make() -> BundleSink:
            final = self.bundle_path(*key)
            try:
                final.parent.mkdir(parents=True, exist_ok=True)
                sink = self._sink(final, bundle_row, bundle_col, lambda: self._guard.release(key))
            except OSError as exc:
                raise ExportError(f"cannot start bundle in {self.staging}: "
                                  f"{exc.strerror or exc}") from None
            return SkippingSink(sink, self._blank) if self._blank.enabled else sink
        return self._guard.open(level, bundle_row, bundle_col, make)

    def _sink(self, final: Path, bundle_row: int, bundle_col: int,
              on_done: Callable[[], None]) -> BundleSink:
        """The sink writing one bundle whose finished form is ``final`` (``bundle_path``)."""
        return StagedBundle(final, bundle_row, bundle_col, self.record_count, on_done)

    def commit(self) -> Path:
        self._guard.check_idle()
        if self._guard.committed:
            raise ExportError(f"{self.output}: already committed")
        if self.request.mode == "create" and self._output_exists():
            raise OutputExistsError.at(self.output)
        try:
            self._write_metadata()
            self._publish()
        except OSError as exc:
            raise ExportError(f"cannot write {self.output}: {exc.strerror or exc}") from None
        self._guard.committed = True
        return self.output

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    # -- for subclasses -------------------------------------------------------------------------

    def _write_metadata(self) -> None:
        raise NotImplementedError

    def _publish(self) -> None:
        raise NotImplementedError

    def levels(self) -> Sequence[int]:
        return sorted(lod.level for lod in self.request.levels)


def title_of(request: ExportRequest) -> str:
    """A human title: the request's, else the service name, else the output's stem."""
    return request.title or request.service.name or Path(request.output).stem

"""``--mode merge``: add levels or areas to an existing output without fetching again what it holds.

As arcpy's MERGE: the job's planned bundles are written fresh into the staging session, each one
starting from the tiles the existing output already has there (copied through the same writer
thread, never requested from the server) plus the fetched rest; every existing bundle outside the
plan is copied whole. The staging session then replaces the output atomically at commit, exactly
as ``overwrite`` does, so the old output stays untouched (and remains the source of the copies)
until the very end: an interrupted merge leaves it as it was, and ``resume`` reads it again.

Rewritten bundles are compact by construction: a bundle is written once, tile after tile, with
no dead space left by replaced tiles.

Counting: the catalog's ``written`` (and ``bytes``) of a bundle are the tiles *fetched* and
stored by this job; tiles copied from the existing output are counted apart as *kept*
(``JobOutcome.kept``, ``tiles_kept`` in ``--json``), summed over a job's runs from one catalog
event per run (a bundle that a resume redoes, because a tile of it failed, is copied and counted
again; a run killed outright records no count). A tile the earlier export found missing (404) is not in the output, so a merge
asks for it again; the output is all a merge knows about.
"""
from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cacheorch.errors import FormatError, UsageError
from cacheorch.formats.cache import TileCache, open_cache
from cacheorch.formats.confxml import COMPACT_V1, COMPACT_V2, EXPLODED
from cacheorch.interfaces import ExportRequest
from cacheorch.tiling import SpatialReference, TilingScheme

if TYPE_CHECKING:
    from cacheorch.catalog import Catalog

__all__ = ["MergeSource", "open_merge_source", "merged_request", "check_compatible",
           "record_kept", "kept_total", "MERGE_EVENT", "RELATIVE_TOLERANCE"]

BundleKey = tuple[int, int, int]
#: How close a level's resolution (and the origin) must be to count as the same grid.
RELATIVE_TOLERANCE = 1e-9
#: The catalog event kind that records the tiles one run kept from the existing output.
MERGE_EVENT = "merge"
_KEPT = re.compile(r"^kept (\d+) tile")

# Which outputs each built-in exporter writes, as open_cache reports them: (kind, storage format,
# whether a package has a root.json, i.e. is a .tpkx rather than a .tpk).
_FORMATS: dict[str, tuple[str, str, bool | None]] = {
    "compact-v2": ("folder", COMPACT_V2, None),
    "tpkx": ("package", COMPACT_V2, True),
    "tpk": ("package", COMPACT_V1, False),
    "exploded": ("folder", EXPLODED, None),
    "mbtiles": ("package", "MBTiles", None),
    "gpkg": ("package", "GeoPackage", None),
}


class MergeSource:
    """The existing output a merge adds to, open for reading until the merge's bundles are staged."""

    def __init__(self, cache: TileCache) -> None:
        self.cache = cache
        self.path = Path(cache.path)
        #: Every bundle the output holds (exploded: every 128×128 block with a tile).
        self.bundles: frozenset[BundleKey] = frozenset(cache.bundle_keys())
        #: The levels that hold tiles.
        self.levels: frozenset[int] = frozenset(cache.levels_with_tiles()) | \
            frozenset(key[0] for key in self.bundles)

    def tiles(self, key: BundleKey) -> Iterator[tuple[int, int, bytes]]:
        """(row, col, bytes) of every tile the output holds in one bundle, exactly as stored."""
        if key in self.bundles:
            yield from self.cache.bundle_tiles(*key)

    def close(self) -> None:
        self.cache.close()


def open_merge_source(output: Path, exporter: str, scheme: TilingScheme) -> MergeSource | None:
    """The existing output to merge into, checked; None when there is none (merge = create).

    Raises :class:`~cacheorch.errors.UsageError` (one line) when the output cannot be read, is
    not what ``exporter`` writes, or lies on another grid than ``scheme``.
    """
    if not os.path.lexists(output):
        return None
    expected = _FORMATS.get(exporter)
    if expected is None:
        raise UsageError(f"--mode merge: exporter {exporter} has no reader to merge its output "
                         f"with; use --mode overwrite or another output")
    try:
        cache = open_cache(output)
    except FormatError as exc:
        raise UsageError(f"--mode merge: cannot read {output} to merge into it: {exc}") from None
    except OSError as exc:
        raise UsageError(f"--mode merge: cannot read {output}: {exc.strerror or exc}") from None
    try:
        _check_format(cache, exporter, expected)
        source = MergeSource(cache)
        check_compatible(cache.scheme, scheme, source.levels, where=str(output))
    except BaseException:
        cache.close()
        raise
    return source


def _check_format(cache: TileCache, exporter: str, expected: tuple[str, str, bool | None]) -> None:
    kind, storage, root_json = expected
    found = cache.storage_label if cache.kind == "folder" else f"{cache.storage_label} package"
    same = cache.kind == kind and cache.storage_format == storage
    if same and root_json is not None:
        same = _has_root_json(Path(cache.path)) == root_json
    if not same:
        raise UsageError(f"--mode merge: {cache.path} is a {found}, not what exporter "
                         f"{exporter} writes; merge with the exporter that made it")


def _has_root_json(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as package:
            return any(name.rsplit("/", 1)[-1].lower() == "root.json" for name in package.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _close(a: float, b: float, reference: float = 0.0) -> bool:
    return abs(a - b) <= RELATIVE_TOLERANCE * max(abs(a), abs(b), abs(reference))


def _same_sr(a: SpatialReference, b: SpatialReference) -> bool:
    if a.epsg is not None and b.epsg is not None:
        return a.epsg == b.epsg
    if a.wkid is not None and b.wkid is not None:
        return a.wkid == b.wkid
    if a.wkt and b.wkt:
        return " ".join(a.wkt.split()) == " ".join(b.wkt.split())
    return False


def check_compatible(existing: TilingScheme, service: TilingScheme, levels: frozenset[int] | set[int],
                     *, where: str) -> None:
    """Refuse (UsageError, one line) an existing output whose tiles would not line up with the
    service's: another spatial reference, tile size or origin, a level the service lacks, or a
    shared level at another resolution (more than :data:`RELATIVE_TOLERANCE` apart)."""
    def refuse(why: str) -> UsageError:
        return UsageError(f"--mode merge: {where} is on another tiling scheme than the service "
                          f"({why}); merge only into an output of the same grid")

    if not _same_sr(existing.spatial_reference, service.spatial_reference):
        raise refuse(f"spatial reference {existing.spatial_reference} vs "
                     f"{service.spatial_reference}")
    if (existing.tile_cols, existing.tile_rows) != (service.tile_cols, service.tile_rows):
        raise refuse(f"{existing.tile_cols}x{existing.tile_rows} px tiles vs "
                     f"{service.tile_cols}x{service.tile_rows} px")
    span = max((lod.resolution * max(service.tile_cols, service.tile_rows)
                for lod in service.lods), default=0.0)
    if not (_close(existing.origin_x, service.origin_x, span)
            and _close(existing.origin_y, service.origin_y, span)):
        raise refuse(f"origin {existing.origin_x:g}, {existing.origin_y:g} vs "
                     f"{service.origin_x:g}, {service.origin_y:g}")
    theirs = {lod.level: lod for lod in service.lods}
    ours = {lod.level: lod for lod in existing.lods}
    for level in sorted(levels):
        if level not in theirs:
            raise refuse(f"the output holds level {level}, which the service does not have")
    for level in sorted(set(ours) & set(theirs)):
        a, b = ours[level].resolution, theirs[level].resolution
        if not _close(a, b):
            raise refuse(f"level {level} has resolution {a!r} vs {b!r}")
    for level in sorted(set(levels) - set(ours)):  # tiles at a level the output's scheme omits
        raise refuse(f"the output holds level {level} but does not describe it")


def merged_request(request: ExportRequest, source: MergeSource) -> ExportRequest:
    """The request for a merge: the union of the output's levels and the planned ones (the
    exporter writes metadata for all of them) and the union of the extents; the exporter sees
    ``overwrite``, since the output it replaces at commit is the one the merge started from."""
    scheme = request.service.scheme
    levels = sorted({lod.level for lod in request.levels} | set(source.levels))
    extent = request.extent
    old = source.cache.full_extent
    if extent is not None:
        if old is not None and (old.spatial_reference is None
                                or _same_sr(old.spatial_reference, scheme.spatial_reference)):
            extent = (min(extent[0], old.xmin), min(extent[1], old.ymin),
                      max(extent[2], old.xmax), max(extent[3], old.ymax))
        else:
            extent = None  # unknown or in another SR: the service's full extent covers both
    return replace(request, levels=tuple(scheme.lod(level) for level in levels),
                   scheme=scheme.with_levels(levels), extent=extent, mode="overwrite")


def record_kept(catalog: Catalog, job_id: int, kept: int) -> None:
    """Record the tiles one run kept from the existing output (so totals span resumes)."""
    if kept:
        catalog.add_event(job_id, MERGE_EVENT, f"kept {kept} tile(s) from the existing output")


def kept_total(catalog: Catalog, job_id: int) -> int:
    """Tiles kept from the existing output over all runs of a job."""
    events: Any = getattr(catalog, "events", None)
    if events is None:
        return 0
    total = 0
    for event in events(job_id):
        if event.get("kind") == MERGE_EVENT:
            found = _KEPT.match(str(event.get("message") or ""))
            if found:
                total += int(found.group(1))
    return total

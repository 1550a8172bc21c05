"""Run a job whose exporter does the whole export itself (ArcGIS exportTiles, arcpy's tools).

Why apart from :mod:`cacheorch.runner`: there is no bundle to fetch or checkpoint. What stays
the same is the record: the catalog gets the job, its levels with cacheorch's planned counts,
the messages ArcGIS gives while it works (``job_messages``), and at the end each level's written
tiles and bytes, read back from the output with cacheorch's own reader. Also shared by the
delegated exporters: the area tiers of a plan (levels sharing one area, which ArcGIS exports in
one call), splitting a tier to fit a per-job tile limit, and merging several packages into one.
"""
from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import shapely

from cacheorch.connection import Connection
from cacheorch.errors import CacheorchError, ExportError, JobFailedError, OutputExistsError, \
    UsageError
from cacheorch.events import JobFinished, JobMessage, JobStarted, emit
from cacheorch.interfaces import DelegatedExporter, DelegateReport, ExportRequest, staging_path
from cacheorch.jobplan import JobPlan
from cacheorch.planner import count_level
from cacheorch.tiling import TilingScheme

if TYPE_CHECKING:
    from shapely.geometry.base import BaseGeometry

    from cacheorch.catalog import Catalog
    from cacheorch.pluginmanager import Plugins
    from cacheorch.runner import JobOutcome

__all__ = ["Tier", "area_tiers", "split_tier", "export_request", "merge_packages",
           "place_output", "run_delegated", "level_counts"]

log = logging.getLogger(__name__)

#: How deep an area may be halved to fit a limit (2**24 pieces would be absurd long before).
_MAX_SPLIT_DEPTH = 24


@dataclass(frozen=True)
class Tier:
    """Levels exported in one call: they share one area (or, after splitting, one piece of it)."""

    levels: tuple[int, ...]
    area: BaseGeometry
    label: str
    tiles: int


def area_tiers(plan: JobPlan) -> list[Tier]:
    """The plan's levels grouped by area, coarsest first: one ArcGIS call per tier, since each
    call takes one area of interest (spec §8.1: "only one AOI and one scale list per call")."""
    tiers: list[Tier] = []
    for lv in plan.levels:
        for i, tier in enumerate(tiers):
            if tier.label == lv.area_label and (tier.area is lv.area or tier.area.equals(lv.area)):
                tiers[i] = Tier(tier.levels + (lv.lod.level,), tier.area, tier.label,
                                tier.tiles + lv.tiles)
                break
        else:
            tiers.append(Tier((lv.lod.level,), lv.area, lv.area_label, lv.tiles))
    return tiers


def split_tier(scheme: TilingScheme, tier: Tier, limit: int,
               counts: dict[int, int] | None = None) -> list[Tier]:
    """Pieces of ``tier`` of at most ``limit`` tiles each: first its levels are grouped (in
    order) while they fit; a level that alone is over the limit has its area cut in halves
    (across its longer side, on a tile boundary) until each half fits.

    Pieces of one level may share the tiles along a cut; merging unions them, so a tile exported
    twice is written once.
    """
    if limit <= 0 or tier.tiles <= limit:
        return [tier]
    counts = counts or {}
    per_level = {lv: counts.get(lv) if lv in counts else count_level(scheme, lv, tier.area)
                 for lv in tier.levels}
    pieces: list[Tier] = []
    group: list[int] = []
    total = 0
    for level in tier.levels:
        n = per_level[level]
        if n > limit:
            for area, count in _halve(scheme, level, tier.area, n, limit, 0):
                pieces.append(Tier((level,), area, tier.label, count))
            continue
        if group and total + n > limit:
            pieces.append(Tier(tuple(group), tier.area, tier.label, total))
            group, total = [], 0
        group.append(level)
        total += n
    if group:
        pieces.append(Tier(tuple(group), tier.area, tier.label, total))
    return pieces


def _halve(scheme: TilingScheme, level: int, area: BaseGeometry, count: int, limit: int,
           depth: int) -> list[tuple[BaseGeometry, int]]:
    if count <= limit:
        return [(area, count)] if count else []
    if depth >= _MAX_SPLIT_DEPTH:
        raise ExportError(f"level {level}: cannot cut the area into pieces of at most {limit} "
                          f"tiles (the export limit is too small)")
    x0, y0, x1, y1 = area.bounds
    span_x, span_y = scheme.tile_span(level)
    if (x1 - x0) / span_x >= (y1 - y0) / span_y:
        cut = scheme.origin_x + round(((x0 + x1) / 2 - scheme.origin_x) / span_x) * span_x
        if not x0 < cut < x1:
            cut = (x0 + x1) / 2
        halves = [shapely.box(x0, y0, cut, y1), shapely.box(cut, y0, x1, y1)]
    else:
        cut = scheme.origin_y - round((scheme.origin_y - (y0 + y1) / 2) / span_y) * span_y
        if not y0 < cut < y1:
            cut = (y0 + y1) / 2
        halves = [shapely.box(x0, cut, x1, y1), shapely.box(x0, y0, x1, cut)]
    out: list[tuple[BaseGeometry, int]] = []
    for box in halves:
        piece = shapely.intersection(area, box)
        if piece.is_empty or piece.area <= 0:
            continue
        piece_count = count_level(scheme, level, piece)
        if piece_count >= count and depth > 2:
            raise ExportError(f"level {level}: cutting the area does not reduce its {count} tiles "
                              f"below the export limit of {limit}")
        out.extend(_halve(scheme, level, piece, piece_count, limit, depth + 1))
    return out


def export_request(plan: JobPlan, output: Path) -> ExportRequest:
    """The request an exporter session would get for ``plan`` (scheme narrowed to its levels)."""
    levels = tuple(lv.lod for lv in plan.levels)
    scheme = plan.service.scheme.with_levels(lod.level for lod in levels)
    return ExportRequest(output=output, service=plan.service, scheme=scheme, levels=levels,
                         extent=plan.extent, mode=plan.spec.mode,  # type: ignore[arg-type]
                         title=plan.service.name or output.stem)


def merge_packages(packages: Sequence[Path], request: ExportRequest) -> Path:
    """Write the union of the tiles of ``packages`` (any cache cacheorch reads) as one package at
    ``request.output`` (.tpk when it ends so, else .tpkx), through that exporter's own session,
    so the result is a package exactly like one cacheorch fetched itself. Where two packages hold
    the same tile, the later wins."""
    from cacheorch.formats.cache import open_cache
    from cacheorch.plugins.export_tpk import TpkSession
    from cacheorch.plugins.export_tpkx import TpkxSession

    wanted = {lod.level for lod in request.levels}
    caches = [open_cache(path) for path in packages]
    try:
        keys = sorted({key for cache in caches for key in cache.bundle_keys()})
        dropped = sorted({key[0] for key in keys if key[0] not in wanted})
        if dropped:
            log.warning("the packages hold levels %s that were not asked for; left out", dropped)
        session_class = TpkSession if request.output.suffix.lower() == ".tpk" else TpkxSession
        session = session_class(request)
        try:
            for level, brow, bcol in keys:
                if level not in wanted:
                    continue
                tiles: dict[tuple[int, int], bytes] = {}
                for cache in caches:
                    for row, col, data in cache.bundle_tiles(level, brow, bcol):
                        tiles[(row, col)] = data
                if not tiles:
                    continue
                sink = session.open_bundle(level, brow, bcol)
                try:
                    for (row, col), data in sorted(tiles.items()):
                        sink.add(row, col, data)
                except BaseException:
                    sink.abort()
                    raise
                sink.close()
            return session.commit()
        except BaseException:
            session.discard()
            raise
    finally:
        for cache in caches:
            cache.close()


def place_output(source: Path, output: Path, mode: str) -> Path:
    """Move a finished package into place (see :func:`~cacheorch.plugins._staging.publish_file`);
    in overwrite mode a folder output of an earlier run goes first."""
    from cacheorch.plugins._staging import publish_file
    if mode != "create" and output.is_dir():
        shutil.rmtree(output)
    return publish_file(source, output, mode)


def level_counts(output: Path) -> dict[int, tuple[int, int]]:
    """Tiles and bytes per level of a finished output, read with cacheorch's cache reader."""
    from cacheorch.formats.cache import open_cache
    from cacheorch.vector.reader import is_vector_output, vector_level_counts

    if is_vector_output(output):  # a .vtpk from a vector tile layer's exportTiles
        return vector_level_counts(output)
    counts: dict[int, tuple[int, int]] = {}
    with open_cache(output) as cache:
        for level, brow, bcol in cache.bundle_keys():
            tiles, size = counts.get(level, (0, 0))
            for _, _, data in cache.bundle_tiles(level, brow, bcol):
                tiles += 1
                size += len(data)
            counts[level] = (tiles, size)
    return counts


class _Report(DelegateReport):
    """Messages to the catalog, the event hook and the log; progress to the bar."""

    def __init__(self, plugins: Plugins, catalog: Catalog, connection: Connection, job_id: int,
                 output: Path, progress: Callable[[int], None] | None) -> None:
        self.plugins, self.catalog, self.connection = plugins, catalog, connection
        self.job_id, self.output = job_id, output
        self._progress = progress

    def message(self, text: str, *, kind: str = "info", source: str = "server") -> None:
        text = self.connection.redact(text)
        self.catalog.add_job_message(self.job_id, text, kind=kind, source=source)
        emit(self.plugins.pm, JobMessage(self.job_id, source=source, kind=kind, message=text))
        level = logging.WARNING if kind in ("warning", "error") else logging.INFO
        log.log(level, "job %d (%s): %s", self.job_id, source, text)

    def progress(self, tiles: int) -> None:
        if self._progress is not None and tiles > 0:
            self._progress(tiles)


def run_delegated(plugins: Plugins, catalog: Catalog, connection: Connection, plan: JobPlan, *,
                  job_id: int | None = None, progress: Callable[[int], None] | None = None,
                  on_start: Callable[[int], None] | None = None) -> JobOutcome:
    """:func:`cacheorch.runner.run_job` for a :class:`DelegatedExporter`: record the job, let
    the exporter do the export, then read the output back to record what each level holds."""
    from cacheorch.runner import JobOutcome, default_output, record_job_start

    exporter = plan.exporter
    assert isinstance(exporter, DelegatedExporter)
    resumed = job_id is not None
    output = (Path(plan.spec.output) if plan.spec.output else default_output(plan)).absolute()
    staging = staging_path(output)
    if not resumed and staging.exists():
        raise OutputExistsError(f"{staging} holds an interrupted job's files; resume it "
                                f"(cacheorch jobs lists it) or remove that folder")
    if plan.spec.mode == "create" and output.exists():
        raise OutputExistsError.at(output)
    job_id = record_job_start(catalog, plan, output, job_id)
    if on_start is not None:
        on_start(job_id)
    report = _Report(plugins, catalog, connection, job_id, output, progress)
    emit(plugins.pm, JobStarted(job_id, tiles_planned=plan.tiles, resumed=resumed))
    try:
        final = exporter.export(plan, connection, report)
        counts = level_counts(final)
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        status = "interrupted" if interrupted else "failed"
        message = "interrupted" if interrupted else connection.redact(exc)
        if not interrupted:
            report.message(message, kind="error", source="cacheorch")
        catalog.set_status(job_id, status, error=message)
        emit(plugins.pm, JobFinished(job_id, status=status, output=str(output)))
        if interrupted:
            raise JobFailedError(f"job {job_id} interrupted; finish it with: cacheorch resume "
                                 f"{job_id}") from None
        if isinstance(exc, CacheorchError) and not isinstance(exc, (UsageError, JobFailedError)):
            # the export ran and failed (a server job failed, a download broke): exit 1
            raise JobFailedError(f"job {job_id} failed: {message}") from None
        raise
    for lv in plan.levels:
        written, size = counts.get(lv.lod.level, (0, 0))
        catalog.record_level_result(job_id, level=lv.lod.level, written=written,
                                    missing=max(lv.tiles - written, 0), bytes=size)
    extra = sorted(set(counts) - {lv.lod.level for lv in plan.levels})
    if extra:
        report.message(f"the output also holds levels {extra}, which were not planned",
                       kind="warning", source="cacheorch")
    catalog.set_status(job_id, "completed")
    emit(plugins.pm, JobFinished(job_id, status="completed", output=str(final)))
    job = catalog.get_job(job_id)
    return JobOutcome(job_id, "completed", str(final), written=job["tiles_written"],
                      missing=job["tiles_missing"], failed=0, bytes=job["bytes"])

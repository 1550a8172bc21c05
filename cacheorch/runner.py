"""Run a planned job: fetch tiles bundle by bundle, write them, checkpoint each bundle in the catalog.

The bundle is the unit of work: a bundle is recorded as done only after its bytes are durable, so a
job killed at any moment resumes by skipping the recorded bundles and redoing the rest.
"""
from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cacheorch.connection import Connection
from cacheorch.delegate import export_request, run_delegated
from cacheorch.errors import CacheorchError, JobFailedError, OutputExistsError, UsageError
from cacheorch.events import BundleDone, JobFinished, JobStarted, emit
from cacheorch.interfaces import DelegatedExporter, ExportSession, staging_path
from cacheorch.jobplan import JobPlan
from cacheorch.merge import MergeSource, kept_total, merged_request, open_merge_source, record_kept
from cacheorch.planner import BundlePlan
from cacheorch.plugins.tilemap import with_tilemap
from cacheorch.writer import BundleWriterThread

if TYPE_CHECKING:
    from cacheorch.catalog import Catalog
    from cacheorch.pluginmanager import Plugins

__all__ = ["JobOutcome", "run_job", "default_output", "record_job_start", "live_job",
           "check_resumable"]

log = logging.getLogger(__name__)

#: How many tiles pass between progress-bar updates (a per-tile update would cost more than the tile).
_PROGRESS_STEP = 64

Progress = Callable[[int], None]


@dataclass
class JobOutcome:
    """How a job ended; ``status`` is completed, partial, failed or interrupted."""

    job_id: int
    status: str
    output: str
    written: int = 0
    missing: int = 0
    failed: int = 0
    bytes: int = 0
    message: str = ""
    #: Tiles the exporter left out as blank, and tiles it stored once for several places.
    skipped_blank: int = 0
    duplicates: int = 0
    #: ``--mode merge``: tiles copied from the existing output instead of fetched (not in
    #: ``written``, which counts fetched tiles only).
    kept: int = 0


@dataclass
class _OpenBundle:
    plan: BundlePlan
    seen: int = 0
    written: int = 0
    missing: int = 0
    failed: int = 0
    bytes: int = 0
    errors: list[tuple[int, int, str]] = field(default_factory=list)
    #: Tiles copied from the existing output of a merge.
    kept: int = 0


@dataclass
class _CopiedBundle:
    """A merge's existing bundle outside the plan, copied whole: no catalog record of its own."""

    kept: int = 0


def default_output(plan: JobPlan) -> Path:
    """``<service name><extension>`` in the working directory, with the name made file-safe."""
    raw = plan.service.name or Path(plan.service.location.rstrip("/")).name or "cache"
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", raw).strip("._") or "cache"
    return Path(safe + (plan.exporter.extension or ""))


def record_job_start(catalog: Catalog, plan: JobPlan, output: Path, job_id: int | None) -> int:
    """Record a new job (its service, parameters and planned levels), or mark ``job_id`` running
    again on resume; return the job's id. Shared by tile-fetching and delegated exports."""
    from cacheorch.catalog.liveness import PROCESS_EVENT, process_message
    if job_id is not None:
        catalog.set_status(job_id, "running")
        catalog.add_event(job_id, PROCESS_EVENT, process_message())
        return job_id
    scheme = plan.service.scheme
    service_id = catalog.ensure_service(
        url=plan.service.location, name=plan.service.name, kind=plan.service.kind,
        fingerprint=scheme.fingerprint(), scheme=scheme.to_json())
    params = plan.spec.to_parameters() | {"output": str(output), "fingerprint": scheme.fingerprint()}
    job_id = catalog.create_job(
        name=plan.spec.name, service_id=service_id, service_url=plan.service.location,
        exporter=plan.spec.exporter.name, output=str(output), parameters=params,
        levels=[lv.to_json() | {"area_name": lv.area_label} for lv in plan.levels])
    catalog.add_event(job_id, PROCESS_EVENT, process_message())
    return job_id


def live_job(catalog: Catalog, job: dict[str, Any]) -> dict[str, Any]:
    """The job as :func:`~cacheorch.catalog.liveness.shown_status` sees it (a running job
    whose process is gone is interrupted)."""
    from cacheorch.catalog.liveness import shown_status
    events = catalog.events(job["id"]) if job.get("status") == "running" else []
    return shown_status(job, events)


def _staging_taken(catalog: Catalog, output: Path, staging: Path) -> OutputExistsError:
    """The error for a new job on an output whose staging folder exists: another job is running
    on it, or an interrupted one (named when the catalog knows it) left it."""
    for job in catalog.list_jobs():
        if job.get("output") != str(output) or job.get("status") == "completed":
            continue
        job = live_job(catalog, job)
        if job["status"] == "running":
            return OutputExistsError(
                f"job {job['id']} is running on {output} (process {job.get('pid')}); wait for it "
                f"to finish, or choose another output")
        return OutputExistsError(f"{staging} holds the bundles of job {job['id']} "
                                 f"({job['status']}); finish it with: cacheorch resume {job['id']}, "
                                 f"or remove that folder")
    return OutputExistsError(f"{staging} holds an interrupted job's bundles; resume it "
                             f"(cacheorch jobs lists it) or remove that folder")


class _Run:
    """One execution (first run or resume) of a job against an open export session."""

    def __init__(self, plugins: Plugins, catalog: Catalog, connection: Connection, plan: JobPlan,
                 job_id: int, session: ExportSession, progress: Progress | None) -> None:
        self.plugins, self.catalog, self.connection = plugins, catalog, connection
        self.plan, self.job_id, self.session = plan, job_id, session
        self.progress = progress or (lambda n: None)
        self.open: dict[tuple[int, int, int], _OpenBundle] = {}
        self.outcome = JobOutcome(job_id, "running", "")
        #: ``resume --failed``: bundles to repair by refetching only their failed tiles.
        self.repair: dict[tuple[int, int, int], tuple[int, list[tuple[int, int]]]] = {}
        self.writer: BundleWriterThread | None = None
        #: ``--mode merge``: the existing output, the source of the tiles it already holds.
        self.merge: MergeSource | None = None
        #: Bundles of both the plan and a merge's existing output, gathered by :meth:`_todo`.
        self._planned_existing: set[tuple[int, int, int]] = set()

    def _todo(self, skip: dict[tuple[int, int, int], int]) -> Iterator[BundlePlan]:
        """Every bundle not already done, streamed; the skipped ones count as progress.

        Both executors start from this, so a resume skips the same bundles whichever runs it.
        """
        skipped = 0
        existing = self.merge.bundles if self.merge is not None else ()
        for bundle in self.plan.bundles():
            key = (bundle.level, bundle.bundle_row, bundle.bundle_col)
            if key in existing:  # for _copy_unplanned, so the plan is not made twice
                self._planned_existing.add(key)
            written = skip.get(key)
            if written is not None and (written == 0 or self.session.has_bundle(*key)):
                skipped += bundle.tile_count
                if skipped >= _PROGRESS_STEP:
                    self.progress(skipped)
                    skipped = 0
                continue
            yield bundle
        if skipped:
            self.progress(skipped)

    def _work(self, skip: dict[tuple[int, int, int], int]
              ) -> Iterator[tuple[BundlePlan, list[Any] | None]]:
        """Every bundle still to do, with the keys of it to fetch (None: all of them).

        Each bundle is registered in ``open`` before it is yielded (or, with nothing left to
        fetch, already finished). ``resume --failed`` fetches only the failed tiles of a bundle
        whose staged copy is whole (:meth:`_repair_keys`); ``--mode merge`` only the tiles the
        existing output lacks (:meth:`_merge_keys`), and once every planned bundle is out the
        existing bundles outside the plan are copied whole. Both executors start from this.
        """
        for bundle in self._todo(skip):
            key = (bundle.level, bundle.bundle_row, bundle.bundle_col)
            keys = self._repair_keys(key, bundle)
            if keys is None and self.merge is not None and key in self.merge.bundles:
                keys = self._merge_keys(key, bundle)
            if keys is None:
                self.open[key] = _OpenBundle(bundle)
            yield bundle, keys
        if self.merge is not None:
            self._copy_unplanned()

    def _keys(self, skip: dict[tuple[int, int, int], int]) -> Iterator[Any]:
        """Tile keys of every bundle not already done; registers each bundle before its first key."""
        for bundle, keys in self._work(skip):
            yield from bundle.keys() if keys is None else keys

    def _merge_keys(self, key: tuple[int, int, int], bundle: BundlePlan) -> list[Any]:
        """Merge: hand every tile the existing output holds in this bundle to the writer and
        return the planned keys it lacks, the only ones to fetch; a bundle with nothing left to
        fetch is finished here."""
        assert self.merge is not None and self.writer is not None
        state = _OpenBundle(bundle)
        held: set[tuple[int, int]] = set()
        for row, col, data in self.merge.tiles(key):
            self.writer.add(key, row, col, data)
            held.add((row, col))
        state.kept = len(held)
        keys = [k for k in bundle.keys() if (k.row, k.col) not in held]
        state.seen = bundle.tile_count - len(keys)
        if state.seen:
            self.progress(state.seen)
        if not keys:
            self.writer.finish(key, state)
        else:
            self.open[key] = state
        return keys

    def _copy_unplanned(self) -> None:
        """Merge: copy whole every existing bundle the plan does not touch (other levels or
        areas), so the new output holds old and new; on resume, those already staged stay.
        Called once :meth:`_todo` has gone through the whole plan."""
        assert self.merge is not None and self.writer is not None
        for key in sorted(self.merge.bundles - self._planned_existing):
            if self.session.has_bundle(*key):
                continue
            copied = _CopiedBundle()
            for row, col, data in self.merge.tiles(key):
                self.writer.add(key, row, col, data)
                copied.kept += 1
            self.writer.finish(key, copied)

    def _repair_keys(self, key: tuple[int, int, int], bundle: BundlePlan) -> list[Any] | None:
        """For a bundle with failed tiles and a staged copy: hand the copy's tiles to the writer
        and return the failed tiles' keys, the only ones to fetch; else None (fetch it whole).

        Why tile by tile: one failed tile of a 16,384-tile bundle would otherwise cost 16,384
        requests, and the staged copy is whole (it is renamed into place only when complete).
        """
        found = self.repair.get(key)
        if found is None or self.writer is None:
            return None
        from cacheorch.formats.bundle import BundleReader
        from cacheorch.plugins._staging import StagingSession
        from cacheorch.tiling import TileKey
        if not isinstance(self.session, StagingSession):  # Compact V2 staging only
            return None
        missing, failed = found
        path = self.session.bundle_path(*key)
        keys = [TileKey(key[0], r, c) for r, c in sorted(failed)]
        if not self.session.has_bundle(*key) or not keys or not set(keys) <= set(bundle.keys()):
            return None
        state = _OpenBundle(bundle, missing=missing, seen=bundle.tile_count - len(keys))
        skip = set(failed)
        with BundleReader(path, bundle_row=key[1], bundle_col=key[2]) as reader:
            kept = sum(1 for pos in reader.positions() if pos not in skip)  # the index only
            if kept + missing != state.seen:  # the copy disagrees with the catalog: refetch it
                return None
            for row, col, data in reader.tiles():
                if (row, col) not in skip:
                    self.writer.add(key, row, col, data)
                    state.written += 1
                    state.bytes += len(data)
        self.open[key] = state
        return keys

    def _bundle_done(self, key: tuple[int, int, int], state: _OpenBundle | _CopiedBundle) -> None:
        """On the writer thread, once the bundle is durable: checkpoint it in the catalog."""
        self.outcome.kept += state.kept
        if isinstance(state, _CopiedBundle):  # not a bundle of the job's plan
            return
        level, brow, bcol = key
        self.catalog.record_bundle(self.job_id, level=level, bundle_row=brow, bundle_col=bcol,
                                   written=state.written, missing=state.missing,
                                   failed=state.failed, bytes=state.bytes, errors=state.errors)
        out = self.outcome
        out.written += state.written
        out.missing += state.missing
        out.failed += state.failed
        out.bytes += state.bytes
        emit(self.plugins.pm, BundleDone(self.job_id, level=level, bundle_row=brow, bundle_col=bcol,
                                         written=state.written, missing=state.missing,
                                         failed=state.failed, bytes=state.bytes))

    def fetch_all(self, skip: dict[tuple[int, int, int], int]) -> None:
        """Fetch and write every bundle not in ``skip``, here or on the job's executor."""
        if self.plan.spec.executor == "dask":  # workers fetch; this process still writes
            from cacheorch.dask_executor import fetch_all_dask
            fetch_all_dask(self, skip)
            return
        source = self.plan.tile_source
        if source is None:
            raise CacheorchError("the plan was made without a tile source")
        writer = self.writer = BundleWriterThread(self.session, self._bundle_done)
        pending = 0
        try:
            opened = source.open(self.plan.service, self.connection, self.plan.spec.workers)
            with with_tilemap(opened, self.plan.service, self.connection,
                              enabled=self.plan.spec.tilemap) as fetcher:
                for result in fetcher.fetch(self._keys(skip)):
                    k = result.key
                    key = (k.level, *k.bundle)
                    state = self.open[key]
                    if result.status == "ok" and result.data is not None:
                        writer.add(key, k.row, k.col, result.data)
                        state.written += 1
                        state.bytes += len(result.data)
                    elif result.status == "missing":
                        state.missing += 1
                    else:
                        state.failed += 1
                        state.errors.append((k.row, k.col,
                                             self.connection.redact(result.error or "failed")))
                    state.seen += 1
                    if state.seen == state.plan.tile_count:
                        del self.open[key]
                        writer.finish(key, state)
                    pending += 1
                    if pending >= _PROGRESS_STEP:
                        writer.check()
                        self.progress(pending)
                        pending = 0
            writer.close()
        except BaseException:
            writer.abort()
            raise
        self.progress(pending)
        if self.open:  # a fetcher that dropped results would otherwise pass unnoticed
            raise CacheorchError(f"the tile source returned no result for {len(self.open)} bundle(s)")

    def abort_open(self) -> None:
        self.open.clear()


def _merge_source(plan: JobPlan, output: Path) -> MergeSource | None:
    """For ``--mode merge``: the existing output, checked against the service's grid and the
    exporter's format; None when there is none (or the mode is not merge).

    On resume it is the original output still: a merge replaces it only at commit.
    """
    if plan.spec.mode != "merge":
        return None
    name = getattr(plan.exporter, "name", "") or plan.spec.exporter.name
    return open_merge_source(output, name, plan.service.scheme)


def _delegated_merge(plan: JobPlan) -> JobPlan:
    """ArcGIS-run exporters merge only trivially: into no output (then merge is create)."""
    output = Path(plan.spec.output) if plan.spec.output else default_output(plan)
    if os.path.lexists(output.absolute()):
        raise UsageError(f"--mode merge: exporter {plan.spec.exporter.name} has ArcGIS build the "
                         f"whole output and cannot add to {output}; use --mode overwrite, or the "
                         f"exporter's own mode option where it has one")
    return replace(plan, spec=replace(plan.spec, mode="create"))


def _skip_set(catalog: Catalog, job_id: int) -> dict[tuple[int, int, int], int]:
    counts = getattr(catalog, "done_bundle_counts", None)
    if counts is not None:
        return counts(job_id)
    return {key: 1 for key in catalog.done_bundles(job_id)}


def run_job(plugins: Plugins, catalog: Catalog, connection: Connection, plan: JobPlan, *,
            job_id: int | None = None, progress: Progress | None = None,
            on_start: Callable[[int], None] | None = None,
            retry_failed: bool = False) -> JobOutcome:
    """Run ``plan`` as a new job, or as a resume of ``job_id``; returns how it ended.

    Raises :class:`~cacheorch.errors.JobFailedError` (exit 1) when tiles failed and the job did
    not allow a partial output, and on interruption; the catalog records the state either way.
    """
    if isinstance(plan.exporter, DelegatedExporter):  # ArcGIS does the export: no bundles here
        if plan.spec.mode == "merge":
            plan = _delegated_merge(plan)
        return run_delegated(plugins, catalog, connection, plan, job_id=job_id,
                             progress=progress, on_start=on_start)
    resumed = job_id is not None
    output = Path(plan.spec.output) if plan.spec.output else default_output(plan)
    output = output.absolute()
    staging = staging_path(output)
    if not resumed and staging.exists():
        raise _staging_taken(catalog, output, staging)
    if resumed and _published(catalog, job_id, plan, output, staging):  # type: ignore[arg-type]
        return _finish_published(plugins, catalog, job_id, output, staging)  # type: ignore[arg-type]
    if resumed and plan.spec.mode == "create" and output.exists() and not staging.exists():
        raise OutputExistsError(f"{output} exists and job {job_id} has no staged bundles left")
    merge = _merge_source(plan, output)
    request = export_request(plan, output)
    if merge is not None:
        request = merged_request(request, merge)
    elif plan.spec.mode == "merge":  # nothing to merge into: merge is create
        request = replace(request, mode="create")
    try:
        session = plan.exporter.open(request)
    except BaseException:
        if merge is not None:
            merge.close()
        raise
    try:
        job_id = record_job_start(catalog, plan, output, job_id)
    except BaseException:
        if not resumed:
            session.discard()
        if merge is not None:
            merge.close()
        raise
    if on_start is not None:
        on_start(job_id)
    run = _Run(plugins, catalog, connection, plan, job_id, session, progress)
    run.merge = merge
    run.outcome.output = str(output)
    skip = _skip_set(catalog, job_id) if resumed else {}
    if resumed and retry_failed and hasattr(catalog, "failed_tiles"):
        run.repair = catalog.failed_tiles(job_id)
    emit(plugins.pm, JobStarted(job_id, tiles_planned=plan.tiles, resumed=resumed))
    try:
        try:
            run.fetch_all(skip)
        finally:
            if merge is not None:  # every copy is staged (or dropped): the old output is done with
                merge.close()
                try:
                    record_kept(catalog, job_id, run.outcome.kept)
                except Exception as exc:  # never hide why the run stopped behind a count
                    log.warning("could not record the tiles kept by job %s: %s", job_id, exc)
    except BaseException as exc:
        run.abort_open()
        interrupted = isinstance(exc, KeyboardInterrupt)
        status = "interrupted" if interrupted else "failed"
        full = _disk_full(exc, job_id, staging)
        message = "interrupted" if interrupted else str(full or connection.redact(exc))
        catalog.set_status(job_id, status, error=message)
        emit(plugins.pm, JobFinished(job_id, status=status, output=str(output)))
        if interrupted:
            raise JobFailedError(f"job {job_id} interrupted; finish it with: cacheorch resume "
                                 f"{job_id}") from None
        failed = _job_failed(exc, job_id, connection, staging)
        if failed is exc:
            raise
        raise failed from exc
    return _conclude(plugins, catalog, plan, job_id, session, run.outcome, output, connection)


def _job_failed(exc: BaseException, job_id: int, connection: Connection, where: Path
                ) -> BaseException:
    """An error that ended a recorded job: exit 1 (the job failed, resumable), never 2 (bad
    input, nothing written), whatever raised it: a full disk, a file that cannot be written."""
    full = _disk_full(exc, job_id, where)
    if full is not None:
        return full
    if isinstance(exc, OSError):
        where_said = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        said = f"{where_said}{exc.strerror or exc}"
    elif isinstance(exc, CacheorchError) and exc.exit_code != 1:
        said = str(exc)
    else:
        return exc
    return JobFailedError(f"job {job_id} failed: {connection.redact(said)}; once that is fixed, "
                          f"finish it with: cacheorch resume {job_id}")


#: SQLite's "database or disk is full".
_SQLITE_FULL = 13


def _disk_full(exc: BaseException, job_id: int, where: Path) -> JobFailedError | None:
    """A full disk (or quota) while the job writes: exit 1, naming the file, and resumable.

    Why not the generic OSError path (exit 2, bad input): nothing was wrong with the input; the
    finished bundles are kept and the job goes on from them once there is room. A failed
    ``write`` names no file, so the folder being written is named instead.
    """
    # exporters say which file in their own error and keep the OSError (or SQLite's) as context
    cause = exc if isinstance(exc, OSError) else exc.__context__
    full = (isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)) or \
        getattr(cause, "sqlite_errorcode", None) == _SQLITE_FULL
    if not full:
        return None
    if isinstance(exc, OSError):
        what = f"no space left on the device writing {exc.filename or where}"
    else:
        what = str(exc)
        if "space" not in what.lower() and "full" not in what.lower():
            what += " (the disk is full)"
    return JobFailedError(f"job {job_id}: {what}; finished bundles are kept: make room, then "
                          f"run: cacheorch resume {job_id}")


def _totals(catalog: Catalog, job_id: int, outcome: JobOutcome) -> JobOutcome:
    """The job's totals over all its runs (a resume only saw the bundles it redid)."""
    job = catalog.get_job(job_id)
    return JobOutcome(job_id, outcome.status, outcome.output,
                      written=job.get("tiles_written", outcome.written),
                      missing=job.get("tiles_missing", outcome.missing),
                      failed=job.get("tiles_failed", outcome.failed),
                      bytes=job.get("bytes", outcome.bytes), message=outcome.message,
                      kept=kept_total(catalog, job_id))


def _conclude(plugins: Plugins, catalog: Catalog, plan: JobPlan, job_id: int,
              session: ExportSession, outcome: JobOutcome, output: Path,
              connection: Connection) -> JobOutcome:
    totals = _totals(catalog, job_id, outcome)
    if not (totals.failed or totals.written or totals.kept) and totals.missing \
            and not plan.spec.allow_empty:
        totals.status = "failed"
        totals.message = (f"the service has no tiles where job {job_id} asked: all "
                          f"{totals.missing:,} planned tile(s) were missing{_why_empty(plan)}; "
                          f"nothing was written to {output} (--allow-empty writes it anyway)")
        catalog.set_status(job_id, "failed", error=totals.message)
        session.discard()
        emit(plugins.pm, JobFinished(job_id, status="failed", output=""))
        totals.output = ""
        return totals
    if totals.failed and not plan.spec.allow_partial:
        totals.status = "partial"
        totals.message = (f"{totals.failed} tile(s) failed; nothing was written to {output} "
                          f"(the catalog lists the tiles: cacheorch job {job_id}); retry them with "
                          f"cacheorch resume {job_id}, or accept the gaps with --allow-partial")
        catalog.set_status(job_id, "partial", error=totals.message)
        emit(plugins.pm, JobFinished(job_id, status="partial", output=""))
        totals.output = ""
        return totals
    # Said before publishing: a kill between the publish and the status update below leaves
    # this behind, and resume then knows the output in place is the job's own (_published).
    catalog.add_event(job_id, _COMMIT_EVENT, f"publishing {output}")
    try:
        final = session.commit()
    except BaseException as exc:
        failed = _job_failed(exc, job_id, connection, output)
        catalog.set_status(job_id, "failed", error=str(failed))
        if failed is exc:
            raise
        raise failed from exc
    session.discard()
    totals.output = str(final)
    # Exporters that leave out blank tiles or store identical ones once say how many.
    totals.skipped_blank = int(getattr(session, "skipped_blank", 0) or 0)
    totals.duplicates = int(getattr(session, "duplicates", 0) or 0)
    if totals.skipped_blank or totals.duplicates:
        catalog.add_job_message(job_id, f"{totals.skipped_blank} blank tile(s) left out, "
                                f"{totals.duplicates} duplicate tile(s) stored once",
                                kind="summary", source="exporter")
    if totals.failed:
        totals.status = "partial"
        totals.message = (f"{totals.failed} tile(s) failed and are absent from {final} "
                          f"(cacheorch job {job_id} lists them)")
        catalog.set_status(job_id, "partial", error=totals.message)
    else:
        totals.status = "completed"
        catalog.set_status(job_id, "completed")
    emit(plugins.pm, JobFinished(job_id, status=totals.status, output=str(final)))
    return totals


def _why_empty(plan: JobPlan) -> str:
    """What the service's own description says about a job that found no tile ("" if nothing)."""
    from cacheorch.tiling import format_levels
    service = plan.service
    why = []
    if service.single_fused_cache is False:
        why.append("its JSON says singleFusedMapCache: false, so /tile serves none of its cache")
    undrawn: dict[str, list[int]] = {}
    for lv in plan.levels:
        if service.draws_at(lv.lod.scale):
            undrawn.setdefault(service.draws_at(lv.lod.scale), []).append(lv.lod.level)
    for reason, levels in undrawn.items():
        why.append(f"level(s) {format_levels(levels)} are {reason} (--policy service-limits "
                   "leaves them out)")
    return f" ({'; '.join(why)})" if why else ""


#: The catalog event recorded just before an output is published.
_COMMIT_EVENT = "commit"


def _published(catalog: Catalog, job_id: int, plan: JobPlan, output: Path, staging: Path) -> bool:
    """Whether an earlier run of the job published ``output`` and died before recording it.

    Publishing is atomic (a rename or hard link of a complete file or folder), and it starts
    only after the commit event is recorded. In create mode the output did not exist when the
    job started, so an output present after that event is the job's; in overwrite mode it may
    be the old output, unless the staging folder is gone too (the publish removed it).
    """
    if not output.exists() or not any(e["kind"] == _COMMIT_EVENT for e in catalog.events(job_id)):
        return False
    return plan.spec.mode == "create" or not staging.exists()


def _finish_published(plugins: Plugins, catalog: Catalog, job_id: int, output: Path,
                      staging: Path) -> JobOutcome:
    """Record how a job whose output was already published ended; remove leftover staging."""
    import shutil
    shutil.rmtree(staging, ignore_errors=True)  # a kill may land while the publish removes it
    totals = _totals(catalog, job_id, JobOutcome(job_id, "completed", str(output)))
    if totals.failed:
        totals.status = "partial"
        totals.message = (f"{totals.failed} tile(s) failed and are absent from {output} "
                          f"(cacheorch job {job_id} lists them)")
    catalog.set_status(job_id, totals.status, error=totals.message or None)
    emit(plugins.pm, JobFinished(job_id, status=totals.status, output=str(output)))
    return totals


def check_resumable(job: dict[str, Any], events: list[dict[str, Any]] | None = None) -> None:
    """Refuse to resume a finished job or one another process is running (``events``: the
    job's, which name the process of its latest run)."""
    from cacheorch.catalog.liveness import process_gone, running_process
    if job["status"] == "completed":
        raise UsageError(f"job {job['id']} is already completed")
    if job["status"] == "running":
        pid, host = running_process(job, events or [])
        if process_gone(pid, host, job.get("started_at")) is not True:
            where = f" on {host}" if host else ""
            raise UsageError(f"job {job['id']} is running in process {pid}{where}; wait for it "
                             f"to finish (or stop that process{where}) before resuming it")

"""The catalog's API: what the job runner records and what ``cacheorch jobs`` / ``job`` read back.

Every method is one short transaction on its own pooled connection, so a Catalog can be shared
by threads, and several processes can share one file: writes begin with ``BEGIN IMMEDIATE`` and
wait up to ``busy_timeout`` for each other.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from cacheorch.catalog.engine import OnConnect, make_engine, writer
from cacheorch.catalog.revision import at_shipped_head
from cacheorch.catalog.models import (
    JOB_STATUSES, Job, JobBundle, JobEvent, JobLevel, JobMessage, JobTileError, Service, utcnow,
)
from cacheorch.catalog.scrub import Scrubber
from cacheorch.errors import CatalogError

__all__ = ["Catalog", "ERRORS_SHOWN", "FINISHED_STATUSES"]

#: How many tile errors :meth:`Catalog.get_job` returns (the total is in ``errors_total``).
ERRORS_SHOWN = 1000
#: Statuses that end a run; setting one stamps ``finished_at``.
FINISHED_STATUSES = frozenset({"completed", "partial", "failed", "interrupted"})
#: Longest error or message text stored; a whole HTML error page helps nobody.
_MAX_TEXT = 2000
_COUNTS = ("tiles_written", "tiles_missing", "tiles_failed", "bytes")
_LEVEL_KEYS = ("level", "scale", "resolution", "tiles_planned")


class Catalog:
    """A migrated SQLite catalog; create it with :meth:`open`."""

    def __init__(self, path: Path, engine: Engine, redact: Callable[[str], str] | None = None):
        #: The catalog file, absolute.
        self.path = path
        self._engine = engine
        self._writer = writer(engine)
        self._scrub = Scrubber(redact)

    # -- lifetime ---------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, on_connect: OnConnect | None = None,
             redact: Callable[[str], str] | None = None, read_only: bool = False) -> Catalog:
        """Open (creating and migrating as needed) the catalog at ``path``.

        :param on_connect: called with each new raw sqlite3 connection, after cacheorch's pragmas.
        :param redact: applied to every string stored, after the catalog's own token stripping.
        :param read_only: the caller only reads: a catalog this process cannot write (a
            read-only mount, another user's file) is opened for reading instead of failing.
        :raises CatalogTooNewError: a newer cacheorch migrated this catalog.
        :raises CatalogError: the file is not a usable catalog.
        """
        path = Path(path).expanduser().absolute()
        if path.is_dir():
            raise CatalogError(f"catalog {path} is a directory; give a file path")
        if read_only and path.is_file() and not (os.access(path, os.W_OK)
                                                 and os.access(path.parent, os.W_OK)):
            return cls._open_read_only(path, redact)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CatalogError(
                f"cannot create the folder of catalog {path}: {exc.strerror}") from exc
        engine = make_engine(path, on_connect=on_connect)
        if at_shipped_head(path):  # the common case: no migration, no Alembic import
            return cls(path, engine, redact)
        if not path.exists() or path.stat().st_size == 0:
            from cacheorch.catalog.fresh import create_fresh
            try:
                if create_fresh(engine, path):
                    return cls(path, engine, redact)
            except BaseException:
                engine.dispose()
                raise
        from cacheorch.catalog.migrate import migrate_engine
        try:
            migrate_engine(engine, path)
        except BaseException:
            engine.dispose()
            raise
        return cls(path, engine, redact)

    @classmethod
    def _open_read_only(cls, path: Path, redact: Callable[[str], str] | None) -> Catalog:
        """A catalog only read (no migration possible: it must be at this cacheorch's revision)."""
        from cacheorch.catalog.engine import make_read_only_engine
        from cacheorch.catalog.revision import shipped_head
        engine = make_read_only_engine(path)
        catalog = cls(path, engine, redact)
        try:
            found = catalog.current_revision()
        except BaseException:
            engine.dispose()
            raise
        if found != shipped_head():
            engine.dispose()
            raise CatalogError(f"catalog {path} cannot be written here and is at revision {found}, "
                               f"not {shipped_head()}; upgrade it where it can be written "
                               f"(cacheorch db upgrade)")
        return catalog

    def close(self) -> None:
        """Close every pooled connection (the last one out checkpoints the WAL)."""
        self._engine.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Catalog({str(self.path)!r})"

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, for queries this API does not offer (reads; writes should
        go through the methods, which redact and use ``BEGIN IMMEDIATE``)."""
        return self._engine

    def current_revision(self) -> str | None:
        """The Alembic revision of the file (head, right after :meth:`open`)."""
        from alembic.runtime.migration import MigrationContext
        with self._read() as session:
            return MigrationContext.configure(session.connection()).get_current_revision()

    # -- writes -----------------------------------------------------------------------------

    def ensure_service(self, *, url: str, name: str, kind: str, fingerprint: str,
                       scheme: dict[str, Any]) -> int:
        """The id of the service with this URL and tiling-scheme fingerprint, added if new."""
        url = self._scrub.url(url)
        with self._write() as session:
            found = session.scalar(select(Service.id).where(
                Service.url == url, Service.fingerprint == fingerprint))
            if found is not None:
                return found
            service = Service(url=url, name=self._scrub.text(name), kind=self._scrub.text(kind),
                              fingerprint=fingerprint, scheme=self._scrub.data(scheme),
                              created=utcnow())
            session.add(service)
            session.flush()
            return service.id

    def create_job(self, *, name: str | None, service_id: int, service_url: str, exporter: str,
                   output: str, parameters: dict[str, Any], levels: list[dict[str, Any]]) -> int:
        """Record a job that starts now (status ``running``) with its planned levels.

        :param levels: ``{"level", "scale", "resolution", "tiles_planned"}`` and optionally
            ``"area_name"`` (the area of interest used for that level) each.
        """
        for entry in levels:
            missing = [key for key in _LEVEL_KEYS if key not in entry]
            if missing:
                raise CatalogError(f"level entry {entry!r} lacks {', '.join(missing)}")
        now = utcnow()
        with self._write() as session:
            job = Job(name=self._scrub.optional_text(name), service_id=service_id,
                      service_url=self._scrub.url(service_url),
                      exporter=self._scrub.text(exporter), output=self._scrub.text(output),
                      parameters=self._scrub.data(parameters), status="running",
                      created_at=now, started_at=now, pid=os.getpid(),
                      tiles_planned=sum(int(e["tiles_planned"]) for e in levels),
                      tiles_written=0, tiles_missing=0, tiles_failed=0, bytes=0)
            session.add(job)
            session.flush()
            session.add_all(JobLevel(
                job_id=job.id, level=int(e["level"]), scale=float(e["scale"]),
                resolution=float(e["resolution"]), tiles_planned=int(e["tiles_planned"]),
                area_name=self._scrub.optional_text(e.get("area_name")),
                tiles_written=0, tiles_missing=0, tiles_failed=0, bytes=0) for e in levels)
            return job.id

    def record_bundle(self, job_id: int, *, level: int, bundle_row: int, bundle_col: int,
                      written: int, missing: int, failed: int, bytes: int,
                      errors: Sequence[tuple[int, int, str]] = ()) -> None:
        """Checkpoint one bundle, in one transaction, after its bytes are durable.

        Recording a bundle again (a resume retrying it) replaces its previous counts and tile
        errors instead of adding to them, so the level and job totals never count a tile twice.

        :param errors: ``(row, col, message)`` of each tile that failed.
        """
        counts = dict(zip(_COUNTS, (written, missing, failed, bytes)))
        if min(counts.values()) < 0:
            raise CatalogError(f"negative counts for bundle {level}/{bundle_row}/{bundle_col}")
        with self._write() as session:
            job = self._job(session, job_id)
            job_level = self._job_level(session, job_id, level)
            bundle = session.scalar(select(JobBundle).where(
                JobBundle.job_id == job_id, JobBundle.level == level,
                JobBundle.bundle_row == bundle_row, JobBundle.bundle_col == bundle_col))
            if bundle is None:
                bundle = JobBundle(job_id=job_id, level=level, bundle_row=bundle_row,
                                   bundle_col=bundle_col)
                session.add(bundle)
            else:
                for column in _COUNTS:
                    previous = getattr(bundle, column)
                    for total in (job, job_level):
                        setattr(total, column, getattr(total, column) - previous)
                session.execute(delete(JobTileError).where(JobTileError.bundle_id == bundle.id))
            for column, value in counts.items():
                setattr(bundle, column, value)
                for total in (job, job_level):
                    setattr(total, column, getattr(total, column) + value)
            bundle.state = "done" if failed == 0 else "failed"
            bundle.finished_at = utcnow()
            session.flush()
            if errors:
                session.execute(insert(JobTileError), [
                    {"job_id": job_id, "bundle_id": bundle.id, "level": level, "row": row,
                     "col": col, "error": self._text(str(message))}
                    for row, col, message in errors])

    def set_status(self, job_id: int, status: str, error: str | None = None) -> None:
        """Move a job to ``status``; ``error`` replaces the job's error (None clears it).

        ``running`` (a start or resume) stamps ``started_at`` and this process's pid and clears
        ``finished_at``; a finishing status stamps ``finished_at``.
        """
        if status not in JOB_STATUSES:
            raise CatalogError(f"unknown job status {status!r}; expected one of "
                               f"{', '.join(JOB_STATUSES)}")
        with self._write() as session:
            job = self._job(session, job_id)
            job.status = status
            job.error = None if error is None else self._text(error)
            if status == "running":
                job.started_at, job.finished_at, job.pid = utcnow(), None, os.getpid()
            elif status in FINISHED_STATUSES:
                job.finished_at = utcnow()

    def add_event(self, job_id: int, kind: str, message: str) -> None:
        """Append a message to the job's history."""
        with self._write() as session:
            self._job(session, job_id)
            session.add(JobEvent(job_id=job_id, created=utcnow(), kind=self._scrub.text(kind),
                                 message=self._text(message)))

    def add_job_message(self, job_id: int, message: str, *, kind: str = "info",
                        source: str = "server") -> None:
        """Append one message of a delegated export (a server job message, a geoprocessing
        message), redacted and cut to length like every stored text."""
        with self._write() as session:
            self._job(session, job_id)
            session.add(JobMessage(job_id=job_id, created=utcnow(),
                                   source=self._scrub.text(source)[:32],
                                   kind=self._scrub.text(kind)[:64], message=self._text(message)))

    def record_level_result(self, job_id: int, *, level: int, written: int, missing: int,
                            bytes: int) -> None:
        """Set one level's written / missing tiles and bytes as read back from a delegated
        export's output (no bundle checkpoints exist then); the job's totals follow.

        Recording a level again replaces its counts, so the totals never count a tile twice.
        """
        if min(written, missing, bytes) < 0:
            raise CatalogError(f"negative counts for level {level} of job {job_id}")
        counts = {"tiles_written": written, "tiles_missing": missing, "bytes": bytes}
        with self._write() as session:
            job = self._job(session, job_id)
            job_level = self._job_level(session, job_id, level)
            for column, value in counts.items():
                setattr(job, column, getattr(job, column) - getattr(job_level, column) + value)
                setattr(job_level, column, value)

    # -- reads ------------------------------------------------------------------------------

    def job_messages(self, job_id: int) -> list[dict[str, Any]]:
        """The messages of a delegated export, oldest first."""
        with self._read() as session:
            self._job(session, job_id)
            return [{"created": m.created.isoformat(), "source": m.source, "kind": m.kind,
                     "message": m.message}
                    for m in session.scalars(select(JobMessage).where(JobMessage.job_id == job_id)
                                             .order_by(JobMessage.id))]

    def done_bundles(self, job_id: int) -> set[tuple[int, int, int]]:
        """``(level, bundle_row, bundle_col)`` of the bundles a resume can skip."""
        with self._read() as session:
            rows = session.execute(select(
                JobBundle.level, JobBundle.bundle_row, JobBundle.bundle_col).where(
                JobBundle.job_id == job_id, JobBundle.state == "done"))
            return {(r.level, r.bundle_row, r.bundle_col) for r in rows}

    def done_bundle_counts(self, job_id: int) -> dict[tuple[int, int, int], int]:
        """Tiles written by each done bundle: a resume need not look for a bundle that wrote 0."""
        with self._read() as session:
            rows = session.execute(select(
                JobBundle.level, JobBundle.bundle_row, JobBundle.bundle_col,
                JobBundle.tiles_written).where(
                JobBundle.job_id == job_id, JobBundle.state == "done"))
            return {(r.level, r.bundle_row, r.bundle_col): r.tiles_written for r in rows}

    def failed_tiles(self, job_id: int) -> dict[tuple[int, int, int], tuple[int, list[tuple[int, int]]]]:
        """Bundles recorded with failed tiles: ``(level, bundle_row, bundle_col)`` → (tiles
        missing, ``(row, col)`` of every failed tile), for ``resume --failed``."""
        with self._read() as session:
            bundles = {r.id: ((r.level, r.bundle_row, r.bundle_col), r.tiles_missing)
                       for r in session.execute(select(
                           JobBundle.id, JobBundle.level, JobBundle.bundle_row,
                           JobBundle.bundle_col, JobBundle.tiles_missing).where(
                           JobBundle.job_id == job_id, JobBundle.state == "failed"))}
            out: dict[tuple[int, int, int], tuple[int, list[tuple[int, int]]]] = {
                key: (missing, []) for key, missing in bundles.values()}
            for r in session.execute(select(JobTileError.bundle_id, JobTileError.row,
                                            JobTileError.col).where(
                                     JobTileError.job_id == job_id)):
                if r.bundle_id in bundles:
                    out[bundles[r.bundle_id][0]][1].append((r.row, r.col))
            return out

    def list_jobs(self) -> list[dict[str, Any]]:
        """Every job, newest first, with its totals."""
        with self._read() as session:
            return [_job_dict(job) for job in session.scalars(select(Job).order_by(Job.id.desc()))]

    def get_job(self, job_id: int) -> dict[str, Any]:
        """The job with its ``levels`` (the extracted scales), ``parameters`` and tile ``errors``.

        ``errors`` holds the first :data:`ERRORS_SHOWN` by level, row, column; ``errors_total``
        says how many there are in all.
        """
        with self._read() as session:
            job = self._job(session, job_id)
            out = _job_dict(job)
            out["parameters"] = job.parameters
            out["levels"] = [{
                "level": lv.level, "scale": lv.scale, "resolution": lv.resolution,
                "area_name": lv.area_name, "tiles_planned": lv.tiles_planned,
                **{column: getattr(lv, column) for column in _COUNTS},
            } for lv in session.scalars(
                select(JobLevel).where(JobLevel.job_id == job_id).order_by(JobLevel.level))]
            errors = session.execute(
                select(JobTileError.level, JobTileError.row, JobTileError.col, JobTileError.error)
                .where(JobTileError.job_id == job_id)
                .order_by(JobTileError.level, JobTileError.row, JobTileError.col)
                .limit(ERRORS_SHOWN))
            out["errors"] = [r._asdict() for r in errors]
            out["errors_total"] = session.scalar(
                select(func.count()).select_from(JobTileError).where(JobTileError.job_id == job_id))
            return out

    def job_parameters(self, job_id: int) -> dict[str, Any]:
        """The parameters the job was created with (secrets removed), to resume it."""
        with self._read() as session:
            return dict(self._job(session, job_id).parameters)

    def events(self, job_id: int) -> list[dict[str, Any]]:
        """The job's messages, oldest first."""
        with self._read() as session:
            self._job(session, job_id)
            return [{"created": ev.created.isoformat(), "kind": ev.kind, "message": ev.message}
                    for ev in session.scalars(select(JobEvent).where(JobEvent.job_id == job_id)
                                              .order_by(JobEvent.id))]

    # -- helpers ----------------------------------------------------------------------------

    def _text(self, value: str) -> str:
        return self._scrub.text(value)[:_MAX_TEXT]

    def _job_level(self, session: Session, job_id: int, level: int) -> JobLevel:
        job_level = session.scalar(select(JobLevel).where(
            JobLevel.job_id == job_id, JobLevel.level == level))
        if job_level is None:
            raise CatalogError(f"job {job_id} has no level {level} in {self.path}")
        return job_level

    def _job(self, session: Session, job_id: int) -> Job:
        job = session.get(Job, job_id)
        if job is None:
            raise CatalogError(f"no job {job_id} in {self.path}")
        return job

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with self._session(self._writer) as session:
            yield session

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._session(self._engine) as session:
            yield session

    @contextmanager
    def _session(self, engine: Engine) -> Iterator[Session]:
        try:
            with Session(engine, expire_on_commit=False) as session, session.begin():
                yield session
        except DBAPIError as exc:
            raise CatalogError(f"catalog {self.path}: {exc.orig}") from exc


def _job_dict(job: Job) -> dict[str, Any]:
    def iso(value: Any) -> str | None:
        return None if value is None else value.isoformat()

    return {
        "id": job.id, "name": job.name, "status": job.status, "service_id": job.service_id,
        "service_url": job.service_url, "exporter": job.exporter, "output": job.output,
        "created_at": iso(job.created_at), "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at), "error": job.error, "pid": job.pid,
        "tiles_planned": job.tiles_planned,
        **{column: getattr(job, column) for column in _COUNTS},
    }

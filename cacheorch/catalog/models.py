"""SQLAlchemy models of the catalog: services, jobs, their levels, bundles, tile errors and events.

The Alembic migrations in ``cacheorch.migrations`` are the source of truth for the schema on disk;
these models must match them (``tests/test_migrations.py`` compares the two).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON, CheckConstraint, Dialect, Float, ForeignKey, Index, Integer, MetaData, String, Text,
    TypeDecorator, UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Base", "Service", "Job", "JobLevel", "JobBundle", "JobTileError", "JobEvent", "JobMessage",
    "MapRecord", "JOB_STATUSES", "BUNDLE_STATES", "UTCDateTime", "utcnow",
]

#: Every status a job can have; ``running`` until the runner says how it ended.
JOB_STATUSES = ("planned", "running", "completed", "partial", "failed", "interrupted")
#: A bundle is ``done`` only when all its tiles were written or known missing.
BUNDLE_STATES = ("done", "failed")

#: Named constraints, so that batch migrations on SQLite can drop or alter them later.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Now, timezone-aware in UTC (the only zone the catalog stores)."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """An aware datetime stored as ISO-8601 UTC text.

    SQLite has no datetime type; fixed-width ISO text in UTC sorts correctly, reads the same in
    the ``sqlite3`` shell, and never loses the zone the way SQLAlchemy's naive DATETIME does.
    """

    impl = String(32)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("the catalog stores aware datetimes only")
        return value.astimezone(timezone.utc).isoformat(timespec="microseconds")

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return None if value is None else datetime.fromisoformat(value)


def _status_check(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    """Declarative base; its metadata is Alembic's ``target_metadata``."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Service(Base):
    """A map service as a job saw it: the URL without any token, and its tiling scheme.

    The same URL gets a new row when its tiling scheme changes (new fingerprint), so an old job
    keeps pointing at the scheme it really exported.
    """

    __tablename__ = "services"
    __table_args__ = (UniqueConstraint("url", "fingerprint"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(64))
    scheme: Mapped[dict[str, Any]] = mapped_column(JSON)
    created: Mapped[datetime] = mapped_column(UTCDateTime)


class Job(Base):
    """One export run (and its resumes); the totals are sums over its bundles."""

    __tablename__ = "jobs"
    __table_args__ = (CheckConstraint(_status_check("status", JOB_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str | None] = mapped_column(Text)
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id"), index=True)
    service_url: Mapped[str] = mapped_column(Text)
    exporter: Mapped[str] = mapped_column(String(64))
    output: Mapped[str] = mapped_column(Text)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    tiles_planned: Mapped[int] = mapped_column(Integer, default=0)
    tiles_written: Mapped[int] = mapped_column(Integer, default=0)
    tiles_missing: Mapped[int] = mapped_column(Integer, default=0)
    tiles_failed: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(Integer, default=0)
    pid: Mapped[int | None] = mapped_column(Integer)
    #: The map (``run --map``) this job exports a layer of; None for an ordinary job.
    map_id: Mapped[int | None] = mapped_column(ForeignKey("maps.id", ondelete="SET NULL"),
                                               index=True)


class JobLevel(Base):
    """One extracted scale of a job: what was planned for the level and what came of it."""

    __tablename__ = "job_levels"
    __table_args__ = (UniqueConstraint("job_id", "level"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    level: Mapped[int] = mapped_column(Integer)
    scale: Mapped[float] = mapped_column(Float)
    resolution: Mapped[float] = mapped_column(Float)
    area_name: Mapped[str | None] = mapped_column(Text)
    tiles_planned: Mapped[int] = mapped_column(Integer, default=0)
    tiles_written: Mapped[int] = mapped_column(Integer, default=0)
    tiles_missing: Mapped[int] = mapped_column(Integer, default=0)
    tiles_failed: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(Integer, default=0)


class JobBundle(Base):
    """A checkpoint: one 128×128 bundle of one level, recorded after its bytes are durable.

    A resume skips ``done`` bundles and retries ``failed`` ones.
    """

    __tablename__ = "job_bundles"
    __table_args__ = (
        UniqueConstraint("job_id", "level", "bundle_row", "bundle_col"),
        CheckConstraint(_status_check("state", BUNDLE_STATES), name="state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    level: Mapped[int] = mapped_column(Integer)
    bundle_row: Mapped[int] = mapped_column(Integer)
    bundle_col: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    tiles_written: Mapped[int] = mapped_column(Integer, default=0)
    tiles_missing: Mapped[int] = mapped_column(Integer, default=0)
    tiles_failed: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(Integer, default=0)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime)


class JobTileError(Base):
    """A tile that failed, with why; it belongs to the bundle whose last attempt produced it."""

    __tablename__ = "job_tile_errors"
    __table_args__ = (Index(None, "job_id", "level", "row", "col"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    bundle_id: Mapped[int] = mapped_column(
        ForeignKey("job_bundles.id", ondelete="CASCADE"), index=True)
    level: Mapped[int] = mapped_column(Integer)
    row: Mapped[int] = mapped_column(Integer)
    col: Mapped[int] = mapped_column(Integer)
    error: Mapped[str] = mapped_column(Text)


class JobEvent(Base):
    """A message about a job (started, resumed, a warning), for ``cacheorch job ID``."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)


class JobMessage(Base):
    """A message from whoever did a delegated export: an ArcGIS exportTiles job's messages, or
    arcpy's geoprocessing messages, in the order they came (``source`` says which)."""

    __tablename__ = "job_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime)
    source: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)


class MapRecord(Base):
    """A map job (``run --map``): the map's layers in order and the jobs that export them.

    ``layers`` is the manifest's list (title, role, url, status, reason, job_id...); each
    exported layer's totals live in its job (``jobs.map_id``).
    """

    __tablename__ = "maps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(32))
    output: Mapped[str] = mapped_column(Text)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    layers: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

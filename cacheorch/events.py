"""Job events, delivered to plugins through the one ``cacheorch_track_event`` hook.

Events fire per job and per bundle, never per tile, so an observer costs nothing measurable.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

__all__ = ["Event", "JobStarted", "BundleDone", "JobFinished", "JobMessage", "emit"]

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Event:
    """Base of every event: its ``name`` and when it happened (ISO-8601 UTC)."""

    name: ClassVar[str] = "event"
    job_id: int
    created: str = field(default_factory=_now, kw_only=True)


@dataclass(frozen=True)
class JobStarted(Event):
    """Event name: ``job-started``. A job (or a resume of one) begins fetching."""

    name: ClassVar[str] = "job-started"
    tiles_planned: int = 0
    resumed: bool = False


@dataclass(frozen=True)
class BundleDone(Event):
    """Event name: ``bundle-done``. A bundle's bytes are durable and the catalog records it."""

    name: ClassVar[str] = "bundle-done"
    level: int = 0
    bundle_row: int = 0
    bundle_col: int = 0
    written: int = 0
    missing: int = 0
    failed: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class JobFinished(Event):
    """Event name: ``job-finished``. The job ended: completed, partial, failed or interrupted."""

    name: ClassVar[str] = "job-finished"
    status: str = "completed"
    output: str = ""


@dataclass(frozen=True)
class JobMessage(Event):
    """Event name: ``job-message``. A delegated export (ArcGIS exportTiles job, arcpy tool) said
    something: a server job message or a geoprocessing message, as recorded in the catalog."""

    name: ClassVar[str] = "job-message"
    source: str = "server"
    kind: str = "info"
    message: str = ""


def emit(pm: Any, event: Event) -> None:
    """Deliver ``event`` to every implementation; one that raises is logged and skipped."""
    for impl in pm.hook.cacheorch_track_event.get_hookimpls():
        try:
            impl.function(**({"event": event} if "event" in impl.argnames else {}))
        except Exception:  # an observer must never abort an export
            log.warning("plugin %s failed on event %s", impl.plugin_name, event.name, exc_info=True)

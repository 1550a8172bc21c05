"""The catalog's record of map jobs (``run --map``): the map, its layers, and the layer jobs it owns.

Functions over a :class:`~cacheorch.catalog.store.Catalog` rather than more methods on it: the
map record is a thin layer over jobs, and the job API stays as it was.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from cacheorch.catalog.models import Job, MapRecord, utcnow
from cacheorch.errors import CatalogError

if TYPE_CHECKING:
    from cacheorch.catalog.store import Catalog

__all__ = ["create_map", "attach_job", "finish_map", "get_map", "list_maps", "map_of_job"]


def create_map(catalog: Catalog, *, title: str, source: str, format: str, output: str,
               parameters: dict[str, Any], layers: list[dict[str, Any]]) -> int:
    """Record a new map job (status ``running``); its id."""
    scrub = catalog._scrub
    with catalog._write() as session:
        record = MapRecord(title=title, source=scrub.url(source), format=format, output=output,
                           parameters=scrub.data(parameters), layers=scrub.data(layers), status="running",
                           created_at=utcnow(), finished_at=None)
        session.add(record)
        session.flush()
        return record.id


def attach_job(catalog: Catalog, map_id: int, job_id: int, index: int | None = None) -> None:
    """Make ``job_id`` one of the map's layer jobs (the job of layer ``index``, if given)."""
    with catalog._write() as session:
        session.execute(update(Job).where(Job.id == job_id).values(map_id=map_id))
        if index is not None:
            record = _map(catalog, session, map_id)
            record.layers = [dict(entry, job_id=job_id, status="running")
                             if entry.get("index") == index else entry
                             for entry in record.layers]


def finish_map(catalog: Catalog, map_id: int, status: str,
               layers: list[dict[str, Any]] | None = None) -> None:
    """Store how the map job ended and (if given) its layers' outcomes."""
    with catalog._write() as session:
        record = _map(catalog, session, map_id)
        record.status = status
        if layers is not None:
            record.layers = catalog._scrub.data(layers)
        record.finished_at = utcnow() if status != "running" else None


def get_map(catalog: Catalog, map_id: int) -> dict[str, Any]:
    """The map job with its ``layers`` and the ids of its ``jobs``."""
    with catalog._read() as session:
        record = _map(catalog, session, map_id)
        jobs = list(session.scalars(select(Job.id).where(Job.map_id == map_id).order_by(Job.id)))
        return _map_dict(record) | {"jobs": jobs}


def list_maps(catalog: Catalog) -> list[dict[str, Any]]:
    """Every map job, newest first, with the ids of its layer jobs."""
    with catalog._read() as session:
        owned: dict[int, list[int]] = {}
        for job_id, map_id in session.execute(select(Job.id, Job.map_id)
                                              .where(Job.map_id.is_not(None)).order_by(Job.id)):
            owned.setdefault(map_id, []).append(job_id)
        return [_map_dict(r) | {"jobs": owned.get(r.id, [])}
                for r in session.scalars(select(MapRecord).order_by(MapRecord.id.desc()))]


def map_of_job(catalog: Catalog, job_id: int) -> int | None:
    """The map that owns ``job_id``, if any."""
    with catalog._read() as session:
        return session.scalar(select(Job.map_id).where(Job.id == job_id))


def _map(catalog: Catalog, session: Any, map_id: int) -> MapRecord:
    record = session.get(MapRecord, map_id)
    if record is None:
        raise CatalogError(f"no map job m{map_id} in {catalog.path}")
    return record


def _map_dict(record: MapRecord) -> dict[str, Any]:
    return {"id": f"m{record.id}", "map_id": record.id, "title": record.title,
            "source": record.source, "format": record.format, "output": record.output,
            "parameters": record.parameters, "layers": record.layers, "status": record.status,
            "created_at": record.created_at.isoformat(),
            "finished_at": record.finished_at.isoformat() if record.finished_at else None}

"""Run a planned map: every exported layer as a job of its own, through the ordinary runner,
scheduled per host; then the manifest (``map.json``) and the offline copies of the map.

A layer that fails (its server down, its output refused) fails alone: the others finish, the
manifest says which, and ``resume mID`` picks up the layer jobs that did not complete.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cacheorch.catalog.maps import attach_job, create_map, finish_map
from cacheorch.errors import CacheorchError, OutputExistsError
from cacheorch.maps.hosts import run_by_host, service_hosts
from cacheorch.maps.manifest import MANIFEST, manifest_layer, write_manifest
from cacheorch.maps.plan import MapPlan
from cacheorch.maps.registry import map_writers

if TYPE_CHECKING:
    from cacheorch.catalog import Catalog
    from cacheorch.connection import Connection
    from cacheorch.jobplan import JobPlan
    from cacheorch.jobspec import JobSpec
    from cacheorch.pluginmanager import Plugins
    from cacheorch.runner import JobOutcome

__all__ = ["LayerRun", "MapOutcome", "run_map", "run_layer_jobs", "map_status", "use_politeness",
           "use_map_politeness", "conclude_map"]

log = logging.getLogger(__name__)


@dataclass
class LayerRun:
    """How one exported layer's job ended (``outcome`` None: it failed before or outside it)."""

    job_id: int | None = None
    outcome: JobOutcome | None = None
    message: str = ""

    @property
    def status(self) -> str:
        return self.outcome.status if self.outcome is not None else "failed"


@dataclass
class MapOutcome:
    """A map job's end: its id, status, every layer's run, and the files written beside them."""

    map_id: int
    status: str
    runs: dict[int, LayerRun] = field(default_factory=dict)
    manifest: Path | None = None
    copies: list[Path] = field(default_factory=list)


def use_politeness(connection: Connection, spec: JobSpec) -> None:
    """Give the map's shared connection the job's politeness (``--max-rps``, ``--user-agent``,
    the failure threshold): the same for every layer, taken from one layer's job spec."""
    for key, value in spec.connection_options().items():
        setattr(connection, key, value)
    if spec.referer:
        connection.referer = spec.referer


def use_map_politeness(connection: Connection, map_plan: MapPlan) -> None:
    """The job's politeness on the map's shared connection: the same for every layer, so taken
    from the first planned layer's job."""
    if map_plan.planned:
        use_politeness(connection, map_plan.planned[0].plan.spec)  # type: ignore[union-attr]


def map_status(statuses: list[str]) -> str:
    """``completed`` when every exported layer completed; ``failed`` when none did; else
    ``partial`` (exit code 1 for both)."""
    if statuses and all(s == "completed" for s in statuses):
        return "completed"
    return "partial" if any(s == "completed" for s in statuses) else "failed"


def run_layer_jobs(plugins: Plugins, catalog: Catalog, connection: Connection,
                   work: list[tuple[int, JobPlan, int | None]], map_id: int,
                   progress: Callable[[int], None] | None = None) -> dict[int, LayerRun]:
    """Run (or resume, with a job id) each ``(index, plan, job_id)``; per host, in order.

    Each layer gets its own copy of the connection (its own HTTP session; the token, its
    renewals and its secrets stay shared), so one layer's JSON requests never wait on another's.
    ``progress`` is every layer job's progress callback (called from the host threads).
    """
    from cacheorch.runner import run_job
    runs: dict[int, LayerRun] = {}

    def one(item: tuple[int, JobPlan, int | None]) -> None:
        index, plan, job_id = item
        run = runs[index] = LayerRun(job_id=job_id)

        def started(new_id: int) -> None:
            run.job_id = new_id
            if job_id is None:
                attach_job(catalog, map_id, new_id, index)
        own = replace(connection, _session=None)
        try:
            run.outcome = run_job(plugins, catalog, own, plan, job_id=job_id, on_start=started,
                                  progress=progress)
            run.message = run.outcome.message
        except CacheorchError as exc:
            run.message = connection.redact(exc)
            if run.job_id is not None and \
                    catalog.get_job(run.job_id)["status"] == "interrupted":
                raise KeyboardInterrupt from None  # Ctrl-C / SIGTERM stops the map, not a layer
            log.warning("layer %d (%s) failed: %s", index + 1, plan.service.location, run.message)
        finally:
            own.close()

    run_by_host(work, lambda item: service_hosts(item[1].service.location,
                                                 item[1].service.tile_servers or ()), one)
    return runs


def run_map(plugins: Plugins, catalog: Catalog, connection: Connection, map_plan: MapPlan, *,
            progress: Callable[[int], None] | None = None,
            on_start: Callable[[int], None] | None = None) -> MapOutcome:
    """Export every planned layer, then write ``map.json`` and the offline copies.

    ``on_start(map_id)`` is called once the catalog has the map job; ``progress`` is passed to
    every layer job (raising KeyboardInterrupt from it interrupts the map, as Ctrl-C does).
    """
    folder = map_plan.output
    create = [lp for lp in map_plan.layers if lp.spec is not None and lp.spec.mode == "create"]
    existing = [str(lp.output) for lp in create if lp.output is not None and lp.output.exists()]
    if create and (folder / MANIFEST).exists():
        existing.insert(0, str(folder / MANIFEST))
    if existing:  # refused before anything is written, as a single job refuses its output
        raise OutputExistsError(f"{', '.join(existing)} already exist(s); give another --output "
                                "folder, or --mode overwrite / merge")
    folder.mkdir(parents=True, exist_ok=True)
    document = map_plan.document
    initial = [manifest_layer(lp, folder) for lp in map_plan.layers]
    map_id = create_map(catalog, title=document.title, source=document.source,
                        format=document.format, output=str(folder.absolute()),
                        parameters=map_plan.parameters, layers=_with_specs(map_plan, initial))
    if on_start is not None:
        on_start(map_id)
    work = [(lp.index, lp.plan, None) for lp in map_plan.planned]
    try:
        runs = run_layer_jobs(plugins, catalog, connection, work, map_id,  # type: ignore[arg-type]
                              progress)
    except KeyboardInterrupt:
        finish_map(catalog, map_id, "interrupted")  # resume mID starts the layers not reached
        raise
    return conclude_map(plugins, catalog, map_plan, map_id, runs)


def _with_specs(map_plan: MapPlan, layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The catalog's copy of the layers: the manifest's, plus each layer's job spec (no secrets:
    a JobSpec holds none) so ``resume`` can start a layer the map never reached."""
    specs = {lp.index: lp.spec.to_parameters() for lp in map_plan.layers if lp.spec is not None}
    return [entry | ({"spec": specs[entry["index"]]} if entry["index"] in specs else {})
            for entry in layers]


def conclude_map(plugins: Plugins, catalog: Catalog, map_plan: MapPlan, map_id: int,
                 runs: dict[int, LayerRun]) -> MapOutcome:
    """Write the manifest and offline copies of a map whose layer jobs ran; record the end."""
    folder = map_plan.output
    layers = []
    for lp in map_plan.layers:
        run = runs.get(lp.index)
        job = catalog.get_job(run.job_id) if run is not None and run.job_id is not None else None
        layers.append(manifest_layer(lp, folder, run, job))
    status = map_status([entry["status"] for entry in layers
                         if entry["status"] != "skipped"])
    outcome = MapOutcome(map_id, status, runs)
    done = {lp.index: lp.output for lp in map_plan.layers
            if lp.output is not None and runs.get(lp.index) is not None
            and runs[lp.index].status == "completed"}
    for entry in map_writers(plugins):
        if entry.cls.accepts(map_plan.document):
            try:
                outcome.copies.append(entry.cls().write(map_plan.document, done, folder))
            except (CacheorchError, OSError) as exc:
                log.warning("offline copy by %s not written: %s", entry.name, exc)
    outcome.manifest = write_manifest(folder, map_plan, map_id, status, layers, outcome.copies)
    finish_map(catalog, map_id, status, _with_specs(map_plan, layers))
    return outcome

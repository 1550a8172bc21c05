"""Maps in the workbench: what ``plan`` / ``run --map`` do, from the page.

A map is read once with the CLI's :func:`~cacheorch.maps.registry.read_map`; its layers are
classified with :mod:`cacheorch.maps.classify` and each candidate's service is opened as an
:class:`~cacheorch.workbench.sources.OpenSource` (the page draws the layer it picks). Counts,
exports and the command line are made from the page's selection turned into ``run --map`` flags,
then :func:`~cacheorch.maps.plan.plan_map` and :func:`~cacheorch.maps.run.run_map`, the CLI's own
code: the workbench cannot plan or export a map otherwise than the command line.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cacheorch.connection import Connection, redact_url
from cacheorch.errors import CacheorchError, UsageError
from cacheorch.maps.model import MapDocument
from cacheorch.workbench.jobs import JobManager, LiveJob
from cacheorch.workbench.sources import Credentials, OpenSource, open_source
from cacheorch.workbench.tiers import flags_of

if TYPE_CHECKING:
    from cacheorch.catalog import Catalog
    from cacheorch.cli import App
    from cacheorch.maps.plan import MapPlan
    from cacheorch.pluginmanager import Plugins

__all__ = ["OpenMap", "open_map", "describe_map", "map_flags", "plan_of_map", "map_counts",
           "LiveMap", "start_map", "resume_map_job"]


@dataclass
class OpenMap:
    """A map opened in the workbench: its document, and its candidate layers opened as sources."""

    id: str
    location: str
    document: MapDocument
    credentials: Credentials
    connection: Connection
    #: Per layer (table-of-contents order): status ``exported`` / ``skipped`` / ``failed``, the
    #: reason, and the id of its opened source (exported layers).
    layers: list[dict[str, Any]] = field(default_factory=list)

    def layer_source(self, sources: dict[str, OpenSource]) -> OpenSource:
        """The first exported layer's source (areas are rounded to its resolution)."""
        for entry in self.layers:
            if entry.get("source") in sources:
                return sources[entry["source"]]
        raise UsageError(f"{self.document.title}: no layer of this map could be opened")

    def close(self) -> None:
        self.connection.close()


def open_map(plugins: Plugins, location: str, credentials: Credentials
             ) -> tuple[OpenMap, list[OpenSource]]:
    """Read the map at ``location`` as ``--map`` does; open the service of every layer it would
    export (those :func:`~cacheorch.maps.classify.skip_reason` keeps)."""
    from cacheorch.maps.classify import service_skip_reason, skip_reason
    from cacheorch.maps.registry import read_map
    location = (location or "").strip()
    if not location:
        raise UsageError("no map: give a web map JSON file, a portal item URL, a .mapx or a "
                         "QGIS project")
    connection = credentials.connection()
    try:
        document = read_map(plugins, location, connection)
    except BaseException:
        connection.close()
        raise
    opened = OpenMap(secrets.token_hex(8), location, document, credentials, connection)
    sources: list[OpenSource] = []
    for i, layer in enumerate(document.layers):
        entry: dict[str, Any] = {"index": i, "status": "exported", "source": None}
        reason = skip_reason(layer)
        if reason is None:
            try:
                src = open_source(plugins, layer.url or "", credentials)
            except CacheorchError as exc:
                reason = service_skip_reason(layer, exc)
                if reason is None:
                    entry |= {"status": "failed", "reason": connection.redact(exc)}
            else:
                sources.append(src)
                entry["source"] = src.id
        if reason is not None:
            entry |= {"status": "skipped", "reason": connection.redact(reason)}
        opened.layers.append(entry)
    return opened, sources


def describe_map(om: OpenMap) -> dict[str, Any]:
    """The map and its layers in order, as the page lists them (no credentials)."""
    from cacheorch.maps.plan import file_safe_names
    doc = om.document
    layers = []
    for layer, entry in zip(doc.layers, om.layers):
        layers.append({"index": entry["index"], "title": layer.title, "role": layer.role,
                       "visibility": layer.visibility, "opacity": layer.opacity,
                       "group": list(layer.group), "kind": layer.kind, "type": layer.type,
                       "url": redact_url(layer.url) if layer.url else None,
                       "status": entry["status"], "reason": entry.get("reason"),
                       "source": entry["source"]})
    return {"id": om.id, "location": redact_url(om.location), "title": doc.title,
            "format": doc.format, "layers": layers,
            "exported": sum(e["status"] == "exported" for e in om.layers),
            "skipped": sum(e["status"] == "skipped" for e in om.layers),
            "folder_name": file_safe_names([doc.title])[0]}


def map_flags(selection: dict[str, Any], om: OpenMap, view: OpenSource) -> dict[str, Any]:
    """The ``run --map`` flags of a selection: the one-service flags without the service (the
    ticked levels and tiers apply to every layer, as ``--levels`` / ``--aoi`` do)."""
    flags = flags_of(selection, view)
    del flags["service"]
    flags.pop("source", None)
    flags["referer"] = om.credentials.referer
    return flags


def plan_of_map(app: App, om: OpenMap, flags: dict[str, Any], *, fetching: bool) -> MapPlan:
    """``plan_map`` on the opened map's document (the map is not read again)."""
    from cacheorch.maps.plan import plan_map
    return plan_map(app.plugins, app.config, None, dict(flags), om.document, om.connection,
                    fetching=fetching)


def map_counts(app: App, om: OpenMap, flags: dict[str, Any]) -> dict[str, Any]:
    """Per layer: planned tiles per level (or why it is skipped), and the map's total."""
    from cacheorch.maps.manifest import manifest_layer
    started = time.perf_counter()
    map_plan = plan_of_map(app, om, flags, fetching=False)
    elapsed = (time.perf_counter() - started) * 1000
    layers = []
    for lp in map_plan.layers:
        entry = manifest_layer(lp, map_plan.output)
        entry["source"] = om.layers[lp.index]["source"]
        if lp.plan is not None:
            entry["policies"] = list(lp.plan.policy_notes)
        elif lp.status == "failed":
            entry["error"] = entry.pop("reason")
        layers.append(entry)
    return {"map": om.id, "layers": layers, "tiles": sum(lp.plan.tiles for lp in map_plan.planned),
            "exported": len(map_plan.planned), "planner_ms": round(elapsed, 1),
            "output": str(map_plan.output)}


@dataclass
class LiveMap(LiveJob):
    """A map job running (or lately run) in this workbench: its tiles over every layer job."""

    def to_json(self) -> dict[str, Any]:
        data = super().to_json()
        keep = ("status", "tiles_planned", "tiles_done", "tiles_per_second", "elapsed_s", "eta_s",
                "message", "output")
        return {"map_id": f"m{self.job_id}"} | {k: data[k] for k in keep}


def start_map(jobs: JobManager, map_plan: MapPlan, connection: Connection) -> LiveJob:
    """``run_map`` in a worker thread of ``jobs`` (the map jobs' manager, keyed by map id);
    returns once the catalog has the map job. Cancelling interrupts the running layer jobs,
    then the map, as Ctrl-C does to ``cacheorch run --map``."""
    from cacheorch.maps.run import run_map
    planned = sum(lp.plan.tiles for lp in map_plan.planned)  # type: ignore[union-attr]
    output = str(map_plan.output.absolute())

    def run(catalog: Catalog, progress: Any, on_start: Any) -> tuple[str, str]:
        outcome = run_map(jobs.app.plugins, catalog, connection, map_plan, progress=progress,
                          on_start=on_start)
        failed = [run.message for run in outcome.runs.values() if run.status != "completed"]
        return outcome.status, "; ".join(m for m in failed if m)
    return jobs.launch(run, lambda map_id, _: LiveMap(map_id, planned, output=output),
                       connection, "map job")


def resume_map_job(jobs: JobManager, map_id: int, connection: Connection) -> LiveJob:
    """``cacheorch resume mID`` in a worker thread of ``jobs``: the map's unfinished layer jobs
    resumed by :func:`~cacheorch.maps.resume.resume_map`, then its manifest written again.
    Its ``tiles_planned`` stays 0: the layers are planned again inside the worker."""
    from cacheorch.catalog.maps import get_map
    from cacheorch.maps.resume import resume_map
    live = jobs.live.get(map_id)
    if live is not None and live.status == "running":
        raise UsageError(f"map m{map_id} is running already")
    with jobs.app.open_catalog() as catalog:
        record = get_map(catalog, map_id)
    if record["status"] == "completed":
        raise UsageError(f"map m{map_id} is already completed")

    def run(catalog: Catalog, progress: Any, on_start: Any) -> tuple[str, str]:
        on_start(map_id)
        _, outcome = resume_map(jobs.app.plugins, catalog, connection, map_id, progress=progress)
        return outcome.status, ""
    return jobs.launch(run, lambda _, __: LiveMap(map_id, 0, output=record["output"]),
                       connection, "map job")

"""``resume mID``: finish the layer jobs of a map that did not complete, from the catalog alone.

The map is not read again (a portal item may have changed since): its layers come from the map
record, each unfinished layer job is resumed exactly as ``resume JOB_ID`` would (its recorded
levels pinned), and the manifest and offline copies are written again at the end.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cacheorch.catalog.maps import get_map
from cacheorch.errors import CacheorchError, UsageError
from cacheorch.jobplan import make_plan
from cacheorch.jobspec import JobSpec
from cacheorch.maps.model import MapDocument, MapLayer
from cacheorch.maps.plan import LayerPlan, MapPlan
from cacheorch.maps.run import LayerRun, MapOutcome, conclude_map, run_layer_jobs, use_politeness

if TYPE_CHECKING:
    from collections.abc import Callable

    from cacheorch.catalog import Catalog
    from cacheorch.connection import Connection
    from cacheorch.pluginmanager import Plugins

__all__ = ["resume_map"]


def resume_map(plugins: Plugins, catalog: Catalog, connection: Connection, map_id: int, *,
               progress: Callable[[int], None] | None = None) -> tuple[MapPlan, MapOutcome]:
    """Resume map ``map_id``'s unfinished layer jobs; return the map (as planned) and its end.

    ``progress`` is passed to every layer job, as :func:`~cacheorch.maps.run.run_map` does."""
    from cacheorch.cli.jobs import _pinned
    from cacheorch.runner import JobOutcome, check_resumable
    record = get_map(catalog, map_id)
    if record["status"] == "completed":
        raise UsageError(f"map m{map_id} is already completed")
    folder = Path(record["output"])
    entries = sorted(record["layers"], key=lambda e: e["index"])
    layers = tuple(MapLayer(title=e["title"], url=e.get("url"), role=e["role"],
                            visibility=e.get("visibility", True), opacity=e.get("opacity", 1.0),
                            kind=e.get("kind", "other"), type=e.get("type", ""),
                            ref=e.get("ref") or {}, group=tuple(e.get("group") or ()))
                   for e in entries)
    document = MapDocument(record["title"], record["source"], layers, record["format"],
                           (record.get("parameters") or {}).get("path"))
    plans: list[LayerPlan] = []
    runs: dict[int, LayerRun] = {}
    work = []
    for entry, layer in zip(entries, layers):
        index, job_id = entry["index"], entry.get("job_id")
        if job_id is None and entry.get("spec") and entry["status"] != "skipped":
            # never reached (interrupted) or its service was down when planned: start it now
            spec = JobSpec.from_parameters(entry["spec"])
            use_politeness(connection, spec)
            output = Path(spec.output) if spec.output else None
            try:
                plan = make_plan(plugins, spec, connection)
            except CacheorchError as exc:
                plans.append(LayerPlan(index, layer, "failed", reason=connection.redact(exc),
                                       output=output, spec=spec))
                continue
            plans.append(LayerPlan(index, layer, "planned", plan=plan, output=output, spec=spec))
            work.append((index, plan, None))
            continue
        if job_id is None:
            plans.append(LayerPlan(index, layer, entry["status"],
                                   reason=entry.get("reason") or entry.get("error")))
            continue
        job = catalog.get_job(job_id)
        spec = _pinned(JobSpec.from_parameters(catalog.job_parameters(job_id)), job)
        use_politeness(connection, spec)
        plan = make_plan(plugins, spec, connection)
        plans.append(LayerPlan(index, layer, "planned", plan=plan, output=Path(job["output"]),
                               spec=spec))
        if job["status"] == "completed":
            runs[index] = LayerRun(job_id, JobOutcome(job_id, "completed", job["output"]))
        else:
            check_resumable(job)
            work.append((index, plan, job_id))
    map_plan = MapPlan(document, folder, tuple(plans), record.get("parameters") or {})
    runs.update(run_layer_jobs(plugins, catalog, connection, work, map_id, progress))
    return map_plan, conclude_map(plugins, catalog, map_plan, map_id, runs)

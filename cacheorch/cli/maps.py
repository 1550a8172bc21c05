"""``plan`` / ``run --map MAP``, ``resume mID``, and the map side of ``jobs``, ``job`` and ``verify``.

The job commands hand over here when a map is given (``--map``, or ``map = ...`` in the job
section), so a map's flags are exactly a job's flags and cli/jobs.py changes only by those calls.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from cacheorch.cli import App
from cacheorch.connection import Connection

__all__ = ["map_location", "plan_map_command", "run_map_command", "resume_map_command",
           "echo_map_jobs", "echo_map", "verify_map_folder", "parse_map_id"]


def map_location(app: App, kw: dict[str, Any]) -> str | None:
    """The map a ``plan`` / ``run`` is about (``--map``, else the job section's ``map``)."""
    location = kw.pop("map_location", None)
    if location:
        return str(location)
    job = kw.get("job")
    if job and "map" in app.config.job(job):
        return app.config.resolve_path(app.config.job(job)["map"])
    return None


def _connection(kw: dict[str, Any], token: str | None) -> Connection:
    """The connection that reads the map (and, once planned, fetches its layers)."""
    extra = {"user_agent": kw["user_agent"]} if kw.get("user_agent") else {}
    return Connection.from_env(token=token, referer=kw.get("referer"), **extra)


def _plan(app: App, location: str, kw: dict[str, Any], token: str | None, *, fetching: bool
          ) -> tuple[Any, Connection]:
    from cacheorch.errors import UsageError
    from cacheorch.maps.plan import plan_map
    from cacheorch.maps.registry import read_map
    from cacheorch.maps.run import use_map_politeness
    if kw.get("service"):
        raise UsageError("give either --map or --service, not both")
    connection = _connection(kw, token)
    try:
        document = read_map(app.plugins, location, connection)
        job = kw.pop("job", None)
        map_plan = plan_map(app.plugins, app.config, job, kw, document, connection,
                            fetching=fetching)
        use_map_politeness(connection, map_plan)
    except BaseException:
        connection.close()
        raise
    return map_plan, connection


def _head(lp: Any) -> dict[str, Any]:
    """What every layer object of ``--json`` starts with (a URL's secrets masked)."""
    from cacheorch.connection import redact_url
    url = lp.layer.url
    return {"title": lp.layer.title, "url": redact_url(url) if url else url, "role": lp.layer.role}


def _emit(data: dict[str, Any]) -> None:
    from cacheorch.cli.jobs import _emit_json
    _emit_json(data)


def plan_map_command(app: App, location: str, kw: dict[str, Any], token: str | None,
                     as_json: bool) -> None:
    """``plan --map``: every layer, with its levels and what each policy did, or why it is skipped."""
    if kw.pop("html", None):
        from cacheorch.errors import UsageError
        raise UsageError("--html draws the plan of one service; it does not take --map")
    from cacheorch.tiling import format_levels
    map_plan, connection = _plan(app, location, kw, token, fetching=False)
    connection.close()
    if as_json:
        from cacheorch.cli.jobs import _plan_json
        layers = []
        for lp in map_plan.layers:
            head = _head(lp)
            if lp.plan is None:  # skipped, or its service could not be read (failed)
                key = "reason" if lp.status == "skipped" else "error"
                layers.append(head | {"status": lp.status, key: lp.reason})
            else:  # what plan --json prints for one service, plus title, url and role
                layers.append(_plan_json(lp.plan) | head)
        _emit({"map": map_plan.map_json(), "status": "planned", "layers": layers})
        return
    doc = map_plan.document
    click.echo(f"map      {doc.title} ({doc.format}, {len(doc.layers)} layers) → {map_plan.output}/")
    total = 0
    for lp in map_plan.layers:
        layer = lp.layer
        head = f"layer {lp.index + 1:>2} {layer.role:<11} {layer.title}"
        if lp.plan is None:
            click.echo(f"{head}: {lp.status}: {lp.reason}")
            continue
        plan = lp.plan
        total += plan.tiles
        levels = ", ".join(str(lv.lod.level) for lv in plan.levels)
        click.echo(f"{head}: {plan.tiles:,} tiles in levels {levels} → {lp.output} "
                   f"(exporter {plan.spec.exporter.name})")
        for note in plan.policy_notes:
            click.echo(f"           policy {note}")
        dropped: dict[str, list[int]] = {}  # the levels of this layer's scheme left out, and why
        for decision in plan.decisions:
            if not decision.kept:
                dropped.setdefault(decision.summary(), []).append(decision.lod.level)
        for why, numbers in dropped.items():
            click.echo(f"           levels {format_levels(numbers)} {why}")
    click.echo(f"total    {total:,} tiles in {len(map_plan.planned)} layer(s); "
               f"{sum(lp.status == 'skipped' for lp in map_plan.layers)} skipped")


def _layers_json(app: App, map_plan: Any, outcome: Any) -> list[dict[str, Any]]:
    from cacheorch.cli.jobs import _job_json
    out = []
    with app.open_catalog() as catalog:
        for lp in map_plan.layers:
            head = _head(lp)
            run = outcome.runs.get(lp.index)
            if run is None or run.job_id is None:
                if lp.status == "skipped":
                    out.append(head | {"status": "skipped", "reason": lp.reason})
                else:
                    message = lp.reason or (run.message if run else "")
                    out.append(head | {"job_id": None, "status": "failed", "output": None,
                                       "levels": [], "errors": [message]})
                continue
            data = _job_json(catalog.get_job(run.job_id), run.message)
            if run.outcome is not None:
                data |= {"tiles_skipped_blank": run.outcome.skipped_blank,
                         "tiles_deduplicated": run.outcome.duplicates,
                         "tiles_kept": run.outcome.kept}
            out.append(data | head)
    return out


def _report(app: App, map_plan: Any, outcome: Any, as_json: bool) -> None:
    if as_json:
        _emit({"map": map_plan.map_json() | {"map_id": f"m{outcome.map_id}",
                                             "manifest": str(outcome.manifest),
                                             "offline_copies": [str(p) for p in outcome.copies]},
               "status": outcome.status, "layers": _layers_json(app, map_plan, outcome)})
    elif app.verbosity >= 0:
        for lp in map_plan.layers:
            run = outcome.runs.get(lp.index)
            if run is None:
                line = f"{lp.status}: {lp.reason}"
            else:
                o = run.outcome
                line = (f"job {run.job_id} {o.status}: {o.written:,} tiles written, {o.failed:,} "
                        f"failed → {o.output}") if o is not None else f"failed: {run.message}"
            click.echo(f"layer {lp.index + 1:>2} {lp.layer.title}: {line}")
        for copy in outcome.copies:
            click.echo(f"offline copy {copy}")
        click.echo(f"map m{outcome.map_id} {outcome.status} → {outcome.manifest}")
    if outcome.status != "completed":
        if not as_json:
            click.echo(f"cacheorch: map m{outcome.map_id} {outcome.status}: some layers did not "
                       f"complete; see {outcome.manifest}, then: cacheorch resume "
                       f"m{outcome.map_id}", err=True)
        sys.exit(1)


def run_map_command(app: App, location: str, kw: dict[str, Any], token: str | None,
                    as_json: bool) -> None:
    """``run --map``: export every cached tiled layer; write map.json and offline copies."""
    from cacheorch.maps.run import run_map
    map_plan, connection = _plan(app, location, kw, token, fetching=True)
    try:
        with app.open_catalog(redact=connection.redact) as catalog:
            outcome = run_map(app.plugins, catalog, connection, map_plan)
    finally:
        connection.close()
    _report(app, map_plan, outcome, as_json)


def parse_map_id(value: str) -> int | None:
    """``m3`` / ``map:3`` → 3; anything else None (an ordinary job id)."""
    text = value.strip().lower()
    for prefix in ("map:", "m"):
        if text.startswith(prefix) and text[len(prefix):].isdigit():
            return int(text[len(prefix):])
    return None


def resume_map_command(app: App, map_id: int, token: str | None, as_json: bool) -> None:
    """``resume mID``: resume the layer jobs of a map that did not complete, then rewrite its
    manifest and offline copies."""
    from cacheorch.maps.resume import resume_map
    connection = Connection.from_env(token=token)
    try:
        with app.open_catalog(redact=connection.redact) as catalog:
            map_plan, outcome = resume_map(app.plugins, catalog, connection, map_id)
    finally:
        connection.close()
    _report(app, map_plan, outcome, as_json)


def echo_map_jobs(app: App, jobs: list[dict[str, Any]], as_json: bool) -> bool:
    """``jobs`` with map jobs: each map, then its layer jobs indented; False if there is none."""
    from cacheorch.catalog.maps import list_maps
    with app.open_catalog(read_only=True) as catalog:
        maps = list_maps(catalog)
    if not maps:
        return False
    if as_json:
        _emit({"jobs": jobs, "maps": maps})
        return True
    by_id = {job["id"]: job for job in jobs}
    owned = {job_id for m in maps for job_id in m["jobs"]}
    click.echo(f"{'id':>5}  {'status':<11}  {'created':<25}  {'written':>10}  {'failed':>7}  output")
    for m in maps:
        click.echo(f"{m['id']:>5}  {m['status']:<11}  {str(m['created_at']):<25}  "
                   f"{'':>10}  {'':>7}  {m['output']}  (map: {m['title']})")
        for job_id in m["jobs"]:
            _echo_job_row(by_id.get(job_id), indent="  ")
    for job in jobs:
        if job["id"] not in owned:
            _echo_job_row(job)
    return True


def _echo_job_row(job: dict[str, Any] | None, indent: str = "") -> None:
    if job is None:
        return
    ident = f"└ {job['id']}" if indent else str(job["id"])
    click.echo(f"{ident:>5}  {job['status']:<11}  "
               f"{str(job.get('created_at')):<25}  {job.get('tiles_written') or 0:>10,}  "
               f"{job.get('tiles_failed') or 0:>7,}  {job.get('output')}")


def echo_map(app: App, map_id: int, as_json: bool) -> None:
    """``job mID``: the map job and its layers in order, each with its job or skip reason."""
    from cacheorch.catalog.maps import get_map
    from cacheorch.runner import live_job
    with app.open_catalog(read_only=True) as catalog:
        record = get_map(catalog, map_id)
        jobs = {job_id: live_job(catalog, catalog.get_job(job_id)) for job_id in record["jobs"]}
    if as_json:
        _emit(record)
        return
    click.echo(f"map {record['id']} {record['status']}  {record['title']} ({record['format']}) "
               f"{record['source']} → {record['output']}")
    for entry in record["layers"]:
        job = jobs.get(entry.get("job_id"))
        what = (f"job {job['id']} {job['status']} {job.get('tiles_written') or 0:,} tiles → "
                f"{entry.get('output')}") if job else f"{entry['status']}: " \
            f"{entry.get('reason') or entry.get('error') or ''}"
        click.echo(f"layer {entry['index'] + 1:>2} {entry['role']:<11} {entry['title']}: {what}")


def verify_map_folder(app: App, folder: str, as_json: bool) -> bool:
    """``verify DIR`` of a map folder: verify every output its ``map.json`` lists; False when
    DIR is not a map folder (the ordinary verify then runs)."""
    from cacheorch.maps.manifest import MANIFEST, read_manifest
    from cacheorch.verify import DefectsFound, verify_output
    root = Path(folder)
    if not (root.is_dir() and (root / MANIFEST).is_file()):
        return False
    manifest = read_manifest(root)
    reports, bad = [], 0
    for entry in manifest["layers"]:
        if not entry.get("output") or entry.get("status") != "completed":
            continue
        report = verify_output(str(root / entry["output"]))
        bad += not report.ok
        reports.append({"title": entry["title"], "output": entry["output"]} | report.to_json())
        if not as_json:
            for defect in report.defects:
                click.echo(f"{entry['output']}: {defect}")
            click.echo(report.summary())
    if as_json:
        _emit({"map": manifest.get("title"), "ok": not bad, "outputs": reports})
    if bad:
        raise DefectsFound(f"{bad} of {len(reports)} outputs of {folder} have defects")
    return True

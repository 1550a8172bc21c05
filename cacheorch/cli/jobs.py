"""``plan``, ``run``, ``resume``, ``jobs`` and ``job``: planning, exporting and the catalog's record."""
from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from cacheorch.cli import App
from cacheorch.cli.network import network_options, network_settings
from cacheorch.connection import Connection
from cacheorch.errors import JobFailedError
from cacheorch.jobplan import JobPlan, make_plan
from cacheorch.jobspec import JobSpec, job_spec_from

__all__ = ["COMMANDS"]


def job_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The job flags shared by ``plan`` and ``run`` (override a ``[job:NAME]`` section)."""
    options = [
        click.argument("job", required=False),
        click.option("--service", help="MapServer / ImageServer URL, or a [service:NAME] name."),
        click.option("--map", "map_location", metavar="MAP",
                     help="Instead of --service: every tiled layer of a map (web map JSON, portal "
                          "item URL, .mapx, .qgs/.qgz, .aprx/.mxd with arcpy); --output is a "
                          "folder."),
        click.option("--source", help="Scale source to read the service with (default: detected)."),
        click.option("--token", help="ArcGIS token (default: $ARCGIS_TOKEN). Never stored."),
        click.option("--referer", help="Referer header (for tokens issued with client=referer)."),
        click.option("--levels", help="Levels to export, e.g. 0-5,8 (the `levels` policy)."),
        click.option("--scales", help="Scales to export, e.g. '591657527.591555;...' (`snap`)."),
        click.option("--policy", multiple=True, help="NAME[:k=v,...], repeatable, applied in order."),
        click.option("--aoi", multiple=True, metavar="[LEVELS=]SPEC",
                     help="Area per level range: extent[:initial|:cdi] | "
                          "bbox:xmin,ymin,xmax,ymax[@wkid] | PATH (GeoJSON, Esri JSON, WKT; "
                          "shapefile/GeoPackage/FileGDB[#LAYER]) | wkt:...[@wkid] | "
                          "buffer:500m:SPEC | an [aoi:NAME]; repeatable (default: the full extent)."),
        click.option("--exporter", help="Output format (default tpkx)."),
        click.option("--output", "-o", help="Output file or folder."),
        click.option("--workers", type=int, help="Requests in flight (default 8)."),
        click.option("--mode", type=click.Choice(["create", "overwrite", "merge"]),
                     help="create (default: refuse an existing output), overwrite, or merge "
                          "(add levels or areas to the existing output; what it holds is "
                          "copied, not fetched again)."),
        click.option("--allow-partial", is_flag=True, default=None,
                     help="Write the output even if some tiles failed (the job ends partial)."),
        click.option("--allow-empty", is_flag=True, default=None,
                     help="Write the output even if the service had no tile where the job asked "
                          "(default: such a job fails, exit 1, and writes nothing)."),
        click.option("--tilemap/--no-tilemap", default=None,
                     help="Ask the service's /tilemap per bundle and skip absent tiles (default: "
                          "when the service lists Tilemap)."),
        click.option("--executor", type=click.Choice(["local", "dask"]),
                     help="Fetch bundles here (local, the default) or on a dask.distributed "
                          "cluster (dask; needs --scheduler and `pip install cacheorch[dask]`)."),
        click.option("--scheduler", metavar="tcp://HOST:PORT",
                     help="The dask scheduler for --executor dask (its workers need cacheorch "
                          "and network access to the service; the output is written here)."),
        click.option("--user-agent", help="User-Agent header to send (default: cacheorch/VERSION)."),
        click.option("--max-rps", type=float, metavar="N",
                     help="Tile requests per second at most, over all connections."),
        click.option("--max-failure-rate", type=float, metavar="X",
                     help="Stop the job (resumable) when more than this fraction of the last "
                          "--failure-window requests failed (default 0.5; 1 = never)."),
        click.option("--failure-window", type=int, metavar="N",
                     help="Requests --max-failure-rate looks back over (default 200)."),
        click.option("--max-tile-size", metavar="SIZE",
                     help="Largest tile accepted (default 16MiB; e.g. 4MiB, 500KB): a larger one "
                          "is a failed tile, and is not read past that size."),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout."),
    ]
    func = network_options(func)  # listed last in --help
    for option in reversed(options):
        func = option(func)
    return func


def _spec_and_connection(app: App, kw: dict[str, Any]) -> tuple[JobSpec, Connection]:
    spec = job_spec_from(app.config, kw.pop("job"), kw)
    connection = Connection.from_env(token=kw.get("token"), referer=spec.referer,
                                     network=network_settings(app), **spec.connection_options())
    return spec, connection


def _emit_json(data: dict[str, Any]) -> None:
    click.echo(json.dumps(data, indent=2, default=str, ensure_ascii=False))


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def _plan_json(plan: JobPlan) -> dict[str, Any]:
    return {"job_id": None, "status": "planned", "output": plan.spec.output,
            "service": plan.service.location, "exporter": plan.spec.exporter.name,
            "tiles_planned": plan.tiles, "policies": list(plan.policy_notes),
            "levels": [lv.to_json() for lv in plan.levels],
            "decisions": [d.to_json() for d in plan.decisions], "errors": [],
            "warnings": _service_warnings(plan)}


def _service_warnings(plan: JobPlan) -> list[str]:
    """What the service says that makes a job likely to find no tile."""
    if plan.service.single_fused_cache is False:
        return ["the service says singleFusedMapCache: false: /tile may serve none of its cache "
                "(a job that finds no tile fails)"]
    return []


@click.command("plan")
@job_options
@click.option("--html", "html_path", type=click.Path(dir_okay=False),
              help="Also write the plan as a self-contained page: areas on a map, tile counts.")
@click.pass_obj
def plan_command(app: App, as_json: bool, token: str | None, html_path: str | None = None,
                 **kw: Any) -> None:
    """Show what a job would export: levels, scales, areas and tile counts (fetches no tiles)."""
    from cacheorch.cli import maps
    location = maps.map_location(app, kw)
    if location:
        return maps.plan_map_command(app, location, kw | {"html": html_path}, token, as_json)
    spec, connection = _spec_and_connection(app, kw | {"token": token})
    from cacheorch.interfaces import DelegatedExporter
    server_estimate = basemap = None
    try:
        plan = make_plan(app.plugins, spec, connection, fetching=False)
        if isinstance(plan.exporter, DelegatedExporter):  # e.g. exportTiles' own estimate
            server_estimate = plan.exporter.estimate(plan, connection)
        if html_path:  # the service's own tiles at small levels, drawn beneath the areas
            from cacheorch.planhtml import fetch_basemap
            basemap = fetch_basemap(app.plugins, plan, connection)
    finally:
        connection.close()
    if html_path:
        from cacheorch.planhtml import write_plan_html
        write_plan_html(plan, html_path, basemap)
    if as_json:
        _emit_json(_plan_json(plan) | ({"server_estimate": server_estimate}
                                       if server_estimate is not None else {}))
        return
    svc = plan.service
    click.echo(f"service  {svc.location} ({svc.kind}, {svc.scheme.spatial_reference}, "
               f"{svc.scheme.tile_cols}×{svc.scheme.tile_rows} px {svc.scheme.tile_format})")
    for warning in _service_warnings(plan):
        click.echo(f"warning  {warning}")
    for note in plan.policy_notes:
        click.echo(f"policy   {note}")
    click.echo(f"{'level':>5}  {'scale':>16}  {'resolution':>18}  {'tiles':>12}  area")
    for lv in plan.levels:
        click.echo(f"{lv.lod.level:>5}  {lv.lod.scale:>16.6f}  {lv.lod.resolution:>18.10f}  "
                   f"{lv.tiles:>12,}  {lv.area_label}")
    runs: list[tuple[int, int, str]] = []  # consecutive levels decided alike share one line
    for decision in plan.decisions:
        line = decision.summary()
        if runs and runs[-1][2] == line and runs[-1][1] == decision.lod.level - 1:
            runs[-1] = (runs[-1][0], decision.lod.level, line)
        else:
            runs.append((decision.lod.level, decision.lod.level, line))
    for first, last, line in runs:
        levels = str(first) if first == last else f"{first}-{last}"
        click.echo(f"decision {levels:>7}  {line}")
    click.echo(f"total    {plan.tiles:,} tiles in {len(plan.levels)} levels → "
               f"{spec.exporter.name} {spec.output or '(default name)'}")
    if server_estimate is not None and server_estimate.get("error"):
        click.echo(f"server   no estimate: {server_estimate['error']}")
    elif server_estimate is not None:
        tiles = server_estimate.get("tiles")
        click.echo(f"server   {'?' if tiles is None else f'{tiles:,}'} tiles, "
                   f"{_fmt_bytes(server_estimate.get('bytes'))} by the server's estimate "
                   f"({server_estimate.get('jobs', 1)} job(s)); ours: {plan.tiles:,} tiles")


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler stopping the job) ends it like Ctrl-C: recorded, resumable."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _progress(total: int, enabled: bool) -> Iterator[Callable[[int], None] | None]:
    if not enabled:
        yield None
        return
    import shutil

    from tqdm import tqdm
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except OSError:
        size = shutil.get_terminal_size()
    # a terminal reporting 0×0 (some CI ptys) would make tqdm hide the bar altogether
    with tqdm(total=total, unit="tile", unit_scale=False, ncols=min(size.columns or 80, 120),
              nrows=size.lines or 24, file=sys.stderr, smoothing=0.1) as bar:
        yield bar.update


def _execute(app: App, plan: JobPlan, connection: Connection, as_json: bool,
             job_id: int | None = None, retry_failed: bool = False) -> None:
    from cacheorch.runner import run_job
    show_bar = not as_json and sys.stderr.isatty() and app.verbosity >= 0
    catalog = app.open_catalog(redact=connection.redact)
    started: list[int] = []
    try:
        with _terminate_as_interrupt(), _progress(plan.tiles, show_bar) as progress:
            try:
                outcome = run_job(app.plugins, catalog, connection, plan, job_id=job_id,
                                  progress=progress, on_start=started.append,
                                  **({"retry_failed": True} if retry_failed else {}))
            except JobFailedError as exc:
                if as_json and started:
                    _emit_json(_job_json(catalog.get_job(started[0]), str(exc)))
                raise
        job = catalog.get_job(outcome.job_id)
    finally:
        catalog.close()
        connection.close()
    extra = {"tiles_skipped_blank": outcome.skipped_blank,
             "tiles_deduplicated": outcome.duplicates, "tiles_kept": outcome.kept}
    if as_json:
        _emit_json(_job_json(job, outcome.message) | extra)
    elif app.verbosity >= 0:
        stored = "".join(f", {n:,} {what}" for n, what in (
            (outcome.skipped_blank, "blank left out"), (outcome.duplicates, "duplicates stored once"),
            (outcome.kept, "kept from the existing output"))
            if n)
        click.echo(f"job {outcome.job_id} {outcome.status}: {outcome.written:,} tiles written, "
                   f"{outcome.missing:,} missing, {outcome.failed:,} failed, "
                   f"{_fmt_bytes(outcome.bytes)}{stored}"
                   + (f" → {outcome.output}" if outcome.output else ""))
    if outcome.status != "completed":
        if not as_json:
            click.echo(f"cacheorch: {outcome.message}", err=True)
        sys.exit(1)


def _job_json(job: dict[str, Any], message: str = "") -> dict[str, Any]:
    errors = [f"level {e['level']} row {e['row']} col {e['col']}: {e['error']}"
              for e in job.get("errors", [])]
    if message and job.get("status") != "completed":
        errors.insert(0, message)
    return {
        "job_id": job["id"], "name": job.get("name"), "status": job["status"],
        "service": job.get("service_url"), "exporter": job.get("exporter"),
        "output": job.get("output"), "created_at": job.get("created_at"),
        "finished_at": job.get("finished_at"),
        "tiles_planned": job.get("tiles_planned"), "tiles_written": job.get("tiles_written"),
        "tiles_missing": job.get("tiles_missing"), "tiles_failed": job.get("tiles_failed"),
        "bytes": job.get("bytes"),
        # "area", as plan --json names it (the catalog's column is area_name)
        "levels": [{k: lv.get("area_name" if k == "area" else k)
                    for k in ("level", "scale", "resolution", "area", "tiles_planned",
                              "tiles_written", "tiles_missing", "tiles_failed", "bytes")}
                   for lv in job.get("levels", [])],
        "errors": errors,
    }


@click.command("run")
@job_options
@click.pass_obj
def run_command(app: App, as_json: bool, token: str | None, **kw: Any) -> None:
    """Export: fetch the planned tiles and write the output, recording the job in the catalog."""
    from cacheorch.cli import maps
    location = maps.map_location(app, kw)
    if location:
        return maps.run_map_command(app, location, kw, token, as_json)
    spec, connection = _spec_and_connection(app, kw | {"token": token})
    plan = make_plan(app.plugins, spec, connection)
    _execute(app, plan, connection, as_json)


def _pinned(spec: JobSpec, job: dict[str, Any]) -> JobSpec:
    """The job's recorded levels replace its policies: a budget re-sampled on resume could pick
    other levels, and the bundles already staged belong to the levels first chosen."""
    from dataclasses import replace

    from cacheorch.jobspec import PluginSpec
    recorded = sorted(int(lv["level"]) for lv in job.get("levels") or ())
    if not recorded:
        return spec
    pinned = PluginSpec("levels", {"": ",".join(map(str, recorded))}, f"job {job['id']}")
    return replace(spec, policies=(pinned,))


@click.command("resume")
@click.argument("job_id")
@click.option("--token", help="ArcGIS token (default: $ARCGIS_TOKEN); tokens are never stored.")
@click.option("--failed", "retry_failed", is_flag=True,
              help="Refetch only the tiles recorded as failed, keeping the other tiles of their "
                   "staged bundles (default: refetch those bundles whole).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@network_options
@click.pass_obj
def resume_command(app: App, job_id: str, token: str | None, as_json: bool,
                   retry_failed: bool = False) -> None:
    """Finish an interrupted or partial job, without fetching again the bundles already done.

    JOB_ID may be a map job (``m3``): its layer jobs that did not complete are resumed."""
    from cacheorch.cli import maps
    map_id = maps.parse_map_id(job_id)
    if map_id is not None:
        return maps.resume_map_command(app, map_id, token, as_json)
    job_id = _job_number(job_id)
    job, params = resumable_job(app, job_id)
    spec = resume_spec(job, params)
    connection = Connection.from_env(token=token, referer=spec.referer,
                                     network=network_settings(app), **spec.connection_options())
    plan = resume_plan(app, job, params, spec, connection)
    _execute(app, plan, connection, as_json, job_id=job_id, retry_failed=retry_failed)


def resumable_job(app: App, job_id: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The recorded job and its parameters, refused (one line) when it cannot be resumed: it
    completed, or its process still runs (also used by the workbench)."""
    from cacheorch.runner import check_resumable
    with app.open_catalog() as catalog:
        job = catalog.get_job(job_id)
        params = catalog.job_parameters(job_id)
        events = catalog.events(job_id)
    check_resumable(job, events)
    return job, params


def resume_spec(job: dict[str, Any], params: dict[str, Any]) -> JobSpec:
    """The spec a recorded job resumes with (its levels pinned)."""
    return _pinned(JobSpec.from_parameters(params), job)


def resume_plan(app: App, job: dict[str, Any], params: dict[str, Any], spec: JobSpec,
                connection: Connection, service: Any = None) -> JobPlan:
    """The plan of a resume; refused when the service's tiling scheme changed since the job began
    (also used by the workbench)."""
    plan = make_plan(app.plugins, spec, connection, service)
    fingerprint = params.get("fingerprint")
    if fingerprint and fingerprint != plan.service.scheme.fingerprint():
        from cacheorch.errors import UsageError
        raise UsageError(f"the tiling scheme of {plan.service.location} changed since job "
                         f"{job['id']} started; start a new job instead")
    return plan


@click.command("jobs")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
def jobs_command(app: App, as_json: bool) -> None:
    """List the jobs in the catalog, newest first."""
    from cacheorch.runner import live_job
    with app.open_catalog(read_only=True) as catalog:
        jobs = [live_job(catalog, job) for job in catalog.list_jobs()]
    from cacheorch.cli.maps import echo_map_jobs
    if echo_map_jobs(app, jobs, as_json):
        return
    if as_json:
        _emit_json({"jobs": jobs})
        return
    if not jobs:
        click.echo(f"no jobs in {app.catalog_path}")
        return
    rows = [("id", "status", "created", "written", "failed", "output")]
    rows += [(str(job["id"]), str(job["status"]), str(job.get("created_at")),
              f"{job.get('tiles_written') or 0:,}", f"{job.get('tiles_failed') or 0:,}",
              str(job.get("output"))) for job in jobs]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    right = (True, False, False, True, True)  # numbers right-aligned, under their heading
    for row in rows:
        cells = [cell.rjust(w) if r else cell.ljust(w) for cell, w, r in zip(row, widths, right)]
        click.echo("  ".join(cells + [row[5]]))


@click.command("job")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.pass_obj
def job_command(app: App, job_id: str, as_json: bool) -> None:
    """Show one job: its extracted scales (levels), their tile counts, failed tiles, and the
    messages of the server, arcpy or the exporter (a map job ``m3``: its layers)."""
    from cacheorch.cli import maps
    map_id = maps.parse_map_id(job_id)
    if map_id is not None:
        return maps.echo_map(app, map_id, as_json)
    job_id = _job_number(job_id)
    from cacheorch.runner import live_job
    with app.open_catalog(read_only=True) as catalog:
        job = live_job(catalog, catalog.get_job(job_id))
        messages = catalog.job_messages(job_id)
    data = _job_json(job, job.get("error") or "") | {"messages": messages}
    if as_json:
        _emit_json(data)
        return
    click.echo(f"job {data['job_id']} {data['status']}  {data['service']} → {data['exporter']} "
               f"{data['output']}")
    click.echo(f"{'level':>5}  {'scale':>16}  {'resolution':>18}  {'planned':>10}  {'written':>10}  "
               f"{'missing':>8}  {'failed':>7}  {'bytes':>10}  area")
    for lv in data["levels"]:
        click.echo(f"{lv['level']:>5}  {lv['scale']:>16.6f}  {lv['resolution']:>18.10f}  "
                   f"{lv['tiles_planned'] or 0:>10,}  {lv['tiles_written'] or 0:>10,}  "
                   f"{lv['tiles_missing'] or 0:>8,}  {lv['tiles_failed'] or 0:>7,}  "
                   f"{_fmt_bytes(lv['bytes']):>10}  {lv['area']}")
    for message in messages:
        click.echo(f"{message['source']:<9}{message['kind']}: {message['message']}")
    for line in data["errors"][:20]:
        click.echo(f"error  {line}")


def _job_number(value: str) -> int:
    """A job id typed on the command line (``12``), or a usage error."""
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a job id (a number, or m3 for a map job)",
                                 param_hint="JOB_ID") from None


COMMANDS = [plan_command, run_command, resume_command, jobs_command, job_command]

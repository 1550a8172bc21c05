"""The workbench's web application: the page at ``/``, its assets, and the JSON API under ``/api/``.

Every ``/api/`` call needs the session token (header ``X-Workbench-Token``, or ``?token=`` where a
browser cannot set headers: tile images and the event stream). Errors are one-line JSON
``{"error": ...}`` with status 400 (bad input), 401 (no or wrong token), 404 or 500.
See ``docs/workbench-api.md``.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import shutil
import tempfile
import threading
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from cacheorch import __version__
from cacheorch.errors import CacheorchError, UsageError
from cacheorch.workbench.jobs import JobManager
from cacheorch.workbench.paths import Roots
from cacheorch.workbench.maps import (
    OpenMap, describe_map, map_counts, map_flags, open_map, plan_of_map, resume_map_job,
    start_map,
)
from cacheorch.workbench.sources import Credentials, OpenSource, describe, open_source
from cacheorch.workbench.tiers import command_of, counts, flags_of, grid, plan_of, spec_of
from cacheorch.workbench.uploads import MAX_UPLOAD, area_of_upload

if TYPE_CHECKING:
    from cacheorch.cli import App

__all__ = ["Workbench", "create_app", "TOKEN_HEADER"]

log = logging.getLogger(__name__)

TOKEN_HEADER = "X-Workbench-Token"
#: The presets of the scales table: the CLI's level policies, with the options the page asks for.
PRESETS = [
    {"policy": "scale-range", "label": "Scale range", "options": ["min_scale", "max_scale"],
     "example": "min_scale=2000000,max_scale=5000"},
    {"policy": "max-tiles", "label": "Tile budget", "options": ["tiles"], "example": "100k"},
    {"policy": "max-bytes", "label": "Byte budget", "options": ["bytes"], "example": "500MB"},
    {"policy": "service-limits", "label": "Service limits", "options": [], "example": ""},
]
#: Seconds between two looks at the jobs for the event stream.
EVENT_PERIOD = 0.25


class Workbench:
    """The state behind the API: the CLI's App (config, plugins, catalog), opened sources, jobs."""

    def __init__(self, app: App, roots: Roots, token: str | None = None) -> None:
        self.app = app
        self.roots = roots
        self.token = token or secrets.token_urlsafe(24)
        self.sources: dict[str, OpenSource] = {}
        self.jobs = JobManager(app)
        #: Opened maps (their layers are in ``sources``) and the map jobs started here.
        self.maps: dict[str, OpenMap] = {}
        self.map_jobs = JobManager(app)  # keyed by map id; not a plugin: no job's events
        app.plugins.pm.register(self.jobs, name="cacheorch.workbench.jobs")
        self.uploads = Path(tempfile.mkdtemp(prefix="cacheorch-workbench-"))
        #: ``cacheorch serve`` of finished outputs, by job id (the summary's preview links).
        self.previews: dict[int, Any] = {}
        #: Set when the server is stopping: event streams end instead of holding it up.
        self.stopping = threading.Event()
        from cacheorch.cli.network import network_settings
        #: One network configuration for every connection the workbench makes, as the CLI's.
        self.network = network_settings(app)

    def source(self, source_id: Any) -> OpenSource:
        src = self.sources.get(str(source_id or ""))
        if src is None:
            raise UsageError("unknown source: open it first (POST /api/sources)")
        return src

    def opened_map(self, map_id: Any) -> OpenMap:
        om = self.maps.get(str(map_id or ""))
        if om is None:
            raise UsageError("unknown map: open it first (POST /api/sources with \"map\")")
        return om

    def map_selection(self, body: dict[str, Any]) -> tuple[OpenMap, dict[str, Any]]:
        """The opened map of a selection and its ``run --map`` flags (areas are rounded to the
        viewed layer's resolution: ``source``, else the first exported layer)."""
        om = self.opened_map(body.get("map"))
        view = self.source(body["source"]) if body.get("source") else \
            om.layer_source(self.sources)
        return om, map_flags(body, om, view)

    def redact(self, text: Any) -> str:
        """``text`` without any opened source's token or password."""
        text = str(text)
        for om in list(self.maps.values()):
            text = om.connection.redact(text)
        for src in list(self.sources.values()):
            text = src.connection.redact(text)
            if src.credentials.password:
                text = text.replace(src.credentials.password, "***")
        return text

    def close(self) -> None:
        self.jobs.wait()
        self.map_jobs.wait()
        for om in self.maps.values():
            om.close()
        self.maps.clear()
        for server in self.previews.values():
            server.stop()
        self.previews.clear()
        # a source's fetcher may run its own event loop to close: never inside a running one
        closer = threading.Thread(target=lambda: [src.close() for src in self.sources.values()])
        closer.start()
        closer.join(30)
        self.sources.clear()
        pm = self.app.plugins.pm
        if pm.is_registered(self.jobs):
            pm.unregister(self.jobs)
        shutil.rmtree(self.uploads, ignore_errors=True)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


async def _body(request: Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UsageError("the request body is not JSON") from None
    if not isinstance(data, dict):
        raise UsageError("the request body must be a JSON object")
    return data


def create_app(wb: Workbench) -> Starlette:
    """The Starlette application over ``wb``."""
    app = wb.app

    async def index(request: Request) -> Response:
        page = files("cacheorch.workbench").joinpath("static", "index.html").read_bytes()
        return Response(page, media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})

    async def info(request: Request) -> Response:
        return JSONResponse({"version": __version__, "catalog": str(app.catalog_path),
                             "roots": [str(r) for r in wb.roots.roots],
                             "exporters": sorted(app.plugins.exporters.names()),
                             "presets": PRESETS})

    async def sources_post(request: Request) -> Response:
        body = await _body(request)
        location = str(body.get("location") or "").strip()
        if location and not location.lower().startswith(("http://", "https://")):
            location = str(wb.roots.readable(location, "source"))
        credentials = Credentials(token=body.get("token") or None,
                                  username=body.get("username") or None,
                                  password=body.get("password") or None,
                                  referer=body.get("referer") or None,
                                  network=wb.network)
        if body.get("map"):
            return await _open_map(str(body["map"]).strip(), credentials)
        else:
            src = await run_in_threadpool(open_source, app.plugins, location, credentials,
                                          body.get("source") or None)
        wb.sources[src.id] = src
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in src.service.name) or "cache"
        exporter = app.plugins.exporters.get("tpkx")
        return JSONResponse(describe(src) | {
            "default_output": wb.roots.default_output(name, exporter.extension or "")})

    async def _open_map(location: str, credentials: Credentials) -> Response:
        """A map (``--map``): its layers in order, and the first exported layer as the source
        the page draws (any other exported layer's ``source`` id draws that one)."""
        if location and not location.lower().startswith(("http://", "https://")):
            location = str(wb.roots.readable(location, "map"))
        om, layers = await run_in_threadpool(open_map, app.plugins, location, credentials)
        wb.maps[om.id] = om
        wb.sources.update((src.id, src) for src in layers)
        described = describe_map(om)
        view = describe(layers[0]) if layers else None
        return JSONResponse(described | {
            "view": view, "default_output": wb.roots.default_output(described["folder_name"], "")})

    async def map_get(request: Request) -> Response:
        return JSONResponse(describe_map(wb.opened_map(request.path_params["mid"])))

    async def source_get(request: Request) -> Response:
        return JSONResponse(describe(wb.source(request.path_params["sid"])))

    def _tile(src: OpenSource, level: int, row: int, col: int) -> Response:
        from cacheorch.serve import _content_type
        data = src.tile(app.plugins, level, row, col)
        if data is None:
            return Response(status_code=404)
        return Response(data, media_type=_content_type(data).decode(),
                        headers={"Cache-Control": "private, max-age=600"})

    async def tile(request: Request) -> Response:
        p = request.path_params
        src = wb.source(p["sid"])
        return await run_in_threadpool(_tile, src, p["level"], p["row"], p["col"])

    async def plan(request: Request) -> Response:
        body = await _body(request)
        if body.get("map"):
            om, flags = wb.map_selection(body)
            return JSONResponse(await run_in_threadpool(map_counts, app, om, flags))
        src = wb.source(body.get("source"))
        return JSONResponse(await run_in_threadpool(counts, app, body, src,
                                                    estimate=bool(body.get("estimate"))))

    async def select(request: Request) -> Response:
        """A preset: the levels a policy keeps (the page ticks them), planned like ``plan``."""
        from dataclasses import replace

        from cacheorch.jobspec import PluginSpec
        body = await _body(request)
        src = wb.source(body.get("source"))
        policy = PluginSpec.parse(str(body.get("policy") or ""), "preset")
        every = [lod.level for lod in src.service.scheme.lods]
        spec = spec_of(app, body | {"levels": body.get("levels") or every}, src)
        spec = replace(spec, policies=(*spec.policies, policy))

        def decide() -> dict[str, Any]:
            plan = plan_of(app, spec, src, fetching=False)
            return {"levels": [lv.lod.level for lv in plan.levels],
                    "notes": list(plan.policy_notes[1:])}  # the first is the ticked levels'
        return JSONResponse(await run_in_threadpool(decide))

    async def grid_post(request: Request) -> Response:
        body = await _body(request)
        src = wb.source(body.get("source"))
        try:
            level = int(body.get("level"))
        except (TypeError, ValueError):
            raise UsageError("grid: give the level to draw") from None
        return JSONResponse(await run_in_threadpool(grid, app, body, src, level))

    async def command(request: Request) -> Response:
        body = await _body(request)
        if body.get("map"):
            from cacheorch.connection import redact_url
            om, flags = wb.map_selection(body)
            flags["map"] = redact_url(om.location)
        else:
            flags = flags_of(body, wb.source(body.get("source")))
        return JSONResponse(command_of(flags, str(body.get("name") or "").strip() or None))

    async def upload(request: Request) -> Response:
        """An area file (GeoJSON, Esri JSON, WKT, zipped shapefile) → its polygon in the scheme's SR."""
        src = wb.source(request.path_params["sid"])
        form = await request.form(max_part_size=MAX_UPLOAD)
        item = form.get("file")
        if item is None or isinstance(item, str):
            raise UsageError("upload: send the area file as the form field 'file'")
        data = await item.read()
        name = Path(item.filename or "area").name
        return JSONResponse(await run_in_threadpool(area_of_upload, app.plugins, src,
                                                    wb.uploads, name, data))

    async def export(request: Request) -> Response:
        body = await _body(request)
        body["output"] = str(wb.roots.writable(str(body.get("output") or ""), "output"))
        if body.get("map"):
            return JSONResponse(await run_in_threadpool(_export_map, body), status_code=201)
        src = wb.source(body.get("source"))

        def begin() -> dict[str, Any]:
            spec = spec_of(app, body, src)
            connection = src.credentials.connection(**spec.connection_options())
            try:
                plan = plan_of(app, spec, src, fetching=True)
            except BaseException:
                connection.close()
                raise
            return wb.jobs.start(plan, connection).to_json()
        return JSONResponse(await run_in_threadpool(begin), status_code=201)

    def _export_map(body: dict[str, Any]) -> dict[str, Any]:
        """``run --map`` from the page: the map planned from the selection, run in a worker."""
        from cacheorch.maps.run import use_map_politeness
        om, flags = wb.map_selection(body)
        map_plan = plan_of_map(app, om, flags, fetching=True)
        connection = om.credentials.connection()
        use_map_politeness(connection, map_plan)
        return start_map(wb.map_jobs, map_plan, connection).to_json()

    async def jobs_list(request: Request) -> Response:
        def read() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            from cacheorch.catalog.maps import list_maps
            with app.open_catalog() as catalog:
                return catalog.list_jobs(), list_maps(catalog)
        listed, maps = await run_in_threadpool(read)
        return JSONResponse({"jobs": listed, "maps": maps, "live": wb.jobs.snapshot(),
                             "live_maps": wb.map_jobs.snapshot()})

    async def map_job_get(request: Request) -> Response:
        """The map job as ``cacheorch job mID --json`` prints it, its layer jobs, plus ``live``."""
        from cacheorch.catalog.maps import get_map
        from cacheorch.cli.jobs import _job_json
        map_id = request.path_params["map_id"]

        def read() -> dict[str, Any]:
            with app.open_catalog() as catalog:
                record = get_map(catalog, map_id)
                jobs = [catalog.get_job(job_id) for job_id in record["jobs"]]
            return record | {"layer_jobs": [_job_json(job, job.get("error") or "")
                                            for job in jobs]}
        live = wb.map_jobs.live.get(map_id)
        live_json = live.to_json() if live else None  # before the catalog: it ends first
        data = await run_in_threadpool(read)
        return JSONResponse(data | {"live": live_json})

    async def map_job_resume(request: Request) -> Response:
        """``cacheorch resume mID``, with the credentials of the map opened from the same place
        (else the environment's, as the command line)."""
        from cacheorch.catalog.maps import get_map
        map_id = request.path_params["map_id"]

        def begin() -> dict[str, Any]:
            with app.open_catalog() as catalog:
                source = get_map(catalog, map_id)["source"]
            opened = next((om for om in wb.maps.values() if om.document.source == source), None)
            credentials = opened.credentials if opened else Credentials(network=wb.network)
            return resume_map_job(wb.map_jobs, map_id, credentials.connection()).to_json()
        return JSONResponse(await run_in_threadpool(begin), status_code=201)

    async def map_job_cancel(request: Request) -> Response:
        return JSONResponse(wb.map_jobs.cancel(request.path_params["map_id"]).to_json())

    async def job_get(request: Request) -> Response:
        from cacheorch.cli.jobs import _job_json
        job_id = request.path_params["job_id"]

        def read() -> dict[str, Any]:
            with app.open_catalog() as catalog:
                job = catalog.get_job(job_id)
                return _job_json(job, job.get("error") or "") | {
                    "messages": catalog.job_messages(job_id)}
        data = await run_in_threadpool(read)
        live = wb.jobs.live.get(job_id)
        return JSONResponse(data | {"live": live.to_json() if live else None})

    async def job_cancel(request: Request) -> Response:
        return JSONResponse(wb.jobs.cancel(request.path_params["job_id"]).to_json())

    async def job_resume(request: Request) -> Response:
        body = await _body(request) if await request.body() else {}
        job_id = request.path_params["job_id"]
        return JSONResponse(await run_in_threadpool(_resume, wb, job_id,
                                                    bool(body.get("failed"))), status_code=201)

    async def job_verify(request: Request) -> Response:
        from cacheorch.verify import compare_with_job, verify_output
        job_id = request.path_params["job_id"]

        def check() -> dict[str, Any]:
            with app.open_catalog() as catalog:
                job = catalog.get_job(job_id)
            report = verify_output(wb.roots.readable(job["output"], "output"))
            compare_with_job(report, job)
            return report.to_json() | {"job_id": job_id, "summary": report.summary()}
        return JSONResponse(await run_in_threadpool(check))

    async def job_preview(request: Request) -> Response:
        """Serve the job's output (``cacheorch serve``) on another loopback port; its preview URL."""
        job_id = request.path_params["job_id"]

        def serve() -> dict[str, Any]:
            from cacheorch.serve import CacheServer
            if job_id not in wb.previews:
                with app.open_catalog() as catalog:
                    output = wb.roots.readable(catalog.get_job(job_id)["output"], "output")
                wb.previews[job_id] = CacheServer(output).start()
            server = wb.previews[job_id]
            return {"job_id": job_id, "url": server.root_url + "/", "service": server.url}
        return JSONResponse(await run_in_threadpool(serve))

    async def events(request: Request) -> Response:
        async def stream() -> Any:
            seen: Any = None
            quiet = 0.0
            yield "retry: 2000\n\n"
            while not wb.stopping.is_set() and not await request.is_disconnected():
                if (wb.jobs.version, wb.map_jobs.version) != seen:
                    seen = (wb.jobs.version, wb.map_jobs.version)
                    quiet = 0.0
                    yield f"event: jobs\ndata: {json.dumps({'live': wb.jobs.snapshot(), 'maps': wb.map_jobs.snapshot()})}\n\n"
                elif quiet >= 15:
                    quiet = 0.0
                    yield ": keep-alive\n\n"
                await asyncio.sleep(EVENT_PERIOD)
                quiet += EVENT_PERIOD
        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    routes = [
        Route("/", index),
        Route("/api/info", info),
        Route("/api/sources", sources_post, methods=["POST"]),
        Route("/api/sources/{sid}", source_get),
        Route("/api/maps/{mid}", map_get),
        Route("/api/jobs/m{map_id:int}", map_job_get),
        Route("/api/jobs/m{map_id:int}/cancel", map_job_cancel, methods=["POST"]),
        Route("/api/jobs/m{map_id:int}/resume", map_job_resume, methods=["POST"]),
        Route("/api/sources/{sid}/tile/{level:int}/{row:int}/{col:int}", tile),
        Route("/api/sources/{sid}/upload", upload, methods=["POST"]),
        Route("/api/plan", plan, methods=["POST"]),
        Route("/api/select", select, methods=["POST"]),
        Route("/api/grid", grid_post, methods=["POST"]),
        Route("/api/command", command, methods=["POST"]),
        Route("/api/jobs", jobs_list),
        Route("/api/jobs", export, methods=["POST"]),
        Route("/api/jobs/{job_id:int}", job_get),
        Route("/api/jobs/{job_id:int}/cancel", job_cancel, methods=["POST"]),
        Route("/api/jobs/{job_id:int}/resume", job_resume, methods=["POST"]),
        Route("/api/jobs/{job_id:int}/verify", job_verify, methods=["POST"]),
        Route("/api/jobs/{job_id:int}/preview", job_preview, methods=["POST"]),
        Route("/api/events", events),
        Mount("/static", StaticFiles(packages=[("cacheorch.workbench", "static")]), name="static"),
    ]

    async def on_cacheorch_error(request: Request, exc: Exception) -> Response:
        return _error(400, wb.redact(exc))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, exc.detail or "error")

    async def on_other_error(request: Request, exc: Exception) -> Response:
        log.warning("workbench: %s on %s", type(exc).__name__, request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}: {wb.redact(exc)}")

    return Starlette(routes=routes, middleware=[Middleware(TokenGate, token=wb.token)],
                     exception_handlers={CacheorchError: on_cacheorch_error,
                                         HTTPException: on_http_error,
                                         OSError: on_cacheorch_error, Exception: on_other_error})


class TokenGate:
    """ASGI middleware: ``/api/`` answers 401 unless the request carries the session token."""

    def __init__(self, app: Any, token: str) -> None:
        self.app, self.token = app, token.encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/api/"):
            request = Request(scope)
            given = request.headers.get(TOKEN_HEADER) or request.query_params.get("token") or ""
            if not hmac.compare_digest(given.encode(), self.token):
                response = _error(401, "this call needs the workbench's session token (the "
                                       "token= in the URL `cacheorch workbench` printed)")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _resume(wb: Workbench, job_id: int, retry_failed: bool) -> dict[str, Any]:
    """``cacheorch resume`` from the page: the job's recorded parameters, its pinned levels, and
    the credentials of an opened source at the same location (else the environment's)."""
    from cacheorch.cli.jobs import resumable_job, resume_plan, resume_spec
    app = wb.app
    job, params = resumable_job(app, job_id)
    spec = resume_spec(job, params)
    opened = next((s for s in wb.sources.values() if s.location == spec.service), None)
    credentials = opened.credentials if opened else Credentials(referer=spec.referer,
                                                                    network=wb.network)
    connection = credentials.connection(**spec.connection_options())
    try:
        plan = resume_plan(app, job, params, spec, connection, opened.service if opened else None)
    except BaseException:
        connection.close()
        raise
    return wb.jobs.start(plan, connection, job_id=job_id, retry_failed=retry_failed).to_json()

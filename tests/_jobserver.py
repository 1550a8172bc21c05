"""A loopback ArcGIS Server (or ArcGIS Online) that runs exportTiles jobs, for tests.

It implements the job protocol of spec §3 from the server's side: ``exportTiles`` and
``estimateExportTilesSize`` answer a ``jobId``; ``jobs/<id>`` moves through esriJobSubmitted →
esriJobExecuting (for ``steps`` polls: a slow job) → esriJobSucceeded, with messages on the way,
or ends esriJobFailed / esriJobCancelled when told to; a job asking for more tiles than
``maxExportTilesCount`` fails as a real server does. Results come in either shape: ArcGIS
Server's ``results/out_service_url`` → a folder listing ``files[]``, or ArcGIS Online's
``output.outputUrl`` (a signed URL that must not get the token). Downloads honour HTTP Range,
and the first one can be cut short. With ``token_uses`` every request needs a token from
``/arcgis/tokens/generateToken``, good for that many requests (then 498).

The package is real: the server selects its tiles (those of the asked levels whose box overlaps
the area of interest) from a dict and writes them with cacheorch's tpkx exporter.

Everything binds 127.0.0.1 on port 0.
"""
from __future__ import annotations

import json
import re
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from shapely.geometry import Polygon, box
from shapely.ops import unary_union

from _tiles import write_tiles
from cacheorch.interfaces import ExportRequest, Service
from cacheorch.tiling import TilingScheme

__all__ = ["JobServer", "USER", "PASSWORD"]

Key = tuple[int, int, int]
USER, PASSWORD = "exporter", "s3cret-pass-word"
TOKENS = "/arcgis/tokens/generateToken"
OUTPUT = "/arcgis/rest/directories/arcgisoutput"


@dataclass
class Job:
    id: str
    operation: str
    levels: list[int]
    area: Any
    storage: str
    polls: int = 0
    status: str = "esriJobSubmitted"
    messages: list[dict[str, str]] = field(default_factory=list)
    tiles: int = 0
    file: Path | None = None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up on a cut download are part of the tests


class JobServer:
    """One exportable MapServer at ``/arcgis/rest/services/<name>/MapServer``.

    :param tiles: the cache: tile bytes by (level, row, col).
    :param steps: polls a job stays esriJobExecuting (a slow job).
    :param fail: messages of a job that fails (esriJobFailed) instead of succeeding.
    :param cancel: jobs end esriJobCancelled (an administrator cancelled them).
    :param never_ends: jobs stay esriJobExecuting forever (for our own deadline).
    :param online: ArcGIS Online result shape (``output.outputUrl``) instead of ArcGIS Server's.
    :param cut_first_download: bytes sent by the first package download before hanging up.
    :param token_uses: requests a token is good for (None: no token needed).
    """

    def __init__(self, scheme: TilingScheme, tiles: dict[Key, bytes], *, name: str = "Export",
                 max_export: int = 100_000, export_allowed: bool = True, steps: int = 2,
                 fail: list[str] | None = None, cancel: bool = False, never_ends: bool = False,
                 online: bool = False, cut_first_download: int | None = None,
                 token_uses: int | None = None) -> None:
        self.scheme, self.tiles, self.name = scheme, tiles, name
        self.max_export, self.export_allowed, self.steps = max_export, export_allowed, steps
        self.fail, self.cancel, self.never_ends, self.online = fail, cancel, never_ends, online
        self.cut_first_download = cut_first_download
        self.token_uses = token_uses
        self.jobs: dict[str, Job] = {}
        #: Form of every submitted job, in order.
        self.submitted: list[dict[str, str]] = []
        #: (path, query, headers) of every GET.
        self.gets: list[tuple[str, dict[str, str], dict[str, str]]] = []
        self.cancelled: list[str] = []
        self.issued: list[str] = []
        self.refused = 0
        self.downloads = 0
        self.remaining: dict[str, int] = {}
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.dir = Path(tempfile.mkdtemp(prefix="jobserver-"))
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                with server.lock:
                    server.gets.append((parts.path, query, dict(self.headers)))
                server.handle(self, "GET", parts.path, query)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                parts = urlsplit(self.path)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                form.update({k: v[0] for k, v in parse_qs(parts.query).items()})
                server.handle(self, "POST", parts.path, form)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        # ArcGIS Online's signed links point at another host (S3): here, another port
        self.s3 = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.s3.serve_forever, args=(0.02,), daemon=True).start()
        self.s3_base = f"http://127.0.0.1:{self.s3.server_address[1]}"
        self.prefix = f"/arcgis/rest/services/{name}/MapServer"
        self.url = self.base + self.prefix

    def close(self) -> None:
        for httpd in (self.httpd, self.s3):
            httpd.shutdown()
            httpd.server_close()
        import shutil
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> JobServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- HTTP helpers -------------------------------------------------------------------------

    @staticmethod
    def send(h: BaseHTTPRequestHandler, status: int, body: bytes | dict[str, Any],
             ctype: str = "application/json", headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _token_ok(self, token: str | None) -> int | None:
        if self.token_uses is None:
            return None
        if not token:
            return 499
        with self.lock:
            left = self.remaining.get(token)
            if left is None or left <= 0:
                self.refused += 1
                return 498
            self.remaining[token] = left - 1
        return None

    def service_json(self) -> dict[str, Any]:
        sr = self.scheme.spatial_reference.to_json()
        half = 20037508.342787
        extent = {"xmin": -half, "ymin": -half, "xmax": half, "ymax": half, "spatialReference": sr}
        return {"currentVersion": 11.1, "mapName": "Layers", "singleFusedMapCache": True,
                "capabilities": "Map", "spatialReference": sr, "units": "esriMeters",
                "tileInfo": self.scheme.to_json(), "fullExtent": extent, "initialExtent": extent,
                "exportTilesAllowed": self.export_allowed, "maxExportTilesCount": self.max_export}

    # -- routing ------------------------------------------------------------------------------

    def handle(self, h: BaseHTTPRequestHandler, method: str, path: str,
               query: dict[str, str]) -> None:
        with self.lock:
            self.counts[path] += 1
        if path == "/arcgis/rest/info":
            return self.send(h, 200, {"currentVersion": 11.1})
        if path == TOKENS:
            return self._generate(h, query)
        if path.startswith("/s3/"):  # a signed URL: its signature is the authorisation
            if "token" in query:
                return self.send(h, 400, b"<Error>token sent to S3</Error>", "application/xml")
            if query.get("X-Amz-Signature") != "sig":
                return self.send(h, 403, b"<Error>AccessDenied</Error>", "application/xml")
            return self._download(h, path.split("/")[2])
        code = self._token_ok(query.get("token"))
        if code is not None:
            message = "Token Required" if code == 499 else "Invalid Token"
            return self.send(h, 200, {"error": {"code": code, "message": message, "details": []}})
        if path == self.prefix:
            return self.send(h, 200, self.service_json())
        if path in (self.prefix + "/exportTiles", self.prefix + "/estimateExportTilesSize"):
            return self._submit(h, path.rsplit("/", 1)[1], query)
        m = re.fullmatch(re.escape(self.prefix) + r"/jobs/(\w+)(/.*)?", path)
        if m:
            job = self.jobs.get(m.group(1))
            if job is None:
                return self.send(h, 200, {"error": {"code": 400, "message": "Job not found"}})
            rest = m.group(2) or ""
            if rest == "":
                return self.send(h, 200, self._poll(job))
            if rest == "/cancel":
                job.status = "esriJobCancelled"
                self.cancelled.append(job.id)
                return self.send(h, 200, {"jobId": job.id, "jobStatus": job.status})
            if rest == "/results/out_service_url":
                return self.send(h, 200, {"paramName": "out_service_url",
                                          "value": self._result_value(job)})
        m = re.fullmatch(re.escape(OUTPUT) + r"/(\w+)_ags/?(.*)", path)
        if m:
            if m.group(2):
                return self._download(h, m.group(1))
            job = self.jobs[m.group(1)]
            assert job.file is not None
            return self.send(h, 200, {"folders": [], "files": [
                {"name": job.file.name, "url": job.file.name, "size": job.file.stat().st_size}]})
        return self.send(h, 404, b"not found", "text/plain")

    def _generate(self, h: BaseHTTPRequestHandler, form: dict[str, str]) -> None:
        if form.get("username") != USER or form.get("password") != PASSWORD:
            return self.send(h, 200, {"error": {"code": 400, "message": "Unable to generate token.",
                                                "details": ["Invalid username or password."]}})
        with self.lock:
            token = f"jobtok{len(self.issued)}-{'y' * 16}"
            self.issued.append(token)
            self.remaining[token] = self.token_uses or 0
        return self.send(h, 200, {"token": token, "expires": int((time.time() + 60) * 1000)})

    # -- jobs ---------------------------------------------------------------------------------

    def _submit(self, h: BaseHTTPRequestHandler, operation: str, form: dict[str, str]) -> None:
        with self.lock:
            self.submitted.append(dict(form, _operation=operation))
        if not self.export_allowed:
            return self.send(h, 200, {"error": {"code": 400,
                                                "message": "Export tiles not allowed"}})
        if form.get("exportBy", "").lower() != "levelid" or form.get("tilePackage") != "true":
            return self.send(h, 200, {"error": {"code": 400, "message": "Unsupported parameters"}})
        levels: list[int] = []
        for part in form["levels"].split(","):
            a, _, b = part.partition("-")
            levels.extend(range(int(a), int(b or a) + 1))
        fs = json.loads(form["areaOfInterest"])
        rings = [ring for f in fs["features"] for ring in f["geometry"]["rings"]]
        area = unary_union([Polygon(r) for r in rings if _clockwise(r)])
        with self.lock:
            job = Job(f"j{len(self.jobs) + 1:04d}x", operation, levels, area,
                      form.get("storageFormatType", ""))
            self.jobs[job.id] = job
        job.messages.append({"type": "esriJobMessageTypeInformative", "description": "Submitted."})
        return self.send(h, 200, {"jobId": job.id, "jobStatus": job.status})

    def _selected(self, job: Job) -> dict[Key, bytes]:
        out = {}
        for (level, row, col), data in self.tiles.items():
            if level in job.levels:
                tile = box(*self.scheme.tile_bounds(level, row, col))
                if tile.intersection(job.area).area > 0:
                    out[(level, row, col)] = data
        return out

    def _poll(self, job: Job) -> dict[str, Any]:
        job.polls += 1
        if job.status in ("esriJobSubmitted", "esriJobExecuting") and job.polls == 1:
            job.status = "esriJobExecuting"
            job.messages.append({"type": "esriJobMessageTypeInformative",
                                 "description": "Executing..."})
        elif job.status == "esriJobExecuting" and not self.never_ends and job.polls > self.steps:
            self._finish(job)
        body: dict[str, Any] = {"jobId": job.id, "jobStatus": job.status, "messages": job.messages}
        if job.status == "esriJobSucceeded":
            if self.online and job.operation == "exportTiles":
                assert job.file is not None
                signed = f"{self.s3_base}/s3/{job.id}/{job.file.name}?X-Amz-Signature=sig"
                body.update(type="EXPORTTILES", numTiles=job.tiles,
                            output={"outputUrl": [signed], "itemId": "item" + job.id})
            elif self.online:
                body.update(totalTilesToExport=job.tiles, totalSize=job.tiles * 1000)
            else:
                body["results"] = {"out_service_url": {"paramUrl": "results/out_service_url"}}
        return body

    def _finish(self, job: Job) -> None:
        if self.cancel:
            job.status = "esriJobCancelled"
            job.messages.append({"type": "esriJobMessageTypeWarning",
                                 "description": "Job cancelled by the administrator."})
            return
        if self.fail:
            job.status = "esriJobFailed"
            job.messages += [{"type": "esriJobMessageTypeError", "description": m}
                             for m in self.fail]
            return
        selected = self._selected(job)
        job.tiles = len(selected)
        if len(selected) > self.max_export:
            job.status = "esriJobFailed"
            job.messages.append({"type": "esriJobMessageTypeError", "description":
                                 f"ERROR 001564: Requested tile count({len(selected)}) exceeds "
                                 f"the maximum allowed number of tiles({self.max_export}) to be "
                                 f"exported for service {self.name}:MapServer."})
            return
        if job.operation == "exportTiles":
            if job.storage not in ("esriMapCacheStorageModeCompactV2",
                                   "esriMapCacheStorageModeCompact"):
                job.status = "esriJobFailed"
                job.messages.append({"type": "esriJobMessageTypeError",
                                     "description": f"bad storageFormatType {job.storage}"})
                return
            job.file = self._build(job, selected)
        job.messages.append({"type": "esriJobMessageTypeInformative",
                             "description": f"Finished: {len(selected)} tiles."})
        job.status = "esriJobSucceeded"

    def _build(self, job: Job, selected: dict[Key, bytes]) -> Path:
        """A real package of ``selected``, written by cacheorch's tpkx (CompactV2) or tpk
        (Compact) exporter."""
        from cacheorch.plugins.export_tpk import TpkSession
        from cacheorch.plugins.export_tpkx import TpkxSession
        compact_v1 = job.storage == "esriMapCacheStorageModeCompact"
        levels = sorted({k[0] for k in selected} or set(job.levels))
        scheme = self.scheme.with_levels(levels)
        service = Service(location=self.url, scheme=self.scheme, name=self.name)
        output = self.dir / job.id / ("package.tpk" if compact_v1 else "package.tpkx")
        output.parent.mkdir()
        session = (TpkSession if compact_v1 else TpkxSession)(ExportRequest(output=output, service=service, scheme=scheme,
                                            levels=tuple(scheme.lod(lv) for lv in levels),
                                            extent=job.area.bounds))
        write_tiles(session, selected)
        return session.commit()

    def _result_value(self, job: Job) -> Any:
        if job.operation == "estimateExportTilesSize":
            return {"totalTilesToExport": job.tiles, "totalSize": job.tiles * 1000}
        return f"{self.base}{OUTPUT}/{job.id}_ags"

    def _download(self, h: BaseHTTPRequestHandler, job_id: str) -> None:
        job = self.jobs[job_id]
        assert job.file is not None
        data = job.file.read_bytes()
        with self.lock:
            self.downloads += 1
            first = self.downloads == 1
        wanted = h.headers.get("Range")
        if wanted:
            start = int(wanted.split("=")[1].split("-")[0])
            if start >= len(data):
                return self.send(h, 416, b"", "application/octet-stream",
                                 {"Content-Range": f"bytes */{len(data)}"})
            body = data[start:]
            return self.send(h, 206, body, "application/octet-stream",
                             {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}",
                              "Accept-Ranges": "bytes"})
        if first and self.cut_first_download is not None:
            h.send_response(200)
            h.send_header("Content-Type", "application/octet-stream")
            h.send_header("Content-Length", str(len(data)))
            h.send_header("Accept-Ranges", "bytes")
            h.end_headers()
            h.wfile.write(data[:self.cut_first_download])
            h.wfile.flush()
            h.close_connection = True
            return
        return self.send(h, 200, data, "application/octet-stream", {"Accept-Ranges": "bytes"})


def _clockwise(ring: list[list[float]]) -> bool:
    """Esri outer rings run clockwise (negative shoelace area)."""
    area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:]))
    return area < 0

"""The client side of ArcGIS ``exportTiles`` and ``estimateExportTilesSize`` jobs (spec §3).

Why a module of its own: the protocol has more turns than a tile request. A job is submitted
(``{"jobId", "jobStatus"}``), polled at ``<service>/jobs/<id>`` until it ends, and its result is
found in one of two shapes: ArcGIS Server's ``results/out_service_url`` (whose value is a folder
URL listing ``files[].url``) or ArcGIS Online's ``output.outputUrl`` list of signed URLs. Packages
can be gigabytes, so downloads resume with HTTP Range from a ``.part`` file and are checked
against the size the server announced. Tokens expire during long jobs: a 498/499 during submit,
poll or download renews the token (when the connection can) and the request is made again.

Nothing here knows about the catalog or the plan: :mod:`cacheorch.plugins.export_rest_tiles`
decides what to ask for; messages go to the ``on_message`` callback it passes.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

import requests
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry
from shapely.geometry.polygon import orient

from cacheorch.arcgis_json import arcgis_error
from cacheorch.connection import AUTH_CODES, NO_CREDENTIALS_HINT, Connection, _peek_json
from cacheorch.errors import AuthError, ExportError, ServiceError
from cacheorch.jsonlimits import loads
from cacheorch.net import describe
from cacheorch.tiling import SpatialReference, format_levels

__all__ = ["Polling", "Estimate", "ResultFile", "ExportTilesClient", "feature_set",
           "polygon_json", "levels_param", "STORAGE_FORMATS", "OnMessage", "VECTOR"]

log = logging.getLogger(__name__)

#: What an export job's result file may be: raster packages, and a vector layer's .vtpk.
_PACKAGES = (".tpk", ".tpkx", ".vtpk")
#: ``storageFormatType`` → the package extension it produces (spec §3.1).
#: ``storage`` of a vector tile layer's export (a .vtpk; the operation takes no storage format).
VECTOR = "vtpk"
STORAGE_FORMATS = {"esriMapCacheStorageModeCompactV2": ".tpkx",
                   "esriMapCacheStorageModeCompact": ".tpk"}
_SUCCEEDED = "esriJobSucceeded"
_FAILED = {"esriJobFailed", "esriJobTimedOut"}
_CANCELLED = {"esriJobCancelled", "esriJobCancelling", "esriJobDeleted", "esriJobDeleting"}
_MESSAGE_KINDS = {"esriJobMessageTypeError": "error", "esriJobMessageTypeWarning": "warning",
                  "esriJobMessageTypeAbort": "error", "esriJobMessageTypeEmpty": "info",
                  "esriJobMessageTypeInformative": "info"}
_CHUNK = 1 << 16  # what an interrupted read loses at most

#: ``on_message(text, kind)``: one server job message, as it arrives.
OnMessage = Callable[[str, str], None]


@dataclass(frozen=True)
class Polling:
    """How a job is polled: the first wait, how it grows, its ceiling, and our own deadline.

    Real exports take minutes to hours, so the wait grows (a server sees a few requests per
    minute, not one per second); tests use hundredths of a second.
    """

    first: float = 1.0
    factor: float = 1.5
    longest: float = 30.0
    #: Seconds a job may run before cacheorch gives up on it (and asks the server to cancel it).
    deadline: float = 6 * 3600.0


@dataclass(frozen=True)
class Estimate:
    """The server's answer to ``estimateExportTilesSize``."""

    tiles: int | None
    bytes: int | None


@dataclass(frozen=True)
class ResultFile:
    """One file a finished job offers: its URL, and its size when the server said."""

    url: str
    size: int | None = None
    name: str = ""


def levels_param(levels: Iterable[int]) -> str:
    """``levels`` for ``exportBy=LevelID``: ``0-4,7`` (ranges, as the spec allows)."""
    return format_levels(levels)


def polygon_json(area: BaseGeometry, sr: SpatialReference) -> dict[str, Any]:
    """An Esri JSON polygon of ``area``: outer rings clockwise, holes counter-clockwise (Esri's
    winding, the opposite of GeoJSON's), every ring closed."""
    if isinstance(area, Polygon):
        parts = [area]
    elif isinstance(area, MultiPolygon):
        parts = list(area.geoms)
    else:
        parts = [g for g in getattr(area, "geoms", ()) if isinstance(g, Polygon)]
    rings: list[list[list[float]]] = []
    for part in parts:
        if part.is_empty:
            continue
        oriented = orient(part, sign=-1.0)
        rings.append([[x, y] for x, y, *_ in oriented.exterior.coords])
        rings.extend([[x, y] for x, y, *_ in hole.coords] for hole in oriented.interiors)
    if not rings:
        raise ExportError("the area of interest is empty")
    return {"rings": rings, "spatialReference": sr.to_json()}


def feature_set(area: BaseGeometry, sr: SpatialReference) -> dict[str, Any]:
    """``areaOfInterest``: an Esri FeatureSet holding ``area`` as one polygon feature."""
    geometry = polygon_json(area, sr)
    return {"geometryType": "esriGeometryPolygon", "spatialReference": sr.to_json(),
            "features": [{"geometry": geometry, "attributes": {"OID": 1}}]}


class ExportTilesClient:
    """Runs export jobs against one MapServer / ImageServer.

    :param sleep: how to wait between polls (tests may pass a fake clock's).
    """

    def __init__(self, service_url: str, connection: Connection, polling: Polling | None = None,
                 *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = service_url.rstrip("/")
        self.connection = connection
        self.polling = polling or Polling()
        self._sleep, self._clock = sleep, clock
        self._host = urlsplit(self.url).netloc.lower()

    # -- HTTP ---------------------------------------------------------------------------------

    def _shown(self, url: str) -> str:
        return self.connection.redact(url)

    def _token_for(self, url: str) -> bool:
        """Send the token only to the service's own host: signed result URLs (ArcGIS Online's S3
        links) carry their own authorisation and must not receive ours."""
        return urlsplit(url).netloc.lower() == self._host

    def _send(self, method: Literal["GET", "POST"], url: str, params: dict[str, Any], *,
              headers: dict[str, str] | None = None, stream: bool = False) -> requests.Response:
        """One request through :meth:`Connection.request` (which renews a refused token once),
        waiting out a 503 with ``Retry-After`` a few times (a busy caching controller)."""
        connection = self.connection
        busy = 0
        while True:
            response = connection.request(method, url, params, headers=headers, stream=stream,
                                          send_token=self._token_for(url), service_url=self.url)
            code = self._auth_code(response, stream)
            if code is not None:
                response.close()
                hint = "" if connection.token or connection.can_renew_token else \
                    NO_CREDENTIALS_HINT
                raise AuthError(f"{self._shown(url)}: {AUTH_CODES[code]} (ArcGIS error {code})"
                                f"{hint}")
            if response.status_code == 503 and busy < connection.retries:
                wait = _retry_after(response, self.polling.longest)
                response.close()
                busy += 1
                log.info("%s is busy (503); trying again in %.1f s", self._shown(url), wait)
                self._sleep(wait)
                continue
            return response

    @staticmethod
    def _auth_code(response: requests.Response, stream: bool) -> int | None:
        """498/499 as an HTTP status, or as a JSON error body with HTTP 200 (servers differ)."""
        if response.status_code in (498, 499):
            return response.status_code
        error = arcgis_error(_peek_json(response, stream))
        return error[0] if error is not None and error[0] in (498, 499) else None

    def _json(self, method: str, url: str, params: dict[str, Any]) -> dict[str, Any]:
        response = self._send(method, url, dict(params, f="json"))
        shown = self._shown(url)
        try:
            data = loads(response.content)
        except ValueError:
            data = None
        error = arcgis_error(data)
        if error is not None:
            code, message = error
            raise ExportError(f"{shown}: ArcGIS error {code}: "
                              f"{self.connection.redact(message) or 'no message'}")
        if response.status_code >= 400:
            raise ServiceError(f"{shown}: HTTP {response.status_code} {response.reason}")
        if not isinstance(data, dict):
            raise ServiceError(f"{shown} did not answer a JSON object")
        return data

    # -- jobs ---------------------------------------------------------------------------------

    def submit(self, operation: str, params: dict[str, Any]) -> str:
        """POST ``<service>/<operation>``; return the job id (the body can be long: a polygon)."""
        data = self._json("POST", f"{self.url}/{operation}", params)
        job_id = data.get("jobId") or data.get("jobID") or data.get("id")
        if not isinstance(job_id, str) or not job_id:
            raise ExportError(f"{self._shown(self.url)}/{operation} answered no jobId")
        log.info("%s job %s submitted", operation, job_id)
        return job_id

    def job_url(self, job_id: str) -> str:
        return f"{self.url}/jobs/{job_id}"

    def status(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", self.job_url(job_id), {})

    def cancel(self, job_id: str) -> None:
        """Ask the server to cancel the job (best effort: it may have finished meanwhile)."""
        try:
            self._send("POST", f"{self.job_url(job_id)}/cancel", {"f": "json"}).close()
        except (ServiceError, AuthError) as exc:
            log.warning("could not cancel job %s: %s", job_id, exc)

    def wait(self, job_id: str, on_message: OnMessage | None = None) -> dict[str, Any]:
        """Poll until the job ends; return its last JSON when it succeeded.

        Every new server message goes to ``on_message`` once, in order. A failed, cancelled or
        server-timed-out job, and one past our own deadline (which is then cancelled), raise
        ExportError with the server's messages.
        """
        started = self._clock()
        interval = self.polling.first
        seen = 0
        while True:
            job = self.status(job_id)
            messages = [m for m in job.get("messages") or [] if isinstance(m, dict)]
            for message in messages[seen:]:
                text = str(message.get("description") or "").strip()
                if text and on_message is not None:
                    on_message(self.connection.redact(text),
                               _MESSAGE_KINDS.get(str(message.get("type")), "info"))
            seen = max(seen, len(messages))
            state = str(job.get("jobStatus") or job.get("status") or "")
            if state == _SUCCEEDED or state.lower() in ("completed", "succeeded"):
                return job
            if state in _FAILED or state.lower() == "failed":
                why = "timed out on the server" if state == "esriJobTimedOut" else "failed"
                raise ExportError(f"job {job_id} {why}: {self._said(messages)}")
            if state in _CANCELLED:
                raise ExportError(f"job {job_id} was cancelled on the server: "
                                  f"{self._said(messages)}")
            elapsed = self._clock() - started
            if elapsed >= self.polling.deadline:
                self.cancel(job_id)
                raise ExportError(f"job {job_id} did not finish within "
                                  f"{self.polling.deadline:g} s (last status "
                                  f"{state or 'unknown'}); "
                                  f"asked the server to cancel it")
            self._sleep(min(interval, max(self.polling.deadline - elapsed, 0.0)))
            interval = min(interval * self.polling.factor, self.polling.longest)

    def _said(self, messages: Sequence[dict[str, Any]]) -> str:
        """The messages that explain an ending: errors and warnings, else the last three."""
        worst = [m for m in messages if _MESSAGE_KINDS.get(str(m.get("type"))) in
                 ("error", "warning")]
        chosen = worst or list(messages)[-3:]
        text = "; ".join(str(m.get("description") or "").strip() for m in chosen
                         if str(m.get("description") or "").strip())
        return self.connection.redact(text) or "the server gave no message"

    # -- results ------------------------------------------------------------------------------

    def result_value(self, job_id: str, job: dict[str, Any], param: str = "out_service_url"
                     ) -> Any:
        """The value of a GP-style result parameter (``results/<param>`` → ``value``)."""
        results = job.get("results") if isinstance(job.get("results"), dict) else {}
        entry = results.get(param) or next(iter(results.values()), None) if results else None
        path = entry.get("paramUrl") if isinstance(entry, dict) else None
        if not isinstance(path, str) or not path:
            return None
        return self._json("GET", f"{self.job_url(job_id)}/{path.lstrip('/')}", {}).get("value")

    def result_files(self, job_id: str, job: dict[str, Any]) -> list[ResultFile]:
        """The package(s) a finished export offers, in either result shape (spec §3.2).

        ArcGIS Online's ``output.outputUrl`` is checked first, then ArcGIS Server's
        ``results/out_service_url`` → its folder's ``files[]``.
        """
        output = job.get("output")
        if isinstance(output, dict) and output.get("outputUrl"):
            urls = output["outputUrl"]
            urls = [urls] if isinstance(urls, str) else list(urls)
            return [ResultFile(str(u), None, _file_name(str(u))) for u in urls if u]
        value = self.result_value(job_id, job)
        if isinstance(value, dict):
            value = value.get("url") or value.get("value")
        if not isinstance(value, str) or not value:
            raise ExportError(f"job {job_id} succeeded but names no result "
                              f"(neither output.outputUrl nor results/out_service_url)")
        if _file_name(value).lower().endswith(_PACKAGES):
            return [ResultFile(value, None, _file_name(value))]
        listing = self._json("GET", value, {})
        files = []
        for entry in listing.get("files") or []:
            if not isinstance(entry, dict) or not entry.get("url"):
                continue
            size = entry.get("size")
            files.append(ResultFile(urljoin(value.rstrip("/") + "/", str(entry["url"])),
                                    int(size) if isinstance(size, (int, float)) else None,
                                    str(entry.get("name") or _file_name(str(entry["url"])))))
        packages = [f for f in files if f.name.lower().endswith(_PACKAGES)] or files
        if not packages:
            folders = listing.get("folders") or []
            raise ExportError(f"job {job_id}: the result folder {self._shown(value)} lists no "
                              f"package" + (" (only folders: a cache dataset, not a package)"
                                            if folders else ""))
        return packages

    def download(self, file: ResultFile, dest: Path, attempts: int = 5) -> Path:
        """Fetch ``file`` to ``dest``, resuming a ``dest.part`` left by an earlier attempt with
        HTTP Range; check the size against what the server announced; return ``dest``."""
        part = dest.with_name(dest.name + ".part")
        expected = file.size
        shown = self._shown(file.url)
        last_error = ""
        for _ in range(attempts):
            have = part.stat().st_size if part.exists() else 0
            if expected is not None and have == expected:
                break
            headers = {"Range": f"bytes={have}-"} if have else None
            response = self._send("GET", file.url, {}, headers=headers, stream=True)
            with response:
                if response.status_code == 416 and have:
                    total = _content_range_total(response.headers.get("Content-Range"))
                    if total == have:
                        expected = expected if expected is not None else total
                        break
                    part.unlink()
                    continue
                if response.status_code == 206:
                    start = _content_range_start(response.headers.get("Content-Range"))
                    if start != have:
                        part.unlink(missing_ok=True)
                        continue
                    total = _content_range_total(response.headers.get("Content-Range"))
                    mode = "ab"
                elif response.status_code == 200:
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    mode = "wb"  # the server ignored Range (or there was nothing yet)
                else:
                    raise ExportError(f"download {shown}: HTTP {response.status_code} "
                                      f"{response.reason}")
                if expected is None:
                    expected = total
                elif total is not None and total != expected:
                    raise ExportError(f"download {shown}: the server announced {expected} bytes "
                                      f"but sends {total}")
                try:
                    with open(part, mode) as out:
                        for chunk in response.iter_content(_CHUNK):
                            out.write(chunk)
                        out.flush()
                        os.fsync(out.fileno())
                except requests.exceptions.RequestException as exc:
                    last_error = describe(exc, urlsplit(file.url).hostname)
                    log.info("download of %s interrupted at %d bytes (%s); resuming", shown,
                             part.stat().st_size if part.exists() else 0, last_error)
                    continue
            if expected is None or part.stat().st_size >= expected:
                break
        size = part.stat().st_size if part.exists() else 0
        if expected is not None and size != expected:
            raise ExportError(f"download {shown}: got {size} of {expected} bytes"
                              + (f" ({last_error})" if last_error else ""))
        if size == 0:
            raise ExportError(f"download {shown}: the server sent an empty file")
        os.replace(part, dest)
        return dest

    # -- the two operations -------------------------------------------------------------------

    def _params(self, levels: Sequence[int], area: BaseGeometry, sr: SpatialReference,
                storage: str) -> dict[str, Any]:
        if storage == VECTOR:  # VectorTileServer exportTiles (vector spec §4.1)
            xmin, ymin, xmax, ymax = area.bounds
            envelope = {"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax,
                        "spatialReference": sr.to_json()}
            return {"exportBy": "levelId", "levels": levels_param(levels),
                    "exportExtent": json.dumps(envelope, separators=(",", ":")),
                    "polygon": json.dumps(polygon_json(area, sr), separators=(",", ":"))}
        return {"tilePackage": "true", "exportBy": "LevelID", "levels": levels_param(levels),
                "storageFormatType": storage,
                "areaOfInterest": json.dumps(feature_set(area, sr), separators=(",", ":"))}

    def estimate(self, levels: Sequence[int], area: BaseGeometry, sr: SpatialReference,
                 storage: str, on_message: OnMessage | None = None) -> Estimate:
        """Run ``estimateExportTilesSize`` and read ``totalTilesToExport`` / ``totalSize``."""
        job_id = self.submit("estimateExportTilesSize", self._params(levels, area, sr, storage))
        job = self.wait(job_id, on_message)
        value = self.result_value(job_id, job)
        if not isinstance(value, dict):
            value = job  # ArcGIS Online puts the figures in the job itself
        return Estimate(_int(value.get("totalTilesToExport")), _int(value.get("totalSize")))

    def export(self, levels: Sequence[int], area: BaseGeometry, sr: SpatialReference,
               storage: str, dest: Path, on_message: OnMessage | None = None) -> Path:
        """Run ``exportTiles`` for ``levels`` over ``area`` and download the package to ``dest``."""
        job_id = self.submit("exportTiles", self._params(levels, area, sr, storage))
        if on_message is not None:
            on_message(f"exportTiles job {job_id}: levels {levels_param(levels)}", "info")
        try:
            job = self.wait(job_id, on_message)
        except KeyboardInterrupt:  # nobody will download it: spare the server the work
            self.cancel(job_id)
            raise
        files = self.result_files(job_id, job)
        if len(files) != 1:
            raise ExportError(f"job {job_id} offers {len(files)} packages; expected one "
                              f"({', '.join(f.name for f in files)})")
        # a .part left by another job's package must not be resumed: this job's bytes differ
        dest.with_name(dest.name + ".part").unlink(missing_ok=True)
        return self.download(files[0], dest)


def _file_name(url: str) -> str:
    return urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _content_range_start(value: str | None) -> int | None:
    """``bytes 100-199/200`` → 100."""
    try:
        return int(str(value).split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _content_range_total(value: str | None) -> int | None:
    """``bytes 100-199/200`` or ``bytes */200`` → 200."""
    try:
        total = str(value).rsplit("/", 1)[1]
        return None if total == "*" else int(total)
    except (IndexError, ValueError):
        return None


def _retry_after(response: requests.Response, ceiling: float) -> float:
    try:
        return min(max(float(response.headers.get("Retry-After", "")), 0.0), ceiling)
    except ValueError:
        return min(5.0, ceiling)

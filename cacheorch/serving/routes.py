"""The served MapServer's ``/export`` and ``/WMTS`` paths, as handlers the route table holds.

A handler gets (the path after its prefix, the query string, the server's base URL) and returns
either (status line, content type, body) or a (level, row, col) the server answers like a tile.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from cacheorch.serving.table import RouteTable

__all__ = ["add_handlers", "Answer", "Handler"]

Answer = Union[tuple[bytes, bytes, bytes], tuple[int, int, int]]
Handler = Callable[[str, str, str], Answer]

_OK = b"HTTP/1.1 200 OK\r\n"


def _error(status: int, message: str) -> tuple[bytes, bytes, bytes]:
    from http import HTTPStatus

    from cacheorch.serving.mapserver import error_body
    return (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode(), b"application/json",
            error_body(status, message))


def add_handlers(routes: RouteTable, service: dict[str, Any], tiled_levels: list[int]) -> None:
    """Register ``export`` and ``WMTS`` on ``routes.handlers``."""
    from cacheorch.serving.wmts import Wmts, WmtsError, kvp

    cache = routes.cache
    service_path = routes.tile_prefix[:-len("tile/")]  # .../MapServer/ in the served name's case
    export_path = service_path + "export"
    levels = sorted(lv for lv in tiled_levels if lv in cache.scheme.levels)

    def export(rest: str, query: str, base: str) -> Answer:
        from cacheorch.serving.export import BadExportRequest, export_image
        if rest not in ("", "/"):
            return _error(404, f"Not found: {export_path}{rest}")
        try:
            content_type, body = export_image(cache, levels, query, base + export_path)
        except BadExportRequest as exc:
            return _error(400, str(exc))
        return _OK, content_type.encode(), body

    routes.handlers.append((export_path.lower(), export))
    try:
        wmts = Wmts(routes.name, cache.scheme, tiled_levels, routes.zooms,
                    service.get("fullExtent"))
    except WmtsError as exc:
        unavailable = str(exc)
        routes.handlers.append(((service_path + "WMTS").lower(), lambda r, q, b: _error(404, unavailable)))
        return

    def ows(exc: WmtsError) -> Answer:
        from http import HTTPStatus
        status = f"HTTP/1.1 {exc.status} {HTTPStatus(exc.status).phrase}\r\n".encode()
        return status, b"application/xml", exc.report()

    def capabilities(base: str) -> Answer:
        return _OK, b"text/xml; charset=utf-8", wmts.capabilities(base + service_path[:-1])

    def wmts_handler(rest: str, query: str, base: str) -> Answer:
        lower = rest.lower().rstrip("/")
        try:
            if lower == "/1.0.0/wmtscapabilities.xml":
                return capabilities(base)
            if lower.startswith("/tile/1.0.0/"):
                return wmts.tile_from_path(rest[len("/tile/1.0.0/"):])
            if lower == "":
                params = kvp(query)
                request = params.get("request", "").lower()
                if params.get("service", "wmts").lower() != "wmts":
                    raise WmtsError(f"service {params['service']!r} is not served; use service=WMTS")
                if request == "getcapabilities":
                    return capabilities(base)
                if request == "gettile":
                    return wmts.tile_from_query(params)
                raise WmtsError(f"request {params.get('request', '')!r} is not served; use "
                                "GetCapabilities or GetTile", "OperationNotSupported")
        except WmtsError as exc:
            return ows(exc)
        return _error(404, f"Not found: {service_path}WMTS{rest}")

    routes.handlers.append(((service_path + "WMTS").lower(), wmts_handler))

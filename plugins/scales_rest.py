"""The ``rest`` scale source: a MapServer or ImageServer's ``?f=json`` and its ``tileInfo``.

ArcGIS Online hosted tile layers read the same way (their ``tileInfo.storageFormat``,
``minLOD``/``maxLOD``, ``TilesOnly,Tilemap`` and ``tileServers`` are parsed by
:mod:`cacheorch.arcgis_json`). A secured service that refuses the request for want of a valid
token (ArcGIS 498/499) gets one from the connection's token provider, when there is one, and the
request is made once more.
"""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import requests

from cacheorch import hookimpl
from cacheorch.arcgis_json import arcgis_error, service_from_json
from cacheorch.connection import Connection
from cacheorch.errors import AuthError, ServiceError
from cacheorch.interfaces import ScaleSource, Service

__all__ = ["RestScaleSource", "clean_location"]

_AUTH_CODES = {498: "invalid or expired token", 499: "token required", 403: "access denied"}
_NO_CREDENTIALS = " (set ARCGIS_TOKEN, or ARCGIS_USERNAME and ARCGIS_PASSWORD)"


def clean_location(location: str) -> str:
    """The service URL without a query string (``?f=pjson``, a pasted token) or trailing slash."""
    parts = urlsplit(location.strip())
    return urlunsplit(parts._replace(query="", fragment="")).rstrip("/")


class RestScaleSource(ScaleSource):
    """Levels from a MapServer / ImageServer REST endpoint (?f=json tileInfo)."""

    name = "rest"

    @classmethod
    def accepts(cls, location: str) -> bool:
        return location.lower().startswith(("http://", "https://"))

    def read(self, location: str, connection: Connection) -> Service:
        url = clean_location(location)
        response, data = _get_json(url, connection)
        if connection.can_renew_token and _wants_token(response, data, connection.token):
            connection.renew_token(connection.token, url)
            response, data = _get_json(url, connection)
        return _service(url, response, data, connection)


def _wants_token(response: requests.Response, data: object, token: str | None) -> bool:
    """Whether a (new) token may help: 498/499, or 401/403 while no token was sent."""
    error = arcgis_error(data)
    code = error[0] if error is not None else None
    if code in (498, 499) or response.status_code in (498, 499):
        return True
    return token is None and (code in (401, 403) or response.status_code in (401, 403))


def _get_json(url: str, connection: Connection) -> tuple[requests.Response, object]:
    shown = connection.redact(url)
    try:
        response = connection.session.get(url, params=connection.params(f="json"),
                                          timeout=connection.timeout)
    except requests.exceptions.Timeout:
        raise ServiceError(f"{shown}: no answer within {connection.timeout:g} s") from None
    except requests.exceptions.ConnectionError as exc:
        reason = str(exc.args[0] if exc.args else exc).split(":")[-1].strip(" )'\"") or "refused"
        raise ServiceError(f"cannot reach {shown}: {connection.redact(reason)}") from None
    except requests.exceptions.RequestException as exc:
        raise ServiceError(f"{shown}: {connection.redact(type(exc).__name__)}") from None
    try:
        data = response.json()
    except ValueError:
        data = None
    return response, data


def _service(url: str, response: requests.Response, data: object, connection: Connection
             ) -> Service:
    shown = connection.redact(url)
    hint = "" if connection.token or connection.can_renew_token else _NO_CREDENTIALS
    error = arcgis_error(data)
    if error is not None:  # ArcGIS answers errors with HTTP 200 and an error body
        code, message = error
        if code in _AUTH_CODES:
            raise AuthError(f"{shown}: {_AUTH_CODES[code]} (ArcGIS error {code})"
                            f"{hint if code != 403 else ''}")
        raise ServiceError(f"{shown}: ArcGIS error {code}: "
                           f"{connection.redact(message) or 'no message'}")
    if response.status_code in (498, 499):
        code = response.status_code
        raise AuthError(f"{shown}: {_AUTH_CODES[code]} (HTTP {code}){hint}")
    if response.status_code in (401, 403):
        raise AuthError(f"{shown}: access denied (HTTP {response.status_code})")
    if response.status_code >= 400:
        raise ServiceError(f"{shown}: HTTP {response.status_code} {response.reason}")
    if data is None:
        kind = response.headers.get("Content-Type", "unknown type").split(";")[0]
        raise ServiceError(f"{shown} did not answer JSON ({kind}, {len(response.content)} bytes)")
    return service_from_json(url, data)


@hookimpl
def cacheorch_register_scale_sources() -> list[type[ScaleSource]]:
    return [RestScaleSource]

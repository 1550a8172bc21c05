"""The ``rest`` scale source: a MapServer or ImageServer's ``?f=json`` and its ``tileInfo``."""
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
        error = arcgis_error(data)
        if error is not None:  # ArcGIS answers errors with HTTP 200 and an error body
            code, message = error
            if code in _AUTH_CODES:
                raise AuthError(f"{shown}: {_AUTH_CODES[code]} (ArcGIS error {code})")
            raise ServiceError(f"{shown}: ArcGIS error {code}: "
                               f"{connection.redact(message) or 'no message'}")
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

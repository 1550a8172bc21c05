"""The ``rest`` scale source: a MapServer or ImageServer's ``?f=json`` and its ``tileInfo``.

ArcGIS Online hosted tile layers read the same way (their ``tileInfo.storageFormat``,
``minLOD``/``maxLOD``, ``TilesOnly,Tilemap`` and ``tileServers`` are parsed by
:mod:`cacheorch.arcgis_json`). A secured service that refuses the request for want of a valid
token (ArcGIS 498/499) gets one from the connection's token provider, when there is one, and the
request is made once more.
"""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from cacheorch import hookimpl
from cacheorch.arcgis_json import service_from_json
from cacheorch.connection import Connection
from cacheorch.interfaces import ScaleSource, Service

__all__ = ["RestScaleSource", "clean_location"]


def clean_location(location: str) -> str:
    """The service URL without a query string (``?f=pjson``, a pasted token) or trailing slash."""
    parts = urlsplit(location.strip())
    return urlunsplit(parts._replace(query="", fragment="")).rstrip("/")


class RestScaleSource(ScaleSource):
    """Levels from a MapServer / ImageServer REST endpoint (?f=json tileInfo)."""

    name = "rest"

    @classmethod
    def accepts(cls, location: str) -> bool:
        return location.lower().startswith(("http://", "https://")) \
            and "/vectortileserver" not in location.lower()  # the ``vector`` source's

    def read(self, location: str, connection: Connection) -> Service:
        url = clean_location(location)
        return service_from_json(url, connection.get_json(url))


@hookimpl
def cacheorch_register_scale_sources() -> list[type[ScaleSource]]:
    return [RestScaleSource]

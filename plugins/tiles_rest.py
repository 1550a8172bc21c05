"""The ``rest`` tile source: tiles from a cached service's ``/tile/{level}/{row}/{col}`` endpoint.

This module only turns tile keys into URLs and a :class:`~cacheorch.connection.Connection` into
engine settings; the HTTP work (concurrency, retries, classification of answers) is
:mod:`cacheorch.fetch`, so scripts can use the same engine without the plugin machinery.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from cacheorch.fetch import RetryPolicy, TileFetchEngine
from cacheorch.hookspecs import hookimpl
from cacheorch.interfaces import Service, TileFetcher, TileResult, TileSource
from cacheorch.tiling import TileKey

if TYPE_CHECKING:
    from cacheorch.connection import Connection

__all__ = ["RestTileSource", "RestTileFetcher", "tile_url_maker", "cacheorch_register_tile_sources"]


def tile_url_maker(service: Service, connection: Connection) -> Callable[[TileKey], str]:
    """A function ``key → URL`` for ``service``, spreading rows over ``tileServers``.

    Why ``row % n``: ArcGIS Online lists several tile hosts that serve the same cache; browsers
    spread by row, and neighbouring rows land on different hosts, which spreads the load evenly
    while every bundle (128 rows) still touches each host.
    """
    bases = [b.split("?", 1)[0].rstrip("/") + "/tile/"
             for b in (service.tile_servers or (service.location,))]
    params = connection.params()
    query = "?" + urlencode(params) if params else ""
    if len(bases) == 1:
        base = bases[0]

        def url(key: TileKey) -> str:
            return f"{base}{key.level}/{key.row}/{key.col}{query}"
    else:
        n = len(bases)

        def url(key: TileKey) -> str:
            return f"{bases[key.row % n]}{key.level}/{key.row}/{key.col}{query}"
    return url


class RestTileFetcher(TileFetcher):
    """An open ``rest`` source: one :class:`~cacheorch.fetch.TileFetchEngine` and its URL maker."""

    def __init__(self, engine: TileFetchEngine, service: Service, connection: Connection) -> None:
        self.engine = engine
        self._url = tile_url_maker(service, connection)

    def fetch(self, keys: Iterable[TileKey]) -> Iterator[TileResult]:
        url = self._url
        return self.engine.fetch(((key, url(key)) for key in keys), TileResult)

    def close(self) -> None:
        self.engine.close()


class RestTileSource(TileSource):
    """Tiles from a MapServer or ImageServer /tile endpoint over HTTP(S)."""

    name = "rest"

    @dataclass
    class Options:
        #: First retry wait in seconds; it doubles per retry, with jitter, up to ``backoff_cap``.
        backoff: float = 0.2
        backoff_cap: float = 10.0
        #: Longest wait a server may ask for with Retry-After (429/503).
        retry_after_cap: float = 60.0
        #: Use HTTP_PROXY / HTTPS_PROXY / NO_PROXY from the environment.
        trust_env: bool = True

    @classmethod
    def accepts(cls, location: str) -> bool:
        return location.startswith(("http://", "https://"))

    def open(self, service: Service, connection: Connection, workers: int) -> TileFetcher:
        opts = self.options
        engine = TileFetchEngine(
            workers=workers,
            headers=connection.request_headers(),
            timeout=connection.timeout,
            retry=RetryPolicy(retries=connection.retries, backoff=opts.backoff,
                              backoff_cap=opts.backoff_cap, retry_after_cap=opts.retry_after_cap),
            redact=connection.redact,
            trust_env=opts.trust_env,
        )
        return RestTileFetcher(engine, service, connection)


@hookimpl
def cacheorch_register_tile_sources() -> list[type[TileSource]]:
    return [RestTileSource]

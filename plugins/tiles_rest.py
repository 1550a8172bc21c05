"""The ``rest`` tile source: tiles from a cached service's ``/tile/{level}/{row}/{col}`` endpoint.

This module only turns tile keys into URLs and a :class:`~cacheorch.connection.Connection` into
engine settings; the HTTP work (concurrency, retries, classification of answers) is
:mod:`cacheorch.fetch`, so scripts can use the same engine without the plugin machinery.

Tokens: every URL carries the connection's *current* token, read when the URL is made, so once a
token is renewed every later tile uses the new one; a tile refused with 498/499 asks the
connection to renew (one renewal serves every tile refused together) and is retried once.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from cacheorch.connection import Reauth, with_token
from cacheorch.fetch import RetryPolicy, TileFetchEngine
from cacheorch.hookspecs import hookimpl
from cacheorch.interfaces import Service, TileFetcher, TileResult, TileSource
from cacheorch.net.acceptor import TileAcceptor
from cacheorch.tiling import TileKey

if TYPE_CHECKING:
    from cacheorch.connection import Connection

__all__ = ["RestTileSource", "RestTileFetcher", "tile_url_maker", "with_token",
           "cacheorch_register_tile_sources"]

log = logging.getLogger(__name__)


def tile_url_maker(service: Service, connection: Connection) -> Callable[[TileKey], str]:
    """A function ``key → URL`` for ``service``, spreading rows over ``tileServers``.

    Why ``row % n``: ArcGIS Online lists several tile hosts that serve the same cache; browsers
    spread by row, and neighbouring rows land on different hosts, which spreads the load evenly
    while every bundle (128 rows) still touches each host.
    """
    bases = [b.split("?", 1)[0].rstrip("/") + "/tile/"
             for b in (service.tile_servers or (service.location,))]
    # The query string is rebuilt only when the token changes: a renewal reaches the next URL.
    made: list[object] = [object(), ""]  # [token the query was made with, query]

    def query() -> str:
        token = connection.current_token()
        if token is not made[0]:
            params = connection.params()
            made[:] = [token, "?" + urlencode(params) if params else ""]
        return made[1]  # type: ignore[return-value]

    if len(bases) == 1:
        base = bases[0]

        def url(key: TileKey) -> str:
            return f"{base}{key.level}/{key.row}/{key.col}{query()}"
    else:
        n = len(bases)

        def url(key: TileKey) -> str:
            return f"{bases[key.row % n]}{key.level}/{key.row}/{key.col}{query()}"
    return url


def token_renewer(service: Service, connection: Connection
                  ) -> Callable[[str, bool], Reauth | None]:
    """The engine's ``reauth``: :meth:`Connection.reauthorised_url` for ``service``."""
    return lambda url, renew: connection.reauthorised_url(url, service.location, renew)


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
        #: Go through the command's proxies (flags, config, HTTP(S)_PROXY / NO_PROXY); false:
        #: every connection direct.
        trust_env: bool = True

    @classmethod
    def accepts(cls, location: str) -> bool:
        return location.startswith(("http://", "https://")) \
            and "/vectortileserver" not in location.lower()  # the ``vector`` source's

    def open(self, service: Service, connection: Connection, workers: int) -> TileFetcher:
        opts = self.options
        engine = TileFetchEngine(
            workers=workers,
            headers=connection.request_headers(),
            network=connection.network if opts.trust_env else connection.network.without_proxies(),
            retry=RetryPolicy(retries=connection.retries, backoff=opts.backoff,
                              backoff_cap=opts.backoff_cap, retry_after_cap=opts.retry_after_cap),
            redact=connection.redact,
            reauth=token_renewer(service, connection) if connection.can_renew_token else None,
            max_rps=connection.max_rps,
            failure_rate=connection.max_failure_rate,
            failure_window=connection.failure_window,
            acceptor=TileAcceptor(service.scheme.tile_format, connection.max_tile_size),
        )
        return RestTileFetcher(engine, service, connection)


@hookimpl
def cacheorch_register_tile_sources() -> list[type[TileSource]]:
    return [RestTileSource]

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
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from cacheorch.errors import AuthError, CacheorchError
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


def with_token(url: str, token: str) -> str:
    """``url`` with its ``token`` parameter set to ``token`` (added if absent)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "token"]
    query.append(("token", token))
    return urlunsplit(parts._replace(query=urlencode(query)))


def _token_of(url: str) -> str | None:
    for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if k == "token":
            return v
    return None


def token_renewer(service: Service, connection: Connection) -> Callable[[str], str | None]:
    """The engine's ``reauth``: renew the token a refused URL carried; the URL with the new one.

    Credentials refused by the token service end the job (every tile would fail the same way);
    a token service that cannot be reached fails only the tile, so a resume can pick it up.
    """
    def reauth(url: str) -> str | None:
        used = _token_of(url)
        try:
            token = connection.renew_token(used, service.location)
        except AuthError:
            raise
        except CacheorchError as exc:
            log.warning("token renewal failed: %s", connection.redact(exc))
            return None
        if not token or token == used:
            return None
        return with_token(url, token)
    return reauth


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

"""The ``vector`` tile source: ``.pbf`` tiles of a VectorTileServer, through its quadtree tilemap.

Vector caches are sparse by design (a leaf tile has no children; clients overzoom it), so the
index drives the fetch: tiles it says do not exist are answered ``missing`` without a request
(through :class:`~cacheorch.plugins.tilemap.TilemapFilter`, bundle by bundle), and a tile it lists
that the server does not have is a failure naming the tile, never a silent hole. Tiles are kept
as served when gzipped and gzipped otherwise (the form vtpk bundles and ``pbf`` MBTiles hold), and
one that does not parse as a vector tile fails by name instead of being stored.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from cacheorch.errors import CacheorchError, ServiceError
from cacheorch.fetch import TileFetchEngine
from cacheorch.hookspecs import hookimpl
from cacheorch.interfaces import Service, TileFetcher, TileResult, TileSource
from cacheorch.plugins.tiles_rest import RestTileSource
from cacheorch.plugins.tilemap import Tilemap, TilemapFilter
from cacheorch.tiling import BUNDLE_SIZE, TileKey
from cacheorch.vector.mvt import scan_layers, stored_form
from cacheorch.vector.quadtree import QuadIndex
from cacheorch.vector.service import VectorService, vector_tile_service_url

if TYPE_CHECKING:
    from cacheorch.connection import Connection

__all__ = ["VectorTileSource", "VectorTileFetcher", "read_index", "bundle_tilemap",
           "cacheorch_register_tile_sources"]

log = logging.getLogger(__name__)


def vector_url_maker(service: VectorService, connection: Connection) -> Callable[[TileKey], str]:
    """``key → URL`` from the service's template (``{z}/{y}/{x}``), with the current token."""
    template = service.tile_template.replace("{z}", "{level}").replace("{y}", "{row}") \
        .replace("{x}", "{col}")

    def url(key: TileKey) -> str:
        params = connection.params() if connection.current_token() else {}
        query = "?" + urlencode(params) if params else ""
        return template.format(level=key.level, row=key.row, col=key.col) + query
    return url


def read_index(service: VectorService, connection: Connection) -> QuadIndex | None:
    """The service's quadtree tilemap, or None when it has none or it cannot be read (logged)."""
    if not service.tilemap_url:
        return None
    try:
        return QuadIndex.parse(connection.get_json(service.tilemap_url), service.tilemap_url)
    except (CacheorchError, ValueError) as exc:
        log.warning("vector tilemap unusable, every tile will be asked for: %s",
                    connection.redact(exc))
        return None


def bundle_tilemap(index: QuadIndex, level: int, top: int, left: int) -> Tilemap:
    """The index's answer for one 128×128 bundle, as the raster filter's presence grid
    (unknown subtrees count as present: their tiles are asked for)."""
    return Tilemap(level, top, left, index.block(level, top, left, BUNDLE_SIZE))


class VectorTileFetcher(TileFetcher):
    """Fetches through the engine; checks and normalises each tile; 404 on a listed tile fails."""

    def __init__(self, engine: TileFetchEngine, service: VectorService, connection: Connection,
                 index: QuadIndex | None) -> None:
        self.engine = engine
        self.index = index
        self._url = vector_url_maker(service, connection)

    def _result(self, key: TileKey, status: str, data: bytes | None, error: str | None
                ) -> TileResult:
        if status == "ok" and data is not None:
            try:
                scan_layers(data)
            except ValueError as exc:
                return TileResult(key, "failed", error=f"not a vector tile ({exc})")
            return TileResult(key, "ok", stored_form(data))
        if status == "missing" and self.index is not None and \
                self.index.has(key.level, key.row, key.col):
            return TileResult(key, "failed",
                              error="the tilemap lists this tile but the server has none (404)")
        return TileResult(key, status, data, error)  # type: ignore[arg-type]

    def fetch(self, keys: Iterable[TileKey]) -> Iterator[TileResult]:
        url = self._url
        return self.engine.fetch(((key, url(key)) for key in keys), self._result)

    def close(self) -> None:
        self.engine.close()


class VectorTileSource(RestTileSource):
    """Vector tiles (.pbf) of an ArcGIS VectorTileServer, skipping what its tilemap says is absent."""

    name = "vector"

    @dataclass
    class Options(RestTileSource.Options):
        #: Follow the service's quadtree tilemap (false: ask for every planned tile).
        tilemap: bool = True

    @classmethod
    def accepts(cls, location: str) -> bool:
        return vector_tile_service_url(location) is not None

    def open(self, service: Service, connection: Connection, workers: int) -> TileFetcher:
        if not isinstance(service, VectorService):
            raise ServiceError(f"{service.location} is not a vector tile service; the vector "
                               f"tile source reads VectorTileServer URLs")
        # the rest source's engine (retries, politeness, tokens, proxies); its tile acceptor
        # knows a pbf tile from the service's format
        engine = super().open(service, connection, workers).engine  # type: ignore[attr-defined]
        index = read_index(service, connection) if self.options.tilemap else None
        fetcher = VectorTileFetcher(engine, service, connection, index)
        if index is None:
            return fetcher
        return TilemapFilter(fetcher, lambda level, row, col: bundle_tilemap(index, level, row, col))


@hookimpl
def cacheorch_register_tile_sources() -> list[type[TileSource]]:
    return [VectorTileSource]

"""Opened sources: a service, cache or package read once, with its credentials kept server-side.

The page never sees a token or password: it gets an id, the service's description, and tiles
through :meth:`OpenSource.tile`, fetched with the same tile source plugin a job uses.
"""
from __future__ import annotations

import secrets
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cacheorch.connection import Connection, redact_url
from cacheorch.errors import UsageError
from cacheorch.net import NetworkSettings
from cacheorch.interfaces import Service, TileFetcher
from cacheorch.jobplan import _pick, read_service
from cacheorch.jobspec import PluginSpec
from cacheorch.tiling import TileKey

if TYPE_CHECKING:
    from cacheorch.pluginmanager import Plugins

__all__ = ["OpenSource", "Credentials", "open_source", "describe"]

#: Tile requests in flight for the map, per source (a job uses its own fetcher and workers).
MAP_WORKERS = 4


@dataclass
class Credentials:
    """What the user typed to reach a service; kept in memory only, never sent back or stored."""

    token: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    referer: str | None = None
    #: The workbench's CA bundle, proxies and timeouts (``[cacheorch]`` keys and environment).
    network: NetworkSettings | None = field(default=None, repr=False)

    def connection(self, **options: Any) -> Connection:
        """A connection like the CLI's: these credentials first, else ARCGIS_* from the environment."""
        if self.username or self.password:
            from cacheorch.tokens import TokenProvider
            options["token_provider"] = TokenProvider(self.username or "", self.password or "",
                                                      referer=self.referer)
        if self.network is not None:
            options.setdefault("network", self.network)
        return Connection.from_env(token=self.token, referer=self.referer, **options)


@dataclass
class OpenSource:
    """A source opened in the workbench: its :class:`Service` and a fetcher for the map's tiles."""

    id: str
    location: str
    service: Service
    credentials: Credentials
    connection: Connection
    source: PluginSpec | None = None
    _fetcher: TileFetcher | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: Tiles asked for by the map and not fetched yet (see :meth:`tile`).
    _pending: dict[TileKey, Future[bytes | None]] = field(default_factory=dict, repr=False)
    _pending_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: Mean tile size per level, sampled once (the size column of the scales table).
    sizes: dict[int, float | None] = field(default_factory=dict, repr=False)

    def fetcher(self, plugins: Plugins) -> TileFetcher:
        if self._fetcher is None:
            tile_source = _pick(plugins.tile_sources, None, self.service.location, "tile source")
            self._fetcher = tile_source.open(self.service, self.connection, MAP_WORKERS)
        return self._fetcher

    def tile(self, plugins: Plugins, level: int, row: int, col: int) -> bytes | None:
        """One tile's bytes, or None when the source has none there.

        The map asks for many tiles at once, each in its own request thread; the fetcher is used
        by one thread at a time, so whichever thread gets it fetches every tile asked for so far
        in one concurrent batch, and the others find their answer waiting.
        """
        key = TileKey(level, row, col)
        with self._pending_lock:
            wanted = self._pending.get(key)
            if wanted is None:
                wanted = self._pending[key] = Future()
        with self._lock:
            if not wanted.done():
                with self._pending_lock:
                    batch, self._pending = self._pending, {}
                try:
                    for result in self.fetcher(plugins).fetch(list(batch)):
                        found = batch.get(result.key)
                        if found is not None and not found.done():
                            found.set_result(result.data if result.status == "ok" else None)
                except Exception as exc:
                    for future in batch.values():
                        if not future.done():
                            future.set_exception(exc)
                for future in batch.values():
                    if not future.done():
                        future.set_result(None)
        return wanted.result()

    def mean_size(self, plugins: Plugins, level: int, area: Any) -> float | None:
        """The mean size of a few tiles of ``level`` in ``area`` (sampled once per level)."""
        if level not in self.sizes:
            from cacheorch.sampling import mean_size, sample_keys
            keys = sample_keys(self.service.scheme, level, area, 4)
            with self._lock:
                self.sizes[level] = mean_size(self.fetcher(plugins), keys)[0] if keys else None
        return self.sizes[level]

    def close(self) -> None:
        with self._lock:
            if self._fetcher is not None:
                self._fetcher.close()
                self._fetcher = None
        self.connection.close()


def open_source(plugins: Plugins, location: str, credentials: Credentials,
                source: str | None = None) -> OpenSource:
    """Read ``location`` (a service URL, a cache folder or a package) with the CLI's scale sources."""
    location = (location or "").strip()
    if not location:
        raise UsageError("no source: give a service URL, a cache folder or a package path")
    spec = PluginSpec(source, {}, "source") if source else None
    connection = credentials.connection()
    try:
        service = read_service(plugins, location, spec, connection)
    except BaseException:
        connection.close()
        raise
    return OpenSource(secrets.token_hex(8), location, service, credentials, connection, spec)


def describe(src: OpenSource) -> dict[str, Any]:
    """What the page shows and needs to draw the map: no credentials, the URL without secrets."""
    svc, scheme = src.service, src.service.scheme
    tiled = set(scheme.tiled_levels)
    extent = svc.full_extent or scheme.initial_extent
    sr = scheme.spatial_reference
    return {
        "id": src.id, "location": redact_url(src.location), "name": svc.name, "kind": svc.kind,
        "description": svc.description, "copyright": svc.copyright,
        "spatial_reference": str(sr), "wkid": sr.wkid, "latest_wkid": sr.latest_wkid,
        "units": scheme.units, "meters_per_unit": scheme.meters_per_unit,
        "tile_size": [scheme.tile_cols, scheme.tile_rows], "format": scheme.tile_format,
        "dpi": scheme.dpi, "origin": [scheme.origin_x, scheme.origin_y],
        "extent": list(extent.bounds) if extent else None,
        "grid_bounds": list(scheme.grid_bounds() or ()) or None,
        "levels": [{"level": lod.level, "scale": lod.scale, "resolution": lod.resolution,
                    "tiled": lod.level in tiled} for lod in scheme.lods],
    }

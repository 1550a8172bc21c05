"""Skip the tiles a service says it lacks: one ``/tilemap`` request per bundle, before its tiles.

Why: caches are sparse (sea, areas never cached, a layer built for one region), and asking for an
absent tile still costs a round trip and a 404. A service that stores Compact V2 and lists
``Tilemap`` in its capabilities says, for a block of tiles, which exist (spec §2.3). One request
per bundle, 128×128 and aligned on the bundle so the server never has to adjust it, replaces up
to 16,384 requests for tiles that are not there.

:class:`TilemapFilter` wraps any :class:`~cacheorch.interfaces.TileFetcher`: keys of tiles the
tilemap marks absent come back at once as ``missing`` results and never reach the wrapped fetcher;
the others go through it unchanged. A bundle whose tilemap cannot be had (an error, an invalid or
malformed answer) is fetched tile by tile as without the filter: the tilemap only ever saves
requests, it never loses a tile the server would have sent, except when the server's own tilemap
is wrong. HTTP 422 means "no tile here" (as in Esri's JS API).

Not a plugin kind of its own: the runner wraps the fetcher it opened, see :func:`with_tilemap`.
"""
from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cacheorch.interfaces import Service, TileFetcher, TileResult
from cacheorch.jsonlimits import loads
from cacheorch.tiling import BUNDLE_SIZE, TileKey

if TYPE_CHECKING:
    from cacheorch.connection import Connection

__all__ = ["Tilemap", "TilemapFilter", "supports_tilemap", "tilemap_url", "fetch_tilemap",
           "with_tilemap"]

log = logging.getLogger(__name__)

#: "Missing" results the filter may hold while the wrapped fetcher has nothing to give back.
DEFAULT_BACKLOG = 4096


@dataclass(frozen=True)
class Tilemap:
    """Which tiles exist in a block of a level: ``present[row - top, col - left]``."""

    level: int
    top: int
    left: int
    present: np.ndarray  # bool, height × width

    def has(self, row: int, col: int) -> bool | None:
        """Whether the tile exists; None when it lies outside the block the server described."""
        r, c = row - self.top, col - self.left
        height, width = self.present.shape
        if 0 <= r < height and 0 <= c < width:
            return bool(self.present[r, c])
        return None


def supports_tilemap(service: Service) -> bool:
    """Whether the service says it answers ``/tilemap`` (over HTTP; a local cache needs none)."""
    return (service.location.startswith(("http://", "https://"))
            and any(c.lower() == "tilemap" for c in service.capabilities))


def tilemap_url(service: Service, level: int, row: int, col: int,
                width: int = BUNDLE_SIZE, height: int = BUNDLE_SIZE) -> str:
    """The tilemap URL of a block; through ``tileServers[row % n]`` when the service lists them,
    as Esri's JS API does."""
    bases = service.tile_servers or (service.location,)
    base = bases[row % len(bases)].split("?", 1)[0].rstrip("/")
    return f"{base}/tilemap/{level}/{row}/{col}/{width}/{height}"


def fetch_tilemap(service: Service, connection: Connection, level: int, row: int, col: int,
                  width: int = BUNDLE_SIZE, height: int = BUNDLE_SIZE) -> Tilemap | None:
    """The tilemap of a block, or None when the service gives no usable one (then fetch tiles)."""
    url = tilemap_url(service, level, row, col, width, height)
    try:  # a token that expired mid-job is renewed there (shared with the tile fetcher)
        response = connection.request("GET", url, {"f": "json"},
                                      service_url=service.location)
    except Exception as exc:  # any failure to ask means "no tilemap": the tiles are fetched
        log.debug("tilemap %s/%s/%s: %s", level, row, col, connection.redact(exc))
        return None
    if response.status_code == 422:  # the JS API's reading: nothing in this block
        return Tilemap(level, row, col, np.zeros((height, width), dtype=bool))
    if response.status_code != 200:
        log.debug("tilemap %s/%s/%s: HTTP %s", level, row, col, response.status_code)
        return None
    try:
        return parse_tilemap(loads(response.content), level, row, col, width, height)
    except ValueError as exc:
        log.debug("tilemap %s/%s/%s: %s", level, row, col, exc)
        return None


def parse_tilemap(data: Any, level: int, row: int, col: int, width: int, height: int) -> Tilemap:
    """A tilemap answer → :class:`Tilemap`; ValueError when it is not a usable one.

    ``location`` says which block ``data`` covers (row-major, 1 = the tile exists); a server
    clips a request crossing a bundle line, so it may be smaller than asked (``adjusted``).
    """
    if not isinstance(data, dict) or "error" in data:
        raise ValueError("not a tilemap")
    if data.get("valid") is False:
        raise ValueError("valid: false")
    loc = data.get("location") or {"left": col, "top": row, "width": width, "height": height}
    try:
        top, left = int(loc["top"]), int(loc["left"])
        w, h = int(loc["width"]), int(loc["height"])
        values = np.asarray(data["data"], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed tilemap ({exc})") from None
    if (top, left) != (row, col) or not (0 < w <= width and 0 < h <= height) \
            or values.shape != (w * h,):
        raise ValueError(f"tilemap of {w}×{h} at {top}/{left} with {values.size} values "
                         f"does not answer {width}×{height} at {row}/{col}")
    return Tilemap(level, top, left, values.reshape(h, w) != 0)


class TilemapFilter(TileFetcher):
    """A fetcher that answers ``missing`` for the tiles a bundle's tilemap marks absent.

    Keys are consumed lazily, bundle after bundle as the planner yields them; each bundle's
    tilemap is asked once, when its first key arrives. Absent keys never reach ``inner``; their
    results are handed back between ``inner``'s, and when more than ``backlog`` pile up (a run of
    empty bundles) the stream to ``inner`` is cut there and restarted after they are handed back,
    so memory stays bounded whatever the share of absent tiles.

    :param lookup: ``(level, bundle_row, bundle_col) → Tilemap | None``.
    """

    def __init__(self, inner: TileFetcher, lookup: Callable[[int, int, int], Tilemap | None], *,
                 backlog: int = DEFAULT_BACKLOG) -> None:
        self.inner = inner
        self.lookup = lookup
        self.backlog = max(1, backlog)
        self._maps: OrderedDict[tuple[int, int, int], Tilemap | None] = OrderedDict()
        #: Tiles answered ``missing`` from a tilemap, bundles asked, bundles without a usable one.
        self.skipped = 0
        self.bundles = 0
        self.unknown = 0

    @classmethod
    def for_service(cls, inner: TileFetcher, service: Service, connection: Connection,
                    **kw: Any) -> TilemapFilter:
        return cls(inner, lambda level, row, col: fetch_tilemap(service, connection, level, row, col),
                   **kw)

    def _tilemap(self, bundle: tuple[int, int, int]) -> Tilemap | None:
        if bundle in self._maps:
            return self._maps[bundle]
        tilemap = self.lookup(*bundle)
        self.bundles += 1
        self.unknown += tilemap is None
        self._maps[bundle] = tilemap
        if len(self._maps) > 4:  # keys arrive bundle by bundle: the last few are plenty
            self._maps.popitem(last=False)
        return tilemap

    def _present(self, keys: Iterator[TileKey], absent: deque[TileResult],
                 state: dict[str, bool]) -> Iterator[TileKey]:
        """The keys to fetch; absent ones go to ``absent``. Stops early when it is full."""
        last: tuple[int, int, int] | None = None
        tilemap: Tilemap | None = None
        for key in keys:  # per tile: the bundle's map is looked up only when the bundle changes
            row, col = key.row, key.col
            bundle = (key.level, row - row % BUNDLE_SIZE, col - col % BUNDLE_SIZE)
            if bundle != last:
                last, tilemap = bundle, self._tilemap(bundle)
            if tilemap is not None and tilemap.has(row, col) is False:
                absent.append(TileResult(key, "missing"))
                self.skipped += 1
                if len(absent) >= self.backlog:
                    return
                continue
            yield key
        state["exhausted"] = True

    def fetch(self, keys: Iterable[TileKey]) -> Iterator[TileResult]:
        it = iter(keys)
        absent: deque[TileResult] = deque()
        state = {"exhausted": False}
        while not state["exhausted"]:
            for result in self.inner.fetch(self._present(it, absent, state)):
                while absent:
                    yield absent.popleft()
                yield result
            while absent:
                yield absent.popleft()

    def close(self) -> None:
        if self.bundles:
            log.info("tilemap: %d absent tile(s) skipped in %d bundle(s); %d bundle(s) without a "
                     "usable tilemap were fetched tile by tile", self.skipped, self.bundles,
                     self.unknown)
        self.inner.close()


def with_tilemap(fetcher: TileFetcher, service: Service, connection: Connection,
                 enabled: bool | None = None) -> TileFetcher:
    """``fetcher`` wrapped in a :class:`TilemapFilter`, or ``fetcher`` itself.

    :param enabled: None (the default): when the service lists ``Tilemap``; True: for any HTTP
        service (one that has no tilemap costs one failed request per bundle, then tiles are
        fetched as usual); False: never.
    """
    if enabled is False or not service.location.startswith(("http://", "https://")):
        return fetcher
    if enabled is None and not supports_tilemap(service):
        return fetcher
    return TilemapFilter.for_service(fetcher, service, connection)

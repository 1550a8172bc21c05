"""The ``cache`` tile source: tiles read from a local cache or package, so ``--service`` may be a path.

That makes cacheorch export a subset (levels, areas) of an existing cache or package into another
format, as ArcGIS's Export Tile Cache tool does: Compact V1 and V2 folders, exploded folders, .tpk
and .tpkx are read through :func:`cacheorch.formats.cache.open_cache`, byte for byte.

Reads are plain sequential positioned reads: the planner hands keys over bundle by bundle, a
bundle is opened once (header checked once) and each tile is then two or three small reads, which
on a local disk is faster than any thread pool could make it (so ``workers`` is not used).

What is reported:

* ``ok``: the stored bytes, untouched.
* ``missing``: no bundle, no index entry (size 0 / offset 0), no tile file.
* ``failed``: a bundle or record that cannot be read (bad header, missing bundlx, a record past
  the end of its bundle), and a record whose bytes do not begin with an image signature. Esri's
  own ``Usa.tpkx`` has such records at L00/L01: the index points four bytes into the PNG, so the
  record starts ``0D 0A 1A 0A`` and ends with four stray bytes. Copying it would carry a broken
  tile into the output, and repairing it would be guessing, so it is reported (with its first
  bytes) and never written; the job then ends partial unless ``--allow-partial`` is given.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cacheorch import hookimpl
from cacheorch.errors import FormatError
from cacheorch.formats.cache import BundleView, TileCache, open_cache
from cacheorch.formats.locate import local_path
from cacheorch.interfaces import Service, TileFetcher, TileResult, TileSource
from cacheorch.net.acceptor import tile_defect
from cacheorch.tiling import TileKey
from cacheorch.vector.reader import is_vector_output

if TYPE_CHECKING:
    from cacheorch.connection import Connection

__all__ = ["CacheTileSource", "CacheTileFetcher", "is_tile_payload"]

#: Bundles kept open at once: the planner goes bundle by bundle, so a few are plenty.
_OPEN_BUNDLES = 4


def is_tile_payload(data: bytes, tile_format: str | None = None) -> bool:
    """Whether stored bytes are a whole tile (cacheorch.net.acceptor: what ``run`` stores and
    ``verify`` passes): an image cut short or with trailing bytes is not."""
    return tile_defect(data, tile_format) is None


class CacheTileFetcher(TileFetcher):
    """An open cache, read tile by tile; keeps the last few bundles open."""

    def __init__(self, cache: TileCache, *, check_images: bool = True) -> None:
        self.cache = cache
        self.check_images = check_images
        # bundle key → an open view, None (no such bundle) or the error that makes it unreadable
        self._bundles: OrderedDict[tuple[int, int, int], BundleView | str | None] = OrderedDict()

    def _bundle(self, key: tuple[int, int, int]) -> BundleView | str | None:
        if key in self._bundles:
            self._bundles.move_to_end(key)
            return self._bundles[key]
        try:
            found: BundleView | str | None = self.cache.open_bundle(*key)
        except (FormatError, OSError) as exc:
            found = _one_line(exc)
        self._bundles[key] = found
        while len(self._bundles) > _OPEN_BUNDLES:
            _, old = self._bundles.popitem(last=False)
            if isinstance(old, BundleView):
                old.close()
        return found

    def read(self, key: TileKey) -> TileResult:
        """One tile's result (the whole of :meth:`fetch` is this, key after key)."""
        bundle = self._bundle((key.level, *key.bundle))
        if bundle is None:
            return TileResult(key, "missing")
        if isinstance(bundle, str):
            return TileResult(key, "failed", error=bundle)
        try:
            data = bundle.get(key.row, key.col)
        except (FormatError, OSError) as exc:
            return TileResult(key, "failed", error=_one_line(exc))
        if data is None:
            return TileResult(key, "missing")
        defect = tile_defect(data, self.cache.scheme.tile_format) if self.check_images else None
        if defect is not None:
            what = defect.kind if defect.kind.startswith("not an image") else \
                f"not a whole tile: {defect.kind}"
            return TileResult(key, "failed", error=(  # the runner prefixes level/row/col
                f"the stored record ({len(data)} bytes) is {what} ({defect.detail}); "
                "the source is damaged there"))
        return TileResult(key, "ok", data)

    def fetch(self, keys: Iterable[TileKey]) -> Iterator[TileResult]:
        read = self.read
        for key in keys:
            yield read(key)

    def close(self) -> None:
        for view in self._bundles.values():
            if isinstance(view, BundleView):
                view.close()
        self._bundles.clear()
        self.cache.close()


def _one_line(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, FormatError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split()) or type(exc).__name__


class CacheTileSource(TileSource):
    """Tiles from a local cache or package (Compact V1/V2 or exploded folder, .tpk, .tpkx)."""

    name = "cache"

    @dataclass
    class Options:
        #: Report stored records that are not an image (nor LERC) as failed instead of copying them.
        check_images: bool = True

    @classmethod
    def accepts(cls, location: str) -> bool:
        path = local_path(location)
        return path is not None and path.exists() and not is_vector_output(path)  # vector-package's

    def open(self, service: Service, connection: Connection, workers: int) -> TileFetcher:
        path = local_path(service.location)
        if path is None:
            raise FormatError(f"{service.location}: the cache tile source reads local caches only")
        cache = open_cache(path)
        if cache.scheme.fingerprint() != service.scheme.fingerprint():
            cache.close()
            raise FormatError(f"{path}: its tiling scheme differs from the one the job was planned "
                              "with; the cache changed since")
        return CacheTileFetcher(cache, check_images=self.options.check_images)


@hookimpl
def cacheorch_register_tile_sources() -> list[type[TileSource]]:
    return [CacheTileSource]

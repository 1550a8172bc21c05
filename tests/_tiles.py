"""Test helpers that feed tiles to an exporter session the way the runner does: bundle by bundle.

Import as ``from _tiles import ...`` (tests/ is on sys.path via conftest.py).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from _gdal import colour_of, solid_png

__all__ = ["Tiles", "by_bundle", "write_tiles", "pyramid", "mapproxy_tiles", "all_tiles",
           "mercator_service_json", "pad_png"]

Tiles = dict[tuple[int, int, int], bytes]


def by_bundle(tiles: Mapping[tuple[int, int, int], bytes]) -> dict[tuple[int, int, int], Tiles]:
    """``tiles`` grouped by their 128×128 bundle (level, bundle row, bundle col), in key order."""
    grouped: dict[tuple[int, int, int], Tiles] = {}
    for (level, row, col), data in sorted(tiles.items()):
        grouped.setdefault((level, row // 128 * 128, col // 128 * 128), {})[(level, row, col)] = data
    return grouped


def write_tiles(session, tiles: Mapping[tuple[int, int, int], bytes]) -> None:
    """Open, fill and close one sink per bundle of ``tiles`` (does not commit)."""
    for (level, brow, bcol), members in by_bundle(tiles).items():
        sink = session.open_bundle(level, brow, bcol)
        for (_, row, col), data in members.items():
            sink.add(row, col, data)
        sink.close()


def pyramid(levels: Iterable[int], size: int = 256) -> Tiles:
    """Every tile of ``levels`` of a one-tile-at-level-0 grid, each a solid ``colour_of`` PNG."""
    return {(lv, r, c): solid_png(colour_of(lv, r, c), size=size)
            for lv in levels for r in range(2 ** lv) for c in range(2 ** lv)}


def mapproxy_tiles(output, keys: Iterable[tuple[int, int, int]]) -> Tiles:
    """The tiles of ``keys`` that MapProxy's Compact V2 reader finds in a cache folder.

    An independent reader (not cacheorch's BundleReader): the bytes of each tile it finds, keyed
    (level, row, col); absent tiles are left out.
    """
    from pathlib import Path

    from mapproxy.cache.compact import CompactCacheV2
    from mapproxy.cache.tile import Tile

    alllayers = next(Path(output).rglob("_alllayers"))
    cache = CompactCacheV2(str(alllayers))
    found: Tiles = {}
    for level, row, col in keys:
        tile = Tile((col, row, level))
        if cache.load_tile(tile):
            found[(level, row, col)] = tile.image_result.as_buffer().read()
    return found


def all_tiles(output) -> Tiles:
    """Every tile of an output, through cacheorch's own reader (open_cache and the bundle indexes)."""
    from cacheorch.formats.cache import open_cache

    with open_cache(output) as cache:
        return {(lv, r, c): data for lv, br, bc in cache.bundle_keys()
                for r, c, data in cache.bundle_tiles(lv, br, bc)}


def mercator_service_json(max_level: int) -> dict:
    """The least MapServer JSON a run needs: Web Mercator levels 0..max_level, world extent."""
    from cacheorch.tiling import web_mercator_scheme

    sr = {"wkid": 102100, "latestWkid": 3857}
    half = 20037508.342787
    return {"currentVersion": 10.81, "spatialReference": sr,
            "tileInfo": web_mercator_scheme(max_level).to_json(),
            "fullExtent": {"xmin": -half, "ymin": -half, "xmax": half, "ymax": half,
                           "spatialReference": sr}}


def pad_png(png: bytes, size: int) -> bytes:
    """``png`` grown to exactly ``size`` bytes by an ancillary chunk before IEND: still a whole
    PNG (the tile acceptor refuses bytes after IEND), for tests that need tiles of given sizes."""
    import struct
    import zlib

    filler = size - len(png) - 12
    if filler < 0:
        raise ValueError(f"a PNG of {len(png)} bytes cannot be padded to {size}")
    data = bytes(filler)
    chunk = struct.pack(">I", filler) + b"paDd" + data + struct.pack(">I", zlib.crc32(b"paDd" + data))
    return png[:-12] + chunk + png[-12:]

"""Where a cache's tiles are, for the preview to open on them (not on a world-wide fullExtent)."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cacheorch.formats.cache import TileCache

__all__ = ["data_extent"]

#: Bundles whose index is read at most; past it a coarser level is used.
MAX_BUNDLES = 64


def data_extent(cache: TileCache, tiled_levels: list[int]) -> list[float] | None:
    """[xmin, ymin, xmax, ymax] of the tiles present at the finest level that can be read cheaply.

    Bundle caches (Compact V1/V2) answer from their indexes (which cells hold a tile); others
    from their 128×128 blocks at a level where a block is small. None when nothing is found.
    """
    from cacheorch.tiling import BUNDLE_SIZE
    from cacheorch.verify import bundle_presence

    scheme = cache.scheme
    by_level: dict[int, list[tuple[int, int]]] = {}
    for level, brow, bcol in cache.bundle_keys():
        by_level.setdefault(level, []).append((brow, bcol))
    levels = [lv for lv in sorted(tiled_levels, reverse=True) if lv in by_level and lv in scheme.levels]
    for level in levels:
        bundles = by_level[level]
        if len(bundles) > MAX_BUNDLES:
            continue
        rows: list[int] = []
        cols: list[int] = []
        for brow, bcol in bundles:
            flags = bundle_presence(cache, level, brow, bcol)
            if flags is None:  # not bundles: the 128×128 blocks, small at the finest level
                rows += [brow, brow + BUNDLE_SIZE - 1]
                cols += [bcol, bcol + BUNDLE_SIZE - 1]
                continue
            present = [i for i, flag in enumerate(flags) if flag]
            rows += [brow + i // BUNDLE_SIZE for i in (present[0], present[-1])] if present else []
            cols += [bcol + min(i % BUNDLE_SIZE for i in present),
                     bcol + max(i % BUNDLE_SIZE for i in present)] if present else []
        if not rows:
            continue
        x0, _, _, y1 = scheme.tile_bounds(level, min(rows), min(cols))
        _, y0, x1, _ = scheme.tile_bounds(level, max(rows), max(cols))
        grid = scheme.grid_bounds()
        if grid is not None:
            x0, y0, x1, y1 = max(x0, grid[0]), max(y0, grid[1]), min(x1, grid[2]), min(y1, grid[3])
        return [x0, y0, x1, y1]
    return None

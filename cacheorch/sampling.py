"""Which few tiles of a level to fetch to estimate its tile size (for the ``max-bytes`` policy).

Tile sizes vary with what a tile shows (sea compresses to almost nothing, a city does not), so the
samples are spread over the area, one near the middle of each quarter of its bounding box, rather
than taken side by side; every sample lies inside the area, never on a tile that only its
bounding box reaches.
"""
from __future__ import annotations

from collections.abc import Iterable
from statistics import fmean

import shapely
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from cacheorch.interfaces import TileFetcher
from cacheorch.tiling import TileKey, TilingScheme

__all__ = ["sample_keys", "mean_size", "DEFAULT_SAMPLES"]

#: Tiles fetched per level: enough to tell a sea level from a city level, cheap enough per level.
DEFAULT_SAMPLES = 5


def _points(area: BaseGeometry) -> list[tuple[float, float]]:
    """A point inside the area, then one inside each quarter of its bounding box it reaches."""
    points = []
    centre = area.point_on_surface()
    if not centre.is_empty:
        points.append((centre.x, centre.y))
    xmin, ymin, xmax, ymax = area.bounds
    xmid, ymid = (xmin + xmax) / 2, (ymin + ymax) / 2
    for quarter in (box(xmin, ymid, xmid, ymax), box(xmid, ymid, xmax, ymax),
                    box(xmin, ymin, xmid, ymid), box(xmid, ymin, xmax, ymid)):
        piece = shapely.intersection(area, quarter)
        if not piece.is_empty and piece.area > 0:
            p = piece.point_on_surface()
            points.append((p.x, p.y))
    return points


def sample_keys(scheme: TilingScheme, level: int, area: BaseGeometry,
                count: int = DEFAULT_SAMPLES) -> list[TileKey]:
    """Up to ``count`` distinct tiles of ``level`` lying in ``area`` (in the scheme's SR).

    When the spread points fall on fewer tiles (a small area at a coarse level), the tiles
    around the first one that meet the area fill in.
    """
    if area.is_empty or count <= 0:
        return []
    size = scheme.grid_size(level)
    keys: list[TileKey] = []

    def add(row: int, col: int) -> None:
        if row < 0 or col < 0 or (size is not None and (row >= size[0] or col >= size[1])):
            return
        key = TileKey(level, row, col)
        if key not in keys and len(keys) < count:
            keys.append(key)

    for x, y in _points(area):
        add(*scheme.tile_of_point(level, x, y))
    if keys and len(keys) < count:
        first = keys[0]
        shapely.prepare(area)
        for ring in range(1, 4):
            for dr in range(-ring, ring + 1):
                for dc in range(-ring, ring + 1):
                    if max(abs(dr), abs(dc)) != ring:
                        continue
                    row, col = first.row + dr, first.col + dc
                    if row >= 0 and col >= 0 and \
                            area.intersects(box(*scheme.tile_bounds(level, row, col))):
                        add(row, col)
            if len(keys) >= count:
                break
    return keys


def mean_size(fetcher: TileFetcher, keys: Iterable[TileKey]) -> tuple[float | None, int, str]:
    """Fetch ``keys``; return the mean size of the tiles received (None if none), how many
    failed, and the first failure's message."""
    sizes: list[int] = []
    failed, error = 0, ""
    for result in fetcher.fetch(list(keys)):
        if result.status == "ok" and result.data is not None:
            sizes.append(len(result.data))
        elif result.status == "failed":
            failed += 1
            error = error or (result.error or "")
    return (fmean(sizes) if sizes else None), failed, error

"""Which tiles of a level meet an area, streamed bundle by bundle and never held all at once.

Per band of 128 tile rows (one row of bundles) the area is clipped to the band, then per tile row to
the row's strip; each connected piece of a strip spans an interval of columns, so the cost follows
the rows and the area's outline, not the number of tiles. Pieces with holes are the one case an
interval over-counts, and only their columns are tested tile by tile.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from cacheorch.tiling import BUNDLE_SIZE, TileKey, TilingScheme

__all__ = ["BundlePlan", "plan_level", "count_level", "count_levels"]

#: Fraction of a tile by which an edge may overshoot a tile boundary and still not pull it in.
_EDGE = 1e-9


@dataclass(frozen=True)
class BundlePlan:
    """The tiles of one bundle to fetch: column spans per row, absolute and inclusive."""

    level: int
    bundle_row: int
    bundle_col: int
    spans: tuple[tuple[int, int, int], ...]

    @property
    def tile_count(self) -> int:
        return sum(last - first + 1 for _, first, last in self.spans)

    def keys(self) -> Iterator[TileKey]:
        level = self.level
        for row, first, last in self.spans:
            for col in range(first, last + 1):
                yield TileKey(level, row, col)


def _polygons(geom: BaseGeometry) -> list[Polygon]:
    if geom.is_empty:
        return []
    if isinstance(geom, Polygon):
        return [geom]
    return [p for p in getattr(geom, "geoms", ()) for p in _polygons(p)]


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    spans.sort()
    out: list[tuple[int, int]] = []
    for first, last in spans:
        if out and first <= out[-1][1] + 1:
            if last > out[-1][1]:
                out[-1] = (out[-1][0], last)
        else:
            out.append((first, last))
    return out


class _Level:
    """Grid numbers of one level, and the area clipped to the grid."""

    def __init__(self, scheme: TilingScheme, level: int, area: BaseGeometry) -> None:
        self.scheme, self.level = scheme, level
        self.span_x, self.span_y = scheme.tile_span(level)
        bounds = scheme.grid_bounds()
        if bounds is not None and not area.is_empty:
            area = shapely.clip_by_rect(area, *bounds)
        self.area = area
        self.size = scheme.grid_size(level)
        self.range = None if area.is_empty else scheme.tile_range(level, area.bounds)

    def col_span(self, xmin: float, xmax: float) -> tuple[int, int]:
        """Columns whose tiles meet the open x-interval; an edge on a tile line adds no column."""
        ox, span = self.scheme.origin_x, self.span_x
        first = max(math.floor((xmin - ox) / span + _EDGE), 0)
        last = math.ceil((xmax - ox) / span - _EDGE) - 1
        if self.size is not None:
            last = min(last, self.size[1] - 1)
        if last < first:  # a sliver thinner than the tolerance still meets the tile it lies in
            last = first = max(math.floor((xmin - ox) / span), 0)
        return (first, last)

    def tile_boxes_at(self, row: int, cols: np.ndarray) -> np.ndarray:
        """Shapely boxes of the tiles of ``row`` at columns ``cols`` (vectorised)."""
        ox, oy = self.scheme.origin_x, self.scheme.origin_y
        cols = np.asarray(cols, dtype=float)
        return shapely.box(ox + cols * self.span_x, oy - (row + 1) * self.span_y,
                           ox + (cols + 1) * self.span_x, oy - row * self.span_y)


def _row_spans(lv: _Level, row: int, band_piece: BaseGeometry) -> list[tuple[int, int]]:
    """Column intervals of ``row`` whose tiles meet the interior of the area."""
    oy, sy = lv.scheme.origin_y, lv.span_y
    top, bottom = oy - row * sy, oy - (row + 1) * sy
    inset = sy * _EDGE
    strip = shapely.clip_by_rect(band_piece, lv.scheme.origin_x - 1e300, bottom + inset,
                                 1e300, top - inset) if not band_piece.is_empty else band_piece
    spans: list[tuple[int, int]] = []
    for part in _polygons(strip):
        if part.area <= 0:
            continue
        xmin, _, xmax, _ = part.bounds
        span = lv.col_span(xmin, xmax)
        if not part.interiors:
            spans.append(span)
            continue
        spans.extend(_around_holes(lv, row, part, span))
    return _merge(spans)


def _around_holes(lv: _Level, row: int, part: Polygon, span: tuple[int, int]
                  ) -> list[tuple[int, int]]:
    """The tiles of ``span`` that meet ``part``'s interior, testing only the columns under a hole.

    A column outside every hole's x-extent meets the part (a connected part crosses every
    vertical line of its span), so only those under holes are tested, against a prepared
    geometry: "intersects but does not merely touch" is "the interiors meet". Clipping to the
    row's strip normally splits a part around any hole tall enough to hold a whole tile, so this
    is the guard for pieces the clip leaves whole (and for callers passing unclipped parts).
    """
    first, last = span
    under = np.zeros(last - first + 1, dtype=bool)
    for hole in part.interiors:
        hxmin, _, hxmax, _ = hole.bounds
        lo, hi = lv.col_span(hxmin, hxmax)
        lo, hi = max(lo, first), min(hi, last)
        if lo <= hi:
            under[lo - first:hi - first + 1] = True
    cols = np.nonzero(under)[0] + first
    keep = np.ones(last - first + 1, dtype=bool)
    if cols.size:
        boxes = lv.tile_boxes_at(row, cols)
        shapely.prepare(part)
        meets = shapely.intersects(part, boxes) & ~shapely.touches(part, boxes)
        keep[cols - first] = meets
    out: list[tuple[int, int]] = []
    for col in np.nonzero(keep)[0] + first:
        col = int(col)
        if out and out[-1][1] == col - 1:
            out[-1] = (out[-1][0], col)
        else:
            out.append((col, col))
    return out


def _bands(lv: _Level) -> Iterator[tuple[int, int, int, int]]:
    """(band first row, band last row, min col, max col) for each bundle row meeting the area."""
    assert lv.range is not None
    min_row, min_col, max_row, max_col = lv.range
    first_band = min_row // BUNDLE_SIZE * BUNDLE_SIZE
    for band in range(first_band, max_row + 1, BUNDLE_SIZE):
        yield band, min(band + BUNDLE_SIZE - 1, max_row), min_col, max_col


def plan_level(scheme: TilingScheme, level: int, area: BaseGeometry) -> Iterator[BundlePlan]:
    """Yield the bundles of ``level`` meeting ``area`` (in the scheme's SR), row-major.

    Every tile whose box overlaps the area's interior is included; a tile that only touches the
    area's edge may be included or not. Memory holds one band of row spans at a time.
    """
    lv = _Level(scheme, level, area)
    if lv.range is None:
        return
    oy, sy = scheme.origin_y, lv.span_y
    for band, last_row, min_col, max_col in _bands(lv):
        band_top = oy - max(band, lv.range[0]) * sy
        band_bottom = oy - (last_row + 1) * sy
        piece = shapely.clip_by_rect(lv.area, scheme.origin_x - 1e300, band_bottom, 1e300, band_top)
        if piece.is_empty:
            continue
        # One band of spans, split by bundle column: the only thing held while a band is planned.
        by_bundle: dict[int, list[tuple[int, int, int]]] = {}
        for row in range(max(band, lv.range[0]), last_row + 1):
            for first, last in _row_spans(lv, row, piece):
                first_bundle, last_bundle = first // BUNDLE_SIZE, last // BUNDLE_SIZE
                if first_bundle == last_bundle:
                    _append(by_bundle, first_bundle * BUNDLE_SIZE, (row, first, last))
                    continue
                _append(by_bundle, first_bundle * BUNDLE_SIZE,
                        (row, first, (first_bundle + 1) * BUNDLE_SIZE - 1))
                for b in range(first_bundle + 1, last_bundle):
                    _append(by_bundle, b * BUNDLE_SIZE, (row, b * BUNDLE_SIZE, (b + 1) * BUNDLE_SIZE - 1))
                _append(by_bundle, last_bundle * BUNDLE_SIZE, (row, last_bundle * BUNDLE_SIZE, last))
        for bundle_col in sorted(by_bundle):
            yield BundlePlan(level, band, bundle_col, tuple(by_bundle.pop(bundle_col)))


def _append(by_bundle: dict[int, list[tuple[int, int, int]]], bundle_col: int,
            span: tuple[int, int, int]) -> None:
    spans = by_bundle.get(bundle_col)
    if spans is None:
        by_bundle[bundle_col] = [span]
    else:
        spans.append(span)


def count_level(scheme: TilingScheme, level: int, area: BaseGeometry) -> int:
    """How many tiles :func:`plan_level` yields, without keeping them."""
    return sum(plan.tile_count for plan in plan_level(scheme, level, area))


def count_levels(scheme: TilingScheme, levels: Sequence[int], area: BaseGeometry) -> dict[int, int]:
    """Tile counts of several levels sharing one area."""
    return {level: count_level(scheme, level, area) for level in levels}


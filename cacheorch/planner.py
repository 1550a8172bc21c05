"""Which tiles of a level meet an area: counted from row spans, streamed bundle by bundle.

A country at level 18 is 10^9 tiles over 10^5 rows, so nothing here may cost per tile, nor call
the geometry engine per row. The area's rings become straight edges in tile units (one tile is the
unit square, row ``r`` is the open strip ``r < v < r+1``), and a scanline gives, for each row, the
columns whose tiles share some area with the area's interior. That column set is the union of

- the x-extents of the edges' pieces inside the row's strip (where the outline passes through the
  row), and
- the even-odd fill of all rings along the row's middle line (where the row lies wholly inside).

Why this is exact: a tile meets the interior iff some vertical line through it meets the interior
inside the strip. Such a line either meets the outline inside the strip (first set), or lies wholly
inside, middle point included (second set). Conversely every point of either set is a limit of such
lines. Both sets are unions of intervals, so a tile (an open interval of columns) meets one iff it
overlaps an interval of positive length; the count is therefore the same as the brute-force
``box(tile) ∩ area`` test. Holes and multipolygons need nothing special: the fill is even-odd over
every ring, and hole edges are outline like any other.

The work is proportional to the (edge, row) pairs, i.e. the outline's length in rows, and is done
with numpy a block of rows at a time, so memory stays flat at any level; the tile count of a level
is a sum of merged interval lengths and never builds a :class:`BundlePlan`.

Tolerance: an edge closer to a tile line than 1e-9 of a tile, plus the rounding of coordinates of
its size (2^-46 of them: 3e-9 of a tile at level 18, 6e-8 at level 23), counts as lying on it, so
an area drawn on tile lines does not pull in the neighbouring row or column. The price: a sliver
thinner than that across a tile line (a fraction of a micrometre) is not counted.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from cacheorch.tiling import BUNDLE_SIZE, TileKey, TilingScheme

__all__ = ["BundlePlan", "plan_level", "count_level", "count_levels"]

#: Fraction of a tile by which an edge may overshoot a tile line and still not cross it.
_EDGE = 1e-9
#: Float rounding of a coordinate, relative to its size: the tolerance grows with it.
_ROUNDING = 2.0 ** -46
#: (edge, row) pairs processed at once when counting: bounds the memory of a level, not its tiles.
_PAIRS_PER_BLOCK = 1 << 15


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


# -- the area as edges ------------------------------------------------------------------------------

def _polygons(geom: BaseGeometry) -> list[Polygon]:
    """The polygons of any geometry (make_valid may return a collection with lines in it)."""
    if geom.is_empty:
        return []
    if isinstance(geom, Polygon):
        return [geom]
    return [p for part in getattr(geom, "geoms", ()) for p in _polygons(part)]


_NO_EDGES = (np.empty(0),) * 4
#: The last area turned into edges, kept with the area itself so its id cannot be reused:
#: ``count_level`` is called once per level with the same (possibly large) area.
_last_edges: tuple[BaseGeometry, tuple[np.ndarray, ...]] | None = None


def _edges(area: BaseGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every ring edge of ``area`` in map units: (x0, y0, x1, y1)."""
    global _last_edges
    cached = _last_edges
    if cached is not None and cached[0] is area:
        return cached[1]  # type: ignore[return-value]
    polygons = _polygons(area)
    if polygons and not area.is_valid:
        # The even-odd fill needs valid parts with disjoint interiors. Parts are repaired one by
        # one and then merged, so overlapping parts of a multipolygon add up rather than cancel
        # (make_valid on the whole would keep only their symmetric difference).
        polygons = _polygons(shapely.union_all(
            [p if p.is_valid else shapely.make_valid(p) for p in polygons]))
    if not polygons:
        edges = _NO_EDGES
    else:
        rings = shapely.get_rings(np.asarray(polygons, dtype=object))
        coords, ring = shapely.get_coordinates(rings, return_index=True)
        same = ring[:-1] == ring[1:]
        edges = (coords[:-1, 0][same], coords[:-1, 1][same], coords[1:, 0][same], coords[1:, 1][same])
    _last_edges = (area, edges)
    return edges  # type: ignore[return-value]


# -- one level ------------------------------------------------------------------------------------

class _Level:
    """The area's edges in the tile units of one level, and the grid's size there.

    ``u`` counts tiles rightwards from the origin, ``v`` rows downwards; edges are stored with
    ``v0 <= v1``. ``first_row``/``last_row`` say which rows (clamped to the grid) each edge's
    piece meets; edges meeting none are dropped.
    """

    def __init__(self, scheme: TilingScheme, level: int, area: BaseGeometry) -> None:
        self.scheme, self.level = scheme, level
        self.span_x, self.span_y = scheme.tile_span(level)
        size = scheme.grid_size(level)
        #: Grid rows and columns, or a column/row count no area can reach when the grid has no end.
        self.rows, self.cols = size if size is not None else (1 << 52, 1 << 52)
        x0, y0, x1, y1 = _edges(area)
        ox, oy = scheme.origin_x, scheme.origin_y
        u0, u1 = (x0 - ox) / self.span_x, (x1 - ox) / self.span_x
        v0, v1 = (oy - y0) / self.span_y, (oy - y1) / self.span_y
        if x0.size:
            big = max(float(np.abs(x0).max()), float(np.abs(y0).max()), abs(ox), abs(oy))
        else:
            big = 0.0
        # (capped: coordinates so large that a tile is below their precision cannot be planned
        # exactly anyway, and the scanline needs the tolerance well under half a row)
        self.tol = min(_EDGE + _ROUNDING * big / min(self.span_x, self.span_y), 1e-3)
        down = v0 <= v1
        self.u0, self.u1 = np.where(down, u0, u1), np.where(down, u1, u0)
        self.v0, self.v1 = np.where(down, v0, v1), np.where(down, v1, v0)
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = (self.u1 - self.u0) / (self.v1 - self.v0)
        self.slope = np.where(self.v1 > self.v0, slope, 0.0)
        # Rows whose open strip the edge enters by more than the tolerance (a horizontal edge on
        # a tile line enters none); clamped in float first, so a huge area cannot overflow int64.
        lim = float(self.rows) + 1.0
        first = np.floor(np.clip(self.v0 + self.tol, -1.0, lim)).astype(np.int64)
        last = np.ceil(np.clip(self.v1 - self.tol, -1.0, lim)).astype(np.int64) - 1
        first, last = np.maximum(first, 0), np.minimum(last, self.rows - 1)
        keep = first <= last
        if not keep.all():
            self.u0, self.u1, self.v0, self.v1, self.slope = (
                a[keep] for a in (self.u0, self.u1, self.v0, self.v1, self.slope))
            first, last = first[keep], last[keep]
        self.first_row, self.last_row = first, last

    @property
    def empty(self) -> bool:
        return self.first_row.size == 0

    @property
    def row_range(self) -> tuple[int, int]:
        return int(self.first_row.min()), int(self.last_row.max())

    def _columns(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First and last column of the tiles overlapping each open interval ``(a, b)``."""
        lim = float(self.cols) + 1.0
        c0 = np.floor(np.clip(a + self.tol, -1.0, lim)).astype(np.int64)
        c1 = np.ceil(np.clip(b - self.tol, -1.0, lim)).astype(np.int64) - 1
        return np.maximum(c0, 0), np.minimum(c1, self.cols - 1)

    def spans(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Merged column spans of rows ``lo..hi``: (row, first, last), sorted, disjoint, not touching."""
        sel = np.nonzero((self.first_row <= hi) & (self.last_row >= lo))[0]
        if sel.size == 0:
            return _NO_SPANS
        start = np.maximum(self.first_row[sel], lo)
        count = np.minimum(self.last_row[sel], hi) - start + 1
        edge = np.repeat(sel, count)
        rows = np.repeat(start, count) + (np.arange(edge.size) - np.repeat(np.cumsum(count) - count,
                                                                            count))
        u0, v0, u1, v1, slope = (a[edge] for a in (self.u0, self.v0, self.u1, self.v1, self.slope))
        rowf = rows.astype(float)
        # 1. Each edge's piece inside the row's strip; its ends are the vertices where it has them.
        top, bottom = np.maximum(v0, rowf), np.minimum(v1, rowf + 1.0)
        at_top = np.where(top == v0, u0, u0 + (top - v0) * slope)
        at_bottom = np.where(bottom == v1, u1, u0 + (bottom - v0) * slope)
        piece0, piece1 = self._columns(np.minimum(at_top, at_bottom), np.maximum(at_top, at_bottom))
        # 2. The even-odd fill along each row's middle line (half-open: each ring crosses it an
        #    even number of times, so after sorting, crossings pair up row by row).
        mid = rowf + 0.5
        cross = (v0 <= mid) & (mid < v1)
        c_rows, c_u = rows[cross], (u0 + (mid - v0) * slope)[cross]
        order = np.lexsort((c_u, c_rows))
        c_rows, c_u = c_rows[order], c_u[order]
        fill0, fill1 = self._columns(c_u[0::2], c_u[1::2])
        rows = np.concatenate((rows, c_rows[0::2]))
        first = np.concatenate((piece0, fill0))
        last = np.concatenate((piece1, fill1))
        return _merge(rows, first, last, self.cols)

    def row_blocks(self, budget: int | None = None) -> Iterator[tuple[int, int]]:
        """(first row, last row) of consecutive blocks of whole bands (bundle rows) over the area.

        Without a budget, one band per block. With one, bands are grouped while the (edge, row)
        pairs they may hold (edges meeting a band × 128) stay within it, so a block's arrays are
        bounded even where the outline crowds into a few rows.
        """
        lo, hi = self.row_range
        band_lo, band_hi = lo // BUNDLE_SIZE, hi // BUNDLE_SIZE
        bands = np.arange(band_lo, band_hi + 1)
        if budget is not None and bands.size > 1:
            meets = np.zeros(bands.size + 1, dtype=np.int64)
            np.add.at(meets, self.first_row // BUNDLE_SIZE - band_lo, 1)
            np.add.at(meets, self.last_row // BUNDLE_SIZE - band_lo + 1, -1)
            pairs = np.cumsum(meets[:-1]) * BUNDLE_SIZE
            block = (np.cumsum(pairs) - pairs) // budget
            starts = np.nonzero(np.diff(block))[0] + 1
            bands = bands[np.append(0, starts)]
            ends = np.append(bands[1:] - 1, band_hi)
        else:
            ends = bands
        for first, last in zip(bands.tolist(), ends.tolist()):
            yield max(first * BUNDLE_SIZE, lo), min(last * BUNDLE_SIZE + BUNDLE_SIZE - 1, hi)


_NO_SPANS = (np.empty(0, dtype=np.int64),) * 3


def _merge(rows: np.ndarray, first: np.ndarray, last: np.ndarray, cols: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Union of column intervals per row, as sorted spans that neither overlap nor touch.

    Rows and columns are folded into one int64 key (``row × width + col``), so one running
    maximum over the sorted intervals is the reach of the current row's union.
    """
    keep = first <= last
    rows, first, last = rows[keep], first[keep], last[keep]
    if rows.size == 0:
        return _NO_SPANS
    width = min(cols, int(last.max()) + 1) + 2
    order = np.lexsort((first, rows))
    rows, first, last = rows[order], first[order], last[order]
    base = rows * width
    reach = np.maximum.accumulate(base + last)
    new = np.empty(rows.size, dtype=bool)
    new[0] = True
    new[1:] = base[1:] + first[1:] > reach[:-1] + 1
    starts = np.nonzero(new)[0]
    ends = np.append(starts[1:], rows.size) - 1
    return rows[starts], first[starts], reach[ends] - base[starts]


# -- public API -----------------------------------------------------------------------------------

def plan_level(scheme: TilingScheme, level: int, area: BaseGeometry) -> Iterator[BundlePlan]:
    """Yield the bundles of ``level`` meeting ``area`` (in the scheme's SR), row-major.

    Every tile whose box overlaps the area's interior is included; a tile that only touches the
    area's edge is not (within the tolerance). Memory holds one band of 128 rows at a time.
    """
    lv = _Level(scheme, level, area)
    if lv.empty:
        return
    for lo, hi in lv.row_blocks():
        rows, first, last = lv.spans(lo, hi)
        if rows.size == 0:
            continue
        # Cut spans at bundle columns; a stable sort by bundle keeps each bundle's spans in order.
        b0, b1 = first // BUNDLE_SIZE, last // BUNDLE_SIZE
        count = b1 - b0 + 1
        if (count > 1).any():
            idx = np.repeat(np.arange(rows.size), count)
            bundle = np.repeat(b0, count) + (np.arange(idx.size) - np.repeat(np.cumsum(count) - count,
                                                                               count))
            rows = rows[idx]
            first = np.maximum(first[idx], bundle * BUNDLE_SIZE)
            last = np.minimum(last[idx], bundle * BUNDLE_SIZE + BUNDLE_SIZE - 1)
        else:
            bundle = b0
        order = np.argsort(bundle, kind="stable")
        bundle, rows, first, last = bundle[order], rows[order], first[order], last[order]
        bounds = np.nonzero(np.diff(bundle))[0] + 1
        band = lo // BUNDLE_SIZE * BUNDLE_SIZE
        for s, e in zip(np.append(0, bounds).tolist(), np.append(bounds, bundle.size).tolist()):
            spans = tuple(zip(rows[s:e].tolist(), first[s:e].tolist(), last[s:e].tolist()))
            yield BundlePlan(level, band, int(bundle[s]) * BUNDLE_SIZE, spans)


def count_level(scheme: TilingScheme, level: int, area: BaseGeometry) -> int:
    """How many tiles :func:`plan_level` yields, from merged row spans alone."""
    lv = _Level(scheme, level, area)
    if lv.empty:
        return 0
    total = 0
    for lo, hi in lv.row_blocks(_PAIRS_PER_BLOCK):
        _, first, last = lv.spans(lo, hi)
        total += int((last - first + 1).sum())
    return total


def count_levels(scheme: TilingScheme, levels: Sequence[int], area: BaseGeometry) -> dict[int, int]:
    """Tile counts of several levels sharing one area."""
    return {level: count_level(scheme, level, area) for level in levels}


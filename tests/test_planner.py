"""The planner: tiles meeting an area, per bundle, checked against a brute-force tile-by-tile count."""
from __future__ import annotations

import itertools
import math
import random
import time
import tracemalloc
import types

import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon, box

from cacheorch.planner import BundlePlan, count_level, count_levels, plan_level
from cacheorch.tiling import (BUNDLE_SIZE, WEB_MERCATOR_HALF, LevelOfDetail, SpatialReference,
                              TileKey, TilingScheme, web_mercator_scheme)

WM = web_mercator_scheme(max_level=16)
H = WEB_MERCATOR_HALF

#: An NZTM-like scheme: 512 px tiles, resolutions that are not powers of two, no known grid end.
NZTM = TilingScheme(
    origin_x=-4020900.0, origin_y=19998100.0, tile_cols=512, tile_rows=512, dpi=96,
    spatial_reference=SpatialReference(2193),
    lods=tuple(LevelOfDetail(i, r * 96 * 39.37, r) for i, r in enumerate(
        (2116.670900008467, 1058.3354500042335, 529.1677250021168, 264.5838625010584))),
)


def brute_force(scheme: TilingScheme, level: int, area) -> set[TileKey]:
    """Every tile whose box shares positive area with ``area``, found tile by tile."""
    sx, sy = scheme.tile_span(level)
    xmin, ymin, xmax, ymax = area.bounds
    c0 = max(math.floor((xmin - scheme.origin_x) / sx) - 1, 0)
    c1 = math.floor((xmax - scheme.origin_x) / sx) + 1
    r0 = max(math.floor((scheme.origin_y - ymax) / sy) - 1, 0)
    r1 = math.floor((scheme.origin_y - ymin) / sy) + 1
    size = scheme.grid_size(level)
    if size is not None:
        r1, c1 = min(r1, size[0] - 1), min(c1, size[1] - 1)
    rows, cols = np.meshgrid(np.arange(r0, r1 + 1), np.arange(c0, c1 + 1), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    boxes = shapely.box(scheme.origin_x + cols * sx, scheme.origin_y - (rows + 1) * sy,
                        scheme.origin_x + (cols + 1) * sx, scheme.origin_y - rows * sy)
    hit = shapely.area(shapely.intersection(boxes, area)) > 0
    return {TileKey(level, int(r), int(c)) for r, c in zip(rows[hit], cols[hit])}


def planned(scheme: TilingScheme, level: int, area) -> set[TileKey]:
    keys = [k for plan in plan_level(scheme, level, area) for k in plan.keys()]
    assert len(keys) == len(set(keys)), "a tile was planned twice"
    return set(keys)


def tile_box(scheme: TilingScheme, level: int, row: int, col: int) -> Polygon:
    return box(*scheme.tile_bounds(level, row, col))


# -- areas -------------------------------------------------------------------------------------

#: A concave "C" over Europe/Africa whose mouth swallows whole tiles at the finer levels.
CONCAVE = Polygon([(-1.1e6, 1.2e6), (4.3e6, 1.3e6), (4.2e6, 2.9e6), (0.7e6, 3.05e6),
                   (0.75e6, 5.1e6), (4.4e6, 5.3e6), (4.35e6, 7.1e6), (-1.2e6, 6.9e6)])
MULTI = MultiPolygon([
    Polygon([(-8.1e6, 4.9e6), (-7.3e6, 5.6e6), (-8.6e6, 6.3e6)]),              # a triangle
    Polygon([(1.05e6, -3.1e6), (3.9e6, -2.95e6), (3.7e6, -0.4e6), (1.2e6, -0.55e6)]),
    Polygon([(1.2e7, 1.1e6), (1.32e7, 1.0e6), (1.31e7, 2.2e6)]),
])
#: A square with a big square hole: at level 6 (626 km tiles) whole tiles lie in the hole.
HOLED = Polygon(
    [(-5.05e6, -5.05e6), (5.05e6, -5.05e6), (5.05e6, 5.05e6), (-5.05e6, 5.05e6)],
    [[(-3.9e6, -3.9e6), (-3.9e6, 3.9e6), (3.9e6, 3.9e6), (3.9e6, -3.9e6)]],
)


@pytest.mark.parametrize("name, area, levels", [
    ("concave", CONCAVE, range(0, 8)),
    ("multipolygon", MULTI, range(0, 8)),
    ("holed", HOLED, range(0, 8)),
])
def test_matches_brute_force(name, area, levels):
    for level in levels:
        expected = brute_force(WM, level, area)
        assert planned(WM, level, area) == expected, f"{name} level {level}"
        assert count_level(WM, level, area) == len(expected)


def test_concave_mouth_and_hole_really_exclude_tiles():
    """The shapes above are only a test if the bounding box would over-count them."""
    for area, level in ((CONCAVE, 5), (HOLED, 6), (MULTI, 5)):
        rng = WM.tile_range(level, area.bounds)
        in_bbox = (rng[2] - rng[0] + 1) * (rng[3] - rng[1] + 1)
        assert count_level(WM, level, area) < in_bbox - 3


def test_hole_aligned_on_tile_edges_excludes_exactly_its_tiles():
    level = 5  # 32×32 tiles
    outer = box(*WM.tile_bounds(level, 10, 10)[:2], *WM.tile_bounds(level, 3, 17)[2:])
    hole = box(*WM.tile_bounds(level, 8, 12)[:2], *WM.tile_bounds(level, 5, 15)[2:])
    area = outer.difference(hole)
    assert len(area.interiors) == 1
    keys = planned(WM, level, area)
    assert len(keys) == 8 * 8 - 4 * 4
    assert TileKey(level, 6, 13) not in keys and TileKey(level, 5, 12) not in keys
    assert TileKey(level, 4, 12) in keys and TileKey(level, 6, 11) in keys
    assert keys == brute_force(WM, level, area)


def test_bbox_on_tile_edges_is_exact():
    """An edge lying on a tile line must not pull in the neighbouring row or column."""
    level = 9
    xmin, ymin = WM.tile_bounds(level, 300, 100)[:2]
    xmax, ymax = WM.tile_bounds(level, 100, 259)[2:]
    area = box(xmin, ymin, xmax, ymax)
    keys = planned(WM, level, area)
    assert len(keys) == 160 * 201
    assert min(k.row for k in keys) == 100 and max(k.row for k in keys) == 300
    assert min(k.col for k in keys) == 100 and max(k.col for k in keys) == 259
    # the same box in the NZTM grid, whose tile edges are not round numbers
    n_xmin, n_ymin = NZTM.tile_bounds(3, 40, 7)[:2]
    n_xmax, n_ymax = NZTM.tile_bounds(3, 31, 12)[2:]
    assert count_level(NZTM, 3, box(n_xmin, n_ymin, n_xmax, n_ymax)) == 10 * 6


@pytest.mark.parametrize("scheme", [WM, NZTM], ids=["web-mercator", "nztm"])
def test_tile_aligned_boxes_are_exact_at_every_level(scheme):
    """Edges computed from tile numbers land a hair off the planner's own tile lines (float
    rounding): without a tolerance about half of these would pull in a neighbouring row/column."""
    rnd = random.Random(5)
    for level in scheme.levels:
        n = 2 ** min(level, 9)
        for _ in range(12):
            h, w = rnd.randint(1, 5), rnd.randint(1, 5)
            r0, c0 = rnd.randint(0, n - 1), rnd.randint(0, n - 1)
            if scheme is WM:
                r0, c0 = min(r0, 2 ** level - h), min(c0, 2 ** level - w)
                if r0 < 0 or c0 < 0:
                    continue
            x0, y0 = scheme.tile_bounds(level, r0 + h - 1, c0)[:2]
            x1, y1 = scheme.tile_bounds(level, r0, c0 + w - 1)[2:]
            assert count_level(scheme, level, box(x0, y0, x1, y1)) == h * w, (level, r0, c0, h, w)


def test_l_shape_on_tile_edges_is_exact():
    level = 4
    b = lambda r, c: tile_box(WM, level, r, c)  # noqa: E731
    area = shapely.union_all([b(r, c) for r in range(2, 9) for c in range(3, 5)]
                             + [b(r, c) for r in range(7, 9) for c in range(5, 12)])
    assert count_level(WM, level, area) == 7 * 2 + 2 * 7


def test_touching_a_tile_only_at_its_edge_may_go_either_way_but_overlap_counts():
    level = 6
    x0, y0, x1, y1 = WM.tile_bounds(level, 20, 20)
    inside = box(x0 + 1, y0 + 1, x1 - 1, y1 - 1)
    assert planned(WM, level, inside) == {TileKey(level, 20, 20)}
    sliver = box(x1 - 1e-3, y0 + 1, x1 + 1e-3, y1 - 1)  # straddles the line between two tiles
    assert planned(WM, level, sliver) == {TileKey(level, 20, 20), TileKey(level, 20, 21)}


def test_pieces_in_neighbouring_columns_merge_into_one_span():
    """Two parts, one ending inside column 5 and one starting inside column 6, make one span."""
    level, row = 6, 20
    x0, y0, _, y1 = WM.tile_bounds(level, row, 3)
    s = WM.tile_span(level)[0]
    area = MultiPolygon([box(x0 + 0.5 * s, y0 + 0.2 * s, x0 + 2.9 * s, y1 - 0.2 * s),
                         box(x0 + 3.1 * s, y0 + 0.2 * s, x0 + 5.5 * s, y1 - 0.2 * s)])
    (plan,) = plan_level(WM, level, area)
    assert plan.spans == ((row, 3, 8),)


def test_nztm_512px_scheme_matches_brute_force():
    # the North Island-ish blob in NZTM metres
    area = Polygon([(1.57e6, 5.52e6), (1.78e6, 5.41e6), (2.08e6, 5.72e6), (1.94e6, 6.02e6),
                    (1.72e6, 6.15e6), (1.63e6, 5.95e6), (1.73e6, 5.80e6)])
    for level in NZTM.levels:
        expected = brute_force(NZTM, level, area)
        assert expected, level
        assert planned(NZTM, level, area) == expected, level


def test_area_beyond_the_grid_is_clipped():
    big = box(-3 * H, -3 * H, 3 * H, 3 * H)
    assert count_level(WM, 3, big) == 64
    assert list(plan_level(WM, 3, box(3 * H, 0, 4 * H, H))) == []
    # an unbounded grid (no TileEnd) still refuses negative rows and columns
    assert count_level(NZTM, 0, box(-1e8, -1e8, NZTM.origin_x + 1, NZTM.origin_y - 1)) >= 1
    assert all(k.row >= 0 and k.col >= 0 for p in plan_level(NZTM, 1, box(-1e8, 0, 0, 1e8))
               for k in p.keys())


def test_unbounded_grid_ignores_parts_left_of_its_origin():
    """NZTM has no TileEnd: a part wholly left of the origin must not turn into column 0."""
    ox = NZTM.origin_x
    area = MultiPolygon([box(ox - 5e6, 5e6, ox - 1e6, 6e6), box(ox + 1e6, 8e6, ox + 3e6, 9e6)])
    for level in (0, 1):
        keys = planned(NZTM, level, area)
        assert keys == brute_force(NZTM, level, area), level
        assert {k.col for k in keys} == {c for c in range(0, 10)
                                         if NZTM.tile_bounds(level, 0, c)[2] > ox + 1e6
                                         and NZTM.tile_bounds(level, 0, c)[0] < ox + 3e6}


def test_vertex_on_the_grids_corner_does_not_turn_the_area_inside_out():
    """GEOS's fast rectangle clip inverts this notched ring (its notch tip is the grid corner)."""
    area = Polygon([(-2.55e7, 1.51e7), (-2.34e7, 1.86e7), (-2.05e7, 2.07e7), (-1.72e7, 2.0e7),
                    (-H, H), (-1.74e7, 1.34e7), (-2.02e7, 1.32e7)])
    assert area.is_valid
    for level in (1, 2, 3, 4):
        assert planned(WM, level, area) == brute_force(WM, level, area), level
    assert count_level(WM, 3, area) == 2


# -- bundles ------------------------------------------------------------------------------------

def test_bundles_are_128_square_ordered_and_disjoint():
    level = 10  # 1024×1024 tiles: 8×8 bundles
    area = Polygon([(-1.9e7, -0.3e7), (0.2e7, -1.2e7), (1.7e7, 0.4e7), (-0.4e7, 1.6e7)])
    plans = list(plan_level(WM, level, area))
    assert len(plans) > 20
    order = [(p.bundle_row, p.bundle_col) for p in plans]
    assert order == sorted(order) and len(set(order)) == len(order)
    total = 0
    for p in plans:
        assert isinstance(p, BundlePlan) and p.level == level
        assert p.bundle_row % BUNDLE_SIZE == 0 and p.bundle_col % BUNDLE_SIZE == 0
        assert list(p.spans) == sorted(p.spans)
        assert p.tile_count > 0
        for row, first, last in p.spans:
            assert p.bundle_row <= row < p.bundle_row + BUNDLE_SIZE
            assert p.bundle_col <= first <= last < p.bundle_col + BUNDLE_SIZE
        keys = list(p.keys())
        assert len(keys) == p.tile_count <= BUNDLE_SIZE * BUNDLE_SIZE
        assert all(k.bundle == (p.bundle_row, p.bundle_col) for k in keys)
        total += p.tile_count
    assert total == count_level(WM, level, area)
    # spans within one row of a bundle never overlap or touch (they are merged)
    for p in plans:
        for row, group in itertools.groupby(p.spans, key=lambda s: s[0]):
            spans = list(group)
            assert all(a[2] + 1 < b[1] for a, b in zip(spans, spans[1:]))


def test_span_crossing_a_bundle_column_is_split():
    level = 9
    x0 = WM.tile_bounds(level, 0, 120)[0]
    x1 = WM.tile_bounds(level, 0, 300)[2]
    y1 = WM.tile_bounds(level, 200, 0)[3]
    y0 = WM.tile_bounds(level, 200, 0)[1]
    plans = list(plan_level(WM, level, box(x0, y0, x1, y1)))
    assert [(p.bundle_row, p.bundle_col, p.spans) for p in plans] == [
        (128, 0, ((200, 120, 127),)), (128, 128, ((200, 128, 255),)), (128, 256, ((200, 256, 300),))]


#: A rough outline of Europe (lon, lat), projected into Web Mercator by pyproj.
EUROPE_LONLAT = [(-9.5, 36.9), (-6.0, 36.0), (2.0, 41.0), (6.0, 43.0), (12.5, 37.5), (18.5, 40.0),
                 (22.0, 36.5), (28.0, 36.5), (29.0, 41.0), (35.0, 45.0), (40.0, 47.0),
                 (38.0, 56.0), (31.0, 60.0), (30.0, 70.0), (20.0, 70.3), (12.0, 65.0),
                 (5.0, 62.0), (8.0, 57.5), (4.0, 52.0), (-5.0, 48.5), (-1.5, 43.5), (-9.5, 43.0)]


def europe():
    from pyproj import Transformer
    fwd = Transformer.from_crs(4326, 3857, always_xy=True)
    return Polygon([fwd.transform(lon, lat) for lon, lat in EUROPE_LONLAT])


@pytest.mark.parametrize("level", [9, 10])
def test_europe_spans_are_split_by_bundle_and_yielded_once_row_major(level):
    area = europe()
    plans = list(plan_level(WM, level, area))
    # the area straddles bundle lines both ways, or this test would prove nothing
    assert len({p.bundle_row for p in plans}) >= 2 and len({p.bundle_col for p in plans}) >= 2
    order = [(p.bundle_row, p.bundle_col) for p in plans]
    assert order == sorted(order) and len(set(order)) == len(order)
    seen: set[TileKey] = set()
    for p in plans:
        assert p.bundle_row % BUNDLE_SIZE == 0 and p.bundle_col % BUNDLE_SIZE == 0
        for row, first, last in p.spans:
            assert p.bundle_row <= row < p.bundle_row + BUNDLE_SIZE
            assert p.bundle_col <= first <= last < p.bundle_col + BUNDLE_SIZE
        keys = set(p.keys())
        assert len(keys) == p.tile_count and not keys & seen
        seen |= keys
    assert seen == brute_force(WM, level, area)
    # rows crossing a bundle column line are cut there: one piece ends at the line, the next
    # bundle's piece of the same row starts right after it
    ends = {(row, last + 1) for p in plans for row, first, last in p.spans
            if last == p.bundle_col + BUNDLE_SIZE - 1}
    starts = {(row, first) for p in plans for row, first, last in p.spans if first == p.bundle_col}
    assert len(ends & starts) > 10


def test_area_partly_outside_the_grid_matches_brute_force():
    """Beyond the top-left corner of the grid and past the antimeridian: only grid tiles count."""
    area = Polygon([(-2.6e7, 1.2e7), (-0.9e7, 2.9e7), (0.4e7, 1.6e7), (2.4e7, 1.9e7),
                    (2.3e7, 0.9e7), (-0.5e7, 0.5e7)])
    for level in range(0, 7):
        expected = brute_force(WM, level, area)
        keys = planned(WM, level, area)
        assert keys == expected, level
        n = 2 ** level
        assert all(0 <= k.row < n and 0 <= k.col < n for k in keys)
    assert count_level(WM, 3, area) < 64


def test_plan_is_lazy_and_streams_a_level_12_world():
    """16.7 million tiles: the first bundles come at once, long before the level is planned."""
    world = box(-H, -H, H, H)
    started = time.perf_counter()
    gen = plan_level(WM, 12, world)
    assert isinstance(gen, types.GeneratorType)
    first = list(itertools.islice(gen, 40))  # the whole first band (32 bundles) and a bit more
    assert time.perf_counter() - started < 0.5
    assert [(p.bundle_row, p.bundle_col) for p in first[:3]] == [(0, 0), (0, 128), (0, 256)]
    assert (first[31].bundle_row, first[31].bundle_col) == (0, 31 * 128)
    assert (first[32].bundle_row, first[32].bundle_col) == (128, 0)
    assert all(p.tile_count == 128 * 128 for p in first)
    gen.close()


def test_memory_holds_a_band_not_the_level():
    """Walking eight bands of a level 12 world peaks no higher than walking one."""
    level, per_band = 12, 2 ** 12 // BUNDLE_SIZE
    world = box(-H, -H, H, H)
    peaks = []
    for bands in (1, 8):
        tracemalloc.start()
        try:
            tiles = sum(p.tile_count for p in itertools.islice(plan_level(WM, level, world),
                                                                bands * per_band))
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert tiles == bands * BUNDLE_SIZE * 2 ** level
    one, eight = peaks
    assert eight < 1_000_000, f"peak {eight / 1e6:.1f} MB"
    assert eight < 1.5 * one + 100_000, (one, eight)


def test_count_levels_and_empty_area():
    area = box(0, 0, 1e6, 1e6)
    assert count_levels(WM, [0, 1, 2], area) == {0: 1, 1: 1, 2: 1}
    assert count_levels(WM, [5], area) == {5: len(brute_force(WM, 5, area))}
    assert list(plan_level(WM, 5, Polygon())) == []

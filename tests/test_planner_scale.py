"""The planner at scale: a billion tiles counted in well under 2 s, exact against a tile-by-tile count.

The reference here is independent of the planner: every tile box of a region is intersected with
the area by shapely, and a tile counts when the intersection has positive area.
"""
from __future__ import annotations

import json
import math
import time
import tracemalloc
import types

import numpy as np
import pytest
import shapely
from shapely.geometry import GeometryCollection, LineString, MultiPolygon, Polygon, box

from cacheorch import planner
from cacheorch.connection import Connection
from cacheorch.interfaces import Service
from cacheorch.planner import BundlePlan, count_level, count_levels, plan_level
from cacheorch.tiling import (BUNDLE_SIZE, WEB_MERCATOR_HALF, LevelOfDetail, SpatialReference,
                              TileKey, TilingScheme, web_mercator_scheme)

WM = web_mercator_scheme(max_level=23)
H = WEB_MERCATOR_HALF
EARTH_M2 = 4 * math.pi * 6371008.8 ** 2

#: Like NZTM: 512 px tiles, resolutions that are not powers of two, a grid with no known end.
NZTM = TilingScheme(
    origin_x=-4020900.0, origin_y=19998100.0, tile_cols=512, tile_rows=512, dpi=96,
    spatial_reference=SpatialReference(2193),
    lods=tuple(LevelOfDetail(i, r * 96 * 39.37, r) for i, r in enumerate(
        (4233.341800016934, 2116.670900008467, 1058.3354500042335, 529.1677250021168,
         264.5838625010584, 132.2919312505292))),
)


# -- reference and areas ---------------------------------------------------------------------------

#: Share of a tile below which an overlap is float noise (a polygon edge running exactly through a
#: tile corner leaves slivers of 1e-30..1e-19 of a tile); a real sliver tested here is 1e-9.
NOISE = 1e-12


class Reference:
    """The tiles of a region whose box shares positive area with the area, tested tile by tile.

    ``tiles`` overlap it by more than float noise; ``touching`` overlap it by noise only (an edge
    through a corner or along a tile line), and may go either way.
    """

    def __init__(self, scheme: TilingScheme, level: int, area, region=None) -> None:
        sx, sy = scheme.tile_span(level)
        if region is None:
            xmin, ymin, xmax, ymax = area.bounds
            c0 = max(math.floor((xmin - scheme.origin_x) / sx) - 1, 0)
            c1 = math.floor((xmax - scheme.origin_x) / sx) + 1
            r0 = max(math.floor((scheme.origin_y - ymax) / sy) - 1, 0)
            r1 = math.floor((scheme.origin_y - ymin) / sy) + 1
            size = scheme.grid_size(level)
            if size is not None:
                r1, c1 = min(r1, size[0] - 1), min(c1, size[1] - 1)
            region = (range(r0, r1 + 1), range(c0, c1 + 1))
        rows, cols = np.meshgrid(np.asarray(region[0]), np.asarray(region[1]), indexing="ij")
        rows, cols = rows.ravel(), cols.ravel()
        boxes = shapely.box(scheme.origin_x + cols * sx, scheme.origin_y - (rows + 1) * sy,
                            scheme.origin_x + (cols + 1) * sx, scheme.origin_y - rows * sy)
        share = shapely.area(shapely.intersection(boxes, area)) / (sx * sy)
        self.tiles = set(zip(rows[share > NOISE].tolist(), cols[share > NOISE].tolist()))
        noise = (share > 0) & (share <= NOISE)
        self.touching = set(zip(rows[noise].tolist(), cols[noise].tolist()))

    def __len__(self) -> int:
        return len(self.tiles)

    def matches(self, got: set[tuple[int, int]]) -> bool:
        return self.tiles <= got <= self.tiles | self.touching


def brute_force(scheme: TilingScheme, level: int, area, region=None) -> Reference:
    return Reference(scheme, level, area, region)


def planned(scheme: TilingScheme, level: int, area) -> set[tuple[int, int]]:
    keys = [(k.row, k.col) for plan in plan_level(scheme, level, area) for k in plan.keys()]
    assert len(keys) == len(set(keys)), "a tile was planned twice"
    return set(keys)


def blob_lonlat(vertices: int = 1000, share: float = 0.05) -> Polygon:
    """A wobbly star over Africa covering ``share`` of the Earth's surface (deterministic)."""
    from pyproj import Geod
    t = np.linspace(0, 2 * math.pi, vertices, endpoint=False)
    wobble = 1 + 0.22 * np.sin(5 * t) + 0.09 * np.sin(13 * t + 1.0) + 0.04 * np.sin(41 * t + 2.0)
    geod = Geod(ellps="WGS84")
    lo, hi = 1.0, 60.0
    for _ in range(50):  # radius in degrees whose geodesic area is the share wanted
        radius = (lo + hi) / 2
        area = abs(geod.polygon_area_perimeter(15 + 1.25 * radius * wobble * np.cos(t),
                                               8 + radius * wobble * np.sin(t))[0])
        lo, hi = (radius, hi) if area < share * EARTH_M2 else (lo, radius)
    return Polygon(np.column_stack((15 + 1.25 * radius * wobble * np.cos(t),
                                    8 + radius * wobble * np.sin(t))))


def to_mercator(geom):
    from pyproj import Transformer
    fwd = Transformer.from_crs(4326, 3857, always_xy=True)
    return shapely.transform(geom, lambda xy: np.column_stack(fwd.transform(xy[:, 0], xy[:, 1])))


@pytest.fixture(scope="module")
def blob() -> Polygon:
    return to_mercator(blob_lonlat())


# -- the target ----------------------------------------------------------------------------------

def test_billion_tiles_of_a_1000_vertex_polygon_counted_in_under_two_seconds(blob):
    assert len(blob.exterior.coords) == 1001
    count_level(WM, 0, blob)  # imports and first-call costs are not the planner's
    started = time.perf_counter()
    counts = count_levels(WM, range(19), blob)
    elapsed = time.perf_counter() - started
    total = sum(counts.values())
    assert 1e9 < total < 3e9, total
    assert elapsed < 2.0, f"{elapsed:.2f} s"
    # every level about four times the last (a smooth area), the first ones excepted
    for level in range(12, 19):
        assert 3.9 < counts[level] / counts[level - 1] < 4.1, level
    # exact where a tile-by-tile count is feasible (level 9: about 20,000 tiles)
    for level in range(0, 10):
        ref = brute_force(WM, level, blob)
        assert counts[level] == len(ref) and not ref.touching, level


def test_plan_json_counts_a_billion_tiles_fast_and_equal_brute_force_on_small_levels(cli, tmp_path):
    from cacheorch.plugins.aoi_file import FileArea
    geojson = tmp_path / "blob.geojson"
    ring = [list(p) for p in blob_lonlat().exterior.coords]
    geojson.write_text(json.dumps({"type": "Feature", "properties": {},
                                   "geometry": {"type": "Polygon", "coordinates": [ring]}}))
    started = time.perf_counter()
    result = cli("plan", "--service", "defaults", "--levels", "0-18", "--aoi", f"0-18={geojson}",
                 "--json")
    elapsed = time.perf_counter() - started
    assert result.code == 0, result.stderr
    out = json.loads(result.stdout)
    assert elapsed < 2.0, f"plan took {elapsed:.2f} s"
    assert out["tiles_planned"] > 1e9
    by_level = {lv["level"]: lv["tiles_planned"] for lv in out["levels"]}
    assert sorted(by_level) == list(range(19))
    # the area exactly as `plan` made it (projected, densified), counted tile by tile
    area = FileArea().area(str(geojson), Service("defaults", WM, kind="defaults"), Connection())
    for level in range(0, 9):
        ref = brute_force(WM, level, area)
        assert by_level[level] == len(ref) and not ref.touching, level


def test_no_geometry_call_per_row_or_tile(blob, monkeypatch):
    """The geometry engine is asked the same few things at level 4 and at level 18."""
    calls: list[str] = []

    class Counting:
        def __getattr__(self, name):
            func = getattr(shapely, name)
            return lambda *a, **kw: (calls.append(name), func(*a, **kw))[1]

    monkeypatch.setattr(planner, "shapely", Counting())
    area = shapely.set_precision(blob, 0)  # a new object: nothing cached from other tests
    per_level = []
    for level in (4, 18):
        planner._last_edges = None
        calls.clear()
        count_level(WM, level, area)
        per_level.append(len(calls))
    assert per_level[0] == per_level[1] <= 4, calls


# -- exact against brute force -------------------------------------------------------------------

def _bundles_on_the_outline(area, level: int, how_many: int) -> list[tuple[int, int]]:
    coords = shapely.get_coordinates(area)
    picks = coords[np.linspace(0, len(coords) - 1, how_many).astype(int)]
    return sorted({TileKey(level, *WM.tile_of_point(level, x, y)).bundle for x, y in picks})


@pytest.mark.parametrize("level", [14, 18])
def test_deep_bundles_on_the_outline_match_brute_force(blob, level):
    """At deep levels, where the tolerance grows, whole bundles on the outline are exact."""
    lv = planner._Level(WM, level, blob)
    checked = 0
    for bundle_row, bundle_col in _bundles_on_the_outline(blob, level, 5):
        rows, first, last = lv.spans(bundle_row, bundle_row + BUNDLE_SIZE - 1)
        got = {(r, c) for r, f, l in zip(rows.tolist(), first.tolist(), last.tolist())
               for c in range(max(f, bundle_col), min(l, bundle_col + BUNDLE_SIZE - 1) + 1)}
        bx0, by0 = WM.tile_bounds(level, bundle_row + BUNDLE_SIZE - 1, bundle_col)[:2]
        bx1, by1 = WM.tile_bounds(level, bundle_row, bundle_col + BUNDLE_SIZE - 1)[2:]
        pad = WM.tile_span(level)[0]
        piece = shapely.clip_by_rect(blob, bx0 - pad, by0 - pad, bx1 + pad, by1 + pad)
        expected = brute_force(WM, level, piece, (range(bundle_row, bundle_row + BUNDLE_SIZE),
                                                  range(bundle_col, bundle_col + BUNDLE_SIZE)))
        assert 0 < len(expected) < BUNDLE_SIZE ** 2  # on the outline: partly in, partly out
        assert expected.matches(got), (level, bundle_row, bundle_col)
        checked += 1
    assert checked >= 3


def _star(rng: np.random.Generator, cx: float, cy: float, radius: float, n: int) -> Polygon:
    t = np.sort(rng.uniform(0, 2 * math.pi, n))
    r = radius * rng.uniform(0.3, 1.0, n)
    return shapely.make_valid(Polygon(np.column_stack((cx + r * np.cos(t), cy + r * np.sin(t)))))


def _random_areas(seed: int):
    """Stars, stars with star holes, and multipolygons of them, all valid."""
    rng = np.random.default_rng(seed)
    for _ in range(4):
        cx, cy = rng.uniform(-1.5e7, 1.5e7, 2)
        outer = _star(rng, cx, cy, rng.uniform(2e6, 6e6), int(rng.integers(5, 60)))
        hole = _star(rng, cx, cy, outer.length / 30, int(rng.integers(3, 20)))
        holed = shapely.make_valid(outer.difference(hole))
        other = _star(rng, cx + 8e6, cy - 3e6, 2e6, 12)
        yield outer
        yield holed
        yield shapely.union_all([holed, other])


@pytest.mark.parametrize("seed", [1, 2])
def test_random_stars_holes_and_multipolygons_match_brute_force(seed):
    for i, area in enumerate(_random_areas(seed)):
        for level in (2, 5, 7):
            expected = brute_force(WM, level, area)
            assert expected.matches(planned(WM, level, area)), (seed, i, level)
            assert len(expected) <= count_level(WM, level, area) <= len(expected.tiles
                                                                         | expected.touching)


def _snapped(area, level: int, step: float):
    """``area`` with every vertex moved onto a lattice of ``step`` tiles of ``level``."""
    sx, sy = WM.tile_span(level)

    def snap(xy):
        u = np.round((xy[:, 0] - WM.origin_x) / sx / step) * step
        v = np.round((WM.origin_y - xy[:, 1]) / sy / step) * step
        return np.column_stack((WM.origin_x + u * sx, WM.origin_y - v * sy))
    return shapely.make_valid(shapely.transform(area, snap))


@pytest.mark.parametrize("step", [1.0, 0.5])
def test_vertices_and_edges_on_tile_lines_and_middle_lines_match_brute_force(step):
    """Vertices on tile corners (step 1) and on rows' middle lines (0.5): the scanline's own line."""
    level = 6
    for i, area in enumerate(list(_random_areas(7))[:6]):
        area = _snapped(area, level, step)
        if area.is_empty or area.area == 0:
            continue
        coords = shapely.get_coordinates(area)
        v = (WM.origin_y - coords[:, 1]) / WM.tile_span(level)[1]
        on_lattice = np.isclose(v, np.round(v / step) * step)
        assert on_lattice.mean() > 0.7  # the rest: crossings make_valid added
        for lvl in (level - 1, level):  # at level 5, level-6 lattice points fall on middle lines
            expected = brute_force(WM, lvl, area)
            assert expected.matches(planned(WM, lvl, area)), (step, i, lvl)


def test_horizontal_edges_inside_a_row_and_a_spike_one_tile_wide():
    level = 5
    sx, sy = WM.tile_span(level)

    def at(u, v):
        return (WM.origin_x + u * sx, WM.origin_y - v * sy)
    # a comb: teeth hanging into rows whose middle line they never reach, joined by a horizontal
    # bar, plus a thin spike of 1/1000 tile crossing a column line
    comb = Polygon([at(*p) for p in [(3.0, 10.2), (12.0, 10.2), (12.0, 10.4), (10.3, 10.4),
                                     (10.3, 11.3), (10.1, 11.3), (10.1, 10.4), (6.7, 10.4),
                                     (6.7, 13.45), (6.5, 13.45), (6.5, 10.4), (5.0005, 10.4),
                                     (5.0005, 14.5), (4.9995, 14.5), (4.9995, 10.4), (3.0, 10.4)]])
    assert comb.is_valid
    expected = brute_force(WM, level, comb)
    assert {(14, 4), (14, 5), (13, 6)} <= expected.tiles and (11, 9) not in expected.tiles
    assert expected.matches(planned(WM, level, comb))


@pytest.mark.parametrize("level", [3, 12, 20])
def test_a_sliver_across_a_tile_line_meets_both_tiles(level):
    """A micro-tile overlap is an overlap: the tolerance absorbs rounding, not real area."""
    x0, y0, x1, y1 = WM.tile_bounds(level, 2 ** level - 7, 2 ** level - 7)
    w = (x1 - x0) * 1e-6
    sliver = box(x1 - w, y0 + (y1 - y0) / 4, x1 + w, y1 - (y1 - y0) / 4)
    n = 2 ** level
    assert planned(WM, level, sliver) == {(n - 7, n - 7), (n - 7, n - 6)}
    assert count_level(WM, level, box(x1, y0, x1 + w, y1)) == 1  # on the line, right of it


def test_box_on_tile_lines_at_level_21_is_exact():
    """Coordinates near 2e7 m and tiles of 19 m: an edge on a tile line still adds nothing."""
    level = 21
    r0, c0 = 2 ** 21 - 700, 2 ** 21 - 300  # the far corner, where coordinates are largest
    x0, y0 = WM.tile_bounds(level, r0 + 499, c0)[:2]
    x1, y1 = WM.tile_bounds(level, r0, c0 + 199)[2:]
    assert count_level(WM, level, box(x0, y0, x1, y1)) == 500 * 200
    keys = planned(WM, level, box(x0, y0, x1, y1))
    assert min(keys) == (r0, c0) and max(keys) == (r0 + 499, c0 + 199)
    # and a diamond with its corners on tile corners: exact against brute force
    cx, cy = WM.tile_bounds(level, r0 + 60, c0 + 60)[:2]
    span = WM.tile_span(level)[0]
    diamond = Polygon([(cx - 40 * span, cy), (cx, cy - 40 * span), (cx + 40 * span, cy),
                       (cx, cy + 40 * span)])
    expected = brute_force(WM, level, diamond)
    assert expected.touching  # the corners the diagonal edges pass through
    assert expected.matches(planned(WM, level, diamond))


def test_unbounded_512px_grid_with_odd_resolutions_matches_brute_force():
    # straddles the grid's origin (left of it and above it there are no tiles)
    area = Polygon([(-4.6e6, 2.05e7), (-3.2e6, 1.96e7), (-3.5e6, 1.90e7), (-3.9e6, 1.93e7),
                    (-4.3e6, 1.88e7)])
    for level in NZTM.levels:
        expected = brute_force(NZTM, level, area)
        assert expected.tiles and all(r >= 0 and c >= 0 for r, c in expected.tiles)
        assert expected.matches(planned(NZTM, level, area)), level


def test_invalid_and_mixed_inputs_are_repaired_or_ignored():
    level = 6
    bowtie = Polygon([(0, 0), (6e6, 5e6), (6e6, 0), (0, 5e6)])  # self-intersecting
    assert not bowtie.is_valid
    assert brute_force(WM, level, shapely.make_valid(bowtie)).matches(planned(WM, level, bowtie))
    # overlapping parts: their overlap is counted once, not cancelled by the even-odd fill
    a, b = box(0, 0, 5e6, 5e6), box(2.5e6, 2.5e6, 7.5e6, 7.5e6)
    overlapping = MultiPolygon([a, b])
    assert not overlapping.is_valid
    assert planned(WM, level, overlapping) == brute_force(WM, level, a.union(b)).tiles
    mixed = GeometryCollection([a, LineString([(-9e6, -9e6), (9e6, 9e6)])])
    assert planned(WM, level, mixed) == brute_force(WM, level, a).tiles
    assert count_level(WM, level, Polygon([(0, 0), (1e6, 0), (2e6, 0)])) == 0  # no area
    assert list(plan_level(WM, level, Polygon())) == []
    assert count_level(WM, 3, box(3 * H, 0, 4 * H, H)) == 0  # beyond the grid


# -- streaming and memory ------------------------------------------------------------------------

def test_plan_level_streams_a_billion_tiles_and_agrees_with_count(blob):
    level = 18
    started = time.perf_counter()
    gen = plan_level(WM, level, blob)
    assert isinstance(gen, types.GeneratorType)
    first = [next(gen) for _ in range(50)]
    assert time.perf_counter() - started < 0.5
    gen.close()
    assert all(isinstance(p, BundlePlan) and p.tile_count > 0 for p in first)
    order = [(p.bundle_row, p.bundle_col) for p in first]
    assert order == sorted(order)
    # the whole of a mid level: bundles disjoint, ordered, inside their block, same total
    level = 13
    total, seen = 0, set()
    for p in plan_level(WM, level, blob):
        assert (p.bundle_row, p.bundle_col) not in seen
        seen.add((p.bundle_row, p.bundle_col))
        for row, first_col, last_col in p.spans:
            assert p.bundle_row <= row < p.bundle_row + BUNDLE_SIZE
            assert p.bundle_col <= first_col <= last_col < p.bundle_col + BUNDLE_SIZE
        total += p.tile_count
    assert total == count_level(WM, level, blob) > 1_000_000
    assert len(seen) > 50


def test_memory_stays_flat_from_level_14_to_22(blob):
    count_level(WM, 14, blob)
    peaks, counts = {}, {}
    for level in (14, 22):
        tracemalloc.start()
        try:
            counts[level] = count_level(WM, level, blob)
            peaks[level] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert counts[22] > 2e11  # 3 × 10^11 tiles ...
    assert abs(counts[22] / counts[14] / 4 ** 8 - 1) < 0.01
    assert peaks[22] < 24_000_000, f"{peaks[22] / 1e6:.1f} MB"  # ... in a few MB

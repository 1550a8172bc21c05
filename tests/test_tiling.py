"""The tiling scheme's grid maths, against the published Web Mercator table and hand-computed tiles."""
from __future__ import annotations

import math

import pytest

from cacheorch.errors import LevelError, SchemeError
from cacheorch.tiling import (LevelOfDetail, SpatialReference, TileKey, TilingScheme, format_levels,
                              scale_of, web_mercator_scheme)

# Spec §1.4: the standard ArcGIS Online scheme as services publish it.
PUBLISHED = {0: (156543.033928, 591657527.591555), 1: (78271.5169639999, 295828763.795777),
             12: (38.2185141425366, 144447.638572), 17: (1.19432856685505, 4513.988705),
             23: (0.01866138385297604, 70.5310735)}


def test_web_mercator_series_matches_the_published_table_within_1e6() -> None:
    scheme = web_mercator_scheme()
    assert scheme.levels == tuple(range(24))
    for level, (resolution, scale) in PUBLISHED.items():
        lod = scheme.lod(level)
        assert lod.resolution == pytest.approx(resolution, rel=1e-9)
        assert lod.scale == pytest.approx(scale, rel=1e-6)
        assert scheme.level_for_scale(scale) == lod


def test_scale_uses_39_37_inches_per_metre() -> None:
    assert scale_of(156543.033928) / 156543.033928 == pytest.approx(3779.52, rel=1e-12)
    assert scale_of(1.0, 96, "esriFeet") == pytest.approx(1152.0, rel=1e-6)


def test_tile_of_point_and_bounds_round_trip() -> None:
    scheme = web_mercator_scheme()
    assert scheme.tile_of_point(1, -1.0, 1.0) == (0, 0)
    assert scheme.tile_of_point(1, 1.0, -1.0) == (1, 1)
    xmin, ymin, xmax, ymax = scheme.tile_bounds(3, 2, 5)
    span = 2 * 20037508.342787 / 8
    assert xmin == pytest.approx(-20037508.342787 + 5 * span)
    assert ymax == pytest.approx(20037508.342787 - 2 * span)
    assert scheme.tile_of_point(3, (xmin + xmax) / 2, (ymin + ymax) / 2) == (2, 5)
    assert scheme.grid_size(3) == (8, 8)
    assert TileKey(18, 300, 129).bundle == (256, 128)
    assert scheme.bundle_of(127, 128) == (0, 128)


def test_tile_range_does_not_pull_in_neighbours_on_edges() -> None:
    scheme = web_mercator_scheme()
    half = 20037508.342787
    # exactly the top-left quarter of the world at level 1 is tile (0, 0) only
    assert scheme.tile_range(1, (-half, 0.0, 0.0, half)) == (0, 0, 0, 0)
    # beyond the grid is clamped
    assert scheme.tile_range(1, (-3 * half, -3 * half, 3 * half, 3 * half)) == (0, 0, 1, 1)
    assert scheme.tile_range(2, (3 * half, 0, 4 * half, 1)) is None


def test_non_power_of_two_512px_scheme() -> None:
    # NZTM as in the GeoWebCache fixture: 512 px tiles, scales not halving
    lods = (LevelOfDetail(0, 8000000, 2116.670900008467), LevelOfDetail(1, 4000000, 1058.3354500042335),
            LevelOfDetail(2, 2000000, 529.1677250021168), LevelOfDetail(3, 1000000, 264.5838625010584))
    scheme = TilingScheme(-4020900, 19998100, 512, 512, 96, SpatialReference(2193), lods)
    assert scheme.tile_end is None and scheme.grid_size(0) is None
    assert scheme.tile_span(0) == pytest.approx((512 * 2116.670900008467,) * 2)
    row, col = scheme.tile_of_point(2, 1750000, 5400000)
    assert (row, col) == (math.floor((19998100 - 5400000) / (512 * 529.1677250021168)),
                          math.floor((1750000 + 4020900) / (512 * 529.1677250021168)))
    assert scheme.lod(1).scale == 4000000


def test_scheme_errors_are_clear() -> None:
    scheme = web_mercator_scheme(5)
    with pytest.raises(LevelError, match=r"level 9 is not in the tiling scheme \(levels 0-5\)"):
        scheme.lod(9)
    with pytest.raises(SchemeError, match="listed twice"):
        TilingScheme(0, 0, 256, 256, 96, SpatialReference(3857),
                     (LevelOfDetail(0, 1, 1), LevelOfDetail(0, 2, 2)))
    with pytest.raises(SchemeError, match="no levels"):
        TilingScheme(0, 0, 256, 256, 96, SpatialReference(3857), ())


def test_subset_and_fingerprint() -> None:
    scheme = web_mercator_scheme(8)
    subset = scheme.with_levels([2, 3, 7])
    assert subset.levels == (2, 3, 7) and subset.tile_end == scheme.tile_end
    assert scheme.fingerprint() == web_mercator_scheme(8).fingerprint()
    assert scheme.fingerprint() != web_mercator_scheme(8, tile_size=512).fingerprint()
    assert format_levels([0, 1, 2, 3, 5, 8, 9]) == "0-3,5,8-9"


def test_spatial_reference_variants() -> None:
    for wkid in (102100, 102113, 900913, 3857):
        assert SpatialReference(wkid).epsg == 3857
    assert SpatialReference(2193).crs_input() == "EPSG:2193"
    assert SpatialReference(102671).crs_input() == "ESRI:102671"
    assert SpatialReference.from_json({"wkid": 102100, "latestWkid": 3857}).is_web_mercator


# -- non-square tiles and points outside the grid's origin (hand-computed, not from tile_span) ---

#: 512 px wide, 256 px high tiles on a grid whose origin is (1000, 9000), resolution 1 and 2.
WIDE = TilingScheme(1000.0, 9000.0, 512, 256, 96, SpatialReference(2056),
                    (LevelOfDetail(0, 7559.04, 2.0), LevelOfDetail(1, 3779.52, 1.0)))


def test_non_square_tiles_use_cols_for_x_and_rows_for_y() -> None:
    assert WIDE.tile_span(1) == (512.0, 256.0)
    assert WIDE.tile_span(0) == (1024.0, 512.0)
    # the point (1000 + 3.5 tiles wide, 9000 - 1.5 tiles high) at level 1
    assert WIDE.tile_of_point(1, 1000 + 3.5 * 512, 9000 - 1.5 * 256) == (1, 3)
    assert WIDE.tile_bounds(1, 1, 3) == (1000 + 3 * 512, 9000 - 2 * 256, 1000 + 4 * 512, 9000 - 256)
    # a box 2 tiles wide and 6 tiles high: 2 columns, 6 rows
    assert WIDE.tile_range(1, (1000 + 512, 9000 - 7 * 256, 1000 + 3 * 512, 9000 - 256)) == \
        (1, 1, 6, 2)


def test_non_square_tiles_are_planned_by_their_own_width_and_height() -> None:
    from shapely.geometry import box

    from cacheorch.planner import count_level, plan_level
    area = box(1000 + 512, 9000 - 7 * 256, 1000 + 3 * 512, 9000 - 256)  # cols 1-2, rows 1-6
    keys = {(k.row, k.col) for p in plan_level(WIDE, 1, area) for k in p.keys()}
    assert keys == {(r, c) for r in range(1, 7) for c in (1, 2)}
    assert count_level(WIDE, 1, area) == 12
    assert count_level(WIDE, 0, area) == 2 * 4  # level 0: cols 0-1 (1024 wide), rows 0-3 (512 high)


def test_points_left_of_or_above_the_origin_are_in_negative_tiles() -> None:
    # half a tile left of the origin is column -1, not column 0 (floor, not truncation)
    assert WIDE.tile_of_point(1, 1000 - 256, 9000 - 10) == (0, -1)
    assert WIDE.tile_of_point(1, 1000 + 10, 9000 + 100) == (-1, 0)
    assert WIDE.tile_of_point(1, 1000 - 2000, 9000 + 300) == (-2, -4)
    # a range that starts left of and above the origin is clamped to the grid's first tile
    assert WIDE.tile_range(1, (1000 - 700, 9000 - 300, 1000 + 100, 9000 + 50)) == (0, 0, 1, 0)
    # and one wholly left of, or wholly above, the origin holds no tile
    assert WIDE.tile_range(1, (1000 - 700, 9000 - 300, 1000 - 100, 9000 - 10)) is None
    assert WIDE.tile_range(1, (1000 + 10, 9000 + 50, 1000 + 900, 9000 + 400)) is None


def test_sampled_tiles_of_an_area_left_of_the_origin_stay_on_the_grid() -> None:
    from shapely.geometry import box

    from cacheorch.sampling import sample_keys
    area = box(1000 - 2000, 9000 - 3 * 256, 1000 + 2 * 512, 9000 + 300)
    keys = sample_keys(WIDE, 1, area, 20)
    assert keys and all(k.row >= 0 and k.col >= 0 for k in keys)

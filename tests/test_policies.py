"""Level-selection policies: levels, scale-range (ArcGIS Runtime's rule) and snap."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from cacheorch.arcgis_json import service_from_json
from cacheorch.errors import LevelError, PolicyError
from cacheorch.plugins.policy_levels import LevelsPolicy
from cacheorch.plugins.policy_levels import cacheorch_register_policies as register_levels
from cacheorch.plugins.policy_scale_range import ScaleRangePolicy
from cacheorch.plugins.policy_snap import SnapPolicy
from cacheorch.tiling import LevelOfDetail, SpatialReference, TilingScheme, web_mercator_scheme

WM23 = web_mercator_scheme(max_level=23)


def street_map(fixtures):
    path = fixtures / "mapserver_json" / "World_Street_Map_MapServer_v10.01.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    return service_from_json("https://services.arcgisonline.com/ArcGIS/rest/services/"
                              "World_Street_Map/MapServer", data).scheme


def select(policy, scheme, levels=None):
    chosen = policy.select(scheme, list(scheme.lods) if levels is None else levels)
    return [lod.level for lod in chosen]


#: The example of spec §3.4: four levels at 1:2,000,000 … 1:250,000.
FOUR = TilingScheme(origin_x=0, origin_y=1e6, tile_cols=256, tile_rows=256, dpi=96,
                    spatial_reference=SpatialReference(2193),
                    lods=tuple(LevelOfDetail(i, s, s / 3779.52) for i, s in
                               enumerate((2_000_000, 1_000_000, 500_000, 250_000))))


# -- levels -------------------------------------------------------------------------------------

def test_levels_keeps_ranges_and_singles_in_scheme_order():
    policy = LevelsPolicy(LevelsPolicy.Options(levels="8, 0-5"))
    assert select(policy, WM23) == [0, 1, 2, 3, 4, 5, 8]
    assert select(LevelsPolicy(LevelsPolicy.Options(levels="17")), WM23) == [17]
    assert LevelsPolicy.positional == "levels"
    assert "0-5" in LevelsPolicy(LevelsPolicy.Options(levels="0-5")).explain()


def test_levels_only_narrows_what_earlier_policies_left():
    policy = LevelsPolicy(LevelsPolicy.Options(levels="0-5"))
    assert select(policy, WM23, [WM23.lod(2), WM23.lod(4), WM23.lod(9)]) == [2, 4]


def test_level_the_scheme_lacks_names_the_available_levels():
    with pytest.raises(LevelError) as err:
        LevelsPolicy(LevelsPolicy.Options(levels="3,25")).select(WM23, list(WM23.lods))
    assert str(err.value) == "level 25 is not in the tiling scheme (levels 0-23)"


def test_level_outside_min_max_lod_is_refused():
    scheme = replace(WM23, min_lod=2, max_lod=9, _by_level={})
    with pytest.raises(LevelError, match=r"level 12 has no tiles.*2-9"):
        LevelsPolicy(LevelsPolicy.Options(levels="5,12")).select(scheme, list(scheme.lods))


@pytest.mark.parametrize("text", ["", "a-b", "5-3", "1;2", "-3", "1-", "1.5", "0-5,,x"])
def test_malformed_level_list_is_a_policy_error(text):
    with pytest.raises(PolicyError) as err:
        LevelsPolicy(LevelsPolicy.Options(levels=text)).select(WM23, list(WM23.lods))
    assert "\n" not in str(err.value)


def test_registration_hook_returns_the_class():
    assert register_levels() == [LevelsPolicy]


# -- scale-range --------------------------------------------------------------------------------

def range_levels(scheme, lo, hi, levels=None):
    return select(ScaleRangePolicy(ScaleRangePolicy.Options(min_scale=lo, max_scale=hi)), scheme,
                  levels)


def test_scale_range_runtime_example():
    assert range_levels(FOUR, 750_000, 25_000) == [1, 2, 3]


@pytest.mark.parametrize("lo, hi, expected", [
    (0, 0, [0, 1, 2, 3]),                 # 0 = unbounded both ways
    (3_000_000, 0, [0, 1, 2, 3]),         # min beyond the coarsest: start at the first
    (1_500_000, 0, [0, 1, 2, 3]),         # min between 2M and 1M: take the coarser (2M)
    (1_000_000, 0, [1, 2, 3]),            # min on a level: that level
    (0, 600_000, [0, 1, 2]),              # max between 1M and 500k: take the finer (500k)
    (0, 500_000, [0, 1, 2]),              # max on a level: that level
    (0, 100_000, [0, 1, 2, 3]),           # max beyond the finest: to the last
    (900_000, 800_000, [1, 2]),           # both between the same pair: both neighbours
    (1_000_000 * (1 + 5e-7), 500_000 * (1 - 5e-7), [1, 2]),  # equal within 1e-6 relative
    (1_000_000 * (1 + 5e-6), 500_000 * (1 - 5e-6), [0, 1, 2, 3]),  # beyond it: neighbours
])
def test_scale_range_bounds(lo, hi, expected):
    assert range_levels(FOUR, lo, hi) == expected


def test_scale_range_on_a_real_service(fixtures):
    scheme = street_map(fixtures)
    # 1:250,000 lies between level 11 (288,895) and 12 (144,448); 1:2,000 between 17 (4,514) and none
    assert range_levels(scheme, 250_000, 2_000) == [11, 12, 13, 14, 15, 16, 17]
    assert range_levels(scheme, 0, 10_000_000) == [0, 1, 2, 3, 4, 5, 6]


def test_scale_range_sees_only_the_levels_left():
    assert range_levels(FOUR, 750_000, 0, [FOUR.lod(0), FOUR.lod(2), FOUR.lod(3)]) == [0, 2, 3]


def test_scale_range_refuses_swapped_or_negative_bounds():
    with pytest.raises(PolicyError, match="min_scale 25000 is a larger scale than max_scale 750000"):
        range_levels(FOUR, 25_000, 750_000)
    with pytest.raises(PolicyError):
        range_levels(FOUR, -1, 0)


# -- snap ---------------------------------------------------------------------------------------

def snap(scheme, scales, levels=None):
    return select(SnapPolicy(SnapPolicy.Options(scales=scales)), scheme, levels)


def test_snap_matches_scales_written_with_other_precision(fixtures):
    scheme = street_map(fixtures)
    # conf.xml precision for levels 1 and 13, REST precision for level 12
    assert snap(scheme, "72223.819285999998;295828763.79577702;144447.638572") == [1, 12, 13]
    assert snap(scheme, "1:4513.988705") == [17]
    assert SnapPolicy.positional == "scales"


def test_snap_scale_matching_no_level_names_the_nearest(fixtures):
    with pytest.raises(LevelError) as err:
        snap(street_map(fixtures), "100000")
    assert str(err.value) == ("scale 100000 matches no level; nearest: level 12 (144447.638572), "
                              "level 13 (72223.819286)")


def test_snap_tolerance_is_one_part_per_million():
    assert snap(FOUR, str(500_000 * (1 + 9e-7))) == [2]
    with pytest.raises(LevelError):
        snap(FOUR, str(500_000 * (1 + 2e-6)))


def test_snap_to_a_level_an_earlier_policy_removed_is_an_error():
    with pytest.raises(LevelError, match="level 1"):
        snap(FOUR, "1000000", [FOUR.lod(0), FOUR.lod(2)])


@pytest.mark.parametrize("text", ["", "abc", "1000;x"])
def test_snap_malformed_is_a_policy_error(text):
    with pytest.raises(PolicyError):
        snap(FOUR, text)


def test_explain_is_one_line():
    for policy in (LevelsPolicy(LevelsPolicy.Options(levels="0-3")),
                   ScaleRangePolicy(ScaleRangePolicy.Options(min_scale=1e6, max_scale=5e4)),
                   SnapPolicy(SnapPolicy.Options(scales="1000000"))):
        line = policy.explain()
        assert line and "\n" not in line

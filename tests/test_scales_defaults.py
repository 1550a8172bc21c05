"""The ``defaults`` scale source: the standard Web Mercator series, or scales from the config."""
from __future__ import annotations

import json

import pytest

from cacheorch.connection import Connection
from cacheorch.errors import ConfigError
from cacheorch.plugins.scales_defaults import DefaultsScaleSource
from cacheorch.plugins.scales_defaults import cacheorch_register_scale_sources as register


def read(**options):
    source = DefaultsScaleSource(DefaultsScaleSource.Options(**options))
    return source.read("defaults", Connection())


def test_standard_series_matches_the_captured_service(fixtures):
    """Levels 0-23 computed from level 0 agree with ArcGIS Online's published LODs (0-17)."""
    service = read()
    scheme = service.scheme
    assert scheme.levels == tuple(range(24))
    assert scheme.spatial_reference.is_web_mercator
    assert (scheme.origin_x, scheme.origin_y, scheme.tile_cols, scheme.dpi) == (
        -20037508.342787, 20037508.342787, 256, 96)
    published = json.loads((fixtures / "mapserver_json" / "World_Street_Map_MapServer_v10.01.json")
                           .read_text(encoding="utf-8"))["tileInfo"]["lods"]
    for lod in published:
        ours = scheme.lod(lod["level"])
        assert ours.resolution == pytest.approx(lod["resolution"], rel=1e-9)
        assert ours.scale == pytest.approx(lod["scale"], rel=1e-9)
    assert scheme.lod(23).scale == pytest.approx(70.5310735, rel=1e-8)
    assert scheme.lod(0).scale / scheme.lod(0).resolution == pytest.approx(96 * 39.37, rel=1e-12)
    assert service.kind == "defaults" and service.location == "defaults"
    assert scheme.grid_bounds() == (-20037508.342787, -20037508.342787,
                                    20037508.342787, 20037508.342787)


#: Spec §1.4: the standard ArcGIS Online / Bing / Google Web Mercator series, as published.
SPEC_1_4 = [
    (0, 156543.033928, 591657527.591555), (1, 78271.5169639999, 295828763.795777),
    (2, 39135.7584820001, 147914381.897889), (3, 19567.8792409999, 73957190.948944),
    (4, 9783.93962049996, 36978595.474472), (5, 4891.96981024998, 18489297.737236),
    (6, 2445.98490512499, 9244648.868618), (7, 1222.99245256249, 4622324.434309),
    (8, 611.49622628138, 2311162.217155), (9, 305.748113140558, 1155581.108577),
    (10, 152.874056570411, 577790.554289), (11, 76.4370282850732, 288895.277144),
    (12, 38.2185141425366, 144447.638572), (13, 19.1092570712683, 72223.819286),
    (14, 9.55462853563415, 36111.909643), (15, 4.77731426794937, 18055.954822),
    (16, 2.38865713397468, 9027.977411), (17, 1.19432856685505, 4513.988705),
    (18, 0.597164283559817, 2256.994353), (19, 0.298582141647617, 1128.497176),
    (20, 0.14929107082380833, 564.248588), (21, 0.07464553541190416, 282.124294),
    (22, 0.03732276770595208, 141.062147), (23, 0.01866138385297604, 70.5310735),
]


def test_standard_series_matches_the_spec_table_levels_0_to_23():
    scheme = read().scheme
    assert [lod.level for lod in scheme.lods] == [level for level, _, _ in SPEC_1_4]
    for level, resolution, scale in SPEC_1_4:
        lod = scheme.lod(level)
        assert lod.resolution == pytest.approx(resolution, rel=1e-6), level
        assert lod.scale == pytest.approx(scale, rel=1e-6), level
        # a scale computed with 1/0.0254 in/m instead of 39.37 is 2 ppm off: outside 1e-6
        assert abs(lod.resolution * 96 / 0.0254 - scale) > 1e-6 * scale


def test_max_level_option_shortens_the_series():
    assert read(max_level=5).scheme.levels == (0, 1, 2, 3, 4, 5)


def test_tile_size_and_dpi():
    scheme = read(tile_size=512, dpi=120).scheme
    assert scheme.tile_cols == scheme.tile_rows == 512
    assert scheme.lod(0).resolution == pytest.approx(156543.033928 / 2, rel=1e-9)
    assert scheme.lod(0).scale == pytest.approx(scheme.lod(0).resolution * 120 * 39.37, rel=1e-12)


def test_scales_from_the_config_number_levels_from_zero():
    scheme = read(scales="591657527.591555; 295828763.795777;147914381.897889;").scheme
    assert scheme.levels == (0, 1, 2)
    assert scheme.lod(2).scale == 147914381.897889
    # resolution = scale / (dpi × 39.37 × metres per unit): ArcGIS's own level 2 resolution
    assert scheme.lod(2).resolution == pytest.approx(39135.7584820001, rel=1e-9)
    scheme = read(scales="10000;5000", dpi=72).scheme
    assert scheme.lod(1).resolution == pytest.approx(5000 / (72 * 39.37), rel=1e-12)


@pytest.mark.parametrize("scales, words", [("1000;abc", "'abc' is not a number"),
                                           ("1000;2000", "small scale to large"),
                                           ("1000;1000", "small scale to large")])
def test_bad_scale_list(scales, words):
    with pytest.raises(ConfigError, match=words):
        read(scales=scales)


def test_accepts_only_the_word_defaults():
    assert DefaultsScaleSource.accepts("defaults") and DefaultsScaleSource.accepts(" Defaults ")
    assert not DefaultsScaleSource.accepts("https://h/x/MapServer")
    assert not DefaultsScaleSource.accepts("defaults.geojson")
    assert register() == [DefaultsScaleSource]

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

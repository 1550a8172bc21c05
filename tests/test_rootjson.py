"""root.json / iteminfo.json: shaped like Esri's package, read back, and placed right by GDAL."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from _gdal import colour_of, open_gdal, solid_png, tile_centre_rgba

from cacheorch.errors import FormatError
from cacheorch.formats.bundle import BundleWriter, bundle_name, level_folder
from cacheorch.formats.rootjson import (
    iteminfo_json, read_root_json, root_json, root_json_storage, wgs84_bounds,
)
from cacheorch.tiling import Envelope, SpatialReference, web_mercator_scheme


@pytest.fixture
def usa(fixtures: Path) -> dict:
    return json.loads((fixtures / "esri_tpkx_sample" / "extracted" / "root.json").read_bytes())


@pytest.fixture
def usa_item(fixtures: Path) -> dict:
    return json.loads((fixtures / "esri_tpkx_sample" / "extracted" / "iteminfo.json").read_bytes())


def test_read_usa_root_json(usa):
    scheme = read_root_json(usa)
    assert scheme.levels == tuple(range(24))
    assert (scheme.min_lod, scheme.max_lod) == (0, 5)
    assert scheme.tiled_levels == (0, 1, 2, 3, 4, 5)
    assert scheme.lod(23).resolution == 0.01866138385297604
    assert scheme.spatial_reference.is_web_mercator and scheme.spatial_reference.wkid == 102100
    assert scheme.tile_format == "PNG" and scheme.name == "Usa"
    assert scheme.full_extent.xmin == -19839092.300098713
    assert root_json_storage(usa) == ("esriMapCacheStorageModeCompactV2", 128)


def test_root_json_has_the_keys_of_a_real_package(usa):
    scheme = web_mercator_scheme()
    extent = Envelope(-1e6, -2e6, 3e6, 4e6, SpatialReference(102100, 3857))
    ours = root_json(scheme, name="Mine", min_lod=4, max_lod=6, full_extent=extent,
                     initial_extent=None)
    optional = {"layers"}  # legends are not ours to invent
    assert set(usa) - optional == set(ours)
    assert set(usa["tileInfo"]) == set(ours["tileInfo"])
    assert set(usa["tileImageInfo"]) == set(ours["tileImageInfo"])
    assert set(usa["storageInfo"]) == set(ours["storageInfo"])
    assert ours["tileBundlesPath"] == "./tile"
    assert (ours["minLOD"], ours["maxLOD"]) == (4, 6)
    assert ours["minScale"] == scheme.lod(4).scale and ours["maxScale"] == scheme.lod(6).scale
    assert [lod["level"] for lod in ours["tileInfo"]["lods"]] == list(range(24))  # whole scheme
    assert ours["spatialReference"] == {"wkid": 102100, "latestWkid": 3857}
    assert ours["initialExtent"] == ours["fullExtent"]
    assert ours["fullExtent"]["spatialReference"] == {"wkid": 102100, "latestWkid": 3857}
    json.dumps(ours, allow_nan=False)  # plain JSON


def test_root_json_round_trip():
    scheme = web_mercator_scheme(max_level=10, tile_size=512, tile_format="JPEG")
    extent = Envelope(1.0, 2.0, 3.0, 4.0, SpatialReference(102100, 3857))
    back = read_root_json(json.loads(json.dumps(
        root_json(scheme, name="n", min_lod=2, max_lod=7, full_extent=extent, initial_extent=None))))
    assert back.lods == scheme.lods and back.fingerprint() == scheme.fingerprint()
    assert (back.min_lod, back.max_lod, back.tile_cols, back.tile_format) == (2, 7, 512, "JPEG")
    assert back.full_extent.bounds == (1.0, 2.0, 3.0, 4.0)


def test_root_json_refuses_levels_the_scheme_lacks():
    with pytest.raises(Exception, match="level 30"):
        root_json(web_mercator_scheme(), name="n", min_lod=0, max_lod=30, full_extent=None,
                  initial_extent=None)


@pytest.mark.parametrize("data", [{}, {"tileInfo": {"origin": {"x": 0}}},
                                  {"tileInfo": {"origin": {"x": 0, "y": 0}, "lods": []}}])
def test_read_root_json_malformed(data):
    with pytest.raises(FormatError):
        read_root_json(data)


def test_iteminfo_has_the_keys_of_a_real_package(usa_item):
    ours = iteminfo_json(name="Mine", title="My map", extent_wgs84=(-10.0, -5.0, 10.0, 5.0))
    assert set(usa_item) == set(ours)
    assert ours["type"] == "Compact Tile Package"
    assert ours["typeKeywords"] == usa_item["typeKeywords"]
    assert ours["thumbnail"] == "./thumbnail.png"
    assert ours["extent"]["spatialReference"]["wkid"] == 4326
    assert len(ours["guid"]) == 36 and ours["guid"] == ours["guid"].upper()


def test_wgs84_bounds():
    sr = SpatialReference(102100, 3857)
    west, south, east, north = wgs84_bounds((-20037508.342787, -20037508.342787,
                                             20037508.342787, 20037508.342787), sr)
    assert (west, east) == pytest.approx((-180.0, 180.0))
    assert (south, north) == pytest.approx((-85.0511287798, 85.0511287798))
    assert wgs84_bounds((0, 0, 1, 1), SpatialReference(wkt="nonsense")) is None


def _package(path: Path, scheme, levels, tiles, full_extent):
    """A .tpkx built from the format modules alone (no exporter), STORED."""
    root = root_json(scheme, name=path.stem, min_lod=min(levels), max_lod=max(levels),
                     full_extent=full_extent, initial_extent=None)
    by_bundle: dict[tuple[int, int, int], dict[tuple[int, int], bytes]] = {}
    for (level, row, col), data in tiles.items():
        by_bundle.setdefault((level, row // 128 * 128, col // 128 * 128), {})[(row, col)] = data
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("root.json", json.dumps(root))
        for (level, br, bc), members in by_bundle.items():
            name = path.parent / f"{level}-{bundle_name(br, bc)}"
            writer = BundleWriter(name, br, bc)
            for (row, col), data in members.items():
                writer.add(row, col, data)
            writer.finish()
            zf.write(name, f"tile/{level_folder(level)}/{bundle_name(br, bc)}")


@pytest.mark.parametrize("cropped", [False, True])
def test_gdal_places_a_package_whose_levels_start_above_zero(tmp_path, cropped):
    """minLOD 4: GDAL must read L04..L06 folders for levels 4..6, not L00..L02."""
    scheme = web_mercator_scheme()
    tiles = {(4, 5, 6): None, (5, 11, 12): None, (6, 22, 25): None, (6, 23, 24): None}
    tiles = {key: solid_png(colour_of(*key)) for key in tiles}
    grid = Envelope(*scheme.grid_bounds(), SpatialReference(102100, 3857))
    # A cropped fullExtent makes GDAL expose only that window (through a VRT).
    t = scheme.tile_bounds(4, 5, 6)
    extent = Envelope(t[0] - 1e5, t[1] - 2e5, t[2] + 3e5, t[3] + 1e5, grid.spatial_reference) \
        if cropped else grid
    _package(tmp_path / "pkg.tpkx", scheme, (4, 5, 6), tiles, extent)
    with open_gdal(tmp_path / "pkg.tpkx") as ds:
        assert ds.transform.a == pytest.approx(scheme.lod(6).resolution)
        for (level, row, col) in tiles:
            assert tile_centre_rgba(ds, scheme, level, row, col) == (*colour_of(level, row, col), 255)
        # a neighbour with no tile stays empty
        assert tile_centre_rgba(ds, scheme, 6, 22, 24) == (0, 0, 0, 0)

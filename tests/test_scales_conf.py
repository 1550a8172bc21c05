"""The ``conf`` scale source through ``cacheorch scales``: every fixture, and caches it has never seen.

Expected levels come from the files themselves, read here with a regular expression or ``json``
(not with cacheorch's reader). The unseen caches are conf.xml files written by hand in ArcGIS's
shape: US feet (State Plane 2263, 512 px), degrees (GCS 4326, origin -180/90, 512 px), the NZTM
fixture in an ArcGIS Server cache directory, a .tpk with a custom map name, a .tpkx whose tiles
cover only some levels. Bad inputs each give exit 2 and one line.
"""
from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

import pytest

from _gdal import solid_png
from _localcache import (
    EXPLODED, V1, WKT_NY_FEET, WKT_NZTM, WKT_WGS84, conf_cdi, conf_xml, lods_for, use_local_plugins,
    write_exploded, write_v1_bundles, zip_folder,
)
from cacheorch.connection import Connection
from cacheorch.plugins.scales_conf import ConfScaleSource
from cacheorch.tiling import INCHES_PER_METRE

__all__ = ["use_local_plugins"]
pytestmark = pytest.mark.usefixtures("use_local_plugins")

_LOD = re.compile(r"<LevelID>\s*(\d+)\s*</LevelID>\s*<Scale>\s*([^<\s]+)\s*</Scale>\s*"
                  r"<Resolution>\s*([^<\s]+)\s*</Resolution>")


def _levels_of_conf(path: Path) -> list[tuple[int, float, float]]:
    return [(int(a), float(b), float(c)) for a, b, c in _LOD.findall(path.read_text("utf-8"))]


def _levels_of_root(path: Path) -> list[tuple[int, float, float]]:
    return [(lod["level"], float(lod["scale"]), float(lod["resolution"]))
            for lod in json.loads(path.read_bytes())["tileInfo"]["lods"]]


def _scales(cli, location: Path | str) -> dict:
    result = cli("scales", str(location), "--json")
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def _table(data: dict) -> list[tuple[int, float, float]]:
    return [(lv["level"], lv["scale"], lv["resolution"]) for lv in data["levels"]]


def _tiled(data: dict) -> list[int]:
    return [lv["level"] for lv in data["levels"] if lv["tiled"]]


# -- every fixture ------------------------------------------------------------------------------------

FIXTURE_CASES = [
    # (what to name, where its levels are written, tiled levels, tile size, format)
    ("tpk_v1/states_filled.tpk", "tpk_v1/states_filled_extracted/v101/Layers/conf.xml",
     range(0, 5), 256, "PNG8"),
    ("tpk_v1/states_filled_extracted", "tpk_v1/states_filled_extracted/v101/Layers/conf.xml",
     range(0, 5), 256, "PNG8"),  # no bundles unzipped: every level may be asked for
    ("esri_tpkx_sample/Usa.tpkx", "esri_tpkx_sample/extracted/root.json", range(0, 6), 256, "PNG"),
    ("esri_tpkx_sample/extracted", "esri_tpkx_sample/extracted/root.json", range(0, 6), 256, "PNG"),
    ("esri_compactcache_sample", "esri_compactcache_sample/conf.xml", range(0, 3), 256, "JPEG"),
    ("gwc/compactcacheV1", "gwc/compactcacheV1/Conf.xml", range(5, 7), 256, "JPEG"),
    ("gwc/compactcacheV1/Conf.xml", "gwc/compactcacheV1/Conf.xml", range(5, 7), 256, "JPEG"),
    ("gwc/arcgis_10.1_conf.xml", "gwc/arcgis_10.1_conf.xml", range(0, 15), 512, "JPEG"),
    ("gdal_esric/conf.xml", "gdal_esric/conf.xml", range(0, 4), 256, "MIXED"),
]


@pytest.mark.parametrize("name, source, tiled, size, fmt", FIXTURE_CASES,
                         ids=[case[0] for case in FIXTURE_CASES])
def test_every_fixture(cli, fixtures, name, source, tiled, size, fmt):
    data = _scales(cli, fixtures / name)
    path = fixtures / source
    expected = _levels_of_root(path) if path.suffix == ".json" else _levels_of_conf(path)
    assert expected and _table(data) == expected
    assert _tiled(data) == list(tiled)
    assert data["tile_size"] == [size, size] and data["format"] == fmt and data["kind"] == "cache"
    assert data["location"] == str((fixtures / name).absolute())


def test_fixture_scales_follow_arcgis_ratio(fixtures):
    """Metre caches: scale = resolution × 96 × 39.37, on every level of every metre fixture."""
    for name in ("gwc/arcgis_10.1_conf.xml", "esri_tpkx_sample/Usa.tpkx", "gwc/compactcacheV1"):
        scheme = ConfScaleSource().read(str(fixtures / name), Connection()).scheme
        assert scheme.units == "esriMeters"
        for lod in scheme.lods:
            assert lod.scale / lod.resolution == pytest.approx(96 * INCHES_PER_METRE, rel=1e-8)


def test_nztm_scales_are_not_powers_of_two(cli, fixtures):
    data = _scales(cli, fixtures / "gwc" / "arcgis_10.1_conf.xml")
    scales = [lv["scale"] for lv in data["levels"]]
    assert scales[:4] == [8000000, 6000000, 4000000, 3000000] and scales[-1] == 2500
    assert data["origin"] == [-4020900, 19998100] and data["spatialReference"]["wkid"] == 2193


# -- caches and packages never seen before ------------------------------------------------------------

FEET_SCALES = [1_200_000, 600_000, 300_000, 150_000, 75_000, 36_000, 18_000, 9_600, 4_800, 2_400, 1_200]


def test_feet_state_plane_512_in_a_server_cache_directory(cli, tmp_path):
    lods = lods_for(FEET_SCALES, "ft")
    service = tmp_path / "arcgiscache" / "NYC_Orthos"
    layers = service / "Layers"
    layers.mkdir(parents=True)
    (layers / "conf.xml").write_bytes(conf_xml(wkt=WKT_NY_FEET, wkid=2263, lods=lods, tile_size=512,
                                               origin=(-120039300.0, 136869900.0), storage=V1))
    (layers / "conf.cdi").write_bytes(conf_cdi((913175.1, 120121.9, 1067382.5, 272844.3)))
    write_v1_bundles(layers / "_alllayers", {(3, 10, 12): solid_png((1, 2, 3), 512),
                                             (5, 40, 50): solid_png((3, 2, 1), 512)})
    for where in (service, tmp_path / "arcgiscache", layers, layers / "conf.xml"):
        data = _scales(cli, where)
        assert _table(data) == lods and data["tile_size"] == [512, 512]
        assert _tiled(data) == [3, 5]  # level 4 has no bundle: no tiles, like 0-2 and 6-10
        assert data["spatialReference"]["wkid"] == 2263
    assert _scales(cli, service)["name"] == "NYC_Orthos"  # the service, not "Layers"
    svc = ConfScaleSource().read(str(service), Connection())
    assert svc.scheme.units == "esriFeet"
    for lod in svc.scheme.lods:  # feet: scale = resolution × 96 × 12
        assert lod.scale / lod.resolution == pytest.approx(1152, rel=1e-9)
        assert svc.scheme.scale_of(lod.resolution) == pytest.approx(lod.scale, rel=1e-9)
    assert svc.full_extent.bounds == (913175.1, 120121.9, 1067382.5, 272844.3)


def test_degrees_512_with_a_custom_map_name_and_upper_case_conf(cli, tmp_path):
    scales = [295_828_763.795777 / 2 ** n for n in range(6)] + [2_000_000.0, 1_000_000.0]
    lods = lods_for(scales, "deg")
    carte = tmp_path / "Weltkarte" / "Carte"
    carte.mkdir(parents=True)
    (carte / "CONF.XML").write_bytes(conf_xml(wkt=WKT_WGS84, wkid=4326, origin=(-180.0, 90.0),
                                              lods=lods, tile_size=512, geographic=True,
                                              storage=EXPLODED, tile_format="JPEG"))
    jpeg = b"\xff\xd8\xff\xe0"
    write_exploded(carte / "_alllayers", {(1, 0, 1): jpeg + b"a", (2, 1, 2): jpeg + b"b"}, ext="jpg")
    data = _scales(cli, tmp_path / "Weltkarte")
    assert _table(data) == lods and data["tile_size"] == [512, 512] and _tiled(data) == [1, 2]
    assert data["origin"] == [-180, 90] and data["name"] == "Weltkarte"
    scheme = ConfScaleSource().read(str(carte), Connection()).scheme
    assert scheme.units == "esriDecimalDegrees"
    # ArcGIS turns degrees into scale on a 6,370,997 m sphere: 420,263,251.3 per degree-per-pixel
    for lod in scheme.lods:
        assert lod.scale / lod.resolution == pytest.approx(420_263_251.3, rel=1e-9)
    assert scheme.lod(0).resolution == pytest.approx(295_828_763.795777 / 420_263_251.3, rel=1e-9)


def test_nztm_fixture_as_a_server_cache_directory(cli, fixtures, tmp_path):
    layers = tmp_path / "arcgiscache" / "Basemaps_NZ" / "Layers"
    layers.mkdir(parents=True)
    shutil.copy(fixtures / "gwc" / "arcgis_10.1_conf.xml", layers / "Conf.xml")
    jpeg = b"\xff\xd8\xff\xe0"
    write_exploded(layers / "_alllayers", {(7, 3, 4): jpeg, (9, 30, 40): jpeg}, ext="jpg")
    data = _scales(cli, tmp_path / "arcgiscache")
    assert data["name"] == "Basemaps_NZ"
    assert _table(data) == _levels_of_conf(fixtures / "gwc" / "arcgis_10.1_conf.xml")
    assert _tiled(data) == [7, 9] and data["tile_size"] == [512, 512]  # no level-8 folder


def test_a_tpk_with_any_map_name_stored_or_deflated(cli, tmp_path):
    lods = lods_for([4_000_000, 2_000_000, 1_000_000, 500_000], "m", first=5)  # levels 5-8 only
    tiles = {(6, 1, 1): solid_png((9, 8, 7)), (7, 3, 2): solid_png((7, 8, 9))}
    root = tmp_path / "pkg" / "v101" / "TPK Root Name"
    root.mkdir(parents=True)
    (root / "conf.xml").write_bytes(conf_xml(wkt=WKT_NZTM, wkid=2193, lods=lods,
                                             origin=(-4020900.0, 19998100.0), namespace="10.3"))
    (root / "conf.cdi").write_bytes(conf_cdi((1_000_000.0, 4_700_000.0, 2_100_000.0, 6_200_000.0)))
    write_v1_bundles(root / "_alllayers", tiles)
    extra = {"esriinfo/item.pkinfo": b"<pkinfo/>", "v101/TPK Root Name.lyr": b"\0"}
    for compression in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        package = zip_folder(tmp_path / "pkg", tmp_path / f"roads-{compression}.tpk",
                             compression=compression, extra=extra)
        data = _scales(cli, package)
        assert _table(data) == lods and [lv["level"] for lv in data["levels"]] == [5, 6, 7, 8]
        assert _tiled(data) == [6, 7] and data["name"] == f"roads-{compression}"
        service = ConfScaleSource().read(str(package), Connection())
        assert service.full_extent.bounds == (1_000_000.0, 4_700_000.0, 2_100_000.0, 6_200_000.0)
        assert getattr(service, "storage_format", V1) == V1


def test_a_tpkx_whose_tiles_cover_some_levels_keeps_the_whole_scheme(cli, fixtures, tmp_path):
    root = json.loads((fixtures / "esri_tpkx_sample" / "extracted" / "root.json").read_bytes())
    root.update(minLOD=12, maxLOD=14, name="Town")
    package = tmp_path / "town.tpkx"
    with zipfile.ZipFile(package, "w") as zf:
        zf.writestr("root.json", json.dumps(root))
        zf.writestr("iteminfo.json", "{}")
    data = _scales(cli, package)
    assert len(data["levels"]) == 24 and _tiled(data) == [12, 13, 14] and data["name"] == "Town"
    assert _table(data) == _levels_of_root(fixtures / "esri_tpkx_sample" / "extracted" / "root.json")


def test_the_human_table(cli, fixtures):
    result = cli("scales", str(fixtures / "gwc" / "compactcacheV1"))
    assert result.code == 0
    lines = result.stdout.splitlines()
    assert "cache 'compactcacheV1'" in lines[0] and "256×256 px" in lines[0]
    level5 = next(line for line in lines if line.split()[:1] == ["5"])
    assert "18489297.737236" in level5 and "(no tiles)" not in level5
    assert "(no tiles)" in next(line for line in lines if line.split()[:1] == ["7"])


# -- bad input: exit 2, one line ----------------------------------------------------------------------

def _bad(tmp_path: Path, case: str, fixtures: Path) -> tuple[Path, str]:
    nztm = (fixtures / "gwc" / "arcgis_10.1_conf.xml").read_bytes()
    folder = tmp_path / case
    folder.mkdir()
    if case == "truncated-conf":
        (folder / "conf.xml").write_bytes(nztm[: len(nztm) // 2])
        return folder, "not well-formed XML"
    if case == "no-tilecacheinfo":
        (folder / "conf.xml").write_bytes(re.sub(rb"<TileCacheInfo.*</TileCacheInfo>", b"", nztm,
                                                 flags=re.S))
        return folder, "missing TileCacheInfo"
    if case == "no-levels":
        (folder / "conf.xml").write_bytes(re.sub(rb"<LODInfo .*</LODInfo>", b"", nztm, flags=re.S))
        return folder, "no levels of detail"
    if case == "entity":
        (folder / "conf.xml").write_bytes(b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM '
                                          b'"file:///etc/passwd">]><CacheInfo>&e;</CacheInfo>')
        return folder, "DOCTYPE or ENTITY"
    if case == "unknown-storage":
        (folder / "conf.xml").write_bytes(nztm.replace(b"esriMapCacheStorageModeExploded",
                                                       b"esriMapCacheStorageModeCloud"))
        return folder, "unknown storage format"
    if case == "zip-without-scheme":
        package = folder / "nothing.tpk"
        with zipfile.ZipFile(package, "w") as zf:
            zf.writestr("esriinfo/item.pkinfo", "<pkinfo/>")
            zf.writestr("readme.txt", "hello")
        return package, "no conf.xml or root.json in the package"
    if case == "vector-package":
        package = folder / "streets.vtpk"
        with zipfile.ZipFile(package, "w") as zf:
            zf.writestr("p12/root.json", "{}")
        return package, "vector tile package"
    if case == "not-a-zip":
        (folder / "broken.tpkx").write_bytes(b"PK\x03\x04 but then nothing")
        return folder / "broken.tpkx", "not a readable zip"
    if case == "bad-root-json":
        (folder / "root.json").write_text('{"tileInfo": ')
        return folder, "not valid JSON"
    if case == "root-json-without-lods":
        (folder / "root.json").write_text('{"tileInfo": {"origin": {"x": 0, "y": 0}}}')
        return folder, "missing or malformed"
    if case == "empty-folder":
        return folder, "not a tile cache folder"
    if case == "two-caches":
        for name in ("a", "b"):
            (folder / name).mkdir()
            (folder / name / "conf.xml").write_bytes(nztm)
        return folder, "holds several caches (a, b)"
    if case == "text-file":
        (folder / "notes.txt").write_text("hello")
        return folder / "notes.txt", "not a cache folder, conf.xml, root.json, .tpk or .tpkx"
    if case == "alllayers":
        (folder / "conf.xml").write_bytes(nztm)
        (folder / "_alllayers" / "L00").mkdir(parents=True)
        return folder / "_alllayers", "name the folder above it"
    if case == "missing-package":
        return folder / "nowhere" / "roads.tpk", "no such file or folder"
    raise AssertionError(case)


BAD_CASES = ["truncated-conf", "no-tilecacheinfo", "no-levels", "entity", "unknown-storage",
             "zip-without-scheme", "vector-package", "not-a-zip", "bad-root-json",
             "root-json-without-lods", "empty-folder", "two-caches", "text-file", "alllayers",
             "missing-package"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line_and_exit_2(cli, fixtures, tmp_path, case):
    path, message = _bad(tmp_path, case, fixtures)
    result = cli("scales", str(path))
    assert result.code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize("case", ["truncated-conf", "zip-without-scheme", "empty-folder"])
def test_bad_input_to_run_is_exit_2_and_leaves_nothing(cli, fixtures, tmp_path, case):
    path, message = _bad(tmp_path, case, fixtures)
    output = tmp_path / "out.tpkx"
    result = cli("run", "--service", str(path), "--levels", "0-2", "--exporter", "tpkx",
                 "--output", str(output))
    assert result.code == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not output.exists() and not Path(str(output) + ".partial").exists()
    assert "Traceback" not in result.stderr


def test_a_url_given_to_conf_is_refused(cli):
    result = cli("scales", "https://example.com/arcgis/rest/services/X/MapServer", "--source", "conf")
    assert result.code == 2 and "not a URL" in result.stderr


def test_accepts(tmp_path):
    assert ConfScaleSource.accepts("caches/roads.tpkx")  # missing, but plainly a package
    assert ConfScaleSource.accepts(str(tmp_path))
    assert not ConfScaleSource.accepts("caches/roads")  # missing, and could be anything
    assert not ConfScaleSource.accepts("https://example.com/arcgis/rest/services/X/MapServer")
    assert not ConfScaleSource.accepts("defaults")
    (tmp_path / "Status.gdb").mkdir()  # the status-gdb source's, even though it exists
    assert not ConfScaleSource.accepts(str(tmp_path / "Status.gdb"))

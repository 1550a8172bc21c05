"""Reading local caches: Compact V1 (folders and .tpk), exploded folders, and the ``cache`` tile source.

Compact V1 is checked against MapProxy's reader (an independent implementation) on the real
GeoWebCache and tpkutils fixtures, and against bundles MapProxy wrote; the tile source is checked
for what it reports (ok / missing / failed) on real damage (Esri's Usa.tpkx L00/L01) and made-up
damage (a bad header, a truncated bundle, a missing bundlx).
"""
from __future__ import annotations

import json
import shutil
import struct
import tempfile
import time
import zipfile
from pathlib import Path

import pytest

from _gdal import solid_png
from _localcache import (
    EXPLODED, V1, V2, WKT_WGS84, conf_cdi, conf_xml, lods_for, use_local_plugins, write_exploded,
    write_v1_bundles,
)
from cacheorch.connection import Connection
from cacheorch.errors import FormatError
from cacheorch.formats.bundle import BundleWriter, SPEC_RECORD_COUNT
from cacheorch.formats.bundle_v1 import BUNDLX_SIZE, BundleV1Reader, bundlx_slot, parse_bundlx
from cacheorch.formats.cache import open_cache
from cacheorch.formats.confxml import WEB_MERCATOR_WKT
from cacheorch.plugins.scales_conf import ConfScaleSource
from cacheorch.plugins.tiles_cache import CacheTileFetcher, CacheTileSource
from cacheorch.tiling import TileKey

__all__ = ["use_local_plugins"]

WM_ORIGIN = (-20037508.342787, 20037508.342787)
WM_SCALES = [591657527.591555 / 2 ** n for n in range(10)]


def _mapproxy_bundle(base: Path, bundle_row: int = 0, bundle_col: int = 0
                     ) -> dict[tuple[int, int], bytes]:
    """Every tile of one V1 bundle as MapProxy reads it: {(row, col): bytes}."""
    from mapproxy.cache.compact import BundleV1
    from mapproxy.cache.tile import Tile

    bundle = BundleV1(str(base), offset=(bundle_col, bundle_row))
    tiles = [Tile((bundle_col + c, bundle_row + r, 0)) for r in range(128) for c in range(128)]
    bundle.load_tiles(tiles)
    return {(t.coord[1], t.coord[0]): t.image_result.as_buffer().read()
            for t in tiles if t.image_result is not None}


def _v1_folder(root: Path, tiles: dict[tuple[int, int, int], bytes], storage: str = V1,
               tile_format: str = "PNG") -> Path:
    """A Web Mercator cache folder: hand-written conf.xml + conf.cdi, tiles by MapProxy or as files."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "conf.xml").write_bytes(conf_xml(wkt=WEB_MERCATOR_WKT, wkid=102100, origin=WM_ORIGIN,
                                             lods=lods_for(WM_SCALES, "m"), storage=storage,
                                             tile_format=tile_format))
    (root / "conf.cdi").write_bytes(conf_cdi((-2e7, -2e7, 2e7, 2e7)))
    if storage == V1:
        write_v1_bundles(root / "_alllayers", tiles)
    elif storage == EXPLODED:
        write_exploded(root / "_alllayers", tiles)
    return root


# -- Compact V1 against MapProxy ------------------------------------------------------------------

def test_v1_fixture_reads_like_mapproxy(fixtures):
    folder = fixtures / "gwc" / "compactcacheV1"
    with open_cache(folder) as cache:
        assert cache.storage_format == V1 and list(cache.bundle_keys()) == [(5, 0, 0), (6, 0, 0)]
        for level in (5, 6):
            expected = _mapproxy_bundle(folder / "_alllayers" / f"L{level:02d}" / "R0000C0000")
            ours = {(r, c): data for r, c, data in cache.bundle_tiles(level, 0, 0)}
            assert ours == expected and len(ours) == {5: 28, 6: 84}[level]
            for (row, col), data in list(expected.items())[::7]:
                assert cache.get_tile(level, row, col) == data
        # column-major: the bundlx slot of (row 10, col 4) is col*128 + row
        index = parse_bundlx((folder / "_alllayers/L05/R0000C0000.bundlx").read_bytes())
        assert index[bundlx_slot(10, 4)] == 65596 and bundlx_slot(10, 4) == 4 * 128 + 10
        assert cache.get_tile(5, 4, 10) is None and cache.get_tile(5, 10, 4)[:3] == b"\xff\xd8\xff"
        assert cache.get_tile(7, 0, 0) is None  # no such level folder
        assert cache.get_tile(5, 200, 200) is None  # no such bundle


def test_tpk_is_read_in_place_like_mapproxy_reads_its_bundles(fixtures, tmp_path, monkeypatch):
    tpk = fixtures / "tpk_v1" / "states_filled.tpk"
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    with zipfile.ZipFile(tpk) as zf:
        zf.extractall(tmp_path / "x", [n for n in zf.namelist() if "_alllayers" in n])
    alllayers = tmp_path / "x" / "v101" / "Layers" / "_alllayers"
    with open_cache(tpk) as cache:
        assert cache.name == "states_filled" and cache.storage_format == V1
        assert cache.levels_with_tiles() == [0, 1, 2, 3, 4]
        total = 0
        for level, brow, bcol in cache.bundle_keys():
            expected = _mapproxy_bundle(alllayers / f"L{level:02d}" / "R0000C0000")
            assert {(r, c): d for r, c, d in cache.bundle_tiles(level, brow, bcol)} == expected
            total += len(expected)
        assert total == 24
        assert not any((tmp_path / "tmp").iterdir())  # stored members: nothing was extracted


def test_deflated_tpk_gives_the_same_tiles(fixtures, tmp_path, monkeypatch):
    """A .tpk re-zipped with deflate (and Finder litter) reads like the original."""
    tpk = fixtures / "tpk_v1" / "states_filled.tpk"
    deflated = tmp_path / "rezipped.tpk"
    with zipfile.ZipFile(tpk) as src, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as dst:
        dst.writestr("v101/", b"")
        dst.writestr("__MACOSX/.DS_Store", b"\0junk")
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    with open_cache(tpk) as stored, open_cache(deflated) as cache:
        assert list(cache.bundle_keys()) == list(stored.bundle_keys())
        for key in stored.bundle_keys():
            assert list(cache.bundle_tiles(*key)) == list(stored.bundle_tiles(*key))
        assert cache.get_tile(4, 5, 2) == stored.get_tile(4, 5, 2) is not None
        assert any((tmp_path / "tmp").iterdir())  # inflated copies live in a temporary folder...
    assert not any((tmp_path / "tmp").iterdir())  # ...removed on close


def test_v1_bundles_written_by_mapproxy(tmp_path):
    tiles = {(3, 1, 2): solid_png((1, 2, 3)), (3, 7, 7): solid_png((4, 5, 6)),
             (9, 130, 260): solid_png((7, 8, 9)), (9, 255, 390): solid_png((9, 9, 9))}
    folder = _v1_folder(tmp_path / "Layers", tiles)
    with open_cache(folder) as cache:
        assert list(cache.bundle_keys()) == [(3, 0, 0), (9, 128, 256), (9, 128, 384)]
        got = {(lv, r, c): d for lv, br, bc in cache.bundle_keys()
               for r, c, d in cache.bundle_tiles(lv, br, bc)}
        assert got == tiles
        assert all(cache.get_tile(*key) == data for key, data in tiles.items())
        assert cache.get_tile(3, 2, 1) is None and cache.get_tile(9, 130, 261) is None


def test_v1_offset_zero_is_missing(tmp_path):
    """Some writers mark an empty cell with offset 0 instead of a pointer into the size table."""
    tiles = {(2, 0, 0): solid_png((1, 1, 1)), (2, 1, 3): solid_png((2, 2, 2))}
    folder = _v1_folder(tmp_path / "Layers", tiles)
    bundlx = folder / "_alllayers" / "L02" / "R0000C0000.bundlx"
    raw = bytearray(bundlx.read_bytes())
    assert len(raw) == BUNDLX_SIZE
    slot = 16 + 5 * bundlx_slot(1, 3)
    raw[slot:slot + 5] = bytes(5)
    bundlx.write_bytes(bytes(raw))
    with open_cache(folder) as cache:
        assert cache.get_tile(2, 1, 3) is None and cache.get_tile(2, 0, 0) == tiles[(2, 0, 0)]
        assert [(r, c) for r, c, _ in cache.bundle_tiles(2, 0, 0)] == [(0, 0)]


def test_v1_reader_from_paths_refuses_other_files(tmp_path):
    bundle = tmp_path / "R0000C0000.bundle"
    bundle.write_bytes(struct.pack("<4I3Q5I", 4, 16384, 0, 5, 0, 60, 40, 16, 0, 127, 0, 127))
    (tmp_path / "R0000C0000.bundlx").write_bytes(bytes(BUNDLX_SIZE))
    with pytest.raises(FormatError, match="not a Compact V1 bundle"):
        BundleV1Reader.from_paths(bundle)


# -- exploded -------------------------------------------------------------------------------------

def test_exploded_cache(tmp_path):
    tiles = {(1, 0, 1): solid_png((10, 20, 30)), (1, 1, 0): b"\xff\xd8\xff\xe0jpeg-bytes",
             (4, 130, 7): solid_png((40, 50, 60))}
    folder = tmp_path / "arcgiscache" / "Svc" / "Carte"  # a map name that is not "Layers"
    _v1_folder(folder, {}, storage=EXPLODED, tile_format="MIXED")
    write_exploded(folder / "_alllayers", {(1, 0, 1): tiles[(1, 0, 1)], (4, 130, 7): tiles[(4, 130, 7)]})
    write_exploded(folder / "_alllayers", {(1, 1, 0): tiles[(1, 1, 0)]}, ext="jpg")
    (folder / "_alllayers" / "missing.jpg").write_bytes(b"placeholder")
    (folder / "_alllayers" / "L01" / "R00000000" / "Thumbs.db").write_bytes(b"junk")
    with open_cache(tmp_path / "arcgiscache") as cache:
        assert cache.storage_format == EXPLODED and cache.name == "Svc"  # the service folder
        assert cache.levels_with_tiles() == [1, 4]
        assert list(cache.bundle_keys()) == [(1, 0, 0), (4, 128, 0)]
        assert all(cache.get_tile(*key) == data for key, data in tiles.items())
        got = {(lv, r, c): d for lv, br, bc in cache.bundle_keys()
               for r, c, d in cache.bundle_tiles(lv, br, bc)}
        assert got == tiles
        assert cache.get_tile(1, 0, 0) is None and cache.get_tile(2, 0, 0) is None
        view = cache.open_bundle(4, 128, 0)
        assert view is not None and view.get(130, 7) == tiles[(4, 130, 7)] and view.get(131, 7) is None
        view.close()


def test_a_status_gdb_names_the_cache_it_sits_in(tmp_path):
    tiles = {(2, 1, 1): solid_png((1, 2, 3))}
    service = tmp_path / "arcgiscache" / "Roads"
    _v1_folder(service / "Layers", tiles)
    for gdb in (service / "Status.gdb", service / "Layers" / "Status.gdb"):
        gdb.mkdir()
        with open_cache(gdb) as cache:
            assert cache.name == "Roads" and cache.get_tile(2, 1, 1) == tiles[(2, 1, 1)]
    assert CacheTileSource.accepts(str(service / "Status.gdb"))


# -- the tile source ------------------------------------------------------------------------------

def _fetch(location: Path | str, keys, **options) -> dict[tuple[int, int, int], object]:
    service = ConfScaleSource().read(str(location), Connection())
    source = CacheTileSource(CacheTileSource.Options(**options))
    with source.open(service, Connection(), workers=8) as fetcher:
        return {(r.key.level, r.key.row, r.key.col): r
                for r in fetcher.fetch(TileKey(*key) for key in keys)}


def test_accepts_local_paths_only(fixtures, tmp_path):
    assert CacheTileSource.accepts(str(fixtures / "esri_tpkx_sample" / "Usa.tpkx"))
    assert CacheTileSource.accepts(str(fixtures / "esri_compactcache_sample"))
    assert not CacheTileSource.accepts("https://example.com/arcgis/rest/services/X/MapServer")
    assert not CacheTileSource.accepts(str(tmp_path / "nothing.tpkx"))


def test_usa_tpkx_malformed_records_fail_and_good_ones_are_exact(fixtures):
    usa = fixtures / "esri_tpkx_sample" / "Usa.tpkx"
    with open_cache(usa) as cache:
        good = [(5, r, c) for r, c, _ in cache.bundle_tiles(5, 0, 0)][:10]
        expected = {key: cache.get_tile(*key) for key in good}
    results = _fetch(usa, [(0, 0, 0), (1, 0, 0), *good, (5, 0, 0), (6, 0, 0)])
    for key, size in (((0, 0, 0), 5924), ((1, 0, 0), 14872)):  # the only tile of L00 and of L01
        failed = results[key]
        assert failed.status == "failed" and failed.data is None
        assert f"({size} bytes) is not an image" in failed.error and "0d 0a 1a 0a" in failed.error
        assert "\n" not in failed.error
    assert all(results[key].status == "ok" and results[key].data == data
               for key, data in expected.items())
    assert results[(5, 0, 0)].status == "missing" and results[(6, 0, 0)].status == "missing"
    # without the check, the stored bytes are passed through as they are
    unchecked = _fetch(usa, [(0, 0, 0)], check_images=False)[(0, 0, 0)]
    assert unchecked.status == "ok" and unchecked.data[:4] == b"\r\n\x1a\n"


def test_a_corrupt_bundle_fails_its_tiles_with_one_message(fixtures, tmp_path):
    copy = tmp_path / "sample"
    shutil.copytree(fixtures / "esri_compactcache_sample", copy)
    bundle = copy / "_alllayers" / "L01" / "R0000C0000.bundle"
    raw = bytearray(bundle.read_bytes())
    raw[0:4] = struct.pack("<I", 7)  # version 7: not a Compact V2 bundle
    bundle.write_bytes(bytes(raw))
    results = _fetch(copy, [(1, 0, 0), (1, 1, 1), (0, 0, 0)])
    assert results[(1, 0, 0)].status == results[(1, 1, 1)].status == "failed"
    assert results[(1, 0, 0)].error == results[(1, 1, 1)].error
    assert "not a Compact V2 bundle" in results[(1, 0, 0)].error
    assert results[(0, 0, 0)].status == "ok"


def test_a_truncated_v1_bundle_and_a_missing_bundlx_fail(tmp_path):
    tiles = {(2, 0, 0): solid_png((1, 1, 1)), (2, 0, 1): solid_png((2, 2, 2)),
             (3, 0, 0): solid_png((3, 3, 3))}
    folder = _v1_folder(tmp_path / "Layers", tiles)
    l2 = folder / "_alllayers" / "L02" / "R0000C0000.bundle"
    with open_cache(folder):
        offsets = {rc: BundleV1Reader.from_paths(l2).offset(*rc) for rc in [(0, 0), (0, 1)]}
    last = max(offsets, key=offsets.get)
    first = min(offsets, key=offsets.get)
    l2.write_bytes(l2.read_bytes()[:-10])  # the last record loses its tail
    (folder / "_alllayers" / "L03" / "R0000C0000.bundlx").unlink()
    results = _fetch(folder, [(2, *first), (2, *last), (3, 0, 0)])
    assert results[(2, *first)].status == "ok" and results[(2, *first)].data == tiles[(2, *first)]
    assert results[(2, *last)].status == "failed" and "past the end" in results[(2, *last)].error
    assert results[(3, 0, 0)].status == "failed" and "R0000C0000.bundlx" in results[(3, 0, 0)].error


def test_the_cache_must_not_change_between_plan_and_fetch(tmp_path):
    folder = _v1_folder(tmp_path / "Layers", {(1, 0, 0): solid_png((1, 1, 1))})
    service = ConfScaleSource().read(str(folder), Connection())
    (folder / "conf.xml").write_bytes(conf_xml(wkt=WKT_WGS84, wkid=4326, origin=(-180.0, 90.0),
                                               lods=lods_for([1e8, 5e7], "deg"), geographic=True))
    with pytest.raises(FormatError, match="tiling scheme differs"):
        CacheTileSource().open(service, Connection(), 1)


def test_fetch_throughput(tmp_path, capsys):
    """Every key of a full V2 bundle and a half-full V1 bundle; reports tiles per second."""
    png = solid_png((5, 5, 5), size=8)
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "conf.xml").write_bytes(conf_xml(wkt=WEB_MERCATOR_WKT, wkid=102100, origin=WM_ORIGIN,
                                           lods=lods_for(WM_SCALES, "m"), storage=V2))
    (v2 / "_alllayers" / "L07").mkdir(parents=True)
    with BundleWriter(v2 / "_alllayers" / "L07" / "R0000C0000.bundle", 0, 0,
                      record_count=SPEC_RECORD_COUNT) as writer:
        for r in range(128):
            for c in range(128):
                writer.add(r, c, png)
    v1 = _v1_folder(tmp_path / "v1", {(7, r, c): png for r in range(0, 128, 2) for c in range(128)})
    keys = [(7, r, c) for r in range(128) for c in range(128)]
    rates = {}
    for name, folder in (("v2", v2), ("v1", v1)):
        start = time.perf_counter()
        results = _fetch(folder, keys)
        rates[name] = len(keys) / (time.perf_counter() - start)
        ok = sum(1 for r in results.values() if r.status == "ok")
        assert ok == (16384 if name == "v2" else 8192)
        assert all(r.data == png for r in results.values() if r.status == "ok")
    with capsys.disabled():
        print(f"\ncache tile source: V2 {rates['v2']:,.0f} tiles/s, V1 {rates['v1']:,.0f} tiles/s "
              "(16384 keys, half of V1 absent)")
    assert min(rates.values()) > 2000


# -- packages that must be refused ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["../evil.txt", "/abs/conf.xml", "v101/../../x", "C:/x/conf.xml"])
def test_packages_with_escaping_member_names_are_refused(fixtures, tmp_path, name):
    package = tmp_path / "evil.tpk"
    shutil.copy(fixtures / "tpk_v1" / "states_filled.tpk", package)
    with zipfile.ZipFile(package, "a") as zf:
        zf.writestr(zipfile.ZipInfo(name), b"x")
    with pytest.raises(FormatError, match="refusing the package"):
        open_cache(package)


def test_root_json_bundle_path_may_not_leave_the_cache(fixtures, tmp_path):
    data = json.loads((fixtures / "esri_tpkx_sample" / "extracted" / "root.json").read_bytes())
    data["tileBundlesPath"] = "../../elsewhere"
    (tmp_path / "root.json").write_text(json.dumps(data))
    with pytest.raises(FormatError, match="leaves the cache"):
        open_cache(tmp_path)


def test_fetcher_closes_its_bundles(fixtures):
    with open_cache(fixtures / "gwc" / "compactcacheV1") as cache:
        fetcher = CacheTileFetcher(cache)
        assert fetcher.read(TileKey(5, 10, 4)).status == "ok"
        assert fetcher.read(TileKey(6, 21, 9)).status == "ok"
        assert len(fetcher._bundles) == 2
        fetcher.close()
        assert not fetcher._bundles

"""The tpk exporter: Compact V1 packages MapProxy and cacheorch read tile for tile, laid out like ArcGIS's."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from _gdal import colour_of, solid_png
from test_end_to_end import _run, all_tiles
from test_export_formats import _by_bundle, _request, _tiles, _write
from test_reexport import _mapproxy_v1

from cacheorch.errors import OutputExistsError
from cacheorch.formats.bundle_v1 import (
    BUNDLX_SIZE, V1_FIRST_RECORD, V1_HEADER, BundleV1Reader, BundleV1Writer, parse_bundlx,
)
from cacheorch.formats.cache import open_cache
from cacheorch.formats.confxml import COMPACT_V1, read_conf_xml_bytes
from cacheorch.plugins.export_tpk import TpkExporter
from cacheorch.tiling import web_mercator_scheme

LEVELS = [0, 1, 2, 3, 8]


def _sparse(levels=LEVELS) -> dict[tuple[int, int, int], bytes]:
    """Whole small levels, and at level 8 a few tiles in each of four bundles (fast to make)."""
    tiles = _tiles([lv for lv in levels if lv < 8], per_side=8, size=16)
    for r, c in [(0, 0), (1, 127), (127, 1), (129, 1), (130, 131), (255, 255), (128, 128), (5, 200)]:
        tiles[(8, r, c)] = solid_png(colour_of(8, r, c), 16)
    return tiles


def _export(request, tiles, **options) -> Path:
    session = TpkExporter(TpkExporter.Options(**options)).open(request)
    _write(session, tiles)
    return session.commit()


def _unzip(package: Path, into: Path) -> Path:
    with zipfile.ZipFile(package) as zf:
        zf.extractall(into)
    return into


def test_v1_writer_lays_out_bundles_as_arcgis_does(fixtures, tmp_path) -> None:
    """Rewrite an ArcGIS-made bundle's tiles: same header words, index framing and empty slots."""
    with zipfile.ZipFile(fixtures / "tpk_v1" / "states_filled.tpk") as zf:
        bundle = zf.read("v101/Layers/_alllayers/L04/R0000C0000.bundle")
        bundlx = zf.read("v101/Layers/_alllayers/L04/R0000C0000.bundlx")
    original = BundleV1Reader(lambda o, n: bundle[o:o + n], len(bundle),
                              lambda o, n: bundlx[o:o + n], len(bundlx))
    tiles = {(r, c): data for r, c, data in original.tiles()}
    assert len(tiles) == 16
    ours, ours_x = tmp_path / "R0000C0000.bundle", tmp_path / "R0000C0000.bundlx"
    writer = BundleV1Writer(ours, ours_x, 0, 0)
    for (r, c), data in sorted(tiles.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        writer.add(r, c, data)
    writer.finish()
    new, new_x = ours.read_bytes(), ours_x.read_bytes()
    assert len(new_x) == BUNDLX_SIZE == len(bundlx)
    assert new_x[:16] == bundlx[:16] and new_x[-16:] == bundlx[-16:]
    assert len(new) == len(bundle)  # same records, same size table: same length
    ref, got = V1_HEADER.unpack_from(bundle), V1_HEADER.unpack_from(new)
    # version, max records, max tile size, offset bytes, 4 × tiles, file size, user header,
    # legacy 16 and the row/col range: every header word as ArcGIS wrote it
    assert got == ref
    old_index, new_index = parse_bundlx(bundlx), parse_bundlx(new_x)
    empty = [slot for slot in range(16384) if (slot % 128, slot // 128) not in tiles]
    assert all(new_index[s] == old_index[s] == 60 + 4 * s for s in empty)
    assert min(new_index[s] for s in range(16384) if s not in set(empty)) == V1_FIRST_RECORD
    # MapProxy reads the pair back, tile for tile
    level_dir = tmp_path / "_alllayers" / "L04"
    level_dir.mkdir(parents=True)
    ours.rename(level_dir / ours.name)
    ours_x.rename(level_dir / ours_x.name)
    assert _mapproxy_v1(tmp_path / "_alllayers", [4]) == {(4, r, c): d for (r, c), d in tiles.items()}


def test_tpk_reads_back_with_mapproxy_and_cacheorch(tmp_path) -> None:
    scheme = web_mercator_scheme(10)
    tiles = _sparse()  # level 8 spans four bundles
    out = _export(_request(tmp_path / "out.tpk", scheme, LEVELS), tiles)

    with zipfile.ZipFile(out) as zf:
        infos = zf.infolist()
        names = {info.filename for info in infos}
        assert all(info.compress_type == zipfile.ZIP_STORED for info in infos)
        assert not any(name.endswith("/") for name in names)  # ArcGIS writes no folder entries
        for name in ("esriinfo/iteminfo.xml", "esriinfo/item.pkinfo", "esriinfo/thumbnail/thumbnail.png",
                     "servicedescriptions/mapserver/mapserver.json", "v101/Layers/conf.xml",
                     "v101/Layers/conf.cdi", "v101/Layers/conf.properties"):
            assert name in names, name
        bundles = sorted(n for n in names if n.endswith(".bundle"))
        assert len(bundles) == 8 and all(n[:-1] + "x" in names for n in bundles)
        assert all(zf.getinfo(n[:-1] + "x").file_size == BUNDLX_SIZE for n in bundles)
        conf = read_conf_xml_bytes(zf.read("v101/Layers/conf.xml"), "conf.xml")
        service = json.loads(zf.read("servicedescriptions/mapserver/mapserver.json"))
        item = zf.read("esriinfo/iteminfo.xml").decode()
    assert conf.storage_format == COMPACT_V1 and conf.packet_size == 128
    assert conf.scheme.levels == tuple(LEVELS)
    assert service["contents"]["singleFusedMapCache"] is False  # the tiling lives in conf.xml
    assert "<type>Tile Package</type>" in item

    unzipped = _unzip(out, tmp_path / "unzipped")
    assert _mapproxy_v1(unzipped / "v101" / "Layers" / "_alllayers", LEVELS) == tiles
    assert all_tiles(out) == tiles
    with open_cache(out) as cache:
        assert cache.storage_format == COMPACT_V1
        assert cache.get_tile(8, 129, 1) == tiles[(8, 129, 1)]
        assert cache.get_tile(8, 129, 200) is None
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob("*.tmp*"))


def test_scales_shows_the_packaged_levels(cli, tmp_path) -> None:
    scheme = web_mercator_scheme(10)
    out = _export(_request(tmp_path / "out.tpk", scheme, [2, 5]), _tiles([2, 5], per_side=3))
    result = cli("scales", str(out), "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["storage_format"] == COMPACT_V1
    assert [lv["level"] for lv in report["levels"]] == [2, 5]


def test_resume_keeps_closed_bundles_and_drops_unfinished_ones(tmp_path) -> None:
    scheme = web_mercator_scheme(10)
    request = _request(tmp_path / "out.tpk", scheme, [8])
    tiles = _sparse([8])
    groups = _by_bundle(tiles)
    first, second = list(groups)[:2]
    session = TpkExporter().open(request)
    _write(session, groups[first])
    half = session.open_bundle(*second)
    half.add(second[1], second[2], b"\x89PNG-not-finished")
    del session, half  # the process dies here: nothing committed

    again = TpkExporter().open(request)
    assert again.has_bundle(*first) and not again.has_bundle(*second)
    assert not list((tmp_path / "out.tpk.partial").rglob("*.tmp"))
    for key in list(groups)[1:]:
        _write(again, groups[key])
    assert all_tiles(again.commit()) == tiles
    with pytest.raises(OutputExistsError):
        TpkExporter().open(request)


def test_skip_blank_leaves_single_colour_tiles_out(tmp_path) -> None:
    scheme = web_mercator_scheme(10)
    tiles = _tiles([3], per_side=8)
    water = solid_png((0, 0, 0))
    blank = {(3, 0, 0), (3, 5, 6), (3, 7, 7)}
    detail = {key: data for key, data in tiles.items() if key not in blank}
    session = TpkExporter(TpkExporter.Options(skip_blank=True)).open(
        _request(tmp_path / "out.tpk", scheme, [3]))
    sink = session.open_bundle(3, 0, 0)
    for (_, r, c) in sorted(tiles):
        # solid colours are blank too: only the chosen ones are sent as such
        sink.add(r, c, water if (3, r, c) in blank else _striped(colour_of(3, r, c)))
    sink.close()
    assert session.skipped_blank == len(blank) and session.duplicates == 0
    got = all_tiles(session.commit())
    assert set(got) == set(detail)


def _striped(rgb: tuple[int, int, int]) -> bytes:
    """A tile of two colours (never blank)."""
    from cacheorch.formats.png import encode_png

    other = bytes(255 - v for v in rgb)
    return encode_png(16, 16, (bytes(rgb) * 8 + other * 8) * 16, level=1)


def test_run_exports_a_tpk_end_to_end(cli, server, world, area_file, tmp_path) -> None:
    output = tmp_path / "field.tpk"
    result = _run(cli, server.url, area_file, "tpk", output)
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "completed" and report["output"] == str(output)
    want = {(lv, r, c) for lv, keys in world["expected"].items() for r, c in keys} - world["missing"]
    found = all_tiles(output)
    assert set(found) == want and all(found[k] == world["tiles"][k] for k in want)
    levels = sorted({k[0] for k in want})
    unzipped = _unzip(output, tmp_path / "unzipped")
    assert _mapproxy_v1(unzipped / "v101" / "Layers" / "_alllayers", levels) == found


# the loopback service of the end-to-end tests
from test_end_to_end import area_file, server, world  # noqa: E402,F401

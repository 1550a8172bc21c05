"""The exploded exporter: one file per tile, named as ArcGIS does, read back by MapProxy and cacheorch."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import rasterio
from _gdal import colour_of, solid_png
from test_end_to_end import _run, all_tiles
from test_export_formats import _by_bundle, _request, _tiles, _write

from cacheorch.errors import OutputExistsError
from cacheorch.formats.cache import open_cache
from cacheorch.formats.confxml import EXPLODED, read_conf_xml_info
from cacheorch.plugins.export_exploded import ExplodedExporter
from cacheorch.tiling import web_mercator_scheme

JPEG = b"\xff\xd8\xff\xe0" + bytes(60) + b"\xff\xd9"  # only the magic matters to the layout


def _mapproxy(alllayers: Path, tiles) -> dict:
    """Each tile as MapProxy's file cache with the ArcGIS layout reads it (by extension)."""
    from mapproxy.cache.file import FileCache
    from mapproxy.cache.tile import Tile

    out = {}
    for ext in ("png", "jpg"):
        cache = FileCache(str(alllayers), ext, directory_layout="arcgis")
        for level, row, col in tiles:
            tile = Tile((col, row, level))
            if cache.load_tile(tile):
                out[(level, row, col)] = tile.image_result.as_buffer().read()
    return out


def test_exploded_layout_reads_back_everywhere(tmp_path) -> None:
    scheme = web_mercator_scheme(10)
    tiles = _tiles([0, 1, 2, 3], per_side=8, size=16)
    tiles[(8, 0x81, 0xC8)] = solid_png(colour_of(8, 0x81, 0xC8), 16)
    tiles[(8, 3, 4)] = JPEG  # a MIXED service: the extension follows the bytes
    session = ExplodedExporter().open(_request(tmp_path / "cache", scheme, [0, 1, 2, 3, 8]))
    _write(session, tiles)
    out = session.commit()
    assert sorted(p.name for p in out.iterdir()) == ["_alllayers", "conf.cdi", "conf.xml"]
    assert (out / "_alllayers" / "L08" / "R00000081" / "C000000c8.png").read_bytes() == \
        tiles[(8, 0x81, 0xC8)]
    assert (out / "_alllayers" / "L08" / "R00000003" / "C00000004.jpg").read_bytes() == JPEG
    info = read_conf_xml_info(out / "conf.xml")
    assert info.storage_format == EXPLODED and info.packet_size == 0
    assert _mapproxy(out / "_alllayers", tiles) == tiles
    assert all_tiles(out) == tiles
    with open_cache(out) as cache:
        assert cache.storage_format == EXPLODED
        assert cache.get_tile(8, 3, 4) == JPEG and cache.get_tile(8, 3, 5) is None
    # GDAL's ESRIC driver reads Compact V2 only: it does not open an exploded cache
    with pytest.raises(rasterio.errors.RasterioIOError):
        rasterio.open(out / "conf.xml", driver="ESRIC")
    assert not list(tmp_path.glob("*.partial"))
    with pytest.raises(OutputExistsError):
        ExplodedExporter().open(_request(out, scheme, [0]))


def test_resume_clears_the_block_an_interruption_left(tmp_path) -> None:
    scheme = web_mercator_scheme(10)
    request = _request(tmp_path / "cache", scheme, [8])
    tiles = {(8, r, c): solid_png(colour_of(8, r, c), 16) for r, c in [(0, 0), (1, 130), (129, 3)]}
    groups = _by_bundle(tiles)
    keys = list(groups)
    session = ExplodedExporter().open(request)
    _write(session, groups[keys[0]])
    stale = session.open_bundle(*keys[1])
    stale.add(2, 131, tiles[(8, 1, 130)])  # a tile the retried bundle will not have
    del session, stale  # the process dies

    again = ExplodedExporter().open(request)
    assert again.has_bundle(*keys[0]) and not again.has_bundle(*keys[1])
    for key in keys[1:]:
        _write(again, groups[key])
    out = again.commit()
    assert all_tiles(out) == tiles  # the stale tile is gone
    assert not (out / ".cacheorch-done").exists()


def test_skip_blank_leaves_files_out(tmp_path) -> None:
    scheme = web_mercator_scheme(10)
    from cacheorch.formats.png import encode_png

    blank = encode_png(16, 16, bytes(16 * 16 * 4), channels=4)
    striped = encode_png(2, 2, b"\x00\x00\x00\xff\xff\xff" * 2)
    session = ExplodedExporter(ExplodedExporter.Options(skip_blank=True)).open(
        _request(tmp_path / "cache", scheme, [2]))
    sink = session.open_bundle(2, 0, 0)
    for r in range(4):
        for c in range(4):
            sink.add(r, c, blank if r == c else striped)
    sink.close()
    assert session.skipped_blank == 4
    assert len(all_tiles(session.commit())) == 12


def test_run_exports_an_exploded_cache_end_to_end(cli, server, world, area_file, tmp_path) -> None:
    output = tmp_path / "field-cache"
    result = _run(cli, server.url, area_file, "exploded", output)
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "completed"
    want = {(lv, r, c) for lv, keys in world["expected"].items() for r, c in keys} - world["missing"]
    found = all_tiles(output)
    assert set(found) == want and all(found[k] == world["tiles"][k] for k in want)
    assert _mapproxy(output / "_alllayers", sorted(want)[::9]) == \
        {k: found[k] for k in sorted(want)[::9]}


from test_end_to_end import area_file, server, world  # noqa: E402,F401

"""The compact-v2 and tpkx exporters: outputs GDAL reads tile for tile, staging, resume and commit."""
from __future__ import annotations

import io
import json
import os
import shutil
import struct
import threading
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pluggy
import pytest
from _gdal import colour_of, open_gdal, read_tile, solid_png, tile_centre_rgba
from _tiles import Tiles
from _tiles import by_bundle as _by_bundle
from _tiles import write_tiles as _write

from cacheorch import hookspecs
from cacheorch.errors import ExportError, FormatError, OutputExistsError
from cacheorch.formats.bundle import HEADER, BundleReader
from cacheorch.formats.cache import open_cache
from cacheorch.formats.confxml import read_conf_xml
from cacheorch.interfaces import ExportRequest, Service
from cacheorch.plugins import _staging, export_compact_v2, export_tpkx
from cacheorch.plugins.export_compact_v2 import CompactV2Exporter
from cacheorch.plugins.export_tpkx import TpkxExporter
from cacheorch.tiling import (
    Envelope, LevelOfDetail, SpatialReference, TilingScheme, scale_of, web_mercator_scheme,
)

EXPORTERS = {"compact-v2": CompactV2Exporter, "tpkx": TpkxExporter}


def _output(tmp_path: Path, exporter: str, stem: str = "out") -> Path:
    return tmp_path / (stem + (EXPORTERS[exporter].extension or ""))


def _request(output: Path, scheme: TilingScheme, levels, *, mode="create", extent=None,
             name="Test service") -> ExportRequest:
    levels = sorted(levels)
    return ExportRequest(output=output, service=Service(location="test://", scheme=scheme, name=name),
                         scheme=scheme.with_levels(levels),
                         levels=tuple(scheme.lod(n) for n in levels), mode=mode, extent=extent)


def _export(exporter: str, request: ExportRequest, tiles: Tiles) -> Path:
    session = EXPORTERS[exporter]().open(request)
    _write(session, tiles)
    return session.commit()


def _tiles(levels, size=256, per_side=8, skip=()) -> Tiles:
    return {(level, row, col): solid_png(colour_of(level, row, col), size)
            for level in levels for row in range(min(2 ** level, per_side))
            for col in range(min(2 ** level, per_side)) if (level, row, col) not in skip}


def _nztm() -> TilingScheme:
    # NZTM 512-px scheme of the GeoWebCache sample: scales 8M, 6M, 4M (not powers of two).
    lods = tuple(LevelOfDetail(n, s, s / (96 * 39.37)) for n, s in enumerate((8e6, 6e6, 4e6)))
    return TilingScheme(-4020900, 19998100, 512, 512, 96, SpatialReference(2193, 2193), lods,
                        full_extent=Envelope(0, 4000000, 3000000, 7000000,
                                             SpatialReference(2193, 2193)))


# case name → (scheme, exported levels, tiles, a position that must stay empty)
def _case(name: str):
    if name == "mercator-0-3":
        skip = (3, 0, 0)
        return web_mercator_scheme(), range(0, 4), _tiles(range(0, 4), skip=[skip]), skip
    if name == "mercator-3-5":
        skip = (5, 7, 7)
        return web_mercator_scheme(), range(3, 6), _tiles(range(3, 6), skip=[skip]), skip
    if name == "mercator-512px":
        skip = (2, 3, 0)
        scheme = web_mercator_scheme(tile_size=512)
        return scheme, range(0, 3), _tiles(range(0, 3), size=512, skip=[skip]), skip
    if name == "mercator-many-bundles":
        keys = [(8, 127, 127), (8, 128, 0), (8, 200, 130), (8, 255, 255), (7, 64, 64)]
        tiles = {key: solid_png(colour_of(*key)) for key in keys}
        return web_mercator_scheme(), (7, 8), tiles, (8, 128, 1)
    if name == "nztm-512px":
        # tiles inside the full extent, which GDAL crops a package to
        keys = [(0, 13, 5), (1, 17, 6), (2, 26, 9), (2, 26, 10)]
        tiles = {key: solid_png(colour_of(*key), 512) for key in keys}
        return _nztm(), (0, 1, 2), tiles, (2, 27, 9)
    raise AssertionError(name)


CASES = ["mercator-0-3", "mercator-3-5", "mercator-512px", "mercator-many-bundles", "nztm-512px"]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("case", CASES)
def test_round_trip_read_by_gdal_and_by_us(tmp_path, exporter, case):
    scheme, levels, tiles, empty = _case(case)
    output = _export(exporter, _request(_output(tmp_path, exporter), scheme, levels), tiles)
    assert output == _output(tmp_path, exporter)

    with open_gdal(output) as ds:
        assert ds.transform.a == pytest.approx(scheme.lod(max(levels)).resolution)
        assert ds.crs.to_epsg() == (2193 if case.startswith("nztm") else 3857)
        for (level, row, col) in tiles:
            pixels = read_tile(ds, scheme, level, row, col)
            expected = np.array([*colour_of(level, row, col), 255], dtype=np.uint8)
            if scheme.lod(level).resolution / scheme.lod(max(levels)).resolution % 1:
                # a non-power-of-two overview: GDAL resamples, so look at the middle only
                assert tile_centre_rgba(ds, scheme, level, row, col) == tuple(expected)
            else:
                # the 1-px border is left out: GDAL's crop of a package to its fullExtent is not
                # pixel-aligned, and its resampling smears the neighbour into edge pixels
                inner = pixels[:, 1:-1, 1:-1]
                assert (inner == expected[:, None, None]).all(), (level, row, col)
        assert tile_centre_rgba(ds, scheme, *empty) == (0, 0, 0, 0)

    with open_cache(output) as cache:
        assert cache.storage_format == "esriMapCacheStorageModeCompactV2"
        assert set(cache.bundle_keys()) == set(_by_bundle(tiles))
        for key, data in tiles.items():
            assert cache.get_tile(*key) == data
        assert cache.get_tile(*empty) is None
        assert cache.get_tile(max(levels), 100000, 100000) is None
        assert cache.scheme.lod(max(levels)) == scheme.lod(max(levels))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_levels_listed_for_gdal_and_arcgis(tmp_path, exporter):
    scheme = web_mercator_scheme()
    output = _export(exporter, _request(_output(tmp_path, exporter), scheme, (3, 4, 5)),
                     {(4, 1, 1): solid_png((1, 2, 3))})
    if exporter == "compact-v2":
        # 0..finest exported level: LevelIDs match folders, and GDAL's position-based folders too.
        assert read_conf_xml(output / "conf.xml").levels == (0, 1, 2, 3, 4, 5)
    else:
        with zipfile.ZipFile(output) as zf:
            root = json.loads(zf.read("root.json"))
        assert (root["minLOD"], root["maxLOD"]) == (3, 5)
        assert len(root["tileInfo"]["lods"]) == 24


def test_tpkx_entries_are_stored_with_arcgis_headers(tmp_path):
    scheme = web_mercator_scheme()
    tiles = _tiles(range(0, 3))
    output = _export("tpkx", _request(tmp_path / "pkg.tpkx", scheme, range(0, 3)), tiles)
    with zipfile.ZipFile(output) as zf:
        infos = zf.infolist()
        assert all(info.compress_type == zipfile.ZIP_STORED for info in infos)
        names = [info.filename for info in infos]
        assert names[:3] == ["iteminfo.json", "root.json", "thumbnail.png"]
        assert {n for n in names if n.endswith(".bundle")} == \
            {f"tile/L0{n}/R0000C0000.bundle" for n in range(3)}
        assert zf.testzip() is None
        item = json.loads(zf.read("iteminfo.json"))
        assert item["title"] == "Test service" and item["name"] == "pkg"
        assert item["extent"]["xmin"] == pytest.approx(-180) and item["extent"]["ymax"] == \
            pytest.approx(85.0511287798)
        assert zf.read("thumbnail.png")[:8] == b"\x89PNG\r\n\x1a\n"
        raw = zf.read("tile/L01/R0000C0000.bundle")
    fields = HEADER.unpack_from(raw)
    assert fields[1] == 0 and fields[2] == 131092 and fields[9] == 0  # ArcGIS style
    entries = struct.unpack_from("<16384Q", raw, 64)
    assert entries[0] & (2 ** 40 - 1) == 131140
    assert set(entries[2:128]) == {4} and set(entries[130:]) == {4}  # tiles at slots 0,1,128,129


def test_compact_v2_bundles_use_the_record_count_gdal_needs(tmp_path):
    output = _export("compact-v2", _request(tmp_path / "cache", web_mercator_scheme(), [1]),
                     {(1, 0, 1): solid_png((9, 9, 9))})
    raw = (output / "_alllayers" / "L01" / "R0000C0000.bundle").read_bytes()
    fields = HEADER.unpack_from(raw)
    assert fields[1] == 16384  # GDAL <= 3.10 ignores the bundles of a conf.xml cache otherwise
    assert fields[2] == 131092 and fields[9] == 0
    assert struct.unpack_from("<Q", raw, 64 + 8)[0] & (2 ** 40 - 1) == 131140
    assert sorted(p.name for p in output.iterdir()) == ["_alllayers", "conf.cdi", "conf.xml"]


def test_extent_metadata_follows_the_request(tmp_path):
    scheme = web_mercator_scheme()
    area = (-1_000_000.0, 5_000_000.0, 2_000_000.0, 7_000_000.0)
    tiles = {(3, 2, 3): solid_png((200, 100, 50)), (3, 2, 4): solid_png((20, 10, 5))}
    pkg = _export("tpkx", _request(tmp_path / "a.tpkx", scheme, [3], extent=area), tiles)
    with zipfile.ZipFile(pkg) as zf:
        root = json.loads(zf.read("root.json"))
    assert [root["fullExtent"][k] for k in ("xmin", "ymin", "xmax", "ymax")] == list(area)
    with open_gdal(pkg) as ds:  # GDAL crops a package to its fullExtent
        assert ds.bounds.left == pytest.approx(area[0], abs=scheme.lod(3).resolution)
        assert ds.width == pytest.approx(3_000_000 / scheme.lod(3).resolution, abs=1)
        assert tile_centre_rgba(ds, scheme, 3, 2, 3) == (200, 100, 50, 255)
    cache = _export("compact-v2", _request(tmp_path / "c", scheme, [3], extent=area), tiles)
    with open_cache(cache) as opened:
        assert opened.full_extent.bounds == area
    # an area beyond the grid is clamped to it
    wide = (-3e7, -3e7, 3e7, 3e7)
    pkg2 = _export("tpkx", _request(tmp_path / "b.tpkx", scheme, [3], extent=wide), tiles)
    with open_cache(pkg2) as opened:
        assert opened.full_extent.bounds == scheme.grid_bounds()


# -- staging, resume, commit ------------------------------------------------------------------

@pytest.mark.parametrize("exporter", EXPORTERS)
def test_nothing_appears_under_the_output_name_before_commit(tmp_path, exporter):
    output = _output(tmp_path, exporter)
    session = EXPORTERS[exporter]().open(_request(output, web_mercator_scheme(), [2]))
    staging = _staging.staging_path(output)
    assert staging.is_dir() and not output.exists()
    sink = session.open_bundle(2, 0, 0)
    sink.add(1, 1, solid_png((5, 5, 5)))
    level_dir = next(staging.rglob("L02"))
    assert [p.name for p in level_dir.iterdir()] == ["R0000C0000.bundle.tmp"]
    assert not session.has_bundle(2, 0, 0)
    sink.close()
    assert [p.name for p in level_dir.iterdir()] == ["R0000C0000.bundle"]
    assert session.has_bundle(2, 0, 0) and not output.exists()
    session.commit()
    assert output.exists() and not staging.exists()
    assert not list(tmp_path.glob("*.tmp-*")) and not list(tmp_path.glob("*.old-*"))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_resume_keeps_finished_bundles_and_drops_temporaries(tmp_path, exporter):
    scheme = web_mercator_scheme()
    output = _output(tmp_path, exporter)
    request = _request(output, scheme, [8])
    first = EXPORTERS[exporter]().open(request)
    done = first.open_bundle(8, 0, 0)
    done.add(5, 5, solid_png((1, 1, 1)))
    done.close()
    crashed = first.open_bundle(8, 128, 0)  # the process dies while this one is being written
    crashed.add(130, 3, solid_png((2, 2, 2)))
    staging = _staging.staging_path(output)
    assert list(staging.rglob("*.tmp"))

    second = EXPORTERS[exporter]().open(request)
    assert not list(staging.rglob("*.tmp"))
    assert second.has_bundle(8, 0, 0) and not second.has_bundle(8, 128, 0)
    redo = second.open_bundle(8, 128, 0)
    redo.add(130, 3, solid_png((3, 3, 3)))
    redo.close()
    second.commit()
    with open_cache(output) as cache:
        assert cache.get_tile(8, 5, 5) == solid_png((1, 1, 1))
        assert cache.get_tile(8, 130, 3) == solid_png((3, 3, 3))


def test_resume_refuses_staging_of_another_grid(tmp_path):
    output = tmp_path / "x.tpkx"
    TpkxExporter().open(_request(output, web_mercator_scheme(), [1]))
    with pytest.raises(ExportError, match="another service or format"):
        TpkxExporter().open(_request(output, web_mercator_scheme(tile_size=512), [1]))
    with pytest.raises(ExportError, match="another service or format"):
        CompactV2Exporter().open(_request(tmp_path / "x.tpkx", web_mercator_scheme(), [1]))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_create_mode_refuses_an_existing_output(tmp_path, exporter):
    output = _output(tmp_path, exporter)
    output.mkdir() if exporter == "compact-v2" else output.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="already exists"):
        EXPORTERS[exporter]().open(_request(output, web_mercator_scheme(), [0]))
    assert not _staging.staging_path(output).exists()


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_commit_refuses_an_output_that_appeared_meanwhile(tmp_path, exporter):
    output = _output(tmp_path, exporter)
    session = EXPORTERS[exporter]().open(_request(output, web_mercator_scheme(), [0]))
    _write(session, {(0, 0, 0): solid_png((1, 2, 3))})
    output.mkdir() if exporter == "compact-v2" else output.write_bytes(b"someone else's")
    with pytest.raises(OutputExistsError):
        session.commit()
    assert _staging.staging_path(output).is_dir()  # the work is kept for another try


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_overwrite_replaces_the_old_output(tmp_path, exporter):
    scheme = web_mercator_scheme()
    folder = tmp_path / "outputs"
    folder.mkdir()
    output = _output(folder, exporter)
    _export(exporter, _request(output, scheme, [0, 1]),
            {(0, 0, 0): solid_png((1, 1, 1)), (1, 1, 1): solid_png((4, 4, 4))})
    _export(exporter, _request(output, scheme, [0], mode="overwrite"),
            {(0, 0, 0): solid_png((9, 9, 9))})
    with open_cache(output) as cache:
        assert cache.get_tile(0, 0, 0) == solid_png((9, 9, 9))
        assert cache.get_tile(1, 1, 1) is None  # nothing of the old output survives
    assert sorted(p.name for p in folder.iterdir()) == [output.name]


def test_failed_packing_leaves_no_output_and_keeps_staging(tmp_path, monkeypatch):
    output = tmp_path / "p.tpkx"
    session = TpkxExporter().open(_request(output, web_mercator_scheme(), [1]))
    _write(session, {(1, 0, 0): solid_png((1, 2, 3))})

    def broken_copy(src, dst, length=0):
        dst.write(src.read(1000))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_tpkx.shutil, "copyfileobj", broken_copy)
    with pytest.raises(ExportError, match="No space left"):
        session.commit()
    assert not output.exists() and not list(tmp_path.glob("p.tpkx.tmp-*"))
    monkeypatch.undo()
    assert session.has_bundle(1, 0, 0)
    session.commit()
    with open_cache(output) as cache:
        assert cache.get_tile(1, 0, 0) == solid_png((1, 2, 3))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_session_misuse(tmp_path, exporter):
    output = _output(tmp_path, exporter)
    session = EXPORTERS[exporter]().open(_request(output, web_mercator_scheme(), [8]))
    sink = session.open_bundle(8, 0, 128)
    with pytest.raises(ExportError, match="already being written"):
        session.open_bundle(8, 0, 128)
    with pytest.raises(ExportError, match="still being written"):
        session.commit()
    sink.add(0, 128, solid_png((1, 1, 1)))
    sink.abort()
    assert not list(_staging.staging_path(output).rglob("R0000C0080*"))
    with pytest.raises(ExportError, match="not one of the levels"):
        session.open_bundle(3, 0, 0)
    with pytest.raises(ExportError, match="multiple of 128"):
        session.open_bundle(8, 0, 64)
    session.discard()
    assert not _staging.staging_path(output).exists() and not output.exists()


def test_concurrent_bundles_from_threads(tmp_path):
    scheme = web_mercator_scheme()
    output = tmp_path / "t.tpkx"
    session = TpkxExporter().open(_request(output, scheme, [9]))
    tiles = {(9, br * 128 + 1, bc * 128 + 2): solid_png(colour_of(9, br, bc))
             for br in range(4) for bc in range(4)}
    groups = list(_by_bundle(tiles).items())

    def work(chunk):
        for (level, brow, bcol), members in chunk:
            sink = session.open_bundle(level, brow, bcol)
            for (_, row, col), data in members.items():
                sink.add(row, col, data)
            sink.close()

    threads = [threading.Thread(target=work, args=(groups[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    session.commit()
    with open_cache(output) as cache:
        assert len(list(cache.bundle_keys())) == 16
        assert all(cache.get_tile(*key) == data for key, data in tiles.items())


# -- the reader on real files -------------------------------------------------------------------

def test_open_cache_on_esri_samples(fixtures, tmp_path):
    sample = fixtures / "esri_compactcache_sample"
    with open_cache(sample) as cache:
        assert cache.scheme.levels == tuple(range(20)) and cache.scheme.tile_format == "JPEG"
        assert list(cache.bundle_keys()) == [(0, 0, 0), (1, 0, 0), (2, 0, 0)]
        assert cache.full_extent.xmax == 20037507.229594339
        with BundleReader(sample / "_alllayers" / "L02" / "R0000C0000.bundle") as reader:
            for row, col, data in reader.tiles():
                assert cache.get_tile(2, row, col) == data
        assert cache.get_tile(3, 0, 0) is None
    # Conf.xml with a capital C, found through the conf.xml path or the folder
    copy = tmp_path / "Layers"
    shutil.copytree(sample, copy)
    (copy / "conf.xml").rename(copy / "Conf.xml")
    with open_cache(tmp_path) as cache:  # the service folder above Layers/
        assert cache.name == tmp_path.name and cache.get_tile(0, 0, 0)[:3] == b"\xff\xd8\xff"
    with open_cache(copy / "Conf.xml") as cache:
        assert cache.get_tile(1, 1, 1) is not None

    usa = fixtures / "esri_tpkx_sample" / "Usa.tpkx"
    with open_cache(usa) as package, zipfile.ZipFile(usa) as zf:
        assert package.name == "Usa" and (package.scheme.min_lod, package.scheme.max_lod) == (0, 5)
        assert [key[0] for key in package.bundle_keys()] == [0, 1, 2, 3, 4, 5]
        member = zf.read("tile/L05/R0000C0000.bundle")
        for row, col, data in BundleReader(io.BytesIO(member)).tiles():
            assert package.get_tile(5, row, col) == data


def test_open_cache_on_an_unzipped_package(fixtures):
    extracted = fixtures / "esri_tpkx_sample" / "extracted"
    with open_cache(extracted) as cache, open_cache(extracted / "root.json") as same:
        assert list(cache.bundle_keys()) == list(same.bundle_keys()) == [(0, 0, 0)]
        assert cache.name == "Usa" and cache.scheme.max_lod == 5
        raw = (extracted / "tile" / "L00" / "R0000C0000.bundle").read_bytes()
        offset, size = 131140, 5924  # the one (malformed, see spec 10.3) record of L00
        assert cache.get_tile(0, 0, 0) == raw[offset:offset + size]


def test_open_cache_refuses_what_is_not_a_cache(fixtures, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match="not a tile cache folder"):
        open_cache(tmp_path / "empty")
    with pytest.raises(FormatError, match="no such file"):
        open_cache(tmp_path / "missing.tpkx")


def test_open_cache_refuses_compressed_packages(tmp_path):
    pkg = _export("tpkx", _request(tmp_path / "a.tpkx", web_mercator_scheme(), [0]),
                  {(0, 0, 0): solid_png((1, 1, 1))})
    deflated = tmp_path / "d.tpkx"
    with zipfile.ZipFile(pkg) as src, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    with pytest.raises(FormatError, match="compressed"):
        open_cache(deflated)


def test_reads_from_many_threads(tmp_path):
    scheme = web_mercator_scheme()
    tiles = _tiles(range(0, 4))
    outputs = [_export(name, _request(_output(tmp_path, name), scheme, range(0, 4)), tiles)
               for name in EXPORTERS]
    errors: list[str] = []
    for output in outputs:
        with open_cache(output) as cache:
            def work(seed):
                keys = list(tiles)[seed::3] * 5
                for key in keys:
                    if cache.get_tile(*key) != tiles[key]:
                        errors.append(f"{output.name} {key}")
            threads = [threading.Thread(target=work, args=(i % 3,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    assert errors == []


def test_registered_through_the_hook():
    pm = pluggy.PluginManager("cacheorch")
    pm.add_hookspecs(hookspecs)
    pm.register(export_compact_v2)
    pm.register(export_tpkx)
    classes = [cls for result in pm.hook.cacheorch_register_exporters() for cls in result]
    assert {cls.name: cls.extension for cls in classes} == {"compact-v2": None, "tpkx": ".tpkx"}
    assert all(cls.describe() for cls in classes)


def test_grid_right_of_zero_gets_a_tile_end_gdal_can_size(tmp_path):
    """Without TileEnd GDAL assumes a grid symmetric about (0, 0): nothing, for this origin."""
    sr = SpatialReference(2193, 2193)
    lods = tuple(LevelOfDetail(n, scale_of(res), res) for n, res in enumerate((1000.0, 500.0)))
    scheme = TilingScheme(1_000_000, 7_000_000, 256, 256, 96, sr, lods,
                          full_extent=Envelope(1_100_000, 5_000_000, 2_000_000, 6_900_000, sr))
    key = (1, 3, 2)
    output = _export("compact-v2", _request(tmp_path / "c", scheme, [0, 1]),
                     {key: solid_png(colour_of(*key))})
    end = read_conf_xml(output / "conf.xml").tile_end
    assert end is not None and end[0] >= 2_000_000 and end[1] <= 5_000_000
    with open_gdal(output) as ds:
        assert tile_centre_rgba(ds, scheme, *key) == (*colour_of(*key), 255)


def test_full_extent_in_another_sr_is_projected(tmp_path):
    scheme = replace(web_mercator_scheme(), full_extent=Envelope(-10, 40, 10, 50, SpatialReference(4326)),
                     _by_level={})
    output = _export("tpkx", _request(tmp_path / "p.tpkx", scheme, [2]), {})
    with open_cache(output) as cache:
        xmin, ymin, xmax, ymax = cache.full_extent.bounds
    assert (xmin, xmax) == pytest.approx((-1113194.9, 1113194.9), abs=1)
    assert (ymin, ymax) == pytest.approx((4865942.3, 6446275.8), abs=1)


def test_a_packing_killed_midway_is_cleaned_up_by_the_next_commit(tmp_path):
    """``out.tpkx.tmp-<pid>`` of a dead process goes; a live process's one stays."""
    import subprocess
    import sys
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    output = tmp_path / "a.tpkx"
    (tmp_path / f"a.tpkx.tmp-{dead}").write_bytes(b"half a zip")
    alive = tmp_path / f"a.tpkx.tmp-{os.getppid()}"
    alive.write_bytes(b"someone else's")
    _export("tpkx", _request(output, web_mercator_scheme(), [0]), {(0, 0, 0): solid_png((1, 1, 1))})
    assert output.is_file() and not (tmp_path / f"a.tpkx.tmp-{dead}").exists() and alive.exists()


def test_publish_file_never_clobbers_in_create_mode(tmp_path):
    """Every exporter and the delegated ones publish through one function: in create mode an
    output that appeared meanwhile (another job) stays as it was, with a clear error."""
    from cacheorch.plugins._staging import publish_file
    output, source = tmp_path / "out.tpkx", tmp_path / "out.tpkx.tmp-1"
    output.write_bytes(b"someone else's")
    source.write_bytes(b"ours")
    with pytest.raises(OutputExistsError, match="appeared while packing"):
        publish_file(source, output, "create", what="packing")
    assert output.read_bytes() == b"someone else's" and source.exists()
    assert publish_file(source, output, "overwrite") == output
    assert output.read_bytes() == b"ours" and not source.exists()
    fresh = tmp_path / "new.mbtiles"
    (tmp_path / "staged").write_bytes(b"db")
    publish_file(tmp_path / "staged", fresh, "create")
    assert fresh.read_bytes() == b"db" and not (tmp_path / "staged").exists()


def test_a_failed_folder_publish_leaves_the_earlier_output_whole(tmp_path, monkeypatch) -> None:
    """compact-v2, exploded and vector folders are published by one rename; when it fails the
    earlier output is put back, never lost."""
    import os

    from cacheorch.plugins._staging import publish_folder
    output = tmp_path / "cache"
    (output / "_alllayers").mkdir(parents=True)
    (output / "conf.xml").write_text("old")
    staging = tmp_path / "cache.partial"
    staging.mkdir()
    (staging / "conf.xml").write_text("new")
    rename = os.rename

    def refuse_the_new(src, dst):
        if os.fspath(src) == os.fspath(staging):
            raise OSError(28, "No space left on device")
        return rename(src, dst)

    monkeypatch.setattr(os, "rename", refuse_the_new)
    with pytest.raises(OSError):
        publish_folder(staging, output)
    monkeypatch.undo()
    assert (output / "conf.xml").read_text() == "old" and (output / "_alllayers").is_dir()
    assert sorted(p.name for p in tmp_path.glob("cache*")) == ["cache", "cache.partial"]
    publish_folder(staging, output)
    assert (output / "conf.xml").read_text() == "new"
    assert sorted(p.name for p in tmp_path.glob("cache*")) == ["cache"]

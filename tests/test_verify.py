"""``cacheorch verify``: every clean output and fixture passes; every injected defect is found.

Outputs are written by the real exporters (and by ``cacheorch run`` against a loopback server for
the catalog comparison); defects are injected by editing the bytes the way real damage looks:
a copy cut short, an index entry pointing past the end, a wrong length prefix, an HTML page where
a tile should be, a level folder the scheme does not list, a package re-zipped with DEFLATE.
"""
from __future__ import annotations

import importlib
import json
import shutil
import sqlite3
import struct
import zipfile
from pathlib import Path

import pytest
from _gdal import colour_of, decode_rgba, solid_png
from _tiles import write_tiles
from _tileserver import TileServer

from cacheorch.errors import FormatError
from cacheorch.formats.bundle import HEADER_SIZE
from cacheorch.interfaces import ExportRequest, Service
from cacheorch.tiling import TilingScheme, web_mercator_scheme
from cacheorch.verify import (
    CHECKERS, BundleSink, Defect, LevelTally, VerifyReport, compare_with_job, image_kind, verify_output,
)

LEVELS = (0, 1, 2, 3)
#: exporter name → (module, class): the built-ins whose outputs verify must pass.
EXPORTERS = {
    "compact-v2": ("cacheorch.plugins.export_compact_v2", "CompactV2Exporter"),
    "tpkx": ("cacheorch.plugins.export_tpkx", "TpkxExporter"),
    "tpk": ("cacheorch.plugins.export_tpk", "TpkExporter"),
    "exploded": ("cacheorch.plugins.export_exploded", "ExplodedExporter"),
    "mbtiles": ("cacheorch.plugins.export_mbtiles", "MBTilesExporter"),
    "gpkg": ("cacheorch.plugins.export_gpkg", "GpkgExporter"),
}
Tiles = dict[tuple[int, int, int], bytes]


def _exporter(name: str) -> type:
    module, cls = EXPORTERS[name]
    return getattr(importlib.import_module(module), cls)  # every one is built in: no skip


def _tiles() -> Tiles:
    return {(lv, r, c): solid_png(colour_of(lv, r, c), 64)
            for lv in LEVELS for r in range(2 ** lv) for c in range(2 ** lv)}


def export(tmp_path: Path, name: str, tiles: Tiles | None = None, stem: str = "out") -> Path:
    """Write ``tiles`` (default: levels 0-3, every tile) with the named exporter; return the output."""
    tiles = _tiles() if tiles is None else tiles
    cls = _exporter(name)
    scheme = web_mercator_scheme(max_level=10)
    output = tmp_path / (stem + (cls.extension or ""))
    levels = sorted({k[0] for k in tiles})
    request = ExportRequest(output=output, service=Service(location="test://", scheme=scheme,
                                                           name="Verify test"),
                            scheme=scheme.with_levels(levels),
                            levels=tuple(scheme.lod(n) for n in levels), mode="create")
    session = cls().open(request)
    write_tiles(session, tiles)
    return session.commit()


def _lines(report: VerifyReport) -> list[str]:
    return [str(d) for d in report.defects]


# -- clean outputs and fixtures pass ------------------------------------------------------------


@pytest.mark.parametrize("name", list(EXPORTERS))
def test_every_clean_output_passes(tmp_path: Path, name: str, cli) -> None:
    output = export(tmp_path, name)
    report = verify_output(output)
    assert report.ok, _lines(report)
    assert {lv: t.tiles for lv, t in report.levels.items()} == {lv: 4 ** lv for lv in LEVELS}
    result = cli("verify", str(output))
    assert result.code == 0, result.stderr
    assert result.stderr == ""
    assert "85 tiles" in result.stdout and "no defects" in result.stdout


@pytest.mark.parametrize("relative,tiles", [
    ("esri_compactcache_sample", 21),
    ("gwc/compactcacheV1", 112),
    ("tpk_v1/states_filled.tpk", 24),
    ("tpk_v1/states_filled_extracted", 0),  # metadata only: nothing to read, nothing wrong
    ("gdal_esric/conf.xml", 0),
])
def test_clean_fixtures_pass(fixtures: Path, relative: str, tiles: int) -> None:
    report = verify_output(fixtures / relative)
    assert report.ok, _lines(report)
    assert report.tiles == tiles


@pytest.mark.parametrize("relative", ["esri_tpkx_sample/Usa.tpkx", "esri_tpkx_sample/extracted"])
def test_usa_tpkx_malformed_records_are_reported(fixtures: Path, relative: str, cli) -> None:
    """Esri's Usa.tpkx: its L00/L01 records are a PNG without the first 4 signature bytes.

    verify reports them (exit 1), because that is what any client reading through the index
    gets: bytes no PNG decoder accepts (GDAL's included, shown below). L02-L05 are clean.
    """
    path = fixtures / relative
    report = verify_output(path)
    bad = {d.where for d in report.defects}
    expected = {"L00/R0000C0000.bundle", "L01/R0000C0000.bundle"}
    assert bad == (expected if path.suffix == ".tpkx" else {"L00/R0000C0000.bundle"})
    assert all("a PNG missing the first 4 bytes of its signature: row 0 col 0" in d.what
               for d in report.defects)
    from cacheorch.formats.cache import open_cache
    with open_cache(path) as cache:
        broken = cache.get_tile(0, 0, 0)
        assert broken is not None and image_kind(broken) is None
        with pytest.raises(Exception):
            decode_rgba(broken)
        if path.suffix == ".tpkx":
            decode_rgba(cache.get_tile(5, 12, 7) or cache.get_tile(2, 1, 0))  # a good level decodes
    result = cli("verify", str(path))
    assert result.code == 1
    assert result.stdout.splitlines()[0].startswith("L00/R0000C0000.bundle: not an image")
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1


# -- injected defects ------------------------------------------------------------------------------


def _bundle(folder: Path, level: int = 3) -> Path:
    return next((folder / "_alllayers" / f"L{level:02d}").glob("*.bundle"))


def _patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _entry(bundle: Path, slot: int) -> tuple[int, int]:
    with open(bundle, "rb") as f:
        f.seek(HEADER_SIZE + 8 * slot)
        value = struct.unpack("<Q", f.read(8))[0]
    return value & ((1 << 40) - 1), value >> 40


@pytest.fixture
def v2_folder(tmp_path: Path) -> Path:
    folder = export(tmp_path, "compact-v2")
    assert verify_output(folder).ok
    return folder


def test_truncated_bundle(v2_folder: Path) -> None:
    bundle = _bundle(v2_folder)
    size = bundle.stat().st_size
    with open(bundle, "r+b") as f:
        f.truncate(size - 100)
    lines = _lines(verify_output(v2_folder))
    assert f"L03/R0000C0000.bundle: header file size {size} but the bundle has {size - 100} bytes " \
           "(truncated)" in lines
    assert any(line.startswith("L03/R0000C0000.bundle: index entry points past the end of the file")
               for line in lines)
    assert all(line.startswith("L03/") for line in lines)


def test_bundle_cut_inside_its_index(v2_folder: Path) -> None:
    bundle = _bundle(v2_folder)
    with open(bundle, "r+b") as f:
        f.truncate(1000)
    assert _lines(verify_output(v2_folder)) == [
        "L03/R0000C0000.bundle: truncated: 1000 bytes, less than the 131136 of header and index"]


def test_index_pointing_past_eof(v2_folder: Path) -> None:
    bundle = _bundle(v2_folder)
    offset, size = _entry(bundle, 0)
    _patch(bundle, HEADER_SIZE, struct.pack("<Q", (bundle.stat().st_size + 10) | size << 40))
    lines = _lines(verify_output(v2_folder))
    assert len(lines) == 1
    assert lines[0].startswith("L03/R0000C0000.bundle: index entry points past the end of the file: "
                               "row 0 col 0")


def test_wrong_length_prefix(v2_folder: Path) -> None:
    bundle = _bundle(v2_folder, 2)
    offset, size = _entry(bundle, 128 + 1)  # row 1 col 1
    _patch(bundle, offset - 4, struct.pack("<I", size + 1))
    assert _lines(verify_output(v2_folder)) == [
        f"L02/R0000C0000.bundle: length prefix differs from the index size: row 1 col 1 "
        f"(prefix {size + 1}, index {size})"]


def test_non_image_body(v2_folder: Path) -> None:
    bundle = _bundle(v2_folder, 1)
    offset, size = _entry(bundle, 1)  # row 0 col 1
    _patch(bundle, offset, b"<html>")
    lines = _lines(verify_output(v2_folder))
    assert len(lines) == 1
    assert lines[0].startswith("L01/R0000C0000.bundle: not an image: row 0 col 1")


def test_truncated_png_body(v2_folder: Path) -> None:
    bundle = _bundle(v2_folder, 1)
    offset, size = _entry(bundle, 128)  # row 1 col 0
    _patch(bundle, offset + size - 12, bytes(12))
    lines = _lines(verify_output(v2_folder))
    assert len(lines) == 1 and "PNG does not end with its IEND chunk (truncated or trailing bytes): row 1 col 0" in lines[0]


def test_level_not_in_scheme(v2_folder: Path) -> None:
    shutil.copytree(v2_folder / "_alllayers" / "L02", v2_folder / "_alllayers" / "L77")
    lines = _lines(verify_output(v2_folder))
    assert len(lines) == 1
    assert lines[0].startswith("L77: level not in the tiling scheme")


def test_bundle_outside_the_grid(v2_folder: Path) -> None:
    level = v2_folder / "_alllayers" / "L01"
    (level / "R0000C0000.bundle").rename(level / "R0080C0000.bundle")
    lines = _lines(verify_output(v2_folder))
    assert "L01/R0080C0000.bundle: bundle lies outside the grid of level 1 (2 rows × 2 cols)" in lines
    assert any(line.startswith("L01/R0080C0000.bundle: tile outside the grid") for line in lines)


def test_header_fields(v2_folder: Path) -> None:
    bundle = _bundle(v2_folder, 0)
    _patch(bundle, 4, struct.pack("<I", 7))          # record count
    _patch(bundle, 8, struct.pack("<I", 10))         # max record size
    lines = _lines(verify_output(v2_folder))
    assert "L00/R0000C0000.bundle: header record count 7; ArcGIS writes 0, the specification 16384" \
        in lines
    assert any(line.startswith("L00/R0000C0000.bundle: header max record size 10 is below") for line in lines)
    _patch(bundle, 0, struct.pack("<I", 2))          # version
    assert _lines(verify_output(v2_folder))[0].startswith(
        "L00/R0000C0000.bundle: not a Compact V2 header (version 2,")


def _rezip(source: Path, target: Path, deflate: str) -> None:
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            method = zipfile.ZIP_DEFLATED if info.filename.endswith(deflate) else zipfile.ZIP_STORED
            dst.writestr(info.filename, src.read(info), compress_type=method)


@pytest.mark.parametrize("name,member", [("tpkx", "L02/R0000C0000.bundle"),
                                         ("tpk", "L02/R0000C0000.bundle")])
def test_deflated_zip_entry(tmp_path: Path, name: str, member: str, cli) -> None:
    clean = export(tmp_path, name)
    assert verify_output(clean).ok
    damaged = tmp_path / f"deflated{clean.suffix}"
    _rezip(clean, damaged, member)
    report = verify_output(damaged)
    lines = _lines(report)
    assert lines[0].startswith("package: 1 member(s) compressed, which tile packages must store "
                               "uncompressed: ")
    assert lines[0].endswith(member)
    if name == "tpkx":  # clients (and open_cache) refuse it outright
        assert len(lines) == 2 and lines[1].startswith("package: cannot be opened: ")
    else:  # a re-zipped .tpk can still be read (tpkutils does): every tile is checked too
        assert len(lines) == 1 and report.tiles == 85
    result = cli("verify", str(damaged))
    assert result.code == 1 and result.stdout.startswith("package: ")


def _v1_bundle(folder: Path, level: int) -> Path:
    return next(folder.rglob(f"L{level:02d}/*.bundle"))


def test_v1_defects(tmp_path: Path) -> None:
    package = export(tmp_path, "tpk")
    folder = tmp_path / "unzipped"
    with zipfile.ZipFile(package) as zf:
        zf.extractall(folder)
    assert verify_output(folder).ok
    bundle = _v1_bundle(folder, 3)
    size = bundle.stat().st_size
    with open(bundle, "r+b") as f:
        f.truncate(size - 10)
    bundlx = bundle.with_suffix(".bundlx")
    _patch(bundlx, bundlx.stat().st_size - 16, b"\xff" * 16)
    lines = _lines(verify_output(folder))
    assert f"L03/R0000C0000.bundle: header file size {size} but the bundle has {size - 10} bytes " \
           "(truncated)" in lines
    assert any(line.startswith("L03/R0000C0000.bundle: tile record runs past the end of the bundle")
               for line in lines)
    assert any(line.startswith("L03/R0000C0000.bundle: bundlx footer ffff") for line in lines)
    assert "L03/R0000C0000.bundle: header tile count 64 but the bundlx points at 63 tiles" in lines
    bundle.with_suffix(".bundlx").unlink()
    assert any("no R0000C0000.bundlx beside it" in line for line in _lines(verify_output(folder)))


def test_sqlite_outputs_are_read_through_the_generic_path(tmp_path: Path) -> None:
    """MBTiles has no bundle checker: its tiles are still read, and a non-image is found."""
    output = export(tmp_path, "mbtiles")
    from cacheorch.formats.sqlitecache import MBTILES
    assert MBTILES not in CHECKERS
    with sqlite3.connect(output) as conn:
        conn.execute("UPDATE images SET tile_data = ? WHERE tile_id = (SELECT tile_id FROM map "
                     "WHERE zoom_level = 2 AND tile_column = 1 AND tile_row = 0)", (b"not a tile",))
    conn.close()
    lines = _lines(verify_output(output))
    assert len(lines) == 1 and lines[0].startswith("L02/block R0000C0000: not an image: row 3 col 1")


def test_a_checker_registry_decides_how_bundles_are_read() -> None:
    from cacheorch.formats.confxml import COMPACT_V1, COMPACT_V2
    assert {COMPACT_V1, COMPACT_V2} <= set(CHECKERS)


def test_repeated_defects_in_a_bundle_are_one_line() -> None:
    sink = BundleSink("L05/R0000C0000.bundle")
    for col in range(5):
        sink.tile("not an image", 3, col, "x")
    sink.bundle("header file size 1 but the bundle has 2 bytes")
    assert [str(d) for d in sink.defects()] == [
        "L05/R0000C0000.bundle: not an image: row 3 col 0 (x), and 4 more tile(s)",
        "L05/R0000C0000.bundle: header file size 1 but the bundle has 2 bytes"]


# -- the catalog's counts ------------------------------------------------------------------------


def _service(scheme: TilingScheme) -> dict:
    sr = {"wkid": 102100, "latestWkid": 3857}
    half = 20037508.342787
    extent = {"xmin": -half, "ymin": -half, "xmax": half, "ymax": half, "spatialReference": sr}
    return {"currentVersion": 10.81, "mapName": "Layers", "singleFusedMapCache": True,
            "capabilities": "Map", "spatialReference": sr, "units": "esriMeters",
            "tileInfo": scheme.to_json(), "fullExtent": extent, "initialExtent": extent}


def test_job_counts_match_and_mismatch(tmp_path: Path, cli) -> None:
    scheme = web_mercator_scheme(4)
    with TileServer(_tiles(), service=_service(scheme)) as server:
        output = tmp_path / "job.tpkx"
        result = cli("run", "--service", server.url, "--levels", "0-3", "--exporter", "tpkx",
                     "--output", str(output), "--json")
        assert result.code == 0, result.stderr
    job_id = json.loads(result.stdout)["job_id"]
    ok = cli("verify", str(output), "--job", str(job_id), "--json")
    assert ok.code == 0, ok.stdout + ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["ok"] is True and doc["job_id"] == job_id and doc["tiles"] == 85

    # a different output than the job wrote: level 3 lost 64 tiles, level 2 one
    smaller = export(tmp_path, "tpkx", {k: v for k, v in _tiles().items()
                                        if k[0] < 3 and k != (2, 3, 3)}, stem="smaller")
    bad = cli("verify", str(smaller), "--job", str(job_id))
    assert bad.code == 1
    assert bad.stdout.splitlines() == [
        f"L02: the catalog records 16 tiles written by job {job_id}, the output holds 15",
        f"L03: the catalog records 64 tiles written by job {job_id}, the output holds 0"]
    assert bad.stderr.startswith("cacheorch: error: ") and "2 defect(s)" in bad.stderr


def test_merge_jobs_may_find_more_tiles_than_they_wrote() -> None:
    report = VerifyReport(Path("x"))
    report.levels[4] = LevelTally(tiles=10)
    compare_with_job(report, {"id": 1, "parameters": {"mode": "merge"},
                              "levels": [{"level": 4, "tiles_written": 6}]})
    assert report.ok
    compare_with_job(report, {"id": 1, "parameters": {}, "levels": [{"level": 4, "tiles_written": 6}]})
    assert [str(d) for d in report.defects] == [
        "L04: the catalog records 6 tiles written by job 1, the output holds 10"]



def test_skip_blank_jobs_may_find_fewer_tiles_than_they_were_given() -> None:
    report = VerifyReport(Path("x"))
    report.levels[4] = LevelTally(tiles=3)
    blank = {"exporter": {"name": "gpkg", "options": {"skip_blank": "true"}}}
    compare_with_job(report, {"id": 1, "parameters": blank,
                              "levels": [{"level": 4, "tiles_written": 6}]})
    assert report.ok
    compare_with_job(report, {"id": 1, "parameters": blank,
                              "levels": [{"level": 4, "tiles_written": 2}]})
    assert [str(d) for d in report.defects] == [
        "L04: the catalog records 2 tiles written by job 1, the output holds 3"]

# -- bad input ----------------------------------------------------------------------------------


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, cli) -> None:
    for target in (tmp_path / "nothing-here.tpkx", tmp_path):
        result = cli("verify", str(target))
        assert result.code == 2, result
        assert result.stdout == "" and len(result.stderr.splitlines()) == 1
        assert result.stderr.startswith("cacheorch: error: ")
    junk = tmp_path / "junk.tpkx"
    junk.write_bytes(b"not a zip")
    assert cli("verify", str(junk)).code == 2
    with pytest.raises(FormatError):
        verify_output(tmp_path / "nothing-here")


def test_unknown_job_is_bad_input(tmp_path: Path, cli) -> None:
    output = export(tmp_path, "compact-v2")
    result = cli("verify", str(output), "--job", "999")
    assert result.code == 2 and "999" in result.stderr and "Traceback" not in result.stderr


def test_defect_str_is_level_slash_bundle_colon_what() -> None:
    assert str(Defect("L05/R0080C0100.bundle", "not an image")) == \
        "L05/R0080C0100.bundle: not an image"

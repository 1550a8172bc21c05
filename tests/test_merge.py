"""``--mode merge``: levels and areas added to an existing output without fetching what it holds.

Every test runs the real CLI against the loopback tile server, whose ``requests`` Counter proves
which tiles a merge asked for; outputs are read back through our reader (byte-identical tiles) and
through GDAL's own drivers (ESRIC, MBTiles, GPKG: the right colour at the right place).
"""
from __future__ import annotations

import json
import os
import sqlite3
import struct
import zipfile
from pathlib import Path

import pytest
import rasterio

from _gdal import colour_of, open_gdal, solid_png, tile_centre_rgba
from _tileserver import TileServer
from cacheorch.formats.cache import open_cache
from cacheorch.tiling import web_mercator_scheme

MAX_LEVEL = 6
SCHEME = web_mercator_scheme(MAX_LEVEL)
#: Two overlapping areas (WGS84): at level 6, A is about 3×3 tiles and B shares a column with it.
AREA_A = "bbox:0.5,0.5,15,15@4326"
AREA_B = "bbox:12,0.5,30,15@4326"
#: An output name per exporter.
NAMES = {"tpkx": "out.tpkx", "compact-v2": "out-cache", "mbtiles": "out.mbtiles",
         "gpkg": "out.gpkg", "tpk": "out.tpk", "exploded": "out-exploded"}
Tiles = dict[tuple[int, int, int], bytes]


def _service(scheme=SCHEME) -> dict:
    sr = {"wkid": 102100, "latestWkid": 3857}
    half = 20037508.342787
    return {"currentVersion": 10.81, "spatialReference": sr, "singleFusedMapCache": True,
            "tileInfo": scheme.to_json(),
            "fullExtent": {"xmin": -half, "ymin": -half, "xmax": half, "ymax": half,
                           "spatialReference": sr}}


@pytest.fixture(scope="module")
def world() -> Tiles:
    """A distinct solid tile for every tile of levels 0-4 and the area the tests use at 5-6."""
    tiles: Tiles = {}
    for level in range(MAX_LEVEL + 1):
        n = 2 ** level
        rows = range(n) if level <= 4 else range(n // 2 - 8, n // 2 + 2)
        cols = range(n) if level <= 4 else range(n // 2 - 2, n // 2 + 8)
        for r in rows:
            for c in cols:
                tiles[(level, r, c)] = solid_png(colour_of(level, r, c))
    return tiles


@pytest.fixture
def server(world: Tiles):
    with TileServer(world, service=_service()) as srv:
        yield srv


def _requested(srv: TileServer) -> set[tuple[int, int, int]]:
    prefix = srv.prefix + "/tile/"
    return {tuple(int(v) for v in path[len(prefix):].split("/"))  # type: ignore[misc]
            for path, n in srv.requests.items() if path.startswith(prefix) and n}


def _all_tiles(output: Path) -> Tiles:
    with open_cache(output) as cache:
        return {(lv, r, c): data for lv, br, bc in cache.bundle_keys()
                for r, c, data in cache.bundle_tiles(lv, br, bc)}


def _run(cli, srv: TileServer, output: Path, exporter: str, *args: str):
    return cli("run", "--service", srv.url, "--exporter", exporter, "--output", str(output),
               "--json", *args)


def _snapshot(path: Path) -> dict[str, bytes]:
    """Every file of an output (a file or a folder) by relative path, for byte comparisons."""
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _v2_bundles(output: Path) -> dict[str, bytes]:
    """The Compact V2 bundle files of a folder cache or a .tpkx, by name."""
    if output.is_file():
        with zipfile.ZipFile(output) as z:
            return {n: z.read(n) for n in z.namelist() if n.lower().endswith(".bundle")}
    return {str(p.relative_to(output)): p.read_bytes() for p in output.rglob("*.bundle")}


def _dead_bytes(data: bytes) -> int:
    """Bytes of a V2 bundle no index entry points at: file size − header − index − Σ(4 + size).

    Parsed here from the spec (64-byte header, 128×128 8-byte entries: 40-bit offset, 24-bit
    size, each tile preceded by a 4-byte length), independently of cacheorch's reader.
    """
    used = 64 + 128 * 128 * 8
    for (entry,) in struct.iter_unpack("<Q", data[64:64 + 128 * 128 * 8]):
        size = entry >> 40
        if size:
            offset = entry & ((1 << 40) - 1)
            assert struct.unpack_from("<I", data, offset - 4)[0] == size
            used += 4 + size
    return len(data) - used


def _gdal(output: Path, exporter: str):
    if exporter == "mbtiles":
        return rasterio.open(output, driver="MBTiles")
    if exporter == "gpkg":
        return rasterio.open(output, driver="GPKG")
    return open_gdal(output)


def _jobs(cli) -> list[dict]:
    return json.loads(cli("jobs", "--json").stdout)["jobs"]


# -- 1. levels ----------------------------------------------------------------------------------

def test_merge_adds_levels_without_fetching_the_old_ones(cli, server, world, tmp_path) -> None:
    output = tmp_path / "out.tpkx"
    first = _run(cli, server, output, "tpkx", "--levels", "0-3")
    assert first.code == 0, first.stderr
    before = _all_tiles(output)
    assert {k[0] for k in before} == {0, 1, 2, 3}
    server.requests.clear()

    merged = _run(cli, server, output, "tpkx", "--levels", "4-5", "--aoi", AREA_A,
                  "--mode", "merge")
    assert merged.code == 0, merged.stderr
    report = json.loads(merged.stdout)
    asked = _requested(server)
    assert asked and {k[0] for k in asked} == {4, 5}  # not one request for levels 0-3
    assert report["tiles_kept"] == len(before)  # copied, not fetched
    assert report["tiles_written"] == len(asked)
    assert [lv["level"] for lv in report["levels"]] == [4, 5]  # the job's own levels

    after = _all_tiles(output)
    assert set(after) == set(before) | asked
    assert all(data == world[key] for key, data in after.items())  # byte-identical to the server
    with open_cache(output) as cache:
        assert cache.levels_with_tiles() == [0, 1, 2, 3, 4, 5]
        assert cache.scheme.min_lod == 0 and cache.scheme.max_lod == 5
    with open_gdal(output) as ds:  # GDAL finds level 0 and level 5 tiles where they belong
        assert tile_centre_rgba(ds, SCHEME, 0, 0, 0)[:3] == colour_of(0, 0, 0)
        for key in sorted(k for k in asked if k[0] == 5)[:4]:
            assert tile_centre_rgba(ds, SCHEME, *key)[:3] == colour_of(*key), key
    assert not (tmp_path / "out.tpkx.partial").exists()
    for name, data in _v2_bundles(output).items():
        assert _dead_bytes(data) == 0, name
    checked = cli("verify", str(output), "--job", str(report["job_id"]))
    assert checked.code == 0, checked.stdout + checked.stderr  # counts agree with the catalog


# -- 2 and 3. areas, every format with a reader ---------------------------------------------------

@pytest.mark.parametrize("exporter", ["tpkx", "compact-v2", "mbtiles", "gpkg", "tpk", "exploded"])
def test_merge_adds_an_area_fetching_only_the_new_tiles(cli, server, world, tmp_path,
                                                        exporter) -> None:
    alone = tmp_path / ("b-alone-" + NAMES[exporter])  # what area B holds on its own
    assert _run(cli, server, alone, exporter, "--levels", "4-6", "--aoi", AREA_B).code == 0
    tiles_b = set(_all_tiles(alone))

    output = tmp_path / NAMES[exporter]
    first = _run(cli, server, output, exporter, "--levels", "4-6", "--aoi", AREA_A)
    assert first.code == 0, first.stderr
    tiles_a = set(_all_tiles(output))
    assert tiles_a & tiles_b and tiles_b - tiles_a  # the areas overlap, and B adds tiles
    if exporter == "compact-v2":  # dead space in the old bundles, as ArcGIS leaves after updates
        for bundle in output.rglob("*.bundle"):
            with open(bundle, "ab") as f:
                f.write(b"\0" * 1000)
    server.requests.clear()

    merged = _run(cli, server, output, exporter, "--levels", "4-6", "--aoi", AREA_B,
                  "--mode", "merge")
    assert merged.code == 0, merged.stderr
    report = json.loads(merged.stdout)
    assert _requested(server) == tiles_b - tiles_a  # only B \ A went to the server
    assert report["tiles_written"] == len(tiles_b - tiles_a)
    assert report["tiles_kept"] == len(tiles_a)

    after = _all_tiles(output)
    assert set(after) == tiles_a | tiles_b
    assert all(data == world[key] for key, data in after.items())
    if exporter in ("tpkx", "compact-v2"):
        bundles = _v2_bundles(output)
        assert bundles and all(_dead_bytes(data) == 0 for data in bundles.values())
    if exporter in ("tpk", "exploded"):
        return  # GDAL's ESRIC reads neither Compact V1 nor exploded; our reader agreed above
    finest = sorted(k for k in after if k[0] == MAX_LEVEL)
    with _gdal(output, exporter) as ds:
        for key in [finest[0], finest[-1], *sorted(k for k in tiles_a - tiles_b if k[0] == 6)[:2]]:
            assert tile_centre_rgba(ds, SCHEME, *key)[:3] == colour_of(*key), key


def test_merge_into_nothing_is_create(cli, server, tmp_path) -> None:
    output = tmp_path / "new.mbtiles"
    result = _run(cli, server, output, "mbtiles", "--levels", "0-2", "--mode", "merge")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["tiles_kept"] == 0
    assert len(_all_tiles(output)) == 1 + 4 + 16


# -- 4. refusals ----------------------------------------------------------------------------------

def _refused(cli, result, output: Path, before: dict[str, bytes], jobs: int) -> str:
    assert result.code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert _snapshot(output) == before  # the old output is untouched
    assert not Path(str(output) + ".partial").exists()
    assert len(_jobs(cli)) == jobs  # no job was recorded
    return lines[0]


def test_merge_refuses_another_grid(cli, server, world, tmp_path) -> None:
    output = tmp_path / "out.tpkx"
    assert _run(cli, server, output, "tpkx", "--levels", "0-2").code == 0
    before = _snapshot(output)
    other = web_mercator_scheme(MAX_LEVEL, tile_size=512)
    with TileServer({}, service=_service(other), name="Other") as srv:
        result = _run(cli, srv, output, "tpkx", "--levels", "3", "--mode", "merge")
        line = _refused(cli, result, output, before, jobs=1)
        assert "tiling scheme" in line and "512" in line
        assert not srv.requests.get(srv.prefix + "/tile/3/0/0")


def test_merge_refuses_another_format(cli, server, tmp_path) -> None:
    output = tmp_path / "out.tpk"
    assert _run(cli, server, output, "tpk", "--levels", "0-2").code == 0
    before = _snapshot(output)
    result = _run(cli, server, output, "tpkx", "--levels", "3", "--mode", "merge")
    line = _refused(cli, result, output, before, jobs=1)
    assert "not what exporter tpkx writes" in line


def test_merge_on_an_unreachable_cluster_leaves_the_old_output_alone(cli, server, tmp_path,
                                                                      monkeypatch) -> None:
    """Merging through dask works (tests/test_dask_executor.py); a scheduler that cannot be
    reached ends the job with one line, and the old output is untouched."""
    import distributed  # noqa: F401  (in [test])
    import cacheorch.dask_executor as executor
    monkeypatch.setattr(executor, "_CONNECT_TIMEOUT", 1.0)
    output = tmp_path / "out.gpkg"
    assert _run(cli, server, output, "gpkg", "--levels", "0-1").code == 0
    before = _snapshot(output)
    result = _run(cli, server, output, "gpkg", "--levels", "2", "--mode", "merge",
                  "--executor", "dask", "--scheduler", "tcp://127.0.0.1:9")
    assert result.code != 0 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert _snapshot(output) == before


def test_mode_merge_in_a_config_job(cli, server, tmp_path) -> None:
    config = tmp_path / "cacheorch.ini"
    config.write_text(f"[job:town]\nservice = {server.url}\nlevels = 0-1\nexporter = mbtiles\n"
                      f"output = {tmp_path / 'town.mbtiles'}\nmode = merge\n")
    os.environ["CACHEORCH_CONFIG"] = str(config)  # isolated_env restores it
    assert cli("run", "town").code == 0
    server.requests.clear()
    config.write_text(config.read_text().replace("levels = 0-1", "levels = 2"))
    again = cli("run", "town", "--json")
    assert again.code == 0, again.stderr
    assert {k[0] for k in _requested(server)} == {2}
    assert json.loads(again.stdout)["tiles_kept"] == 5
    with sqlite3.connect(tmp_path / "town.mbtiles") as db:
        meta = dict(db.execute("SELECT name, value FROM metadata"))
    assert (meta["minzoom"], meta["maxzoom"]) == ("0", "2")


# -- 5. an interrupted merge --------------------------------------------------------------------

def test_a_failed_merge_leaves_the_old_output_and_resume_finishes_it(cli, server, world,
                                                                    tmp_path) -> None:
    output = tmp_path / "out.tpkx"
    assert _run(cli, server, output, "tpkx", "--levels", "0-2").code == 0
    before = _snapshot(output)
    old = _all_tiles(output)
    server.fail_always = {(3, 2, 2)}
    failed = _run(cli, server, output, "tpkx", "--levels", "3", "--mode", "merge")
    assert failed.code == 1
    job_id = json.loads(failed.stdout)["job_id"]
    assert json.loads(failed.stdout)["status"] == "partial"
    assert _snapshot(output) == before  # nothing was published over the old output
    assert (tmp_path / "out.tpkx.partial").is_dir()

    server.fail_always = set()
    server.requests.clear()
    resumed = cli("resume", str(job_id), "--json")
    assert resumed.code == 0, resumed.stderr
    asked = _requested(server)
    assert asked and {k[0] for k in asked} == {3}  # the old levels still came from the output
    after = _all_tiles(output)
    assert set(after) == set(old) | {(3, r, c) for r in range(8) for c in range(8)}
    assert all(data == world[key] for key, data in after.items())
    assert json.loads(resumed.stdout)["tiles_kept"] == len(old)  # over both runs


def test_a_delegated_exporter_refuses_to_merge_into_an_existing_output(cli, server,
                                                                       tmp_path) -> None:
    """ArcGIS builds a delegated export whole: it cannot add to a file it did not start from."""
    output = tmp_path / "out.tpk"
    assert _run(cli, server, output, "tpk", "--levels", "0-1").code == 0
    before = _snapshot(output)
    server.requests.clear()
    result = _run(cli, server, output, "rest-export-tiles", "--levels", "2", "--mode", "merge")
    line = _refused(cli, result, output, before, jobs=1)
    assert "cannot add to" in line
    assert not any("exportTiles" in path for path in server.requests)

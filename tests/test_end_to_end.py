"""`cacheorch run` end to end: a real loopback server, the real CLI, outputs read back with GDAL.

The server answers 404 for some tiles and 500 once for others; the package must hold exactly each
level's tiles less the 404s, byte-identical to what the server sent, where GDAL expects them.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import shapely
from pyproj import Transformer
from shapely.geometry import Polygon, box

from _gdal import colour_of, open_gdal, tile_centre_rgba, solid_png
from _tileserver import TileServer
from _tiles import all_tiles
from cacheorch.formats.cache import open_cache
from cacheorch.tiling import TilingScheme, web_mercator_scheme

LEVELS = range(0, 9)
#: A non-rectangular area over the Alps (WGS84), for levels 4-8.
AREA = [[5.9, 45.8], [10.5, 45.9], [10.4, 47.8], [8.2, 47.2], [6.0, 47.5], [5.9, 45.8]]


def service_json(scheme: TilingScheme, **extra: object) -> dict:
    sr = {"wkid": 102100, "latestWkid": 3857}
    half = 20037508.342787
    extent = {"xmin": -half, "ymin": -half, "xmax": half, "ymax": half, "spatialReference": sr}
    return {"currentVersion": 10.81, "mapName": "Layers", "singleFusedMapCache": True,
            "capabilities": "Map", "spatialReference": sr, "units": "esriMeters",
            "tileInfo": scheme.to_json(), "fullExtent": extent, "initialExtent": extent, **extra}


def area_in_mercator() -> Polygon:
    fwd = Transformer.from_crs(4326, 3857, always_xy=True)
    dense = shapely.segmentize(Polygon(AREA), 0.05)
    return Polygon([fwd.transform(x, y) for x, y in dense.exterior.coords])


def expected_tiles(scheme: TilingScheme) -> dict[int, set[tuple[int, int]]]:
    """Independent of the planner: levels 0-3 whole, 4-8 by a per-tile test against the polygon."""
    out: dict[int, set[tuple[int, int]]] = {}
    area = area_in_mercator()
    for level in LEVELS:
        n = 2 ** level
        if level <= 3:
            out[level] = {(r, c) for r in range(n) for c in range(n)}
            continue
        xmin, ymin, xmax, ymax = area.bounds
        r0, c0 = scheme.tile_of_point(level, xmin, ymax)
        r1, c1 = scheme.tile_of_point(level, xmax, ymin)
        out[level] = {(r, c) for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)
                      if box(*scheme.tile_bounds(level, r, c)).intersection(area).area > 0}
    return out


@pytest.fixture(scope="module")
def world() -> dict:
    scheme = web_mercator_scheme(8)
    expected = expected_tiles(scheme)
    tiles = {(lv, r, c): solid_png(colour_of(lv, r, c)) for lv, keys in expected.items()
             for r, c in keys}
    inner = sorted(expected[8])
    missing = {(2, 1, 1), (8, *inner[len(inner) // 2]), (6, *sorted(expected[6])[0])}
    fail_once = {(3, 2, 4), (8, *inner[1]), (7, *sorted(expected[7])[-1])}
    return {"scheme": scheme, "expected": expected, "tiles": tiles, "missing": missing,
            "fail_once": fail_once}


@pytest.fixture
def area_file(tmp_path: Path) -> Path:
    path = tmp_path / "area.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [AREA]}}]}))
    return path


@pytest.fixture
def server(world: dict):
    with TileServer(world["tiles"], service=service_json(world["scheme"]),
                    missing=world["missing"], fail_once=world["fail_once"]) as srv:
        yield srv


def _run(cli, server_url: str, area: Path, exporter: str, output: Path, *extra: str):
    return cli("run", "--service", server_url, "--levels", "0-8", "--aoi", "0-3=extent",
               "--aoi", f"4-8={area}", "--exporter", exporter, "--output", str(output), "--json",
               *extra)


@pytest.mark.parametrize("exporter,name", [("tpkx", "out.tpkx"), ("compact-v2", "out-cache")])
def test_run_writes_exactly_the_planned_tiles(cli, server, world, area_file, tmp_path, exporter,
                                              name) -> None:
    output = tmp_path / name
    result = _run(cli, server.url, area_file, exporter, output)
    assert result.code == 0, result.stderr
    assert result.stderr == ""
    report = json.loads(result.stdout)
    assert report["status"] == "completed" and report["output"] == str(output)
    expected, missing = world["expected"], world["missing"]

    # the JSON report: extracted scales with counts
    by_level = {lv["level"]: lv for lv in report["levels"]}
    assert sorted(by_level) == list(LEVELS)
    for level in LEVELS:
        lost = sum(1 for k in missing if k[0] == level)
        assert by_level[level]["tiles_planned"] == len(expected[level])
        assert by_level[level]["tiles_missing"] == lost
        assert by_level[level]["tiles_written"] == len(expected[level]) - lost
        assert by_level[level]["scale"] == pytest.approx(world["scheme"].lod(level).scale)

    # our reader: exactly the expected tiles, byte-identical to what the server sent
    want = {(lv, r, c) for lv, keys in expected.items() for r, c in keys} - missing
    found = all_tiles(output)
    assert set(found) == want
    for key in want:
        assert found[key] == world["tiles"][key]

    # GDAL's ESRIC driver: every tile at levels 0-5, a sample of the finer ones, at the right place
    scheme = world["scheme"]
    with open_gdal(output) as ds:
        for lv, r, c in sorted(want):
            if lv > 5 and (r + c) % 7:
                continue
            assert tile_centre_rgba(ds, scheme, lv, r, c)[:3] == colour_of(lv, r, c), (lv, r, c)
        for lv, r, c in missing:
            assert tile_centre_rgba(ds, scheme, lv, r, c)[3] == 0  # nothing there

    # the server saw each tile once, and the 500-once tiles twice
    for key in want | missing:
        expected_count = 2 if key in world["fail_once"] else 1
        assert server.requests[server.tile_path(*key)] == expected_count, key
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob("*.tmp*"))


def test_jobs_and_job_show_extracted_scales(cli, server, area_file, tmp_path) -> None:
    assert _run(cli, server.url, area_file, "tpkx", tmp_path / "a.tpkx").code == 0
    assert _run(cli, server.url, area_file, "compact-v2", tmp_path / "b").code == 0
    jobs = json.loads(cli("jobs", "--json").stdout)["jobs"]
    assert [j["status"] for j in jobs] == ["completed", "completed"]
    assert [j["exporter"] for j in jobs] == ["compact-v2", "tpkx"]
    job = json.loads(cli("job", str(jobs[1]["id"]), "--json").stdout)
    assert job["output"] == str(tmp_path / "a.tpkx")
    assert [lv["level"] for lv in job["levels"]] == list(LEVELS)
    assert job["levels"][0]["resolution"] == pytest.approx(156543.033928, rel=1e-9)
    assert job["levels"][4]["area"] == str(area_file)
    plan = json.loads(cli("plan", "--service", server.url, "--levels", "0-8", "--aoi", "0-3=extent",
                          "--aoi", f"4-8={area_file}", "--json").stdout)
    assert [set(lv) & {"area", "area_name"} for lv in plan["levels"]] == \
        [set(lv) & {"area", "area_name"} for lv in job["levels"]] == [{"area"}] * len(LEVELS)
    assert sum(lv["tiles_written"] for lv in job["levels"]) == job["tiles_written"] > 0
    human = cli("job", str(jobs[1]["id"]))
    assert human.code == 0 and "591657527" in human.stdout


def test_export_serve_export_gives_identical_tiles(cli, server, area_file, tmp_path) -> None:
    from cacheorch.serve import CacheServer
    first = tmp_path / "first.tpkx"
    assert _run(cli, server.url, area_file, "tpkx", first).code == 0
    with CacheServer(first) as again:
        second = tmp_path / "second"
        result = _run(cli, again.url, area_file, "compact-v2", second)
        assert result.code == 0, result.stderr
    tiles = all_tiles(first)
    assert len(tiles) > 100 and all_tiles(second) == tiles


def test_failed_tiles_end_partial_and_write_nothing(cli, world, area_file, tmp_path) -> None:
    broken = next(iter(sorted(world["expected"][8])))
    with TileServer(world["tiles"], service=service_json(world["scheme"]),
                    fail_always={(8, *broken)}) as srv:
        output = tmp_path / "holes.tpkx"
        result = _run(cli, srv.url, area_file, "tpkx", output)
        assert result.code == 1
        report = json.loads(result.stdout)
        assert report["status"] == "partial"
        assert any(f"level 8 row {broken[0]} col {broken[1]}" in e for e in report["errors"])
        assert not output.exists()  # a package with a hole is never written under its name
        # once the server is healthy again, resume fetches only the failed bundle
        before = sum(srv.requests.values())
        srv.fail_always.clear()
        resumed = cli("resume", str(report["job_id"]), "--json")
        assert resumed.code == 0, resumed.stderr
        assert json.loads(resumed.stdout)["status"] == "completed"
        refetched = sum(srv.requests.values()) - before
        assert 0 < refetched <= 128 * 128
        assert refetched < sum(len(v) for v in world["expected"].values())
    with open_cache(output) as cache:
        assert cache.get_tile(8, *broken) == world["tiles"][(8, *broken)]


def test_allow_partial_writes_the_output_and_says_partial(cli, world, area_file, tmp_path) -> None:
    broken = (8, *sorted(world["expected"][8])[0])
    with TileServer(world["tiles"], service=service_json(world["scheme"]), fail_always={broken}) as srv:
        output = tmp_path / "gaps.tpkx"
        result = _run(cli, srv.url, area_file, "tpkx", output, "--allow-partial")
    assert result.code == 1 and json.loads(result.stdout)["status"] == "partial"
    with open_cache(output) as cache:
        assert cache.get_tile(*broken) is None


def test_an_entry_point_plugin_is_used_by_run(cli, server, area_file, tmp_path,
                                              fake_distribution) -> None:
    result = cli("run", "--service", server.url, "--policy", "levels:0-5", "--policy", "keep-odd",
                 "--aoi", f"4-5={area_file}", "--output", str(tmp_path / "odd.tpkx"), "--json")
    assert result.code == 0, result.stderr
    assert [lv["level"] for lv in json.loads(result.stdout)["levels"]] == [1, 3, 5]


def test_plan_counts_without_fetching(cli, server, world, area_file) -> None:
    result = cli("plan", "--service", server.url, "--levels", "0-8", "--aoi", "0-3=extent",
                 "--aoi", f"4-8={area_file}", "--json")
    assert result.code == 0, result.stderr
    plan = json.loads(result.stdout)
    assert [lv["tiles_planned"] for lv in plan["levels"]] == \
        [len(world["expected"][lv]) for lv in LEVELS]
    assert not any("/tile/" in path for path in server.requests)
    human = cli("plan", "--service", server.url, "--levels", "0-8", "--aoi", f"4-8={area_file}")
    assert human.code == 0 and "total" in human.stdout


def test_token_is_sent_and_never_stored(cli, world, area_file, tmp_path, monkeypatch) -> None:
    token = "s3cr3t-T0KEN-value"
    monkeypatch.setenv("ARCGIS_TOKEN", token)
    with TileServer(world["tiles"], service=service_json(world["scheme"]),
                    fail_always={(3, 0, 0)}) as srv:
        result = _run(cli, srv.url, area_file, "tpkx", tmp_path / "t.tpkx", "--allow-partial")
        assert all(q.get("token") == [token] for path, q, _ in srv.log)
    assert result.code == 1
    assert token not in result.stdout + result.stderr
    for path in tmp_path.iterdir():
        if path.name.startswith("catalog.sqlite"):
            assert token.encode() not in path.read_bytes(), path

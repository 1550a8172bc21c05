"""What a service says about itself decides what a job can expect: the scales it draws at
(``minScale``/``maxScale``, a cache folder's conf.properties) are honoured by ``service-limits``
level by level, a folder cache's levels without bundles are "no tiles" everywhere, and a job
that finds no tile at all (``singleFusedMapCache: false``, a ``/tile`` answering nothing) fails
with exit 1 saying so, writing no empty package unless ``--allow-empty``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from _arcpy_standin import write_tpkx
from _gdal import colour_of, open_gdal, tile_centre_rgba
from _tileserver import TileServer
from _tiles import all_tiles, mercator_service_json, pyramid
from cacheorch.plugins.export_compact_v2 import CompactV2Session
from cacheorch.tiling import web_mercator_scheme

SCHEME = web_mercator_scheme(6)
TILES = pyramid(range(5))


def _decisions(report: dict) -> dict[int, tuple[bool, str]]:
    return {d["level"]: (d["kept"], d["reason"]) for d in report["decisions"]}


# -- minScale / maxScale --------------------------------------------------------------------------

def test_service_limits_drops_levels_outside_min_and_max_scale_saying_so(cli) -> None:
    # draws from level 1's scale down to between levels 4 and 5 (so level 4 is still drawn)
    service = mercator_service_json(6) | {"minScale": SCHEME.lod(1).scale,
                                          "maxScale": SCHEME.lod(4).scale * 0.8}
    with TileServer(TILES, service=service) as srv:
        result = cli("plan", "--service", srv.url, "--levels", "0-6", "--policy", "service-limits",
                     "--json")
        assert result.code == 0, result.stderr
        report = json.loads(result.stdout)
        text = cli("plan", "--service", srv.url, "--levels", "0-6", "--policy",
                   "service-limits").stdout
        without = json.loads(cli("plan", "--service", srv.url, "--levels", "0-6", "--json").stdout)
    assert [lv["level"] for lv in report["levels"]] == [1, 2, 3, 4]
    decided = _decisions(report)
    assert decided[0][0] is False and "coarser than the service's minScale 1:295,828,764" in \
        decided[0][1]
    for level in (5, 6):
        assert decided[level][0] is False and "finer than the service's maxScale" in \
            decided[level][1], decided[level]
    assert all(decided[level][0] for level in range(1, 5))
    assert "dropped by service-limits: scale 1:591,657,528 is coarser than the service's " \
           "minScale" in text
    assert [lv["level"] for lv in without["levels"]] == list(range(7))  # only the policy drops


def test_a_cache_folders_conf_properties_scale_range_is_honoured_the_same_way(cli,
                                                                             tmp_path) -> None:
    folder = write_tpkx(tmp_path / "cache", SCHEME, TILES, CompactV2Session)
    (folder / "conf.properties").write_text(
        "<?xml version='1.0' encoding='utf-8'?><PropertySet xsi:type='typens:PropertySet' "
        "xmlns:xsi='http://www.w3.org/2001/XMLSchema-instance' "
        "xmlns:xs='http://www.w3.org/2001/XMLSchema' "
        "xmlns:typens='http://www.esri.com/schemas/ArcGIS/10.3'><PropertyArray "
        "xsi:type='typens:ArrayOfPropertySetProperty'>"
        "<PropertySetProperty xsi:type='typens:PropertySetProperty'><Key>CacheTileContentType"
        "</Key><Value xsi:type='xs:string'>Map</Value></PropertySetProperty>"
        "<PropertySetProperty xsi:type='typens:PropertySetProperty'><Key>MinScale</Key>"
        f"<Value xsi:type='xs:double'>{SCHEME.lod(2).scale}</Value></PropertySetProperty>"
        "<PropertySetProperty xsi:type='typens:PropertySetProperty'><Key>MaxScale</Key>"
        f"<Value xsi:type='xs:double'>{SCHEME.lod(3).scale}</Value></PropertySetProperty>"
        "</PropertyArray></PropertySet>")
    result = cli("plan", "--service", str(folder), "--levels", "0-4", "--policy",
                 "service-limits", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert [lv["level"] for lv in report["levels"]] == [2, 3]
    decided = _decisions(report)
    assert "coarser than the service's minScale" in decided[1][1]
    assert "finer than the service's maxScale" in decided[4][1]
    shown = json.loads(cli("scales", str(folder), "--json").stdout)["levels"]
    assert [lv["drawn"] for lv in shown[:5]] == [False, False, True, True, False]
    assert "(not drawn: finer than the service's maxScale" in cli("scales", str(folder)).stdout


def test_a_folder_caches_levels_without_bundles_are_no_tiles_everywhere(cli, tmp_path) -> None:
    """Levels 0-1 and 3 cached, 2 not: level 2 is "no tiles" like the levels past 3, in
    ``scales`` and in ``plan``, not only outside the first..last range."""
    tiles = {k: v for k, v in TILES.items() if k[0] in (0, 1, 3)}
    folder = write_tpkx(tmp_path / "gappy", SCHEME, tiles, CompactV2Session)
    shown = json.loads(cli("scales", str(folder), "--json").stdout)["levels"]
    assert [lv["level"] for lv in shown if lv["tiled"]] == [0, 1, 3]
    lines = {int(line.split()[0]): line for line in cli("scales", str(folder)).stdout.splitlines()
             if line.strip()[:1].isdigit()}
    assert 2 in lines
    assert [level for level, line in lines.items() if "(no tiles)" in line] == \
        [level for level in lines if level not in (0, 1, 3)]
    result = cli("plan", "--service", str(folder), "--levels", "0-3", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert [lv["level"] for lv in report["levels"]] == [0, 1, 3]
    assert "no tiles (levels with tiles: 0-1,3)" in _decisions(report)[2][1]


# -- a job that finds no tile ------------------------------------------------------------------

@pytest.mark.parametrize("said, why", [
    ({"singleFusedMapCache": False}, "its JSON says singleFusedMapCache: false"),
    ({}, None),
])
def test_a_job_where_every_tile_is_missing_fails_saying_so_and_writes_nothing(
        cli, tmp_path: Path, said: dict, why: str | None) -> None:
    output = tmp_path / "out.tpkx"
    with TileServer({}, service=mercator_service_json(6) | said) as srv:
        planned = json.loads(cli("plan", "--service", srv.url, "--levels", "0-2", "--json").stdout)
        assert bool(planned["warnings"]) == bool(why)
        assert ("warning  the service says singleFusedMapCache: false" in cli(
            "plan", "--service", srv.url, "--levels", "0-2").stdout) == bool(why)
        result = cli("run", "--service", srv.url, "--levels", "0-2", "--output", str(output),
                     "--json")
        assert result.code == 1, result.stderr
        assert "Traceback" not in result.stderr
        report = json.loads(result.stdout)
        assert report["status"] == "failed" and report["tiles_missing"] == 21
        assert report["errors"][0].startswith(
            f"the service has no tiles where job {report['job_id']} asked: all 21 planned tile(s) "
            "were missing")
        assert (why in report["errors"][0]) if why else "missing;" in report["errors"][0]
        assert not output.exists() and not Path(str(output) + ".partial").exists()
        text = cli("run", "--service", srv.url, "--levels", "0-2", "--output", str(output))
        assert text.code == 1 and "the service has no tiles" in text.stderr
        assert text.stderr.count("\n") == 1 and not output.exists()
        jobs = json.loads(cli("jobs", "--json").stdout)["jobs"]
        assert [j["status"] for j in jobs] == ["failed", "failed"]
        assert jobs[0]["error"].startswith("the service has no tiles")
        # asked for: the empty package is written, and the job completes
        empty = cli("run", "--service", srv.url, "--levels", "0-2", "--output", str(output),
                    "--allow-empty", "--json")
        assert empty.code == 0, empty.stderr
        assert json.loads(empty.stdout)["status"] == "completed"
    assert output.is_file() and all_tiles(output) == {}


def test_the_empty_job_names_levels_beyond_the_scales_the_service_draws(cli, tmp_path) -> None:
    service = mercator_service_json(6) | {"maxScale": SCHEME.lod(2).scale}
    with TileServer(TILES, service=service) as srv:
        result = cli("run", "--service", srv.url, "--levels", "5-6", "--aoi",
                     "bbox:0,0,1,1@4326", "--output", str(tmp_path / "o.tpkx"))
    assert result.code == 1
    assert "level(s) 5-6 are finer than the service's maxScale 1:147,914,382" in result.stderr
    assert "--policy service-limits leaves them out" in result.stderr


def test_a_job_with_some_tiles_is_not_affected(cli, tmp_path) -> None:
    output = tmp_path / "o.tpkx"
    with TileServer(TILES, service=mercator_service_json(6)) as srv:
        result = cli("run", "--service", srv.url, "--levels", "4-5", "--output", str(output),
                     "--json")
    assert result.code == 0, result.stderr  # level 5 is all missing, level 4 is there
    report = json.loads(result.stdout)
    assert report["status"] == "completed" and report["tiles_missing"] == 1024
    with open_gdal(output) as ds:
        assert tile_centre_rgba(ds, SCHEME, 4, 7, 9)[:3] == colour_of(4, 7, 9)

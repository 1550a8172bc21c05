"""``export-map-server-cache`` and ``export-tile-cache``: the parameters cacheorch hands to arcpy.

arcpy is proprietary and cannot be installed here, so these tests put a STAND-IN module named
``arcpy`` into ``sys.modules``. The stand-in is not ArcGIS: it records every call with its
arguments and imitates only what the exporters rely on (a cache-dataset folder per
ExportMapServerCache call, a tile package from ExportTileCache built with cacheorch's own tpkx
writer, ``Result.getMessages`` / ``getOutput``, ``GetMessages(2)`` and ``ExecuteError``). What is
checked is the mapping from a plan to the tools' positional parameters (spec §8.1, §8.2): exact
scale values, one call per area tier, FeatureSet JSON, MERGE after the first call, the option
defaults; and the clean failure where arcpy does not import. Whether ArcGIS accepts these calls
was not checked against ArcGIS itself.
"""
from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from _arcpy_standin import StandInArcpy, write_tpkx
from _gdal import colour_of, open_gdal, tile_centre_rgba
from _jobserver import JobServer
from _tiles import pyramid
from cacheorch.formats.cache import open_cache
from cacheorch.tiling import TilingScheme, web_mercator_scheme

BOX = "bbox:0,0,6000000,6000000@3857"


@pytest.fixture(scope="module")
def scheme() -> TilingScheme:
    return web_mercator_scheme(6)


@pytest.fixture(scope="module")
def tiles() -> dict[tuple[int, int, int], bytes]:
    return pyramid(range(5))


@pytest.fixture
def arcpy(scheme, tiles, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandInArcpy]:
    stand_in = StandInArcpy(scheme, tiles)
    monkeypatch.setitem(sys.modules, "arcpy", stand_in)
    yield stand_in


@pytest.fixture
def service(scheme, tiles) -> Iterator[JobServer]:
    with JobServer(scheme, tiles) as s:
        yield s


def scales(scheme: TilingScheme, levels: range) -> str:
    return ";".join(repr(scheme.lod(lv).scale) for lv in levels)


def run(cli, location: str, exporter: str, output: str = "out.tpkx"):
    return cli("run", "--service", location, "--levels", "0-4", "--aoi", "0-2=extent",
               "--aoi", f"3-4={BOX}", "--exporter", exporter, "-o", output)


def test_export_map_server_cache_parameters_and_package(cli, arcpy, service, scheme) -> None:
    result = run(cli, service.url, "export-map-server-cache")
    assert result.code == 0, result.stderr
    (n1, a1), (n2, a2), (n3, a3) = arcpy.calls
    staging = Path("out.tpkx.partial").absolute()
    target = str(staging / "cache")
    assert n1 == n2 == "ExportMapServerCache" and n3 == "ExportTileCache"
    # input_service, target_cache_path, export_cache_type, copy_data_from_server,
    # storage_format_type, scales, num_of_caching_service_instances, area_of_interest,
    # export_extent, overwrite  (ArcGIS's defaults: DO_NOT_COPY, COMPACT, MERGE)
    assert a1[:7] == (service.url, target, "CACHE_DATASET", "DO_NOT_COPY", "COMPACT",
                      scales(scheme, range(0, 3)), -1)
    assert a1[8:] == (None, "MERGE")
    assert a2[5] == scales(scheme, range(3, 5))
    assert [float(v) for v in a2[5].split(";")] == [scheme.lod(3).scale, scheme.lod(4).scale]
    assert a2[9] == "MERGE"
    aoi = a2[7].json
    assert aoi["geometryType"] == "esriGeometryPolygon"
    assert aoi["features"][0]["geometry"]["spatialReference"] == {"wkid": 102100,
                                                                   "latestWkid": 3857}
    # then the cache dataset is packaged: in_cache_source, folder, name, type, storage, scales, aoi
    assert a3 == (str(staging / "cache" / "Export" / "Layers"), str(staging), "out",
                  "TILE_PACKAGE_TPKX", "COMPACT_V2", scales(scheme, range(0, 5)), None)
    with open_gdal(Path("out.tpkx")) as ds:
        assert tile_centre_rgba(ds, scheme, 4, 6, 9) == (*colour_of(4, 6, 9), 255)
        assert tile_centre_rgba(ds, scheme, 2, 0, 3) == (*colour_of(2, 0, 3), 255)
    con = sqlite3.connect("catalog.sqlite")
    levels = con.execute("SELECT level, tiles_planned, tiles_written FROM job_levels "
                         "ORDER BY level").fetchall()
    said = con.execute("SELECT source, message FROM job_messages").fetchall()
    con.close()
    assert levels == [(0, 1, 1), (1, 4, 4), (2, 16, 16), (3, 4, 4), (4, 9, 9)]
    assert ("arcpy", "Exporting...") in said


def test_export_map_server_cache_options(cli, arcpy, service, scheme) -> None:
    result = run(cli, service.url, "export-map-server-cache:copy_data=copy_data,"
                 "storage_format=COMPACT_V2,instances=4,mode=OVERWRITE,package=cache,"
                 "input_service=GIS Servers/arcgis on gis (admin)/Roads.MapServer", output="out")
    assert result.code == 0, result.stderr
    assert [n for n, _ in arcpy.calls] == ["ExportMapServerCache"] * 2  # no packaging
    (_, a1), (_, a2) = arcpy.calls
    assert a1[0] == "GIS Servers/arcgis on gis (admin)/Roads.MapServer"
    assert a1[3:5] == ("COPY_DATA", "COMPACT_V2") and a1[6] == 4
    assert (a1[9], a2[9]) == ("OVERWRITE", "MERGE")  # only the first call may overwrite
    with open_cache("out") as cache:  # the cache dataset itself is the output
        assert cache.levels_with_tiles() == [0, 1, 2, 3, 4]


def test_export_tile_cache_on_a_local_cache(cli, arcpy, scheme, tiles) -> None:
    source = write_tpkx(Path("source.tpkx").absolute(), scheme, tiles)
    result = run(cli, str(source), "export-tile-cache")
    assert result.code == 0, result.stderr
    (n1, a1), (n2, a2) = arcpy.calls
    staging = str(Path("out.tpkx.partial").absolute())
    # in_cache_source, in_target_cache_folder, in_target_cache_name, export_cache_type,
    # storage_format_type, scales, area_of_interest
    assert n1 == n2 == "ExportTileCache"
    assert a1[:6] == (str(source), staging, "piece-000", "TILE_PACKAGE_TPKX", "COMPACT_V2",
                      scales(scheme, range(0, 3)))
    assert a2[2] == "piece-001" and a2[5] == scales(scheme, range(3, 5))
    # the two packages are merged by cacheorch into one
    with open_gdal(Path("out.tpkx")) as ds:
        assert tile_centre_rgba(ds, scheme, 1, 1, 0) == (*colour_of(1, 1, 0), 255)
        assert tile_centre_rgba(ds, scheme, 3, 3, 5) == (*colour_of(3, 3, 5), 255)


def test_a_tool_failure_is_one_line_with_arcgis_errors(cli, arcpy, service) -> None:
    arcpy.fail_with = "ERROR 001228: Invalid scales.\nFailed to execute (ExportMapServerCache)."
    result = run(cli, service.url, "export-map-server-cache")
    assert result.code == 1
    assert "ERROR 001228: Invalid scales." in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not Path("out.tpkx").exists()


def test_without_arcpy_exit_2_naming_the_exporters_that_run(cli, service, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "arcpy", None)  # `import arcpy` raises ImportError
    for command in ("plan", "run"):
        for name in ("export-map-server-cache", "export-tile-cache"):
            result = cli(command, "--service", service.url, "--levels", "0-2",
                         "--exporter", name)
            assert result.code == 2, result.stderr
            line = result.stderr.strip()
            assert len(line.splitlines()) == 1 and "Traceback" not in line
            assert f"exporter {name} needs arcpy" in line
            runs_here = line.split("exporters that run here: ")[1].split(", ")
            assert {"tpkx", "compact-v2", "rest-export-tiles"} <= set(runs_here)
            assert "export-tile-cache" not in runs_here
    assert not service.submitted and not list(Path(".").glob("*.partial"))

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

import json
import sqlite3
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from shapely.geometry import Polygon, box
from shapely.ops import unary_union

from _gdal import colour_of, open_gdal, tile_centre_rgba
from _jobserver import JobServer
from _tiles import all_tiles, pyramid, write_tiles
from cacheorch.interfaces import ExportRequest, Service
from cacheorch.formats.cache import open_cache
from cacheorch.plugins.export_compact_v2 import CompactV2Session
from cacheorch.plugins.export_tpkx import TpkxSession
from cacheorch.tiling import TilingScheme, web_mercator_scheme

BOX = "bbox:0,0,6000000,6000000@3857"


def write_tpkx(path: Path, scheme: TilingScheme, tiles: dict[tuple[int, int, int], bytes],
               session_class: type = TpkxSession) -> Path:
    """A real package (or, with CompactV2Session, a cache folder) of ``tiles``."""
    levels = sorted({k[0] for k in tiles})
    narrowed = scheme.with_levels(levels)
    session = session_class(ExportRequest(
        output=path, service=Service(location=str(path), scheme=scheme, name=path.stem),
        scheme=narrowed, levels=tuple(narrowed.lod(lv) for lv in levels), mode="overwrite"))
    write_tiles(session, tiles)
    return session.commit()


class StandInArcpy(types.ModuleType):
    """A stand-in for arcpy (NOT ArcGIS): records calls, fakes just enough results."""

    def __init__(self, scheme: TilingScheme, tiles: dict[tuple[int, int, int], bytes]) -> None:
        super().__init__("arcpy")
        self.scheme, self.tiles = scheme, tiles
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.fail_with: str | None = None
        self.errors = ""
        stand_in = self

        class ExecuteError(Exception):
            pass

        class FeatureSet:
            def __init__(self, table: str) -> None:
                self.json = json.loads(table)

        class Result:
            def __init__(self, output: str, messages: str) -> None:
                self.output, self.messages = output, messages

            def getOutput(self, i: int) -> str:  # noqa: N802 (arcpy's naming)
                return self.output

            def getMessages(self, severity: int = 0) -> str:  # noqa: N802
                return self.messages

        self.ExecuteError, self.FeatureSet, self.Result = ExecuteError, FeatureSet, Result
        self.server = types.SimpleNamespace(ExportMapServerCache=self._export_map_server_cache)
        self.management = types.SimpleNamespace(ExportTileCache=self._export_tile_cache)
        self.GetMessages = lambda severity=0: stand_in.errors

    # -- helpers --------------------------------------------------------------------------------

    def _fail(self) -> None:
        if self.fail_with:
            self.errors = self.fail_with
            raise self.ExecuteError("Failed to execute (ExportMapServerCache).")

    def _selected(self, scales: str, area: Any) -> dict[tuple[int, int, int], bytes]:
        levels = {self.scheme.level_for_scale(float(s)).level for s in scales.split(";")}
        shape = None
        if area is not None:
            rings = [r for f in area.json["features"] for r in f["geometry"]["rings"]]
            shape = unary_union([Polygon(r) for r in rings])
        return {k: v for k, v in self.tiles.items() if k[0] in levels and (
            shape is None or box(*self.scheme.tile_bounds(*k)).intersection(shape).area > 0)}

    def _export_map_server_cache(self, *args: Any) -> Any:
        """Adds the selected tiles to a real Compact V2 cache dataset under the target folder."""
        self.calls.append(("ExportMapServerCache", args))
        self._fail()
        _, target, _, _, _, scales, _, area, _, mode = args
        held_file = Path(target) / "standin-held.json"
        held = {} if mode == "OVERWRITE" or not held_file.exists() else \
            json.loads(held_file.read_text())
        held.update({"/".join(map(str, k)): 1 for k in self._selected(scales, area)})
        held_file.write_text(json.dumps(held))
        dataset = Path(target) / "Export" / "Layers"
        keys = [tuple(int(p) for p in k.split("/")) for k in held]
        write_tpkx(dataset, self.scheme, {k: self.tiles[k] for k in keys}, CompactV2Session)
        return self.Result(str(dataset), "Start Time: now\nExporting...\nSucceeded at now")

    def _export_tile_cache(self, *args: Any) -> Any:
        """Reads the source cache (with cacheorch's reader) and packages the selected tiles."""
        self.calls.append(("ExportTileCache", args))
        self._fail()
        source, folder, name, kind, _, scales, area = args
        have = all_tiles(source)
        chosen = {k: v for k, v in self._selected(scales, area).items() if k in have}
        ext = ".tpkx" if kind == "TILE_PACKAGE_TPKX" else ".tpk"
        out = write_tpkx(Path(folder) / (name + ext), self.scheme, chosen)
        return self.Result(str(out), "Start Time: now\nSucceeded at now")


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

"""The ``status-gdb`` scale source: Status.gdb files built here with GDAL (pyogrio, OpenFileGDB).

Esri publishes no schema for Status.gdb, so these tests build the shape cacheorch assumes
(``TaskStatus``, one polygon per bundle, LevelID / Scale / Status) and variants of it (other
field names and cases, percent or 0/1 flags, scales without levels), each checked against
counts worked out here from the rows written.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

import numpy as np
import pyogrio
import shapely
from shapely.geometry import box

from cacheorch.errors import FormatError, SchemeError, ServiceError  # noqa: E402
from cacheorch.formats.confxml import read_conf_xml, write_conf_xml  # noqa: E402
from cacheorch.interfaces import LevelStatus  # noqa: E402
from cacheorch.plugins import scales_status_gdb  # noqa: E402
from cacheorch.plugins.scales_status_gdb import StatusGdbScaleSource  # noqa: E402
from cacheorch.connection import Connection  # noqa: E402
from cacheorch.statusgdb import read_status, status_service  # noqa: E402
from cacheorch.tiling import BUNDLE_SIZE, TilingScheme, web_mercator_scheme  # noqa: E402

MODULE = "cacheorch.plugins.scales_status_gdb"


def bundle_box(scheme: TilingScheme, level: int, brow: int, bcol: int) -> Any:
    """The footprint of bundle (brow, bcol) (in bundles) of ``level``: what a TaskStatus row covers."""
    span_x, span_y = scheme.tile_span(level)
    x0 = scheme.origin_x + bcol * BUNDLE_SIZE * span_x
    y1 = scheme.origin_y - brow * BUNDLE_SIZE * span_y
    footprint = box(x0, y1 - BUNDLE_SIZE * span_y, x0 + BUNDLE_SIZE * span_x, y1)
    if scheme.tile_end is not None:  # a bundle larger than the world stops at its edge
        footprint = footprint.intersection(box(scheme.origin_x, scheme.tile_end[1],
                                               scheme.tile_end[0], scheme.origin_y))
    return footprint


def write_gdb(path: Path, rows: list[dict[str, Any]], geoms: list[Any], *, layer: str = "TaskStatus",
              types: dict[str, str] | None = None, crs: str = "EPSG:3857") -> Path:
    """A File GDB with one polygon layer; field types from the first row (or ``types``)."""
    names = list(rows[0])
    columns = []
    for name in names:
        values = [r[name] for r in rows]
        kind = (types or {}).get(name)
        if kind is None:
            kind = "object" if isinstance(values[0], str) else \
                "float64" if isinstance(values[0], float) else "int32"
        columns.append(np.array(values, dtype=kind))
    wkb = np.array([shapely.to_wkb(g) for g in geoms], dtype=object)
    pyogrio.raw.write(str(path), wkb, columns, names, driver="OpenFileGDB", layer=layer,
                      geometry_type="Polygon", crs=crs)
    return path


@pytest.fixture
def server_cache(tmp_path: Path) -> tuple[Path, TilingScheme]:
    """``arcgiscache/Roads/{Status.gdb, Layers/conf.xml}``, as ArcGIS Server lays a cache out."""
    scheme = web_mercator_scheme(max_level=12, tile_format="JPEG")
    layers = tmp_path / "arcgiscache" / "Roads" / "Layers"
    layers.mkdir(parents=True)
    write_conf_xml(scheme, layers / "conf.xml")
    return layers.parent, read_conf_xml(layers / "conf.xml")


def standard_rows(scheme: TilingScheme) -> tuple[list[dict[str, Any]], list[Any]]:
    """Level 3: 1 bundle, done. Level 9: 16 bundles, 12 done. Level 10: 10 bundles, none done."""
    rows, geoms = [], []
    plan = {3: (1, 1), 9: (16, 12), 10: (10, 0)}
    for level, (count, done) in plan.items():
        for i in range(count):
            brow, bcol = divmod(i, 4)
            rows.append({"LevelID": level, "Scale": scheme.lod(level).scale,
                         "Status": "Completed" if i < done else "Not Started"})
            geoms.append(bundle_box(scheme, level, brow, bcol))
    return rows, geoms


def test_levels_and_completeness_from_task_status(server_cache) -> None:
    folder, scheme = server_cache
    gdb = write_gdb(folder / "Status.gdb", *standard_rows(scheme))
    service = StatusGdbScaleSource().read(str(gdb), Connection())
    assert service.kind == "cache" and service.name == "Roads"
    assert service.location == str(folder / "Layers")  # tiles come from the cache itself
    assert service.scheme.levels == scheme.levels  # conf.xml's scheme, whole
    assert service.scheme.tiled_levels == tuple(range(3, 11))
    assert service.level_status == (LevelStatus(3, 1, 1, 100.0), LevelStatus(9, 16, 12, 75.0),
                                    LevelStatus(10, 10, 0, 0.0))
    assert service.status_of(9).describe() == "12/16 bundles (75%)"
    assert service.status_of(4) is None
    assert service.storage_format == "esriMapCacheStorageModeCompactV2"
    # no conf.cdi: the status features' bounds are the extent
    ext = service.scheme.full_extent
    want = bundle_box(scheme, 3, 0, 0).bounds
    assert ext is not None and ext.bounds == pytest.approx(want)


def test_variant_names_percent_fractions_and_no_scale(server_cache) -> None:
    folder, scheme = server_cache
    rows = [{"LEVEL_ID": lv, "pct_complete": pct} for lv, pct in
            [(5, 1.0), (5, 0.5), (5, 1.0), (5, 0.0), (6, 0.25)]]
    geoms = [bundle_box(scheme, r["LEVEL_ID"], 0, 0) for r in rows]
    gdb = write_gdb(folder / "Status.gdb", rows, geoms, layer="taskstatus")
    report = read_status(gdb, scheme)
    assert report.fields.level == "LEVEL_ID" and report.fields.percent == "pct_complete"
    assert report.fields.scale is None
    assert report.levels == (LevelStatus(5, 4, 2, 62.5), LevelStatus(6, 1, 0, 25.0))


def test_scales_win_over_a_differently_numbered_level_field(tmp_path: Path, fixtures) -> None:
    """NZTM, 512 px, scales not powers of two; stored scales rounded; levels numbered from 1."""
    cache = tmp_path / "nztm"
    cache.mkdir()
    shutil.copy(fixtures / "gwc" / "arcgis_10.1_conf.xml", cache / "conf.xml")
    scheme = read_conf_xml(cache / "conf.xml")
    picks = scheme.levels[2:5]
    rows, geoms = [], []
    for n, level in enumerate(picks):
        for i in range(n + 1):  # 1, 2, 3 bundles
            rows.append({"Lod": level + 1, "MapScale": round(scheme.lod(level).scale * 1.001),
                         "Done": 1 if i == 0 else 0})
            geoms.append(bundle_box(scheme, level, 0, i))
    gdb = write_gdb(cache / "Status.gdb", rows, geoms, crs="EPSG:2193")
    service = status_service(gdb)
    assert [s.level for s in service.level_status] == list(picks)
    assert [(s.bundles, s.done) for s in service.level_status] == [(1, 1), (2, 1), (3, 1)]
    assert service.scheme.tile_cols == 512
    assert service.scheme.tiled_levels == tuple(picks)


def test_unknown_status_words_count_as_not_done_and_are_reported(server_cache, caplog) -> None:
    folder, scheme = server_cache
    rows = [{"LevelID": 4, "BundleStatus": s} for s in ["DONE", "weird", "Built", "partial"]]
    gdb = write_gdb(folder / "Status.gdb", rows, [bundle_box(scheme, 4, 0, 0)] * 4)
    report = read_status(gdb, scheme)
    assert report.levels == (LevelStatus(4, 4, 2, 50.0),)
    assert report.unknown_values == ("weird",)
    assert "weird" in caplog.text


def test_status_without_a_completion_field_still_gives_levels(server_cache) -> None:
    folder, scheme = server_cache
    rows = [{"LevelID": lv, "Note": "x"} for lv in (2, 2, 7)]
    gdb = write_gdb(folder / "Status.gdb", rows, [bundle_box(scheme, 2, 0, 0)] * 3)
    service = status_service(gdb)
    assert service.level_status == (LevelStatus(2, 2), LevelStatus(7, 1))
    assert "completion unknown" in service.status_of(2).describe()


def test_conf_option_and_layer_option(tmp_path: Path, server_cache) -> None:
    folder, scheme = server_cache
    elsewhere = tmp_path / "reports"
    elsewhere.mkdir()
    rows = [{"LevelID": 8, "Status": "Completed"}]
    gdb = write_gdb(elsewhere / "Status.gdb", rows, [bundle_box(scheme, 8, 0, 0)], layer="Report")
    with pytest.raises(FormatError, match="no conf.xml beside it"):
        StatusGdbScaleSource().read(str(gdb), Connection())
    source = StatusGdbScaleSource(StatusGdbScaleSource.Options(conf=str(folder / "Layers")))
    service = source.read(str(gdb), Connection())  # the only layer with a level field is used
    assert service.level_status == (LevelStatus(8, 1, 1, 100.0),)
    with pytest.raises(FormatError, match="no layer 'TaskStatus'.*Report"):
        StatusGdbScaleSource(StatusGdbScaleSource.Options(conf=str(folder), layer="TaskStatus")) \
            .read(str(gdb), Connection())


@pytest.mark.parametrize("rows, error, words", [
    ([{"LevelID": 30, "Status": "Completed"}], SchemeError, r"level 30 in LevelID is not in conf.xml"),
    ([{"Scale": 123.0, "Status": "Completed"}], SchemeError, r"scale 1:123 in Scale matches no level"),
    ([{"Name": "a", "Status": "Completed"}], SchemeError, r"no level or scale field"),
])
def test_bad_status_rows_are_one_line_errors(server_cache, rows, error, words) -> None:
    folder, scheme = server_cache
    gdb = write_gdb(folder / "Status.gdb", rows, [bundle_box(scheme, 0, 0, 0)])
    with pytest.raises(error, match=words) as err:
        status_service(gdb)
    assert "\n" not in str(err.value)


def test_not_a_geodatabase(server_cache) -> None:
    folder, _ = server_cache
    (folder / "Status.gdb").mkdir()
    (folder / "Status.gdb" / "junk.txt").write_text("not a gdb")
    with pytest.raises(FormatError, match="not a readable file geodatabase"):
        status_service(folder / "Status.gdb")


def test_accepts_gdb_paths_only() -> None:
    assert StatusGdbScaleSource.accepts("/data/arcgiscache/Roads/Status.gdb/")
    assert StatusGdbScaleSource.accepts("Status.GDB")
    assert not StatusGdbScaleSource.accepts("/data/arcgiscache/Roads")
    assert not StatusGdbScaleSource.accepts("https://host/arcgis/rest/services/a.gdb")


def _register(monkeypatch, *modules: str) -> None:
    """Put ``modules`` first in DEFAULT_PLUGINS unless the lead registered them already (then
    their real order is what is tested)."""
    from cacheorch import pluginmanager
    missing = tuple(m for m in modules if m not in pluginmanager.DEFAULT_PLUGINS)
    if missing:
        monkeypatch.setattr(pluginmanager, "DEFAULT_PLUGINS",
                            (*missing, *pluginmanager.DEFAULT_PLUGINS))
    pluginmanager.get_plugins.cache_clear()


@pytest.fixture
def registered(monkeypatch):
    """The CLI with status-gdb registered (the lead adds it to DEFAULT_PLUGINS; until then, here)."""
    from cacheorch import pluginmanager
    _register(monkeypatch, MODULE)
    yield
    pluginmanager.get_plugins.cache_clear()


def test_scales_command_shows_completeness(cli, registered, server_cache) -> None:
    folder, scheme = server_cache
    gdb = write_gdb(folder / "Status.gdb", *standard_rows(scheme))
    result = cli("scales", str(gdb), "--json")  # detected: no --source needed
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    by_level = {row["level"]: row for row in data["levels"]}
    assert by_level[9]["completeness"] == {"bundles": 16, "done": 12, "percent": 75.0}
    assert by_level[4]["completeness"] is None and by_level[4]["tiled"] is True
    assert by_level[11]["tiled"] is False and by_level[11]["completeness"] is None
    assert data["storage_format"] == "esriMapCacheStorageModeCompactV2"
    text = cli("scales", str(gdb), "--source", "status-gdb")
    assert text.code == 0, text.stderr
    line9 = next(line for line in text.stdout.splitlines() if line.split()[:1] == ["9"])
    assert line9.endswith("12/16 bundles (75%)")
    assert "completeness" in text.stdout.splitlines()[1]


def test_without_pyogrio_one_clear_line_and_exit_2(cli, registered, server_cache, monkeypatch) -> None:
    folder, scheme = server_cache
    gdb = write_gdb(folder / "Status.gdb", *standard_rows(scheme))
    for name in [m for m in sys.modules if m == "pyogrio" or m.startswith("pyogrio.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ServiceError, match=r"needs pyogrio \(pip install 'cacheorch\[gdal\]'\)"):
        status_service(gdb)
    result = cli("scales", str(gdb))
    assert result.code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "reading Status.gdb needs pyogrio" in lines[0], result.stderr


def test_registered_by_its_hook() -> None:
    assert scales_status_gdb.cacheorch_register_scale_sources() == [StatusGdbScaleSource]


def test_a_status_gdb_as_service_exports_the_caches_tiles(cli, monkeypatch, fixtures,
                                                         tmp_path: Path) -> None:
    """``--service …/Status.gdb``: the levels the status lists, the tiles from the cache beside it."""
    from cacheorch import pluginmanager
    from cacheorch.formats.bundle import BundleReader, parse_bundle_name
    _register(monkeypatch, MODULE, "cacheorch.plugins.scales_conf",
              "cacheorch.plugins.tiles_cache")
    service = tmp_path / "arcgiscache" / "Sample"
    service.mkdir(parents=True)
    shutil.copytree(fixtures / "esri_compactcache_sample", service / "Layers")
    scheme = read_conf_xml(service / "Layers" / "conf.xml")
    rows = [{"LevelID": lv, "Scale": scheme.lod(lv).scale, "Status": "Completed"} for lv in (1, 2)]
    gdb = write_gdb(service / "Status.gdb", rows, [bundle_box(scheme, lv, 0, 0) for lv in (1, 2)])

    def tiles(root: Path) -> dict[tuple[int, int, int], bytes]:
        out = {}
        for path in root.rglob("*.bundle"):
            brow, bcol = parse_bundle_name(path.name)  # type: ignore[misc]
            with BundleReader(path, bundle_row=brow, bundle_col=bcol) as reader:
                out.update({(int(path.parent.name[1:]), r, c): d for r, c, d in reader.tiles()})
        return out

    try:
        output = tmp_path / "subset"
        result = cli("run", "--service", str(gdb), "--levels", "1-2", "--aoi", "1-2=extent",
                     "--exporter", "compact-v2", "--output", str(output), "--json")
        assert result.code == 0, result.stderr
        source = {k: v for k, v in tiles(service / "Layers").items() if k[0] in (1, 2)}
        assert source and tiles(output) == source
    finally:
        pluginmanager.get_plugins.cache_clear()

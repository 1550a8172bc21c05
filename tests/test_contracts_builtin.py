"""Every built-in plugin held to the same contract third-party plugins are (cacheorch.testing).

One subclass per built-in plugin; the checks themselves live in cacheorch.testing, so a rule the
core relies on is written once and applies to everyone. Exporters that another part of the tree
may not have registered yet are skipped, not failed, when absent from DEFAULT_PLUGINS.
"""
from __future__ import annotations

import importlib
import json
import sqlite3
import sys
import types
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from _tileserver import TileServer

from cacheorch.interfaces import Service
from cacheorch.maps.model import MapDocument
from cacheorch.pluginmanager import DEFAULT_PLUGINS, make_plugins
from cacheorch.testing import (
    MapReaderContract, MapWriterContract,
    AreaContract, DelegatedExporterContract, ExporterContract, PolicyContract, ScaleSourceContract, TileSourceContract,
    colour_of, solid_tile, web_mercator_service,
)
from cacheorch.tiling import TileKey, web_mercator_scheme

REFUSED = "http://127.0.0.1:9/arcgis/rest/services/Nothing/MapServer"  # discard port: refused


def _builtin(module: str, attr: str) -> type:
    """A built-in plugin class; a module dropped from DEFAULT_PLUGINS fails its contract tests."""
    dotted = f"cacheorch.plugins.{module}"
    assert dotted in DEFAULT_PLUGINS, f"{dotted} is not in DEFAULT_PLUGINS"
    return getattr(importlib.import_module(dotted), attr)


class _Lazy:
    """``plugin = _Lazy("export_gpkg", "GpkgExporter")``: resolved on first use, so collection
    never fails for a module another engineer has not finished."""

    def __init__(self, module: str, attr: str) -> None:
        self.module, self.attr = module, attr

    def __get__(self, obj: object, owner: type) -> type:
        return _builtin(self.module, self.attr)


# -- scale sources -------------------------------------------------------------------------------

@pytest.fixture
def street_map(fixtures: Path) -> dict:
    path = fixtures / "mapserver_json" / "World_Street_Map_MapServer_v10.01.json"
    return json.loads(path.read_text(encoding="utf-8"))


class TestRestScaleSource(ScaleSourceContract):
    plugin = _Lazy("scales_rest", "RestScaleSource")
    bad_locations = (REFUSED,)

    @pytest.fixture
    def location(self, street_map: dict) -> Iterator[str]:
        with TileServer(service=street_map) as srv:
            yield srv.url


class TestDefaultsScaleSource(ScaleSourceContract):
    plugin = _Lazy("scales_defaults", "DefaultsScaleSource")
    options = {"max_level": "12"}

    @pytest.fixture
    def location(self) -> str:
        return "defaults"


class TestConfScaleSource(ScaleSourceContract):
    plugin = _Lazy("scales_conf", "ConfScaleSource")
    bad_locations = ("/nonexistent/cacheorch-contract/conf.xml",)

    @pytest.fixture
    def location(self, fixtures: Path) -> str:
        return str(fixtures / "esri_compactcache_sample")


class TestStatusGdbScaleSource(ScaleSourceContract):
    plugin = _Lazy("scales_status_gdb", "StatusGdbScaleSource")
    bad_locations = ("/nonexistent/cacheorch-contract/Status.gdb",)

    @pytest.fixture
    def location(self, tmp_path: Path) -> str:
        pyogrio = pytest.importorskip("pyogrio")
        import numpy as np
        import shapely

        from cacheorch.formats.confxml import write_conf_xml
        scheme = web_mercator_scheme(max_level=8)
        layers = tmp_path / "arcgiscache" / "Roads" / "Layers"
        layers.mkdir(parents=True)
        write_conf_xml(scheme, layers / "conf.xml")
        gdb = layers.parent / "Status.gdb"
        geom = shapely.box(*scheme.tile_bounds(3, 0, 0))
        pyogrio.raw.write(str(gdb), np.array([shapely.to_wkb(geom)], dtype=object),
                          [np.array([3], dtype="int32"), np.array(["Completed"], dtype=object)],
                          ["LevelID", "Status"], driver="OpenFileGDB", layer="TaskStatus",
                          geometry_type="Polygon", crs="EPSG:3857")
        return str(gdb)


# -- policies ------------------------------------------------------------------------------------

class TestLevelsPolicy(PolicyContract):
    plugin = _Lazy("policy_levels", "LevelsPolicy")
    options = {"levels": "2-5,8"}
    bad_options = ({"levels": "two"}, {"levels": "99"}, {"levels": "5-2"})


class TestScaleRangePolicy(PolicyContract):
    plugin = _Lazy("policy_scale_range", "ScaleRangePolicy")
    options = {"min_scale": "50000000", "max_scale": "1000000"}
    bad_options = ({"min_scale": "-1"}, {"min_scale": "1000", "max_scale": "1000000"},
                   {"min_scale": "big"})


class TestSnapPolicy(PolicyContract):
    plugin = _Lazy("policy_snap", "SnapPolicy")
    options = {"scales": f"{web_mercator_scheme().lod(3).scale!r};{web_mercator_scheme().lod(6).scale!r}"}
    bad_options = ({"scales": "12345"}, {"scales": "abc"})


class TestMaxTilesPolicy(PolicyContract):
    plugin = _Lazy("policy_budget", "MaxTilesPolicy")
    options = {"tiles": "1000"}
    bad_options = ({"tiles": "lots"}, {"tiles": "1000", "prefer": "sideways"})


class TestMaxBytesPolicy(PolicyContract):
    plugin = _Lazy("policy_budget", "MaxBytesPolicy")
    options = {"bytes": "100MB"}
    bad_options = ({"bytes": "heaps"},)


class TestServiceLimitsPolicy(PolicyContract):
    plugin = _Lazy("policy_service_limits", "ServiceLimitsPolicy")

    @pytest.fixture
    def service(self) -> Service:
        return web_mercator_service(10, export_tiles_allowed=True, max_export_tiles_count=100_000)


class TestExcludePolicy(PolicyContract):
    plugin = _Lazy("policy_exclude", "ExcludePolicy")
    options = {"levels": "3,4"}
    bad_options = ({"levels": "x"},)


# -- areas ---------------------------------------------------------------------------------------

class TestExtentArea(AreaContract):
    plugin = _Lazy("aoi_extent", "ExtentArea")

    @pytest.fixture
    def spec(self) -> str:
        return ""


class TestBBoxArea(AreaContract):
    plugin = _Lazy("aoi_bbox", "BBoxArea")
    bad_specs = ("1,2,3", "3,3,1,1", "a,b,c,d", "0,0,10,10@999999999", "500,0,600,10@4326")

    @pytest.fixture
    def spec(self) -> str:
        return "5.9,45.8,10.5,47.8@4326"


class TestWktArea(AreaContract):
    plugin = _Lazy("aoi_wkt", "WktArea")
    bad_specs = ("POLYGON((0 0, 1 1", "LINESTRING(0 0, 10 10)", "POINT(1 2)")

    @pytest.fixture
    def spec(self) -> str:
        return "POLYGON((6 46, 10 46, 10 48, 6 48, 6 46))@4326"


_ALPS = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {},
         "geometry": {"type": "Polygon",
                      "coordinates": [[[6, 46], [10, 46], [10, 48], [6, 48], [6, 46]]]}}]}


class TestFileArea(AreaContract):
    plugin = _Lazy("aoi_file", "FileArea")
    bad_specs = ("/nonexistent/cacheorch-contract/area.geojson",)

    @pytest.fixture
    def spec(self, tmp_path: Path) -> str:
        path = tmp_path / "alps.geojson"
        path.write_text(json.dumps(_ALPS))
        return str(path)

    def test_a_file_without_polygons_is_refused(self, tmp_path: Path, service: Service,
                                                connection) -> None:
        from cacheorch.errors import AreaError
        path = tmp_path / "line.geojson"
        path.write_text(json.dumps({"type": "LineString", "coordinates": [[0, 0], [1, 1]]}))
        with pytest.raises(AreaError):
            self.area(str(path), service, connection)


class TestLayerArea(AreaContract):
    plugin = _Lazy("aoi_layer", "LayerArea")
    bad_specs = ("/nonexistent/cacheorch-contract/parcels.gpkg",)

    @pytest.fixture
    def spec(self, tmp_path: Path) -> str:
        pyogrio = pytest.importorskip("pyogrio")
        import numpy as np
        import shapely
        path = tmp_path / "parcels.gpkg"
        geom = shapely.box(6, 46, 10, 48)
        pyogrio.raw.write(str(path), np.array([shapely.to_wkb(geom)], dtype=object),
                          [np.array([7], dtype="int32")], ["district"], driver="GPKG",
                          layer="parcels", geometry_type="Polygon", crs="EPSG:4326")
        return f"{path}#parcels"


class TestBufferArea(AreaContract):
    plugin = _Lazy("aoi_buffer", "BufferArea")
    bad_specs = ("500:bbox:0,0,1,1", "lots:extent", "500m:")

    @pytest.fixture
    def spec(self) -> str:
        return "5km:bbox:0,0,100000,100000"


class TestBufferInTilesArea(TestBufferArea):
    """The one built-in area that differs per level."""

    @pytest.fixture
    def spec(self) -> str:
        return "2tiles:bbox:0,0,100000,100000"


# -- tile sources --------------------------------------------------------------------------------

_PRESENT = [TileKey(3, r, c) for r in range(2) for c in range(3)]
_ABSENT = [TileKey(3, 5, 5), TileKey(4, 0, 0)]


class TestRestTileSource(TileSourceContract):
    plugin = _Lazy("tiles_rest", "RestTileSource")
    options = {"backoff": "0.01"}

    @pytest.fixture
    def service(self) -> Iterator[Service]:
        tiles = {(k.level, k.row, k.col): solid_tile(colour_of(k.level, k.row, k.col))
                 for k in _PRESENT}
        with TileServer(tiles) as srv:
            yield web_mercator_service(8, location=srv.url, kind="MapServer")

    @pytest.fixture
    def present_keys(self) -> Sequence[TileKey]:
        return _PRESENT

    @pytest.fixture
    def absent_keys(self) -> Sequence[TileKey]:
        return _ABSENT


class TestCacheTileSource(TileSourceContract):
    plugin = _Lazy("tiles_cache", "CacheTileSource")

    @pytest.fixture
    def service(self, tmp_path: Path) -> Service:
        from cacheorch.connection import Connection
        from cacheorch.interfaces import ExportRequest
        from cacheorch.plugins.export_compact_v2 import CompactV2Exporter
        from cacheorch.plugins.scales_conf import ConfScaleSource
        scheme = web_mercator_scheme(max_level=8)
        out = tmp_path / "cache"
        service = Service("contract://", scheme, name="cache")
        session = CompactV2Exporter().open(ExportRequest(
            output=out, service=service, scheme=scheme.with_levels([3]), levels=(scheme.lod(3),)))
        sink = session.open_bundle(3, 0, 0)
        for k in _PRESENT:
            sink.add(k.row, k.col, solid_tile(colour_of(k.level, k.row, k.col)))
        sink.close()
        session.commit()
        session.discard()
        return ConfScaleSource().read(str(out), Connection())

    @pytest.fixture
    def present_keys(self) -> Sequence[TileKey]:
        return _PRESENT

    @pytest.fixture
    def absent_keys(self) -> Sequence[TileKey]:
        return [TileKey(3, 5, 5)]


# -- exporters -----------------------------------------------------------------------------------

class TestCompactV2Exporter(ExporterContract):
    plugin = _Lazy("export_compact_v2", "CompactV2Exporter")
    gdal_driver = "ESRIC"


class TestTpkxExporter(ExporterContract):
    plugin = _Lazy("export_tpkx", "TpkxExporter")
    gdal_driver = "ESRIC"


class TestTpkExporter(ExporterContract):
    plugin = _Lazy("export_tpk", "TpkExporter")


class TestExplodedExporter(ExporterContract):
    plugin = _Lazy("export_exploded", "ExplodedExporter")


def _sqlite_tiles(path: Path, table: str, keys, flip: bool) -> dict:
    """Tile bytes straight from the SQLite tables (not through cacheorch's own reader)."""
    out = {}
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        for level, row, col in keys:
            stored_row = (2 ** level - 1 - row) if flip else row
            hit = conn.execute(f'SELECT tile_data FROM "{table}" WHERE zoom_level=? AND '
                               "tile_column=? AND tile_row=?", (level, col, stored_row)).fetchone()
            out[(level, row, col)] = bytes(hit[0]) if hit else None
    return out


class TestMBTilesExporter(ExporterContract):
    plugin = _Lazy("export_mbtiles", "MBTilesExporter")
    gdal_driver = "MBTiles"

    def read_tiles(self, output, keys):
        return _sqlite_tiles(output, "tiles", keys, flip=True)


class TestGpkgExporter(ExporterContract):
    plugin = _Lazy("export_gpkg", "GpkgExporter")
    gdal_driver = "GPKG"

    def read_tiles(self, output, keys):
        with sqlite3.connect(f"file:{output}?mode=ro", uri=True) as conn:
            (table,), = conn.execute("SELECT table_name FROM gpkg_contents WHERE data_type='tiles'")
        return _sqlite_tiles(output, table, keys, flip=False)


class TestRestExportTilesExporter(DelegatedExporterContract):
    plugin = _Lazy("export_rest_tiles", "RestExportTilesExporter")
    bad_options = ({"storage": "Exploded"}, {"max_tiles": "many"})


class _WithStandInArcpy:
    """arcpy cannot be installed here: the arcpy exporters' contract runs against the stand-in
    module of tests/_arcpy_standin.py (not ArcGIS), so its checks run instead of skipping."""

    bad_options = ({"package": "zip"}, {"instances": "many"})

    @pytest.fixture(autouse=True)
    def _arcpy(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from _arcpy_standin import StandInArcpy
        from cacheorch.tiling import web_mercator_scheme
        monkeypatch.setitem(sys.modules, "arcpy", StandInArcpy(web_mercator_scheme(3), {}))
        assert self.plugin.unavailable() is None


class TestExportTileCacheExporter(_WithStandInArcpy, DelegatedExporterContract):
    plugin = _Lazy("export_arcpy", "ExportTileCacheExporter")


class TestExportMapServerCacheExporter(_WithStandInArcpy, DelegatedExporterContract):
    plugin = _Lazy("export_arcpy", "ExportMapServerCacheExporter")


def test_every_builtin_plugin_has_a_contract_test() -> None:
    """A built-in added to DEFAULT_PLUGINS without a contract subclass here fails this test."""
    plugins = make_plugins(load_entrypoints=False)
    tested = set()
    for obj in globals().values():
        if isinstance(obj, type) and obj.__name__.startswith("Test") and "plugin" in vars(obj):
            tested.add(obj.plugin)
    missing = [f"{entry.name} ({entry.plugin})" for registry in plugins.registries().values()
               for entry in registry if entry.cls not in tested]
    assert not missing, f"built-in plugins without a contract test: {missing}"


# -- the contracts themselves can fail ---------------------------------------------------------

class _GreedyFetcher:
    """Drains every key before yielding anything: what the streaming check must catch."""

    def __init__(self, keys_seen: list) -> None:
        self.seen = keys_seen

    def fetch(self, keys):
        from cacheorch.interfaces import TileResult
        everything = []
        for key in keys:
            everything.append(key)
            if len(everything) > 500:
                break
        self.seen.append(len(everything))
        for key in everything:
            yield TileResult(key, "missing")

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def test_streaming_contract_catches_a_fetcher_that_drains_its_keys() -> None:
    from cacheorch.interfaces import TileFetcher, TileSource
    seen: list[int] = []

    class Greedy(TileSource):
        """Reads every key first."""
        name = "greedy"

        def open(self, service, connection, workers):
            fetcher = _GreedyFetcher(seen)
            TileFetcher.register(type(fetcher))
            return fetcher

    class Check(TileSourceContract):
        plugin = Greedy

    with pytest.raises(AssertionError, match="reads too far ahead"):
        Check().test_keys_are_consumed_lazily(web_mercator_service(), None, _PRESENT)
    assert seen == [501]


def test_policy_contract_catches_a_policy_that_adds_or_reorders_levels() -> None:
    from cacheorch.interfaces import SelectionPolicy
    from cacheorch.testing import StaticPolicyContext

    class Backwards(SelectionPolicy):
        """Reverses the levels."""
        name = "backwards"

        def select(self, scheme, levels):
            return list(reversed(scheme.lods))

    class Check(PolicyContract):
        plugin = Backwards

    service = web_mercator_service(5)
    with pytest.raises(AssertionError, match="scheme order"):
        Check().test_keeps_a_subset_in_scheme_order(service, StaticPolicyContext(service))
    with pytest.raises(AssertionError):
        Check().test_never_adds_levels_it_was_not_given(service, StaticPolicyContext(service))


def test_area_contract_catches_lines_and_bare_exceptions() -> None:
    from shapely.geometry import LineString

    from cacheorch.connection import Connection
    from cacheorch.interfaces import AOIGenerator

    class Lines(AOIGenerator):
        """Returns a line, and a ValueError for bad input."""
        name = "lines"

        def area(self, spec, service, connection):
            if spec == "bad":
                raise ValueError("boom")
            return LineString([(0, 0), (1000, 1000)])

    class Check(AreaContract):
        plugin = Lines
        bad_specs = ("bad",)

    service = web_mercator_service(8)
    with pytest.raises(AssertionError, match="return a Polygon or MultiPolygon"):
        Check().test_area_is_polygonal_in_the_scheme_inside_the_grid("x", service, Connection())
    with pytest.raises(AssertionError, match="raise a cacheorch.errors.CacheorchError"):
        Check().test_bad_specs_raise_one_clean_line(service, Connection())


def test_plugin_contract_catches_bad_names_and_options() -> None:
    from dataclasses import dataclass

    from cacheorch.interfaces import SelectionPolicy

    class Shouty(SelectionPolicy):
        name = "Keep_ALL"

        @dataclass
        class Options:
            limit: int  # no default

        def select(self, scheme, levels):
            return list(levels)

    class Check(PolicyContract):
        plugin = Shouty

    with pytest.raises(AssertionError, match="lowercase token"):
        Check().test_name_is_a_lowercase_token()
    with pytest.raises(AssertionError, match="needs a docstring"):
        Check().test_describe_is_one_nonempty_line()
    with pytest.raises(AssertionError, match="has no default"):
        Check().test_every_option_has_a_default()


def test_exporter_contract_catches_an_output_published_before_commit(tmp_path: Path) -> None:
    from cacheorch.plugins.export_compact_v2 import CompactV2Exporter

    class Eager(CompactV2Exporter):
        """Publishes on open (wrongly)."""
        name = "eager"

        def open(self, request):
            session = super().open(request)
            Path(request.output).mkdir()
            return session

    class Check(ExporterContract):
        plugin = Eager

    with pytest.raises(AssertionError, match="appeared before commit"):
        Check().test_output_absent_until_commit(tmp_path, web_mercator_scheme(4))


# -- vector tile layers (VectorTileServer, vtpk) -----------------------------------------------

_VECTOR_REFUSED = "http://127.0.0.1:9/arcgis/rest/services/Nothing/VectorTileServer"


class TestVectorScaleSource(ScaleSourceContract):
    plugin = _Lazy("scales_vector", "VectorScaleSource")
    bad_locations = (_VECTOR_REFUSED,)

    @pytest.fixture
    def location(self) -> Iterator[str]:
        from _vectorserver import VectorTileServer
        with VectorTileServer() as srv:
            yield srv.url


class TestVectorTileSource(TileSourceContract):
    plugin = _Lazy("tiles_vector", "VectorTileSource")
    options = {"backoff": "0.01"}

    @pytest.fixture
    def service(self, connection) -> Iterator[Service]:
        from _vectorserver import VectorTileServer

        from cacheorch.plugins.scales_vector import VectorScaleSource
        with VectorTileServer() as srv:
            yield VectorScaleSource().read(srv.url, connection)

    @pytest.fixture
    def present_keys(self) -> Sequence[TileKey]:
        return [TileKey(3, r, c) for r in (2, 3) for c in (2, 3)]

    @pytest.fixture
    def absent_keys(self) -> Sequence[TileKey]:
        return [TileKey(3, 0, 0), TileKey(4, 9, 9)]  # absent by the tilemap, below a leaf


def _vector_request(output: Path, scheme, levels, mode: str = "create"):
    """An export request for the loopback vector layer, its resources read from memory."""
    from urllib.parse import unquote

    from _vectorserver import VectorTileServer, service_json

    from cacheorch.interfaces import ExportRequest
    from cacheorch.vector.service import vector_service_from_json
    resources = VectorTileServer().resources
    location = "http://contract/arcgis/rest/services/C/VectorTileServer"
    service = vector_service_from_json(location, service_json(), lambda url: resources.get(
        unquote(url.split("/resources/", 1)[-1])))
    return ExportRequest(output=output, service=service, scheme=scheme.with_levels(levels),
                         levels=tuple(scheme.lod(n) for n in levels), mode=mode,  # type: ignore[arg-type]
                         title="Contract")


def _vector_package(folder: Path) -> Path:
    """A .vtpk of the loopback layer's tiles (levels 0-3), written by the vtpk exporter."""
    import gzip

    from _vectorserver import DEFAULT_TILES, mvt_tile, service_json

    from cacheorch.plugins.export_vtpk import VtpkExporter
    from cacheorch.vector.service import vector_service_from_json
    scheme = vector_service_from_json("http://contract/x/VectorTileServer", service_json()).scheme
    out = folder / "layer.vtpk"
    session = VtpkExporter().open(_vector_request(out, scheme, [0, 1, 2, 3]))
    for level in range(4):
        sink = session.open_bundle(level, 0, 0)
        for _, row, col in [k for k in DEFAULT_TILES if k[0] == level]:
            sink.add(row, col, gzip.compress(mvt_tile(level, row, col), mtime=0))
        sink.close()
    session.commit()
    session.discard()
    return out


class TestVectorPackageScaleSource(ScaleSourceContract):
    plugin = _Lazy("vector_package", "VectorPackageScaleSource")
    bad_locations = ("/nonexistent/cacheorch-contract/layer.vtpk",)

    @pytest.fixture
    def location(self, tmp_path: Path) -> str:
        return str(_vector_package(tmp_path))


class TestVectorPackageTileSource(TileSourceContract):
    plugin = _Lazy("vector_package", "VectorPackageTileSource")

    @pytest.fixture
    def service(self, tmp_path: Path, connection) -> Service:
        from cacheorch.plugins.vector_package import VectorPackageScaleSource
        return VectorPackageScaleSource().read(str(_vector_package(tmp_path)), connection)

    @pytest.fixture
    def present_keys(self) -> Sequence[TileKey]:
        return [TileKey(3, r, c) for r in (2, 3) for c in (2, 3)] + [TileKey(0, 0, 0)]

    @pytest.fixture
    def absent_keys(self) -> Sequence[TileKey]:
        return [TileKey(3, 0, 0), TileKey(2, 3, 0)]


class TestVtpkExporter(ExporterContract):
    """Vector tiles (gzip MVT) on the 512-px vector scheme, read back through the package."""

    plugin = _Lazy("export_vtpk", "VtpkExporter")

    @pytest.fixture
    def scheme(self):
        from _vectorserver import service_json

        from cacheorch.vector.service import vector_service_from_json
        return vector_service_from_json("http://contract/x/VectorTileServer", service_json()).scheme

    def request(self, output: Path, scheme, mode: str = "create"):
        return _vector_request(output, scheme, sorted(self.levels), mode)

    def tiles(self, scheme):
        import gzip

        from _vectorserver import mvt_tile
        return {(level, row, col): gzip.compress(mvt_tile(level, row, col), mtime=0)
                for level in self.levels for row in range(min(2 ** level, 4))
                for col in range(min(2 ** level, 4)) if (level, row, col) != self.hole}

    def read_tiles(self, output: Path, keys):
        from cacheorch.vector.reader import open_vector
        package = open_vector(output)
        try:
            return {key: package.tile(*key) for key in keys}
        finally:
            package.close()
# -- map readers and writers (cacheorch/maps) ------------------------------------------------------

MAP_URL = "http://127.0.0.1:9/arcgis/rest/services/Topo/MapServer"
WEBMAP = {"operationalLayers": [{"id": "a", "layerType": "ArcGISTiledMapServiceLayer",
                                 "url": MAP_URL, "title": "Topo"}],
          "baseMap": {"baseMapLayers": []}}


class TestWebMapFileReader(MapReaderContract):
    plugin = _Lazy("maps_readers", "WebMapFileReader")
    bad_locations = ("/nonexistent/map.json",)

    @pytest.fixture
    def location(self, tmp_path: Path) -> str:
        path = tmp_path / "m.json"
        path.write_text(json.dumps(WEBMAP))
        return str(path)


class TestMapxReader(MapReaderContract):
    plugin = _Lazy("maps_readers", "MapxReader")
    bad_locations = ("/nonexistent/map.mapx",)

    @pytest.fixture
    def location(self, tmp_path: Path) -> str:
        from test_maps import mapx
        fake = types.SimpleNamespace(url=lambda name: MAP_URL)
        path = tmp_path / "m.mapx"
        path.write_text(json.dumps(mapx(fake)))
        return str(path)


class TestQgisProjectReader(MapReaderContract):
    plugin = _Lazy("maps_readers", "QgisProjectReader")
    bad_locations = ("/nonexistent/p.qgs", "/nonexistent/p.qgz")

    @pytest.fixture
    def location(self, tmp_path: Path) -> str:
        from test_maps import qgs_text
        fake = types.SimpleNamespace(url=lambda name: MAP_URL)
        path = tmp_path / "p.qgs"
        path.write_text(qgs_text(fake), encoding="utf-8")
        return str(path)


class TestAprxReader(MapReaderContract):
    plugin = _Lazy("maps_readers", "AprxReader")
    bad_locations = ("/nonexistent/p.aprx",)

    @pytest.fixture
    def location(self, tmp_path: Path) -> str:
        import zipfile

        from test_maps import mapx
        doc = mapx(types.SimpleNamespace(url=lambda name: MAP_URL))
        path = tmp_path / "p.aprx"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("map/map.json", json.dumps(doc["mapDefinition"]))
            for definition in doc["layerDefinitions"]:
                z.writestr(definition["uRI"].removeprefix("CIMPATH="), json.dumps(definition))
        return str(path)


class TestArcpyMapReader(MapReaderContract):
    plugin = _Lazy("maps_readers", "ArcpyMapReader")

    @pytest.fixture
    def location(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
        from _maps import install_stand_in_arcpy
        install_stand_in_arcpy(monkeypatch, MAP_URL)
        return str(tmp_path / "p.mxd")


class TestPortalItemReader(MapReaderContract):
    plugin = _Lazy("maps_readers", "PortalItemReader")
    bad_locations = ("http://127.0.0.1:9/portal/home/item.html?id=0123456789abcdef0123456789abcdef",)

    @pytest.fixture
    def location(self):
        from _maps import Portal
        item = "0123456789abcdef0123456789abcdef"
        with Portal({item: ({"type": "Web Map", "title": "T"}, WEBMAP)}) as portal:
            yield f"{portal.root}/home/item.html?id={item}"


class TestQgisOfflineWriter(MapWriterContract):
    plugin = _Lazy("maps_writers", "QgisOfflineWriter")

    @pytest.fixture
    def document(self, tmp_path: Path) -> MapDocument:
        from test_maps import qgs_text
        fake = types.SimpleNamespace(url=lambda name: MAP_URL)
        path = tmp_path / "p.qgs"
        path.write_text(qgs_text(fake), encoding="utf-8")
        return _builtin("maps_readers", "QgisProjectReader")().read(str(path), None)  # type: ignore[arg-type]

    @pytest.fixture
    def outputs(self, tmp_path: Path) -> dict[int, Path]:
        out = tmp_path / "copy" / "Roads.gpkg"
        out.parent.mkdir(exist_ok=True)
        out.write_bytes(b"")
        return {0: out}

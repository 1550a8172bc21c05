"""More areas: Esri JSON, WKT, GeoJSON with a CRS, GDAL layers, buffers, extent variants, holes.

Projected coordinates are checked against GDAL's transformer (rasterio.warp), tile sets against a
per-tile box test, never against the code under test.
"""
from __future__ import annotations

import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import shapely
from pyproj import Geod
from rasterio.warp import transform as gdal_transform
from shapely.geometry import MultiPolygon, Polygon, box

from cacheorch.connection import Connection
from cacheorch.errors import AreaError
from cacheorch.formats.confxml import read_conf_xml
from cacheorch.interfaces import Service
from cacheorch.jobplan import resolve_areas
from cacheorch.planner import plan_level
from cacheorch.plugins.aoi_buffer import BufferArea, parse_buffer
from cacheorch.plugins.aoi_extent import ExtentArea
from cacheorch.plugins.aoi_file import FileArea
from cacheorch.plugins.aoi_layer import NEEDS_PYOGRIO, LayerArea
from cacheorch.plugins.aoi_wkt import WktArea
from cacheorch.tiling import WEB_MERCATOR_HALF, web_mercator_scheme

H = WEB_MERCATOR_HALF
URL = "https://h/arcgis/rest/services/S/MapServer"
MY_MODULES = ("cacheorch.plugins.aoi_wkt", "cacheorch.plugins.aoi_layer",
              "cacheorch.plugins.aoi_buffer")


def service(scheme=None, location=URL, **changes) -> Service:
    scheme = scheme or web_mercator_scheme(max_level=10)
    return Service(location=location, scheme=replace(scheme, _by_level={}, **changes))


def to_3857(xs, ys, src="EPSG:4326"):
    return gdal_transform(src, "EPSG:3857", list(xs), list(ys))


def on_outline(area, xs, ys, tol=0.01) -> bool:
    return max(area.boundary.distance(shapely.Point(x, y)) for x, y in zip(xs, ys)) < tol


def write(tmp_path: Path, data, name: str) -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return str(path)


def from_file(spec: str, svc: Service | None = None):
    return FileArea().area(spec, svc or service(), Connection())


def wkt(spec: str, svc: Service | None = None):
    return WktArea().area(spec, svc or service(), Connection())


def reverse(ring):
    return list(reversed(ring))


def brute_tiles(scheme, level, area, test="meets") -> set[tuple[int, int]]:
    """Every tile of the level tested on its own (vectorised): ``meets`` the area's interior,
    or lies ``within`` it."""
    n = 2 ** level
    rows, cols = np.divmod(np.arange(n * n), n)
    span = 2 * H / n
    boxes = shapely.box(scheme.origin_x + cols * span, scheme.origin_y - (rows + 1) * span,
                        scheme.origin_x + (cols + 1) * span, scheme.origin_y - rows * span)
    hit = shapely.area(shapely.intersection(boxes, area)) > 0 if test == "meets" \
        else shapely.contains(area, boxes)
    return {(int(r), int(c)) for r, c in zip(rows[hit], cols[hit])}


# Web Mercator rings, Esri orientation: exterior clockwise (y up), holes counter-clockwise.
OUTER_CW = [[0, 0], [0, 4e6], [4e6, 4e6], [4e6, 0], [0, 0]]
HOLE_CCW = [[1e6, 1e6], [3e6, 1e6], [3e6, 3e6], [1e6, 3e6], [1e6, 1e6]]
ISLAND_CW = [[1.5e6, 1.5e6], [1.5e6, 2.5e6], [2.5e6, 2.5e6], [2.5e6, 1.5e6], [1.5e6, 1.5e6]]
POND_CCW = [[1.8e6, 1.8e6], [2.2e6, 1.8e6], [2.2e6, 2.2e6], [1.8e6, 2.2e6], [1.8e6, 1.8e6]]
WM_SR = {"wkid": 102100, "latestWkid": 3857}


# -- Esri JSON -------------------------------------------------------------------------------------

def test_esri_featureset_in_web_mercator_with_a_hole_and_an_island(tmp_path):
    """A lake in a country, an island in the lake, a pond on the island: rings in any order."""
    doc = {"geometryType": "esriGeometryPolygon", "spatialReference": WM_SR,
           "fields": [], "features": [
               {"attributes": {"id": 1},
                "geometry": {"rings": [POND_CCW, OUTER_CW, HOLE_CCW, ISLAND_CW]}},
               {"attributes": {"id": 2}, "geometry": None}]}
    area = from_file(write(tmp_path, doc, "parcels.json"))
    assert isinstance(area, MultiPolygon) and area.is_valid
    assert area.area == pytest.approx(16e12 - 4e12 + 1e12 - 0.16e12)
    assert not area.contains(shapely.Point(1.2e6, 1.2e6))  # in the lake
    assert area.contains(shapely.Point(1.6e6, 1.6e6))  # on the island
    assert not area.contains(shapely.Point(2e6, 2e6))  # in the pond
    assert area.contains(shapely.Point(0.5e6, 0.5e6))


def test_esri_rings_all_counter_clockwise_are_read_by_nesting(tmp_path):
    doc = {"rings": [reverse(OUTER_CW), HOLE_CCW, reverse(ISLAND_CW), POND_CCW],
           "spatialReference": WM_SR}
    area = from_file(write(tmp_path, doc, "ccw.json"))
    assert area.area == pytest.approx(13e12 - 0.16e12)
    assert not area.contains(shapely.Point(1.2e6, 1.2e6)) and area.contains(shapely.Point(1.6e6, 1.6e6))
    assert not area.contains(shapely.Point(2e6, 2e6))


def test_esri_holes_go_to_the_exterior_around_them(tmp_path):
    east = [[[x + 1e7, y] for x, y in OUTER_CW], [[x + 1e7, y] for x, y in HOLE_CCW]]
    doc = {"rings": [OUTER_CW, *east], "spatialReference": WM_SR}  # the hole is listed last
    area = from_file(write(tmp_path, doc, "two.json"))
    assert area.area == pytest.approx(16e12 + 12e12)
    assert not area.contains(shapely.Point(1.2e7, 2e6)) and area.contains(shapely.Point(2e6, 2e6))


def test_esri_bare_polygon_in_wgs84_is_projected_vertex_by_vertex(tmp_path):
    ring = [[5.9, 45.8], [5.9, 47.8], [10.5, 47.8], [10.5, 45.8], [5.9, 45.8]]  # clockwise
    area = from_file(write(tmp_path, {"rings": [ring], "spatialReference": {"wkid": 4326}},
                           "alps.json"))
    xs, ys = to_3857(*zip(*ring))
    assert on_outline(area, xs, ys)
    # the edges are densified, so the outline follows the parallels as GDAL projects them
    assert len(area.exterior.coords) > 10


def test_esri_with_z_a_single_feature_an_envelope_and_an_override(tmp_path):
    ring3d = [[x, y, 100.0, 7.0] for x, y in OUTER_CW]
    area = from_file(write(tmp_path, {"geometry": {"rings": [ring3d], "spatialReference": WM_SR},
                                      "attributes": {}}, "feature.json"))
    assert area.equals(Polygon(OUTER_CW))
    env = from_file(write(tmp_path, {"xmin": 1, "ymin": 2, "xmax": 3e5, "ymax": 4e5,
                                     "spatialReference": WM_SR}, "env.json"))
    assert env.equals(box(1, 2, 3e5, 4e5))
    # no spatialReference in the file: name one after the path
    spec = write(tmp_path, {"rings": [[[x / 1e5, y / 1e5] for x, y in OUTER_CW]]}, "plain.json")
    with pytest.raises(AreaError, match=r"plain.json: Esri JSON without a spatialReference"):
        from_file(spec)
    area = from_file(spec + "@4326")
    xs, ys = to_3857([0, 40], [0, 40])
    assert area.bounds == pytest.approx((xs[0], ys[0], xs[1], ys[1]), rel=1e-9)


@pytest.mark.parametrize("doc, words", [
    ({"rings": [OUTER_CW], "spatialReference": {"wkid": 999999}},
     "unknown spatial reference 'ESRI:999999'"),
    ({"rings": [OUTER_CW], "spatialReference": {"wkid": 32}}, "unknown spatial reference"),
    ({"rings": [OUTER_CW], "spatialReference": {"wkid": "abc"}}, "is not a number"),
    ({"curveRings": [OUTER_CW], "spatialReference": WM_SR}, "curveRings"),
    ({"rings": [[[0, 0], [1]]], "spatialReference": WM_SR}, "not \\[x, y\\]"),
    ({"paths": [OUTER_CW], "spatialReference": WM_SR}, "has no polygon"),
    ({"features": [{"geometry": {"rings": [OUTER_CW], "spatialReference": WM_SR}},
                   {"geometry": {"rings": [OUTER_CW], "spatialReference": {"wkid": 4326}}}]},
     "different spatial references"),
])
def test_bad_esri_json_is_one_line_naming_the_file(tmp_path, doc, words):
    with pytest.raises(AreaError, match=words) as err:
        from_file(write(tmp_path, doc, "bad.json"))
    assert "bad.json" in str(err.value) and "\n" not in str(err.value)


def test_geojson_and_esri_json_share_the_json_suffix(tmp_path):
    ring = [[5.9, 45.8], [10.5, 45.8], [10.5, 47.8], [5.9, 47.8], [5.9, 45.8]]
    geo = from_file(write(tmp_path, {"type": "Polygon", "coordinates": [ring]}, "a.json"))
    esri = from_file(write(tmp_path, {"rings": [reverse(ring)], "spatialReference": {"wkid": 4326}},
                           "b.json"))
    assert geo.symmetric_difference(esri).area < 1e-6 * geo.area


# -- GeoJSON with a CRS ----------------------------------------------------------------------------

LV95 = [[2600000, 1200000], [2610000, 1200000], [2610000, 1210000], [2600000, 1210000],
        [2600000, 1200000]]


@pytest.mark.parametrize("crs_name", ["urn:ogc:def:crs:EPSG::2056", "EPSG:2056"])
def test_geojson_crs_member(tmp_path, crs_name):
    doc = {"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": crs_name}},
           "features": [{"type": "Feature", "properties": {},
                         "geometry": {"type": "Polygon", "coordinates": [LV95]}}]}
    area = from_file(write(tmp_path, doc, "bern.geojson"))
    xs, ys = to_3857(*zip(*LV95), src="EPSG:2056")
    assert on_outline(area, xs, ys)


def test_geojson_path_with_wkid_and_crs84(tmp_path):
    spec = write(tmp_path, {"type": "Polygon", "coordinates": [LV95]}, "bern.geojson")
    with pytest.raises(AreaError, match="not longitude/latitude"):
        from_file(spec)
    xs, ys = to_3857(*zip(*LV95), src="EPSG:2056")
    assert on_outline(from_file(spec + "@2056"), xs, ys)
    ring = [[7, 46], [8, 46], [8, 47], [7, 47], [7, 46]]
    doc = {"type": "Polygon", "coordinates": [ring],
           "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:OGC:1.3:CRS84"}}}
    xs, ys = to_3857(*zip(*ring))
    assert on_outline(from_file(write(tmp_path, doc, "crs84.geojson")), xs, ys)
    doc["crs"] = {"type": "name", "properties": {"name": "EPSG:999999"}}
    with pytest.raises(AreaError, match="unknown spatial reference"):
        from_file(write(tmp_path, doc, "unknown.geojson"))


# -- WKT -------------------------------------------------------------------------------------------

def test_inline_wkt_in_wgs84_and_in_the_schemes_own_sr():
    area = wkt("POLYGON((5.9 45.8, 10.5 45.8, 10.5 47.8, 5.9 47.8, 5.9 45.8))@4326")
    xs, ys = to_3857([5.9, 10.5, 10.5, 5.9], [45.8, 45.8, 47.8, 47.8])
    assert on_outline(area, xs, ys)
    own = wkt("POLYGON((0 0, 1e6 0, 1e6 1e6, 0 1e6, 0 0))")
    assert own.equals(box(0, 0, 1e6, 1e6))
    ewkt = wkt("SRID=4326;POLYGON((5.9 45.8, 10.5 45.8, 10.5 47.8, 5.9 47.8, 5.9 45.8))")
    assert ewkt.equals(area)
    assert WktArea.accepts("POLYGON ((0 0, 1 0, 1 1, 0 0))") and WktArea.accepts("multipolygon(((0 0")
    assert not WktArea.accepts("extent") and not WktArea.accepts("town.wkt")


def test_wkt_multipolygon_with_a_hole_and_a_wkt_file(tmp_path):
    text = ("MULTIPOLYGON(((0 0, 4e6 0, 4e6 4e6, 0 4e6, 0 0), (1e6 1e6, 1e6 3e6, 3e6 3e6, 3e6 1e6, "
            "1e6 1e6)), ((5e6 0, 6e6 0, 6e6 1e6, 5e6 0)))")
    area = wkt(text)
    assert area.area == pytest.approx(12e12 + 0.5e12)
    path = write(tmp_path, text.replace("e6", "0000"), "area.wkt")  # degrees: 0-400 → too wide
    with pytest.raises(AreaError, match="not longitude/latitude"):
        from_file(path + "@4326")
    small = write(tmp_path, "POLYGON((7 46, 8 46, 8 47, 7 47, 7 46))", "small.wkt")
    xs, ys = to_3857([7, 8], [46, 47])
    assert from_file(small + "@4326").bounds == pytest.approx((xs[0], ys[0], xs[1], ys[1]),
                                                              rel=1e-9)
    assert FileArea.accepts("small.wkt@4326")


@pytest.mark.parametrize("spec, words", [
    ("POLYGON((0 0, 1 0", "not valid WKT"),
    ("POLYGON((7 46, 8 46, 8 47, 7 46))@999999", "unknown spatial reference"),
    ("LINESTRING(0 0, 1 1)", "has no polygon"),
    ("POLYGON((7 86, 8 86, 8 89, 7 86))@4326", "projects to nothing"),
    ("POLYGON((3e7 0, 4e7 0, 4e7 1e6, 3e7 0))", "lies outside the tiling scheme's grid"),
])
def test_bad_wkt(spec, words):
    with pytest.raises(AreaError, match=words) as err:
        wkt(spec)
    assert str(err.value).startswith("wkt:") and "\n" not in str(err.value)


# -- repair and holes ----------------------------------------------------------------------------

def test_invalid_geometry_is_repaired_with_a_warning(tmp_path, caplog):
    bowtie = [[0, 0], [1e6, 1e6], [1e6, 0], [0, 1e6], [0, 0]]
    with caplog.at_level(logging.WARNING, logger="cacheorch.areas"):
        area = from_file(write(tmp_path, {"rings": [bowtie], "spatialReference": WM_SR},
                               "bowtie.json"))
    assert area.is_valid and area.area == pytest.approx(0.5e12)
    assert any("bowtie.json: invalid geometry repaired (Self-intersection" in r.getMessage()
               for r in caplog.records)


def test_no_planned_tile_lies_wholly_inside_a_hole(tmp_path):
    """The planner over an Esri polygon with a hole equals a per-tile test of the same area."""
    outer = [[-3e6, -3e6], [-3e6, 3.1e6], [3.2e6, 3.1e6], [3.2e6, -3e6], [-3e6, -3e6]]  # clockwise
    hole = [[-1.3e6, -1.1e6], [1.7e6, -1.1e6], [1.7e6, 1.9e6], [-1.3e6, 1.9e6], [-1.3e6, -1.1e6]]
    area = from_file(write(tmp_path, {"rings": [outer, hole], "spatialReference": WM_SR},
                           "donut.json"))
    assert len(area.interiors) == 1
    scheme = web_mercator_scheme(7)
    for level in (5, 6, 7):
        planned = {(k.row, k.col) for bundle in plan_level(scheme, level, area) for k in bundle.keys()}
        assert planned == brute_tiles(scheme, level, area)
        inside_hole = brute_tiles(scheme, level, Polygon(hole), "within")
        assert inside_hole and not (planned & inside_hole)


# -- layers through pyogrio -----------------------------------------------------------------------

def write_layer(path: Path, polygons, driver: str, layer: str | None = None, crs: str | None = None,
                append: bool = False) -> None:
    import warnings

    import pyogrio.raw
    geoms = np.array([shapely.to_wkb(p) for p in polygons], dtype=object)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "'crs' was not provided": meant here
        pyogrio.raw.write(str(path), geoms, [np.arange(len(polygons), dtype=np.int32)], ["id"],
                          layer=layer, driver=driver, geometry_type="Polygon", crs=crs,
                          append=append)


def layer(spec: str, svc: Service | None = None):
    return LayerArea().area(spec, svc or service(), Connection())


LV95_BOX = box(2600000, 1200000, 2610000, 1210000)
LV95_HOLED = Polygon(LV95_BOX.exterior.coords, [[(2602000, 1202000), (2604000, 1202000),
                                                 (2604000, 1204000), (2602000, 1204000)]])


def corners_3857(poly: Polygon, src="EPSG:2056"):
    xs, ys = zip(*poly.exterior.coords)
    return to_3857(xs, ys, src)


@pytest.mark.parametrize("driver, name", [("ESRI Shapefile", "parcels.shp"),
                                          ("GPKG", "parcels.gpkg"),
                                          ("OpenFileGDB", "City.gdb")])
def test_layers_in_their_own_spatial_reference(tmp_path, driver, name):
    path = tmp_path / name
    write_layer(path, [LV95_HOLED, box(2620000, 1200000, 2621000, 1201000)], driver,
                layer="parcels", crs="EPSG:2056")
    assert LayerArea.accepts(str(path)) and not FileArea.accepts(str(path))
    area = layer(str(path))
    assert isinstance(area, MultiPolygon) and len(area.geoms[0].interiors) + \
        len(area.geoms[1].interiors) == 1
    assert on_outline(area, *corners_3857(LV95_HOLED))


def test_layer_choice_and_missing_spatial_reference(tmp_path):
    gpkg = tmp_path / "data.gpkg"
    write_layer(gpkg, [LV95_BOX], "GPKG", layer="districts", crs="EPSG:2056")
    write_layer(gpkg, [box(7, 46, 8, 47)], "GPKG", layer="lakes", crs="EPSG:4326", append=True)
    with pytest.raises(AreaError) as err:
        layer(str(gpkg))
    assert str(err.value) == ("data.gpkg has several polygon layers (districts, lakes); name one: "
                              "data.gpkg#districts")
    xs, ys = to_3857([7, 8], [46, 47])
    assert layer(f"{gpkg}#lakes").bounds == pytest.approx((xs[0], ys[0], xs[1], ys[1]), rel=1e-9)
    with pytest.raises(AreaError, match=r"has no layer 'rivers' \(layers: districts, lakes\)"):
        layer(f"{gpkg}#rivers")
    with pytest.raises(AreaError, match="has its own spatial reference"):
        layer(f"{gpkg}#lakes@2056")
    shp = tmp_path / "old.shp"
    write_layer(shp, [LV95_BOX], "ESRI Shapefile")  # no .prj
    with pytest.raises(AreaError) as err:
        layer(str(shp))
    assert str(err.value) == "old.shp has no spatial reference (no .prj?); name one: old.shp@wkid"
    assert on_outline(layer(f"{shp}@2056"), *corners_3857(LV95_BOX))
    with pytest.raises(AreaError, match="unknown spatial reference"):
        layer(f"{shp}@999999")
    with pytest.raises(AreaError, match="no such file"):
        layer(str(tmp_path / "missing.shp"))


def test_layers_without_pyogrio_say_how_to_install_it(tmp_path, monkeypatch):
    shp = tmp_path / "x.shp"
    shp.write_bytes(b"")
    for name in [m for m in sys.modules if m == "pyogrio" or m.startswith("pyogrio.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pyogrio", None)  # import pyogrio → ImportError
    with pytest.raises(AreaError) as err:
        layer(str(shp))
    assert str(err.value) == NEEDS_PYOGRIO == ("reading shapefile/GeoPackage/File GDB layers needs "
                                               "pyogrio (pip install 'cacheorch[gdal]')")


# -- buffer ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def plugins():
    import importlib

    from cacheorch.pluginmanager import DEFAULT_PLUGINS, make_plugins
    extra = [importlib.import_module(m) for m in MY_MODULES if m not in DEFAULT_PLUGINS]
    return make_plugins(load_entrypoints=False, extra=extra)


def areas_for(plugins, svc, levels, *specs):
    from cacheorch.config import parse_area_flag
    lods = [svc.scheme.lod(level) for level in levels]
    return resolve_areas(plugins, svc, lods, [parse_area_flag(s, "--aoi") for s in specs],
                         Connection())


def test_buffer_in_metres_is_a_ground_distance(plugins):
    svc = service()
    inner = "bbox:7.0,46.0,7.2,46.1@4326"
    out = areas_for(plugins, svc, [3, 4], f"buffer:500m:{inner}")
    grown, label = out[3]
    assert label == f"buffer:500m:{inner}" and out[4][0] is grown  # built once for both levels
    # back in lon/lat, the east edge moved 500 m along the ground (Web Mercator would say 720)
    _, _, xmax, _ = grown.bounds
    (lon,), _ = gdal_transform("EPSG:3857", "EPSG:4326", [xmax], [0])
    _, _, metres = Geod(ellps="WGS84").inv(7.2, 46.05, lon, 46.05)
    assert metres == pytest.approx(500, rel=0.01)
    small = areas_for(plugins, svc, [3], "buffer:-100m:" + inner)[3][0]
    assert small.area < areas_for(plugins, svc, [3], inner)[3][0].area < grown.area


def test_buffer_in_tiles_differs_per_level(plugins):
    svc = service()
    inner = box(1e6, 1e6, 2e6, 2e6)
    out = areas_for(plugins, svc, [5, 6, 7], "buffer:2tiles:bbox:1e6,1e6,2e6,2e6")
    for level in (5, 6, 7):
        span = 2 * H / 2 ** level
        xmin, ymin, xmax, ymax = out[level][0].bounds
        assert (xmin, ymin, xmax, ymax) == pytest.approx(
            (1e6 - 2 * span, 1e6 - 2 * span, 2e6 + 2 * span, 2e6 + 2 * span), rel=1e-9)
        assert out[level][0].contains(inner)
    assert out[5][0].area > out[6][0].area > out[7][0].area


def test_buffer_composes_with_files_and_other_areas(plugins, tmp_path):
    path = write(tmp_path, {"rings": [OUTER_CW], "spatialReference": WM_SR}, "town.json")
    out = areas_for(plugins, service(), [2], f"buffer:1tile:{path}",)
    span = 2 * H / 4
    assert out[2][0].bounds == pytest.approx((-span, -span, 4e6 + span, 4e6 + span), rel=1e-9)
    nested = areas_for(plugins, service(), [6, 7], f"buffer:1km:buffer:1tiles:{path}")
    assert nested[6][0] is not nested[7][0]  # the inner buffer varies, so the outer does
    assert nested[6][0].area > nested[7][0].area


@pytest.mark.parametrize("spec, words", [
    ("buffer:500:town.geojson", "expected buffer:DISTANCE:AREA"),
    ("buffer:500m", "expected buffer:DISTANCE:AREA"),
    ("buffer:5 miles:extent", "expected buffer:DISTANCE:AREA"),
    ("buffer:-500km:bbox:7.0,46.0,7.2,46.1@4326", "leaves nothing"),
    ("buffer:1m:extent", "spans more than 90°"),
    ("buffer:1tiles:bbox:1,2,3@999", "expected bbox"),
])
def test_bad_buffers(plugins, spec, words):
    with pytest.raises(AreaError, match=words) as err:
        areas_for(plugins, service(), [3], spec)
    assert "\n" not in str(err.value)


def test_parse_buffer_units():
    assert parse_buffer("500m:town.geojson") == (500.0, "m", "town.geojson")
    assert parse_buffer("1.5KM:bbox:1,2,3,4") == (1.5, "km", "bbox:1,2,3,4")
    assert parse_buffer("3 tiles:extent") == (3.0, "tiles", "extent")
    assert parse_buffer("-10ft:C:\\data\\a.json") == (-10.0, "ft", "C:\\data\\a.json")
    with pytest.raises(AreaError, match="needs the job's levels"):
        BufferArea().area("1m:extent", service(), Connection())


# -- extent variants ------------------------------------------------------------------------------

def extent(svc: Service, spec: str = ""):
    return ExtentArea().area(spec, svc, Connection())


def test_extent_cdi_of_a_cache_folder_and_of_its_conf_xml(fixtures):
    folder = fixtures / "gwc" / "compactcacheV1"
    svc = service(read_conf_xml(folder / "Conf.xml"), location=str(folder))
    expected = (-13885038.382960921, 2870337.1307936818, -7455049.489182421, 6338174.0557576185)
    assert extent(svc, "cdi").bounds == pytest.approx(expected, rel=1e-12)
    assert extent(svc, "conf.cdi").bounds == pytest.approx(expected, rel=1e-12)
    conf = service(read_conf_xml(folder / "Conf.xml"), location=str(folder / "Conf.xml"))
    assert extent(conf, "cdi").bounds == pytest.approx(expected, rel=1e-12)
    other = service()  # a REST service, and a conf.cdi named by path
    assert extent(other, str(folder / "conf.cdi")).bounds == pytest.approx(expected, rel=1e-12)


def test_extent_cdi_of_a_tpk_and_of_a_cdi_without_spatial_reference(fixtures, tmp_path):
    tpk = fixtures / "tpk_v1" / "states_filled.tpk"
    scheme = read_conf_xml(fixtures / "tpk_v1" / "states_filled_extracted" / "v101" / "Layers"
                           / "conf.xml")
    area = extent(service(scheme, location=str(tpk)), "cdi")
    from cacheorch.formats.confxml import read_conf_cdi
    env = read_conf_cdi(fixtures / "tpk_v1" / "states_filled_extracted" / "v101" / "Layers"
                        / "conf.cdi")
    assert area.bounds == pytest.approx(env.bounds, rel=1e-12)
    sample = fixtures / "esri_compactcache_sample"
    svc = service(read_conf_xml(sample / "conf.xml"), location=str(sample))
    assert extent(svc, "cdi").bounds == pytest.approx((-20037507.229594339,) * 2 +
                                                      (20037507.229594339,) * 2, rel=1e-12)
    # an ArcGIS Server cache directory: arcgiscache/<service>/<map name>/conf.cdi
    nested = tmp_path / "arcgiscache" / "Roads" / "Layers"
    nested.mkdir(parents=True)
    for name in ("conf.xml", "conf.cdi"):
        (nested / name).write_bytes((sample / name).read_bytes())
    deep = service(read_conf_xml(sample / "conf.xml"), location=str(tmp_path / "arcgiscache" / "Roads"))
    assert extent(deep, "cdi").bounds == extent(svc, "cdi").bounds


def test_extent_errors():
    with pytest.raises(AreaError, match="has no conf.cdi"):
        extent(service(), "cdi")
    with pytest.raises(AreaError, match="expected extent, extent:full, extent:initial, extent:cdi"):
        extent(service(), "everything")
    with pytest.raises(AreaError, match="no such file"):
        extent(service(), "/nowhere/conf.cdi")


# -- the command line: bad areas are one line and exit 2 ------------------------------------------

@pytest.fixture
def my_plugins(monkeypatch):
    from cacheorch import pluginmanager
    extra = tuple(m for m in MY_MODULES if m not in pluginmanager.DEFAULT_PLUGINS)
    monkeypatch.setattr(pluginmanager, "DEFAULT_PLUGINS", pluginmanager.DEFAULT_PLUGINS + extra)
    pluginmanager.get_plugins.cache_clear()
    yield
    pluginmanager.get_plugins.cache_clear()


@pytest.fixture(scope="module")
def rest_server():
    from _tileserver import TileServer
    scheme = web_mercator_scheme(8)
    sr = {"wkid": 102100, "latestWkid": 3857}
    full = {"xmin": -H, "ymin": -H, "xmax": H, "ymax": H, "spatialReference": sr}
    with TileServer({}, service={"currentVersion": 10.81, "singleFusedMapCache": True,
                                 "spatialReference": sr, "tileInfo": scheme.to_json(),
                                 "fullExtent": full, "initialExtent": full}) as srv:
        yield srv


def test_plan_with_every_kind_of_area(cli, my_plugins, rest_server, tmp_path):
    esri = write(tmp_path, {"rings": [OUTER_CW, HOLE_CCW], "spatialReference": WM_SR}, "town.json")
    result = cli("plan", "--service", rest_server.url, "--levels", "0-8",
                 "--aoi", "0-2=extent", "--aoi", "3=POLYGON((0 0, 4e6 0, 4e6 4e6, 0 4e6, 0 0))",
                 "--aoi", f"4-5={esri}", "--aoi", f"6=buffer:1tiles:{esri}",
                 "--aoi", "7-8=wkt:POLYGON((7 46, 8 46, 8 47, 7 47, 7 46))@4326", "--json")
    assert result.code == 0, result.stderr
    levels = {lv["level"]: lv for lv in json.loads(result.stdout)["levels"]}
    scheme = web_mercator_scheme(8)
    donut = Polygon(OUTER_CW, [HOLE_CCW])

    def brute(level, area):
        return len(brute_tiles(scheme, level, area))

    assert levels[3]["tiles_planned"] == brute(3, box(0, 0, 4e6, 4e6))
    assert levels[5]["tiles_planned"] == brute(5, donut) < brute(5, box(0, 0, 4e6, 4e6))
    span = 2 * H / 64
    assert levels[6]["tiles_planned"] == brute(6, donut.buffer(span, quad_segs=8))
    assert levels[6]["area"] == f"buffer:1tiles:{esri}"


@pytest.mark.parametrize("make_spec, words", [
    (lambda p: "bbox:0,0,10,10@999999", "unknown spatial reference"),
    (lambda p: "wkt:POLYGON((7 46, 8 46, 8 47, 7 46))@999999", "unknown spatial reference"),
    (lambda p: write(p, {"rings": [OUTER_CW], "spatialReference": {"wkid": 999999}}, "x.json"),
     "x.json: unknown spatial reference"),
    (lambda p: write(p, {"rings": [OUTER_CW]}, "y.json"), "y.json: Esri JSON without"),
    (lambda p: "buffer:2parsecs:extent", "expected buffer:DISTANCE:AREA"),
    (lambda p: "extent:cdi", "has no conf.cdi"),
    (lambda p: "wkt:POLYGON((7 86, 8 86, 8 89, 7 86))@4326", "projects to nothing"),
])
def test_bad_areas_exit_2_with_one_line(cli, my_plugins, rest_server, tmp_path, make_spec, words):
    result = cli("plan", "--service", rest_server.url, "--levels", "0-3", "--aoi",
                 make_spec(tmp_path))
    assert result.code == 2, result.stdout
    assert result.stderr.startswith("cacheorch: error: ") and result.stderr.count("\n") == 1
    assert words in result.stderr

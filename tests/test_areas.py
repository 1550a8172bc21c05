"""Areas of interest: extent, bbox and GeoJSON file, projected into the scheme's SR and clipped.

Projected coordinates are checked against GDAL's transformer (rasterio.warp), not pyproj's.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import shapely
from rasterio.warp import transform as gdal_transform
from shapely.geometry import MultiPolygon, Polygon, box

from cacheorch.areas import WEB_MERCATOR_MAX_LAT, crs_of
from cacheorch.connection import Connection
from cacheorch.errors import AreaError
from cacheorch.interfaces import Service
from cacheorch.plugins.aoi_bbox import BBoxArea
from cacheorch.plugins.aoi_extent import ExtentArea
from cacheorch.plugins.aoi_file import FileArea
from cacheorch.plugins.aoi_file import cacheorch_register_aoi_generators as register_file
from cacheorch.tiling import (WEB_MERCATOR_HALF, Envelope, LevelOfDetail, SpatialReference,
                              TilingScheme, web_mercator_scheme)

H = WEB_MERCATOR_HALF
WM_SR = SpatialReference(102100, 3857)
NZTM = TilingScheme(
    origin_x=-4020900.0, origin_y=19998100.0, tile_cols=512, tile_rows=512, dpi=96,
    spatial_reference=SpatialReference(2193),
    lods=(LevelOfDetail(0, 8e6, 2116.670900008467), LevelOfDetail(1, 4e6, 1058.3354500042335)))


def service(scheme: TilingScheme | None = None, **changes) -> Service:
    scheme = scheme or web_mercator_scheme(max_level=10)
    return Service(location="https://h/arcgis/rest/services/S/MapServer",
                   scheme=replace(scheme, _by_level={}, **changes))


def to_3857(lons, lats, dst="EPSG:3857"):
    return gdal_transform("EPSG:4326", dst, list(lons), list(lats))


def polygonal(geom) -> bool:
    return isinstance(geom, (Polygon, MultiPolygon)) and geom.is_valid and geom.area > 0


# -- extent -------------------------------------------------------------------------------------

def extent(svc: Service, spec: str = ""):
    return ExtentArea(ExtentArea.Options()).area(spec, svc, Connection())


def test_full_extent_beyond_the_grid_in_y_is_clipped():
    """World basemaps report a fullExtent taller than the grid (spec §10.9)."""
    svc = service(full_extent=Envelope(-20037507.07, -30242455.0, 20037507.07, 30242455.0, WM_SR))
    area = extent(svc)
    assert polygonal(area)
    assert area.bounds == (-20037507.07, -H, 20037507.07, H)


def test_full_extent_of_the_captured_service(fixtures):
    from cacheorch.arcgis_json import service_from_json
    data = json.loads((fixtures / "mapserver_json" / "World_Street_Map_MapServer_v10.01.json")
                      .read_text(encoding="utf-8"))
    svc = service_from_json("https://services.arcgisonline.com/ArcGIS/rest/services/"
                            "World_Street_Map/MapServer", data)
    area = extent(svc)
    assert area.bounds == pytest.approx((-20037507.0671618, -19971868.8804086,
                                         20037507.0671618, 19971868.8804086))
    assert extent(svc, "initial").bounds[0] == pytest.approx(data["initialExtent"]["xmin"])


def test_full_extent_in_another_sr_is_projected():
    svc = service(full_extent=Envelope(5.9, 45.8, 10.5, 47.8, SpatialReference(4326)))
    area = extent(svc)
    xs, ys = to_3857([5.9, 10.5], [45.8, 47.8])
    assert area.bounds == pytest.approx((xs[0], ys[0], xs[1], ys[1]), rel=1e-9)


def test_missing_or_disjoint_extent():
    with pytest.raises(AreaError, match="gives no full extent"):
        extent(service(full_extent=None))
    with pytest.raises(AreaError, match="outside the tiling scheme's grid"):
        extent(service(full_extent=Envelope(3e7, 0, 4e7, 1e6, WM_SR)))
    with pytest.raises(AreaError, match="expected extent"):
        extent(service(), "everything")


# -- bbox ---------------------------------------------------------------------------------------

def bbox(spec: str, svc: Service | None = None):
    return BBoxArea(BBoxArea.Options()).area(spec, svc or service(), Connection())


def test_bbox_in_the_schemes_own_sr_is_taken_as_is():
    area = bbox("-1000.5,2000,3000,4000.25")
    assert area.equals(box(-1000.5, 2000, 3000, 4000.25))


def test_bbox_in_wgs84_is_projected():
    area = bbox("5.9,45.8,10.5,47.8@4326")
    assert polygonal(area)
    xs, ys = to_3857([5.9, 10.5], [45.8, 47.8])
    assert area.bounds == pytest.approx((xs[0], ys[0], xs[1], ys[1]), rel=1e-9)


def test_bbox_in_utm_is_densified_so_its_edges_bend():
    """A UTM rectangle is not a rectangle in Web Mercator: its projected outline follows the edges."""
    spec = "300000,5000000,700000,5400000@32632"
    area = bbox(spec)
    # points along the bottom edge, projected by GDAL, lie on the outline (within a metre)
    edge_x = [300000 + i * 400000 / 10 for i in range(11)]
    xs, ys = gdal_transform("EPSG:32632", "EPSG:3857", edge_x, [5000000] * 11)
    outline = area.exterior
    assert max(outline.distance(shapely.Point(x, y)) for x, y in zip(xs, ys)) < 1.0
    assert len(outline.coords) > 20


def test_whole_world_in_wgs84_is_clamped_to_the_mercator_limit():
    area = bbox("-180,-90,180,90@4326")
    assert area.bounds == pytest.approx((-H, -H, H, H), rel=1e-9)
    _, (y,) = to_3857([0], [WEB_MERCATOR_MAX_LAT])
    assert y == pytest.approx(H, rel=1e-9)


def test_bbox_into_a_non_mercator_grid():
    svc = service(NZTM)
    area = bbox("174.6,-37.0,175.0,-36.7@4326", svc)
    xs, ys = to_3857([174.6, 175.0, 174.6, 175.0], [-37.0, -36.7, -36.7, -37.0], "EPSG:2193")
    for x, y in zip(xs, ys):
        assert area.exterior.distance(shapely.Point(x, y)) < 0.01


@pytest.mark.parametrize("spec, words", [
    ("1,2,3", "expected bbox:xmin,ymin,xmax,ymax"),
    ("a,b,c,d", "expected bbox"),
    ("10,0,5,5", "xmin must be below xmax"),
    ("0,0,10,95@4326", "latitudes within"),
    ("0,0,10,10@999999", "unknown spatial reference"),
    ("3e7,0,4e7,1e6", "outside the tiling scheme's grid"),
])
def test_bad_bbox(spec, words):
    with pytest.raises(AreaError, match=words) as err:
        bbox(spec)
    assert f"bbox:{spec}" in str(err.value)


# -- GeoJSON file -------------------------------------------------------------------------------

ALPS = [[5.2, 43.6], [7.6, 43.7], [10.5, 45.3], [13.8, 45.6], [16.2, 46.3], [16.5, 47.6],
        [13.0, 48.0], [10.0, 47.8], [7.5, 47.7], [5.8, 46.6], [5.2, 43.6]]
ISLAND = [[8.0, 39.0], [9.8, 39.0], [9.8, 41.2], [8.0, 41.2], [8.0, 39.0]]


def write(tmp_path: Path, data, name: str = "area.geojson") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return str(path)


def from_file(spec: str, svc: Service | None = None):
    return FileArea(FileArea.Options()).area(spec, svc or service(), Connection())


def feature(coords, kind="Polygon"):
    return {"type": "Feature", "properties": {}, "geometry": {"type": kind, "coordinates": coords}}


def test_feature_collection_is_projected_vertex_by_vertex(tmp_path):
    spec = write(tmp_path, {"type": "FeatureCollection",
                            "features": [feature([ALPS]), feature([ISLAND]),
                                         feature([8.0, 45.0], "Point")]})
    area = from_file(spec)
    assert isinstance(area, MultiPolygon) and polygonal(area)
    lons, lats = zip(*ALPS)
    xs, ys = to_3857(lons, lats)
    for x, y in zip(xs, ys):  # every corner of the Alps lies on the projected outline
        assert area.boundary.distance(shapely.Point(x, y)) < 0.01
    (ix0, ix1), (iy0, iy1) = to_3857([8.0, 9.8], [39.0, 41.2])
    island = [g for g in area.geoms if g.bounds[1] < 5.0e6][0]
    assert island.bounds == pytest.approx((ix0, iy0, ix1, iy1), rel=1e-9)


@pytest.mark.parametrize("make", [
    lambda: feature([ALPS]),
    lambda: {"type": "Polygon", "coordinates": [ALPS]},
    lambda: {"type": "MultiPolygon", "coordinates": [[ALPS]]},
    lambda: {"type": "GeometryCollection", "geometries": [{"type": "Polygon", "coordinates": [ALPS]}]},
    lambda: {"type": "Feature", "properties": None, "geometry": {  # a collection inside a feature
        "type": "GeometryCollection", "geometries": [{"type": "Point", "coordinates": [8, 45]},
                                                     {"type": "Polygon", "coordinates": [ALPS]}]}},
    lambda: {"type": "Polygon", "coordinates": [[[x, y, 1500.0] for x, y in ALPS]]},  # with heights
])
def test_feature_bare_geometry_and_multipolygon(tmp_path, make):
    area = from_file(write(tmp_path, make()))
    assert polygonal(area)
    xs, ys = to_3857([5.2, 16.5], [43.6, 48.0])
    assert area.bounds == pytest.approx((xs[0], ys[0], xs[1], ys[1]), rel=1e-9)


def test_geojson_into_nztm(tmp_path):
    ring = [[174.6, -37.0], [175.0, -37.0], [175.0, -36.7], [174.6, -36.7], [174.6, -37.0]]
    area = from_file(write(tmp_path, feature([ring])), service(NZTM))
    xs, ys = to_3857([r[0] for r in ring], [r[1] for r in ring], "EPSG:2193")
    assert max(area.exterior.distance(shapely.Point(x, y)) for x, y in zip(xs, ys)) < 0.01


def test_long_edges_follow_their_curve_in_nztm(tmp_path):
    """A parallel is curved in NZTM: the outline must follow it, not cut its chord."""
    ring = [[166.5, -47.0], [178.5, -47.0], [178.5, -34.5], [166.5, -34.5], [166.5, -47.0]]
    area = from_file(write(tmp_path, feature([ring])), service(NZTM))
    lons = [166.5 + i * 0.3 for i in range(41)]
    for lat in (-47.0, -34.5):
        xs, ys = to_3857(lons, [lat] * len(lons), "EPSG:2193")
        # densified every 0.25°, the chords stay within metres of the curve (the chord of the
        # whole edge would miss it by kilometres)
        assert max(area.exterior.distance(shapely.Point(x, y)) for x, y in zip(xs, ys)) < 20.0


def test_projection_to_web_mercator_stops_at_its_latitude_limit():
    from cacheorch.areas import project
    wgs84, mercator = crs_of(4326, "t"), crs_of(3857, "t")
    out = project(box(-10, 60, 10, 90), wgs84, mercator, "t")
    assert out.bounds[3] == pytest.approx(H, rel=1e-9)
    assert project(box(-180, -90, 180, 90), wgs84, mercator, "t").bounds == pytest.approx(
        (-H, -H, H, H), rel=1e-9)


def test_polar_latitudes_are_clamped_for_web_mercator(tmp_path):
    ring = [[-30, 70], [30, 70], [30, 89.9], [-30, 89.9], [-30, 70]]
    area = from_file(write(tmp_path, feature([ring])))
    assert area.bounds[3] == pytest.approx(H, rel=1e-9)


def test_invalid_polygon_is_repaired(tmp_path):
    bowtie = [[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]
    assert not shapely.Polygon(bowtie).is_valid
    area = from_file(write(tmp_path, feature([bowtie])))
    assert polygonal(area)
    assert area.bounds == pytest.approx((0, 0, *[v[0] for v in to_3857([10], [10])]), abs=1e-6)


def test_file_with_no_polygon(tmp_path):
    spec = write(tmp_path, {"type": "FeatureCollection", "features": [
        feature([8.0, 45.0], "Point"), feature([[8, 45], [9, 46]], "LineString"),
        {"type": "Feature", "geometry": None, "properties": {}}]})
    with pytest.raises(AreaError) as err:
        from_file(spec)
    assert str(err.value) == "area.geojson has no polygon"


@pytest.mark.parametrize("content, words", [
    ('{"type": "Feature", ', "not valid JSON"),
    ('{"type": "Topology"}', "not GeoJSON"),
    ('[1, 2]', "not GeoJSON"),
    ('{"type": "Polygon", "coordinates": [[[0, 0], [1]]]}', "malformed Polygon"),
    ('{"type": "Polygon", "coordinates": [[[0, 0], [1, 95], [2, 0], [0, 0]]]}', "longitude/latitude"),
    ('{"type": "Polygon", "coordinates": [[[0, 0], [600000, 0], [0, 5e6], [0, 0]]]}',
     "longitude/latitude"),
])
def test_malformed_files_name_the_file(tmp_path, content, words):
    with pytest.raises(AreaError, match=words) as err:
        from_file(write(tmp_path, content))
    assert "area.geojson" in str(err.value) and "\n" not in str(err.value)


def test_unreadable_file(tmp_path):
    with pytest.raises(AreaError, match="no such file") as err:
        from_file(str(tmp_path / "missing.geojson"))
    assert "missing.geojson" in str(err.value)
    (tmp_path / "bin.geojson").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(AreaError, match="bin.geojson"):
        from_file(str(tmp_path / "bin.geojson"))


def test_area_missing_the_grid(tmp_path):
    ring = [[100, -80], [120, -80], [120, -70], [100, -70], [100, -80]]  # Antarctica
    northern = service(web_mercator_scheme(), full_extent=None, tile_end=(H, 0.0))  # grid: y ≥ 0
    with pytest.raises(AreaError) as err:
        from_file(write(tmp_path, feature([ring])), northern)
    assert str(err.value) == "area.geojson lies outside the tiling scheme's grid"
    with pytest.raises(AreaError) as err:
        bbox("100,-80,120,-70@4326", northern)
    assert str(err.value) == "bbox:100,-80,120,-70@4326 lies outside the tiling scheme's grid"
    # half in, half out: only the half in the grid is kept
    area = bbox("100,-40,120,40@4326", northern)
    assert area.bounds[1] == 0.0 and area.bounds[3] > 4e6


@pytest.mark.parametrize("suffix", ["", "@3857", "@102100"])
def test_bbox_in_web_mercator_by_any_name_is_not_reprojected(suffix):
    area = bbox(f"1000000,2000000,3000000,4000000{suffix}")
    assert area.equals(box(1e6, 2e6, 3e6, 4e6)) and len(area.exterior.coords) == 5


def test_accepts_geojson_paths(tmp_path):
    other = tmp_path / "area-without-suffix"
    other.write_text("{}")
    assert FileArea.accepts("town.geojson") and FileArea.accepts(r"C:\data\TOWN.JSON")
    assert FileArea.accepts(str(other))
    assert not FileArea.accepts("bbox:0,0,1,1") and not FileArea.accepts("extent")
    assert register_file() == [FileArea]


def test_clip_to_the_grid_stays_valid_with_a_vertex_on_its_corner():
    """GEOS's fast rectangle clip leaves a self-touching ring here; the area must stay valid."""
    from cacheorch.areas import finish_area
    area = Polygon([(-2.55e7, 1.51e7), (-2.34e7, 1.86e7), (-2.05e7, 2.07e7), (-1.72e7, 2.0e7),
                    (-H, H), (-1.74e7, 1.34e7), (-2.02e7, 1.32e7)])
    clipped = finish_area(area, web_mercator_scheme(), "area.geojson")
    assert polygonal(clipped)
    assert clipped.area == pytest.approx(area.intersection(box(-H, -H, H, H)).area, rel=1e-12)


def test_unknown_spatial_reference():
    with pytest.raises(AreaError, match="unknown spatial reference"):
        crs_of(SpatialReference(wkt='GEOGCS["nonsense"'), "the tiling scheme")

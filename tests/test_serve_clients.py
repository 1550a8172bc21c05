"""``serve`` read by clients nobody on this project wrote: GDAL's WMS (ArcGIS JSON) and WMTS
drivers, and MapProxy's ``arcgis`` source seeding through ``/export``.

The caches are partial on purpose (a hole at every level from 2 on), because a hole is what broke
GDAL before missing tiles were answered 204. Every tile is a solid ``colour_of`` colour, so the
pixels each client returns are checked exactly against the tiles written.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import requests
from _gdal import colour_of, decode_rgba, solid_png
from _tiles import pyramid, write_tiles
from rasterio.windows import Window

from cacheorch.interfaces import ExportRequest, Service
from cacheorch.serve import CacheServer
from cacheorch.tiling import (
    WEB_MERCATOR_HALF, LevelOfDetail, SpatialReference, TilingScheme, web_mercator_scheme,
)

LEVELS = range(0, 4)


def hole(level: int, row: int, col: int) -> bool:
    """The tiles left out: (1, 1) and (1, 2) of every level from 2."""
    return level >= 2 and row == 1 and col in (1, 2)


def write_cache(output: Path, scheme: TilingScheme, tiles: dict, extent: tuple) -> Path:
    """A compact-v2 cache of ``tiles`` written by the built-in exporter."""
    from cacheorch.demo import _compact_v2_exporter

    service = Service(location=str(output), scheme=scheme, kind="cache", name="partial")
    request = ExportRequest(output=output, service=service, scheme=scheme, levels=scheme.lods,
                            extent=extent, mode="create", title="partial")
    session = _compact_v2_exporter()().open(request)
    try:
        write_tiles(session, tiles)
        return Path(session.commit())
    finally:
        session.discard()


@pytest.fixture(scope="module")
def partial(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    scheme = web_mercator_scheme(max_level=LEVELS[-1]).with_levels(LEVELS)
    tiles = {k: v for k, v in pyramid(LEVELS).items() if not hole(*k)}
    world = (-WEB_MERCATOR_HALF, -WEB_MERCATOR_HALF, WEB_MERCATOR_HALF, WEB_MERCATOR_HALF)
    return write_cache(tmp_path_factory.mktemp("partial") / "partial", scheme, tiles, world), tiles


@pytest.fixture(scope="module")
def server(partial) -> Iterator[CacheServer]:
    with CacheServer(partial[0]) as srv:
        yield srv


def expected_pixels(tiles: dict, level: int, rows: range, cols: range, bands: int) -> np.ndarray:
    """The mosaic of ``tiles`` over rows × cols of ``level``: holes all zero."""
    out = np.zeros((bands, len(rows) * 256, len(cols) * 256), dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            data = tiles.get((level, row, col))
            if data is not None:
                out[:, i * 256:(i + 1) * 256, j * 256:(j + 1) * 256] = decode_rgba(data)[:bands]
    return out


# -- missing tiles ------------------------------------------------------------------------------


def test_missing_tile_is_204_and_off_grid_is_404(server) -> None:
    with requests.Session() as s:
        s.trust_env = False
        r = s.get(f"{server.url}/tile/2/1/1", timeout=10)
        assert r.status_code == 204 and r.content == b""
        assert s.get(f"{server.url}/tile/2/1/0", timeout=10).status_code == 200  # still in step
        assert s.get(f"{server.url}/tile/2/4/0", timeout=10).status_code == 404  # past the grid
        assert s.get(f"{server.url}/tile/9/0/0", timeout=10).status_code == 404  # no such level


def test_gdal_wms_reads_a_window_over_a_hole(server, partial) -> None:
    """GDAL's WMS driver on ``?f=json`` (the README's recipe): a 404 fails the whole read."""
    tiles = partial[1]
    with rasterio.open(f"WMS:{server.url}?f=json") as ds:
        assert ds.width == 256 * 2 ** LEVELS[-1]
        rows, cols = range(0, 4), range(0, 5)
        window = Window(cols[0] * 256, rows[0] * 256, len(cols) * 256, len(rows) * 256)
        pixels = ds.read(window=window)
        want = expected_pixels(tiles, LEVELS[-1], rows, cols, ds.count)
        assert np.array_equal(pixels, want)
        assert not pixels[:, 256 + 10, 256 + 10].any()  # the hole reads empty
        assert tuple(pixels[:3, 10, 10]) == colour_of(3, 0, 0)[:3]


# -- /export and MapProxy ----------------------------------------------------------------------


def _get(url: str, **params: str) -> requests.Response:
    return requests.get(url, params=params, timeout=20, proxies={"http": "", "https": ""})


def test_export_at_a_level_resolution_is_the_tiles(server, partial) -> None:
    tiles = partial[1]
    span = 2 * WEB_MERCATOR_HALF / 8  # one level-3 tile
    xmin, ymax = -WEB_MERCATOR_HALF, WEB_MERCATOR_HALF
    bbox = f"{xmin},{ymax - 3 * span},{xmin + 4 * span},{ymax}"
    r = _get(server.url + "/export", bbox=bbox, size="1024,768", f="image", format="png32",
             bboxSR="3857", imageSR="102100")
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/png"
    got = decode_rgba(r.content)
    assert np.array_equal(got, expected_pixels(tiles, 3, range(0, 3), range(0, 4), 4))
    doc = _get(server.url + "/export", bbox=bbox, size="1024,768", f="json").json()
    assert (doc["width"], doc["height"]) == (1024, 768) and "f=image" in doc["href"]
    assert doc["href"].startswith(server.root_url)
    # half the size: level 2, whose hole is (1,1)-(1,2); opaque white where nothing is
    r = _get(server.url + "/export", bbox=bbox, size="512,384", f="image", format="jpg")
    assert r.headers["Content-Type"] == "image/jpeg"


@pytest.mark.parametrize("params, message", [
    ({}, "bbox is required"),
    ({"bbox": "1,2,3"}, "4 comma-separated numbers"),
    ({"bbox": "3,0,1,1"}, "is empty"),
    ({"bbox": "0,0,1,1", "size": "5000,10"}, "size must be"),
    ({"bbox": "0,0,1,1", "bboxSR": "4326"}, "does not reproject"),
    ({"bbox": "0,0,1,1", "format": "tiff"}, "format tiff is not served"),
    ({"bbox": "0,0,1,1", "f": "kmz"}, "f=kmz is not served"),
    ({"bbox": "-2e7,-2e7,2e7,2e7", "size": "4096,4096"}, "tiles of level"),
])
def test_export_bad_input_is_a_400_with_one_line(server, params, message) -> None:
    r = _get(server.url + "/export", **({"f": "image"} | params))
    if message == "tiles of level":  # the whole world at 4096 px is level 3 at most: fine
        assert r.status_code == 200
        return
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == 400 and message in error["message"] and "\n" not in error["message"]


def test_gdal_ags_driver_reads_export_pixel_exact(server, partial) -> None:
    """GDAL's AGS minidriver (export only, as for a dynamic MapServer) over the hole too."""
    tiles, half = partial[1], WEB_MERCATOR_HALF
    xml = (f'<GDAL_WMS><Service name="AGS"><ServerUrl>{server.url}</ServerUrl><BBoxOrder>xyXY</BBoxOrder>'
           "<SRS>3857</SRS><ImageFormat>png32</ImageFormat><Transparent>TRUE</Transparent></Service>"
           f"<DataWindow><UpperLeftX>{-half}</UpperLeftX><UpperLeftY>{half}</UpperLeftY>"
           f"<LowerRightX>{half}</LowerRightX><LowerRightY>{-half}</LowerRightY>"
           "<SizeX>2048</SizeX><SizeY>2048</SizeY></DataWindow><BandsCount>4</BandsCount>"
           "<BlockSizeX>256</BlockSizeX><BlockSizeY>256</BlockSizeY></GDAL_WMS>")
    with rasterio.open(xml) as ds:
        pixels = ds.read(window=Window(0, 0, 2048, 1024))
    assert np.array_equal(pixels, expected_pixels(tiles, 3, range(0, 4), range(0, 8), 4))


#: MapProxy sources reading ``serve``: ``arcgis`` asks /export for meta tiles; ``tile`` reads
#: /tile, and like every MapProxy tile source needs ``on_error`` for a hole (204 here, 404 elsewhere).
MAPPROXY_SOURCES = {
    "arcgis": lambda url: {"type": "arcgis", "req": {"url": url, "transparent": True},
                           "supported_srs": ["EPSG:3857"]},
    "tile": lambda url: {"type": "tile", "grid": "scheme", "url": url + "/tile/%(z)s/%(y)s/%(x)s",
                         "transparent": True,
                         "on_error": {204: {"response": "transparent", "cache": True}}},
}


@pytest.mark.parametrize("kind", sorted(MAPPROXY_SOURCES))
def test_mapproxy_seeds_from_serve(server, partial, tmp_path, kind) -> None:
    """MapProxy seeds every level through ``serve``; the tiles it stores are ours, holes transparent."""
    import yaml

    tiles = partial[1]
    scheme = web_mercator_scheme(max_level=LEVELS[-1])
    config = {
        "services": {"demo": None},
        "layers": [{"name": "served", "title": "served", "sources": ["served_cache"]}],
        "grids": {"scheme": {"srs": "EPSG:3857", "origin": "nw", "tile_size": [256, 256],
                             "bbox": [-WEB_MERCATOR_HALF, -WEB_MERCATOR_HALF, WEB_MERCATOR_HALF,
                                      WEB_MERCATOR_HALF],
                             "res": [lod.resolution for lod in scheme.lods]}},
        "caches": {"served_cache": {"grids": ["scheme"], "sources": ["served"], "format": "image/png",
                                    "meta_size": [2, 2], "meta_buffer": 0,
                                    "cache": {"type": "file", "directory_layout": "tc",
                                              "directory": str(tmp_path / "seeded")}}},
        "sources": {"served": MAPPROXY_SOURCES[kind](server.url)},
        "globals": {"image": {"paletted": False}},
    }
    seed = {"seeds": {"all": {"caches": ["served_cache"], "levels": list(LEVELS)}}}
    (tmp_path / "mapproxy.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "seed.yaml").write_text(yaml.safe_dump(seed))
    done = subprocess.run([sys.executable, "-m", "mapproxy.seed.script", "-f", str(tmp_path / "mapproxy.yaml"),
                           "-s", str(tmp_path / "seed.yaml"), "-c", "1", "--seed", "all"],
                          capture_output=True, text=True, timeout=240,
                          env=os.environ | {"NO_PROXY": "*", "no_proxy": "*"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    from mapproxy.cache.file import FileCache
    from mapproxy.cache.tile import Tile
    cache = FileCache(str(tmp_path / "seeded"), "png", directory_layout="tc")
    checked = holes = 0
    for level in LEVELS:
        for row in range(2 ** level):
            for col in range(2 ** level):
                tile = Tile((col, row, level))  # MapProxy's grid is origin nw here: y = row
                assert cache.load_tile(tile), (level, row, col)
                got = decode_rgba(tile.image_result.as_buffer().read())
                expected = tiles.get((level, row, col))
                if expected is None:
                    assert not got[3].any(), (level, row, col)  # transparent where the hole is
                    holes += 1
                else:
                    assert np.array_equal(got, decode_rgba(expected)), (level, row, col)
                    checked += 1
    assert checked == len(tiles) and holes == 4


# -- WMTS -----------------------------------------------------------------------------------------


def test_wmts_capabilities_restful_and_kvp_agree(server) -> None:
    rest = _get(server.url + "/WMTS/1.0.0/WMTSCapabilities.xml")
    assert rest.status_code == 200 and rest.headers["Content-Type"].startswith("text/xml")
    kvp = _get(server.url + "/WMTS", service="WMTS", request="GetCapabilities", version="1.0.0")
    assert kvp.content == rest.content
    from xml.etree import ElementTree as ET
    ns = {"w": "http://www.opengis.net/wmts/1.0", "ows": "http://www.opengis.net/ows/1.1"}
    root = ET.fromstring(rest.content)
    sets = {s.find("ows:Identifier", ns).text: s
            for s in root.iter("{http://www.opengis.net/wmts/1.0}TileMatrixSet")
            if s.find("ows:Identifier", ns) is not None}
    assert set(sets) == {"default028mm", "GoogleMapsCompatible"}
    own = [m.find("ows:Identifier", ns).text for m in sets["default028mm"].findall("w:TileMatrix", ns)]
    assert own == ["0", "1", "2", "3"]  # the levels that hold tiles, no more
    for matrix in sets["default028mm"].findall("w:TileMatrix", ns):  # Web Mercator: 2**level each way
        side = str(2 ** int(matrix.find("ows:Identifier", ns).text))
        assert (matrix.find("w:MatrixWidth", ns).text, matrix.find("w:MatrixHeight", ns).text) == (side, side)
    assert [f.text for f in root.iter("{http://www.opengis.net/wmts/1.0}Format")] == ["image/png"]
    layer = root.find("w:Contents/w:Layer", ns)
    assert layer.find("ows:Identifier", ns).text == server.name


def test_wmts_tiles_by_path_and_kvp(server, partial) -> None:
    tiles = partial[1]
    base = f"{server.url}/WMTS/tile/1.0.0/{server.name}/default"
    assert _get(f"{base}/default028mm/3/2/5").content == tiles[(3, 2, 5)]
    assert _get(f"{base}/GoogleMapsCompatible/3/2/5.png").content == tiles[(3, 2, 5)]
    assert _get(f"{base}/default028mm/3/1/1").status_code == 204
    r = _get(server.url + "/WMTS", service="WMTS", request="GetTile", version="1.0.0", layer=server.name,
             style="default", format="image/png", tileMatrixSet="default028mm", tileMatrix="2",
             tileRow="3", tileCol="1")
    assert r.content == tiles[(2, 3, 1)]
    bad = _get(f"{base}/default028mm/7/0/0")
    assert bad.status_code == 400 and b"TileMatrix" in bad.content
    from xml.etree import ElementTree as ET
    report = ET.fromstring(bad.content)  # a well-formed OWS exception report
    exception = report.find("{http://www.opengis.net/ows/1.1}Exception")
    assert exception is not None and exception.get("exceptionCode") == "InvalidParameterValue"
    assert _get(server.url + "/WMTS", request="GetFeatureInfo").status_code == 400


@pytest.mark.parametrize("matrix_set, capabilities", [
    ("default028mm", "/WMTS/1.0.0/WMTSCapabilities.xml"),
    ("GoogleMapsCompatible", "/WMTS/1.0.0/WMTSCapabilities.xml"),
    ("default028mm", "/WMTS?service=WMTS&request=GetCapabilities"),
])
def test_gdal_wmts_reads_pixel_exact(server, partial, matrix_set, capabilities) -> None:
    tiles = partial[1]
    url = f"WMTS:{server.url}{capabilities},tilematrixset={matrix_set}"
    with rasterio.open(url) as ds:
        assert ds.crs.to_epsg() == 3857 and ds.width == 2048
        pixels = ds.read(window=Window(0, 0, 2048, 1024))
        assert np.array_equal(pixels, expected_pixels(tiles, 3, range(0, 4), range(0, 8), ds.count))
        overview = ds.read(out_shape=(ds.count, 256, 256))  # level 0 through the overview
        assert np.array_equal(overview, decode_rgba(tiles[(0, 0, 0)])[:ds.count])


def test_wmts_in_a_geographic_scheme(tmp_path) -> None:
    """EPSG:4326: a TileMatrixSet in the cache's own CRS, corners latitude first; no Google set."""
    res0 = 180 / 256
    lods = tuple(LevelOfDetail(lv, res0 / 2 ** lv * 111319.49079327358 * 96 / 0.0254, res0 / 2 ** lv)
                 for lv in range(3))
    sr = SpatialReference(4326)
    scheme = TilingScheme(-180.0, 90.0, 256, 256, 96, sr, lods, units="esriDecimalDegrees",
                          tile_end=(180.0, -90.0))
    tiles = {(lv, r, c): solid_png(colour_of(lv, r, c)) for lv in range(3)
             for r in range(2 ** lv) for c in range(2 ** (lv + 1)) if (lv, r, c) != (2, 1, 3)}
    cache = write_cache(tmp_path / "geo", scheme, tiles, (-180.0, -90.0, 180.0, 90.0))
    with CacheServer(cache) as srv:
        text = _get(srv.url + "/WMTS/1.0.0/WMTSCapabilities.xml").text
        assert "urn:ogc:def:crs:EPSG::4326" in text and "GoogleMapsCompatible" not in text
        assert "<TopLeftCorner>90.0 -180.0</TopLeftCorner>" in text
        with rasterio.open(f"WMTS:{srv.url}/WMTS/1.0.0/WMTSCapabilities.xml") as ds:
            assert ds.crs.to_epsg() == 4326 and (ds.width, ds.height) == (2048, 1024)
            pixels = ds.read(window=Window(0, 0, 2048, 1024))
            assert np.array_equal(pixels, expected_pixels(tiles, 2, range(0, 4), range(0, 8), ds.count))


def test_wmts_in_a_northing_first_projected_scheme(tmp_path) -> None:
    """NZTM (EPSG:2193 lists northing first), 512-pixel tiles, scales not powers of two."""
    from test_preview import GREEN, MAGENTA, nztm_cache
    with CacheServer(nztm_cache(tmp_path / "nztm")) as srv:
        text = _get(srv.url + "/WMTS/1.0.0/WMTSCapabilities.xml").text
        assert "<TopLeftCorner>19998100.0 -4020900.0</TopLeftCorner>" in text
        scheme = srv.cache.scheme
        with rasterio.open(f"WMTS:{srv.url}/WMTS/1.0.0/WMTSCapabilities.xml") as ds:
            assert ds.crs.to_epsg() == 2193
            for row, col in ((12, 4), (12, 5), (13, 4), (13, 5)):  # inside the data extent
                window = ds.window(*scheme.tile_bounds(0, row, col))
                assert window.col_off == pytest.approx(round(window.col_off), abs=1e-6)
                pixels = ds.read(window=window.round_offsets().round_lengths())
                want = GREEN if (row + col) % 2 else MAGENTA
                assert pixels.shape == (4, 512, 512)
                assert (pixels[:3] == np.array(want, dtype=np.uint8)[:, None, None]).all(), (row, col)


def test_wmts_needs_a_wkid_and_says_so(tmp_path) -> None:
    """A cache whose spatial reference is only a WKT: no WMTS (it names CRSs by code), one line why;
    /export still works, in the cache's own coordinates."""
    from _localcache import WKT_NY_FEET
    sr = SpatialReference(wkt=WKT_NY_FEET)
    lods = (LevelOfDetail(0, 96000.0, 96000.0 / (96 * 39.37) / 0.3048006096012192),)
    scheme = TilingScheme(-120000000.0, 150000000.0, 256, 256, 96, sr, lods, units="esriFeet")
    tiles = {(0, 1000, 1000): solid_png((90, 30, 150))}
    x0, y0, x1, y1 = scheme.tile_bounds(0, 1000, 1000)
    cache = write_cache(tmp_path / "ny", scheme, tiles, (x0, y0, x1, y1))
    with CacheServer(cache) as srv:
        r = _get(srv.url + "/WMTS/1.0.0/WMTSCapabilities.xml")
        assert r.status_code == 404 and "needs a spatial reference with a wkid" in r.json()["error"]["message"]
        image = _get(srv.url + "/export", bbox=f"{x0},{y0},{x1},{y1}", size="256,256", f="image")
        assert image.status_code == 200
        assert tuple(decode_rgba(image.content)[:3, 128, 128]) == (90, 30, 150)

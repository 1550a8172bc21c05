"""``serve`` for vector outputs: a vtpk served as a VectorTileServer that cacheorch (and MapLibre) read.

Round trip: loopback VectorTileServer → vtpk → ``serve`` → ``run`` again from the served package
→ a second vtpk with the same tiles, style and resources. The preview is drawn by the vendored
MapLibre GL JS in headless Chromium: the style's fill, line and sprite icon must show.
"""
from __future__ import annotations

import gzip
import json
import zipfile

import pytest
import requests

from _chromium import colour_pixels, screenshot
from _vectorserver import BACKGROUND, DEFAULT_TILES, ICON, ROAD, WATER, VectorTileServer
from cacheorch.vector.serve import VectorServer


@pytest.fixture
def vtpk(cli, tmp_path):
    with VectorTileServer() as srv:
        out = tmp_path / "streets.vtpk"
        result = cli("run", "--service", srv.url, "--levels", "0-3", "--exporter", "vtpk",
                     "--output", str(out))
        assert result.code == 0, result.stderr
        yield out, srv


def test_served_vtpk_is_a_vector_tile_server_cacheorch_exports_again(cli, vtpk, tmp_path):
    out, source = vtpk
    with VectorServer(out) as served:
        service = requests.get(served.url, params={"f": "json"}, timeout=10).json()
        assert service["tiles"] == ["tile/{z}/{y}/{x}.pbf"] and service["tileInfo"]["rows"] == 512
        tile = requests.get(served.url + "/tile/2/1/0.pbf", timeout=10)
        assert tile.headers["Content-Encoding"] == "gzip"
        assert tile.content == source.served((2, 1, 0))  # inflated by requests
        assert requests.get(served.url + "/tile/3/0/0.pbf", timeout=10).status_code == 404
        style = requests.get(served.url + "/resources/styles/root.json", timeout=10).json()
        assert style["sprite"] == "../sprites/sprite"
        glyphs = requests.get(served.url + "/resources/fonts/Arial%20Regular/0-255.pbf", timeout=10)
        assert glyphs.status_code == 200 and glyphs.content
        again = tmp_path / "again.vtpk"
        result = cli("run", "--service", served.url, "--levels", "0-3", "--exporter", "vtpk",
                     "--output", str(again))
        assert result.code == 0, result.stderr + result.stdout
    with zipfile.ZipFile(out) as a, zipfile.ZipFile(again) as b:
        for name in ("p12/tilemap/root.json", "p12/resources/styles/root.json",
                     "p12/resources/sprites/sprite@2x.png",
                     "p12/resources/fonts/Arial Regular/256-511.pbf"):
            assert a.read(name) == b.read(name), name
        assert [n for n in a.namelist() if n.endswith(".bundle")] == \
            [n for n in b.namelist() if n.endswith(".bundle")]
    from cacheorch.vector.reader import open_vector
    reread = open_vector(again)
    try:
        tiles = dict(reread.tiles())
    finally:
        reread.close()
    assert set(tiles) == set(DEFAULT_TILES)
    assert all(gzip.decompress(data) == source.served(key) for key, data in tiles.items())


def test_preview_draws_the_style_with_maplibre(vtpk):
    out, _ = vtpk
    with VectorServer(out) as served:
        page = requests.get(served.root_url + "/", timeout=10).text
        assert "/static/vector/maplibre-gl.js" in page and "cdn" not in page.lower()
        assert requests.get(served.root_url + "/static/vector/maplibre-gl.js", timeout=10).ok
        image = screenshot(served.root_url + "/", budget_ms=8000)
    assert colour_pixels(image, WATER) > 10000, "the water fill is not drawn"
    assert colour_pixels(image, BACKGROUND) > 10000, "the background is not drawn"
    assert colour_pixels(image, ROAD) > 300, "the road lines are not drawn"
    assert colour_pixels(image, ICON) > 50, "the sprite's icon is not drawn"


def test_vector_mbtiles_is_served_with_a_plain_style(cli, tmp_path):
    with VectorTileServer() as srv:
        out = tmp_path / "streets.mbtiles"
        assert cli("run", "--service", srv.url, "--levels", "0-3", "--exporter", "mbtiles",
                   "--output", str(out)).code == 0
        with VectorServer(out) as served:
            style = requests.get(served.url + "/resources/styles", timeout=10).json()
            assert {layer.get("source-layer") for layer in style["layers"]} >= \
                {"water", "roads", "places"}
            tile = requests.get(served.url + "/tile/1/1/0.pbf", timeout=10)
            assert tile.content == srv.served((1, 1, 0))
            image = screenshot(served.root_url + "/", budget_ms=8000)
    assert colour_pixels(image, (0xf8, 0xf4, 0xf0)) > 1000, json.dumps(style)[:200]

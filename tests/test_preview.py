"""What people look at: serve's preview page and ``plan --html``, rendered by headless Chromium.

The caches are solid, distinctive colours, so a screenshot proves the tiles were drawn, and
drawn in the right place (the red quadrant top-left, the blue one bottom-right).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import requests
from _chromium import colour_pixels, need_chromium, screenshot
from _gdal import solid_png
from _tiles import write_tiles
from _tileserver import TileServer

from cacheorch.interfaces import ExportRequest, Service
from cacheorch.plugins.export_compact_v2 import CompactV2Exporter
from cacheorch.serve import CacheServer
from cacheorch.tiling import (
    Envelope, LevelOfDetail, SpatialReference, TilingScheme, web_mercator_scheme,
)

#: The world's quadrants at every level: top-left, top-right, bottom-left, bottom-right.
QUADRANTS = {(0, 0): (220, 30, 40), (0, 1): (30, 170, 60), (1, 0): (240, 200, 20),
             (1, 1): (40, 70, 210)}
GREEN, MAGENTA, GREY = (20, 200, 120), (200, 40, 200), (128, 128, 128)


def write_cache(folder: Path, scheme: TilingScheme, tiles: dict[tuple[int, int, int], bytes],
                extent: tuple[float, float, float, float] | None = None) -> Path:
    levels = sorted({k[0] for k in tiles})
    request = ExportRequest(output=folder, service=Service(location="test://", scheme=scheme,
                                                           name="Preview"),
                            scheme=scheme.with_levels(levels),
                            levels=tuple(scheme.lod(n) for n in levels), mode="create", extent=extent)
    session = CompactV2Exporter().open(request)
    write_tiles(session, tiles)
    return session.commit()


def quadrant_tiles() -> dict[tuple[int, int, int], bytes]:
    tiles = {}
    for level in (1, 2, 3):
        half = 2 ** (level - 1)
        for r in range(2 ** level):
            for c in range(2 ** level):
                tiles[(level, r, c)] = solid_png(QUADRANTS[(r // half, c // half)])
    return tiles


def quadrant_cache(folder: Path) -> Path:
    return write_cache(folder, web_mercator_scheme(6), quadrant_tiles())


def nztm_cache(folder: Path) -> Path:
    """512-pixel NZTM tiles (not Web Mercator, scales not powers of two), a checkerboard."""
    sr = SpatialReference(2193, 2193)
    lods = tuple(LevelOfDetail(n, s, s / (96 * 39.37)) for n, s in enumerate((8e6, 6e6, 4e6)))
    scheme = TilingScheme(-4020900, 19998100, 512, 512, 96, sr, lods,
                          full_extent=Envelope(0, 4000000, 3000000, 7000000, sr))
    tiles = {(0, r, c): solid_png(GREEN if (r + c) % 2 else MAGENTA, 512)
             for r in range(8, 20) for c in range(0, 10)}
    return write_cache(folder, scheme, tiles, extent=scheme.full_extent.bounds)


def _centroid(image: np.ndarray, rgb: tuple[int, int, int]) -> tuple[float, float]:
    diff = np.abs(image.astype(np.int16) - np.array(rgb, dtype=np.int16)).max(axis=-1)
    ys, xs = np.nonzero(diff <= 6)
    return float(xs.mean()), float(ys.mean())


@pytest.mark.slow  # starts a browser (a few seconds)
def test_preview_shows_the_tiles_in_place(tmp_path: Path) -> None:
    need_chromium()
    cache = quadrant_cache(tmp_path / "quadrants")
    with CacheServer(cache) as server:
        image = screenshot(server.root_url + "/")
    counts = {q: colour_pixels(image, rgb) for q, rgb in QUADRANTS.items()}
    assert all(n > 10000 for n in counts.values()), counts
    left_top, right_bottom = _centroid(image, QUADRANTS[(0, 0)]), _centroid(image, QUADRANTS[(1, 1)])
    assert left_top[0] < right_bottom[0] and left_top[1] < right_bottom[1]
    top_right, bottom_left = _centroid(image, QUADRANTS[(0, 1)]), _centroid(image, QUADRANTS[(1, 0)])
    assert top_right[0] > bottom_left[0] and top_right[1] < bottom_left[1]


@pytest.mark.slow  # starts a browser (a few seconds)
def test_preview_draws_a_cache_in_another_spatial_reference(tmp_path: Path) -> None:
    need_chromium()
    cache = nztm_cache(tmp_path / "nztm")
    with CacheServer(cache) as server:
        image = screenshot(server.root_url + "/preview")
    assert colour_pixels(image, GREEN) > 20000 and colour_pixels(image, MAGENTA) > 20000


def test_preview_page_uses_only_packaged_assets(tmp_path: Path) -> None:
    cache = quadrant_cache(tmp_path / "quadrants")
    with CacheServer(cache) as server, requests.Session() as s:
        s.trust_env = False
        page = s.get(server.root_url + "/", timeout=10)
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
        assert not re.search(r"(src|href)=\"(https?:)?//", page.text)
        config = json.loads(re.search(r'id="cacheorch-config">(.*?)</script>', page.text, re.S).group(1))
        assert config["levels"] == [1, 2, 3] and config["xyz"] == 1
        assert config["serviceUrl"] == f"/arcgis/rest/services/{server.name}/MapServer"
        for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
            r = s.get(server.root_url + asset, timeout=10)
            assert r.status_code == 200 and len(r.content) > 500
            assert b"http://" not in r.content and b"https://" not in r.content
        assert s.get(server.root_url + "/static/nothing.js", timeout=10).status_code == 404
        assert s.get(server.root_url + "/static/../serve.py", timeout=10).status_code == 404


def test_preview_escapes_what_it_embeds(tmp_path: Path) -> None:
    from cacheorch.formats.cache import open_cache
    from cacheorch.serve import preview_page
    cache_path = quadrant_cache(tmp_path / "q")
    with open_cache(cache_path) as cache:
        service = {"name": "<b>x</b>", "tileInfo": {}, "description": "</script><script>alert(1)"}
        page = preview_page(cache, service, "/s", [1], {}).decode()
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "</script><script>alert" not in page


# -- plan --html ---------------------------------------------------------------------------------


def _service_json(scheme: TilingScheme) -> dict:
    sr = {"wkid": 102100, "latestWkid": 3857}
    half = 20037508.342787
    extent = {"xmin": -half, "ymin": -half, "xmax": half, "ymax": half, "spatialReference": sr}
    return {"currentVersion": 10.81, "mapName": "Layers", "singleFusedMapCache": True,
            "capabilities": "Map", "spatialReference": sr, "units": "esriMeters",
            "tileInfo": scheme.to_json(), "fullExtent": extent, "initialExtent": extent}


@pytest.fixture
def plan_page(tmp_path: Path, cli) -> tuple[Path, dict]:
    scheme = web_mercator_scheme(8)
    with TileServer(quadrant_tiles(), default_tile=solid_png(GREY),
                    service=_service_json(scheme)) as server:
        page = tmp_path / "plan.html"
        args = ["plan", "--service", server.url, "--levels", "0-8", "--aoi", "0-3=extent",
                "--aoi", "4-8=bbox:5.9,45.8,10.5,47.8@4326"]
        result = cli(*args, "--html", str(page))
        assert result.code == 0, result.stderr
        plan = json.loads(cli(*args, "--json").stdout)
    return page, plan


def test_plan_html_is_self_contained_with_the_counts(plan_page) -> None:
    page, plan = plan_page
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"https?://", text.replace(plan["service"], "")), "external reference"
    assert "<svg" in text and "<table" in text
    for lv in plan["levels"]:
        assert re.search(rf">{lv['level']}</td>.*?>{lv['tiles_planned']:,}</td>", text, re.S), lv
    assert f"{plan['tiles_planned']:,}" in text


def test_plan_html_enlarges_small_areas_in_a_detail_map(plan_page, tmp_path: Path) -> None:
    """Switzerland on a world service is a speck: a second map fits it; a world plan has none."""
    page, _ = plan_page
    text = page.read_text(encoding="utf-8")
    detail = text[text.index('<svg id="detail"'):]
    detail = detail[:detail.index("</svg>")]
    # two paths: the bbox, and the levels 0-3 world area clipped to the view around it
    assert "Detail: levels 4-8" in text and detail.count("<path") == 2
    assert "levels 4-8: bbox:5.9,45.8,10.5,47.8@4326" in detail
    from cacheorch.planhtml import plan_html
    from cacheorch.jobplan import make_plan
    from cacheorch.jobspec import JobSpec, PluginSpec
    from cacheorch.pluginmanager import make_plugins
    from cacheorch.connection import Connection
    scheme = web_mercator_scheme(4)
    with TileServer({}, service=_service_json(scheme)) as server:
        spec = JobSpec(service=server.url, policies=(PluginSpec("levels", {"": "0-4"}),))
        world = plan_html(make_plan(make_plugins(), spec, Connection(), fetching=False))
    assert '<svg id="detail"' not in world


@pytest.mark.slow  # starts a browser (a few seconds)
def test_plan_html_renders(plan_page) -> None:
    need_chromium()
    page, _ = plan_page
    image = screenshot(page.as_uri(), size=(900, 1400))
    # the levels 0-3 area (the world, #0072B2 at 45 %) over the service's own level-1 tiles: each
    # quadrant's colour blended with the fill, in its place; a page missing either the tiles or
    # the area has none of these colours
    fill = np.array((0x00, 0x72, 0xB2))
    blended = {q: tuple(int(round(v)) for v in 0.55 * np.array(rgb) + 0.45 * fill)
               for q, rgb in QUADRANTS.items()}
    counts = {q: colour_pixels(image, rgb) for q, rgb in blended.items()}
    assert all(n > 5000 for n in counts.values()), counts
    left_top, right_bottom = _centroid(image, blended[(0, 0)]), _centroid(image, blended[(1, 1)])
    assert left_top[0] < right_bottom[0] and left_top[1] < right_bottom[1]
    # the detail map: the Alps (levels 4-8, #E69F00) over the world's fill over the level-8
    # tiles (GREY: the server's tile for every key not listed)
    alps = 0.55 * (0.55 * np.array(GREY) + 0.45 * fill) + 0.45 * np.array((0xE6, 0x9F, 0x00))
    assert colour_pixels(image, tuple(int(round(v)) for v in alps)) > 5000


def test_plan_html_embeds_the_services_small_level_tiles(plan_page) -> None:
    """Fetched once while planning and embedded: the page still needs no network to show them."""
    page, _ = plan_page
    text = page.read_text(encoding="utf-8")
    overview = text[:text.index('<svg id="detail"')]
    tiles = re.findall(r'<image class="tile"[^>]*href="data:image/png;base64,', overview)
    assert len(tiles) == 4  # the world at level 1: 2×2 tiles, about 512 pixels across
    assert 1 <= text.count('<image class="tile"') - 4 <= 36  # the detail map's own level
    assert overview.index('<image class="tile"') < overview.index('<path class="area"')  # beneath
    assert 'class="scalebar"' in overview and " km</text>" in overview
    assert ">-10,000,000</text>" in overview and ">10,000,000</text>" in overview  # coordinates


def corner_cache(folder: Path) -> Path:
    """Levels 1-2 cover the world (quadrant colours); level 3 only the top-left quadrant."""
    tiles = {k: v for k, v in quadrant_tiles().items() if k[0] < 3 or (k[1] < 4 and k[2] < 4)}
    return write_cache(folder, web_mercator_scheme(6), tiles)


@pytest.mark.slow  # starts a browser (a few seconds)
def test_preview_opens_at_the_data_and_keeps_the_view_in_its_url(tmp_path: Path) -> None:
    from _chromium import dump_dom
    need_chromium()
    red, blue = QUADRANTS[(0, 0)], QUADRANTS[(1, 1)]
    with CacheServer(corner_cache(tmp_path / "corner")) as server:
        # no view in the URL: the finest level's tiles fill the map, not the world's quadrants
        opened = screenshot(server.root_url + "/", size=(800, 900))
        dom = dump_dom(server.root_url + "/", size=(800, 900))
        # a view in the URL: level 2 centred on the blue quadrant
        quarter = 20037508.342787 / 2
        at_blue = screenshot(f"{server.root_url}/#level=2&x={quarter}&y={-quarter}", size=(800, 900))
    # level 2: the red quadrant (512 px) fills the map; the blue one shows only in the margin
    assert colour_pixels(opened, red) == 512 * 512 and colour_pixels(opened, blue) < 200 * 200
    link = re.search(r'id="permalink" href="#level=(\d+)&amp;x=([-\d.]+)&amp;y=([-\d.]+)"', dom)
    assert link and link.group(1) == "2", dom[:2000]
    assert float(link.group(2)) == pytest.approx(-quarter, abs=1) \
        and float(link.group(3)) == pytest.approx(quarter, abs=1)
    assert "Zoom to data" in dom
    assert colour_pixels(at_blue, blue) == 512 * 512 and colour_pixels(at_blue, red) < 200 * 200

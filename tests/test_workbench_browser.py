"""The workbench page in headless Chromium, driven by Playwright: what only a browser can check.

Clicking the scales table, drawing a polygon with the mouse on the OpenLayers map, exporting and
watching the progress, cancelling and resuming, the job list. Each step is a screenshot whose
pixels are checked (the quadrants' colours for the tiles, the tier's colour for the polygon);
the screenshots are kept in $CACHEORCH_SCREENSHOTS when it is set. Playwright drives Debian's
Chromium (``executable_path``): it never downloads a browser.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _chromium import need_chromium
from _gdal import decode_rgba, open_gdal, tile_centre_rgba
from _tileserver import TileServer
from _workbench import (  # noqa: F401 - fixtures
    QUADRANTS, Api, country, quadrant_tiles, service, service_json, start_workbench, wb,
)

from cacheorch.tiling import web_mercator_scheme

pytestmark = pytest.mark.slow  # starts a browser

WM = web_mercator_scheme(5)
#: Chromium flags that work on CI machines and keep it from talking to anything but the page.
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-proxy-server"]
#: The second tier's colour in the page (workbench.js COLOURS[1]).
TIER2 = (0, 160, 255)
TIMEOUT = 30_000


@pytest.fixture
def browser():
    executable = need_chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(TIMEOUT)
    yield page
    assert not errors, errors


class Shots:
    """Screenshots of each step, decoded for pixel checks (and kept when asked)."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder, self.name, self.n = folder, name, 0
        self.keep = os.environ.get("CACHEORCH_SCREENSHOTS")

    def take(self, page, step: str, selector: str | None = None) -> np.ndarray:
        self.n += 1
        path = self.folder / f"{self.name}-{self.n}-{step}.png"
        data = (page.locator(selector).screenshot(path=str(path)) if selector
                else page.screenshot(path=str(path)))
        if self.keep:
            Path(self.keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(self.keep) / path.name)
        return np.moveaxis(decode_rgba(data)[:3], 0, -1)


def colour_mask(image: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 12) -> np.ndarray:
    diff = np.abs(image.astype(np.int16) - np.array(rgb, dtype=np.int16))
    return diff.max(axis=-1) <= tolerance


def box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def open_service(page, wb, service: TileServer) -> None:
    page.goto(wb.url)
    page.fill("#location", service.url)
    page.click("#open")
    page.wait_for_selector('#scales input.tick[data-level="3"]')
    page.wait_for_function("document.querySelector('#map').dataset.tilesLoaded === 'yes'")


def tick(page, levels) -> None:
    for level in levels:
        page.click(f'#scales input.tick[data-level="{level}"]')


def tiles_shown(page, level: int) -> str:
    return page.inner_text(f'#scales tr[data-level="{level}"] td.tiles')


def test_open_tick_draw_export_and_check_with_gdal(page, wb, service, tmp_path) -> None:
    shots = Shots(tmp_path, "export")
    open_service(page, wb, service)
    tick(page, [0, 1, 2, 3])
    page.wait_for_function("document.getElementById('totals').dataset.tiles === '85'")
    assert page.inner_text("#service-info").count("Quadrants for the workbench tests") == 1
    assert tiles_shown(page, 3) == "64"

    image = shots.take(page, "tiles", "#map")
    red = colour_mask(image, QUADRANTS[(0, 0)], 6)
    blue = colour_mask(image, QUADRANTS[(1, 1)], 6)
    assert red.sum() > 20_000 and blue.sum() > 20_000, "the service's tiles are not drawn"
    rx0, ry0, rx1, ry1 = box_of(red)
    bx0, by0, _, _ = box_of(blue)
    gx0, gy0, _, gy1 = box_of(colour_mask(image, QUADRANTS[(0, 1)], 6))
    assert rx1 < bx0 + 5 and ry1 < by0 + 5, "red is not top-left of blue"
    assert rx1 < gx0 + 5 and abs(gy0 - ry0) < 5 and abs(gy1 - ry1) < 5, "green is not top-right"

    # a second tier for levels 2-3, drawn as a polygon in the red (top-left) quadrant
    page.click("#add-tier")
    page.fill('#tiers li[data-tier="1"] input.levels', "2-3")
    page.press('#tiers li[data-tier="1"] input.levels', "Tab")
    page.click("#draw-polygon")
    box = page.locator("#map").bounding_box()
    w, h = rx1 - rx0, ry1 - ry0
    corners = [(rx0 + 0.2 * w, ry0 + 0.2 * h), (rx0 + 0.8 * w, ry0 + 0.25 * h),
               (rx0 + 0.7 * w, ry0 + 0.8 * h), (rx0 + 0.25 * w, ry0 + 0.7 * h)]
    for x, y in corners:
        page.mouse.click(box["x"] + x, box["y"] + y)
    first = corners[0]
    page.mouse.click(box["x"] + first[0], box["y"] + first[1])  # closing on the first corner
    page.wait_for_function("document.querySelector('#tiers li[data-tier=\"1\"] .area-kind')"
                           ".textContent.includes('polygon')")
    page.wait_for_function("document.getElementById('totals').dataset.tiles !== '85'")
    level3 = int(tiles_shown(page, 3))
    assert 1 <= level3 <= 16, level3  # only the red quadrant's tiles (4×4 at level 3)
    assert tiles_shown(page, 1) == "4"  # tier 1: the extent

    page.mouse.move(box["x"] + 5, box["y"] + box["height"] - 5)  # keep the cursor off the polygon
    image = shots.take(page, "polygon", "#map")
    outline = colour_mask(image, TIER2, 40)
    assert outline.sum() > 300, "the polygon is not drawn"
    ox0, oy0, ox1, oy1 = box_of(outline)
    assert rx0 <= ox0 and ox1 <= rx1 and ry0 <= oy0 and oy1 <= ry1, \
        ("the polygon is not where it was drawn", (ox0, oy0, ox1, oy1), (rx0, ry0, rx1, ry1))

    # copy as command: the CLI line for what is on screen
    page.click("#copy-command")
    page.wait_for_selector("#command:not([hidden])")
    command = page.input_value("#command")
    assert command.startswith("cacheorch run --service ") and "--levels 0-3" in command
    assert "2-3=wkt:POLYGON" in command and "[job:workbench]" in page.input_value("#ini")

    # export and watch it finish
    output = tmp_path / "drawn.tpkx"
    page.fill("#output", str(output))
    page.click("#export")
    page.wait_for_selector('#progress[data-status="completed"]')
    summary = page.inner_text("#summary")
    assert "completed" in summary and str(output) in summary
    shots.take(page, "done")
    page.click(f"#summary #verify-{page.get_attribute('#summary', 'data-job-id')}")
    page.wait_for_function("document.getElementById('job-check').dataset.ok === 'true'")

    # the output, tile-exact: every planned tile is the service's, and GDAL shows its colour
    api = Api(wb)
    job = api.ok("GET", f"/api/jobs/{page.get_attribute('#summary', 'data-job-id')}")
    assert {lv["level"]: lv["tiles_written"] for lv in job["levels"]}[3] == level3
    from cacheorch.formats.cache import open_cache
    with open_cache(output) as cache:
        got = {(lv, r, c): data for lv, br, bc in cache.bundle_keys()
               for r, c, data in cache.bundle_tiles(lv, br, bc)}
    tiles = quadrant_tiles()
    assert len(got) == job["tiles_written"] == 1 + 4 + sum(
        lv["tiles_written"] for lv in job["levels"] if lv["level"] >= 2)
    assert all(tiles[key] == data for key, data in got.items())
    assert all(key[1] < 2 ** key[0] // 2 and key[2] < 2 ** key[0] // 2
               for key in got if key[0] >= 2), "a tile outside the red quadrant was exported"
    with open_gdal(output) as ds:
        for level, row, col in sorted(got):
            if level:
                half = 2 ** (level - 1)
                assert tile_centre_rgba(ds, WM, level, row, col)[:3] == \
                    QUADRANTS[(row // half, col // half)], (level, row, col)


def test_cancel_then_resume_from_the_page(page, tmp_path) -> None:
    shots = Shots(tmp_path, "cancel")
    with TileServer(quadrant_tiles(range(0, 6)), service=service_json(), delay=0.03) as slow:
        server = start_workbench(tmp_path)
        try:
            open_service(page, server, slow)
            page.fill("#range-from", "0")
            page.fill("#range-to", "5")
            page.click("#select-range")
            page.wait_for_function("document.getElementById('totals').dataset.tiles === '1365'")
            page.fill("#output", str(tmp_path / "slow.tpkx"))
            page.click("#export")
            page.wait_for_selector('#progress[data-status="running"]')
            page.wait_for_function("/ [1-9][0-9,]* \\/ 1,365 tiles/.test("
                                   "document.getElementById('progress').textContent)")
            shots.take(page, "running")
            page.click("#cancel")
            page.wait_for_selector('#progress[data-status="interrupted"]')
            job_id = page.get_attribute("#progress", "data-job-id")
            shots.take(page, "cancelled")
            api = Api(server)
            stopped = api.ok("GET", f"/api/jobs/{job_id}")
            assert stopped["status"] == "interrupted" and stopped["tiles_written"] < 1365
            page.click("#resume-current")
            page.wait_for_selector('#progress[data-status="completed"]', timeout=120_000)
            shots.take(page, "resumed")
            page.wait_for_selector(f'#jobs tr[data-job-id="{job_id}"][data-status="completed"]')
            done = api.ok("GET", f"/api/jobs/{job_id}")
            assert done["status"] == "completed" and done["tiles_written"] == 1365
        finally:
            server.stop()


def test_jobs_from_the_cli_appear_and_an_area_file_can_be_uploaded(page, wb, service, tmp_path
                                                                  ) -> None:
    shots = Shots(tmp_path, "list")
    open_service(page, wb, service)
    page.select_option("#preset", "max-tiles")  # a preset ticks the levels its policy keeps
    page.fill("#preset-value", "30")
    page.click("#apply-preset")
    page.wait_for_function("document.getElementById('totals').dataset.tiles === '21'")
    assert [page.is_checked(f'input.tick[data-level="{n}"]') for n in range(6)] == \
        [True, True, True, False, False, False]
    page.click("#clear-levels")
    # another process, as a user at a terminal (same catalog: $CACHEORCH_CATALOG)
    result = subprocess.run([sys.executable, "-m", "cacheorch", "run", "--service", service.url,
                             "--levels", "0-1", "--output", str(tmp_path / "from-cli.tpkx")],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    page.click("#refresh-jobs")
    row = page.wait_for_selector('#jobs tr[data-status="completed"]')
    assert "from-cli.tpkx" in row.inner_text()
    shots.take(page, "jobs", "#jobs")
    job_id = row.get_attribute("data-job-id")
    page.click(f"#show-{job_id}")  # found again: its summary, and verify from the page
    page.click(f"#verify-{job_id}")
    page.wait_for_function("document.getElementById('job-check').dataset.ok === 'true'")
    assert "5 tiles written" in page.inner_text("#summary")
    # an area file for tier 1: the top-left quadrant in longitude/latitude
    area = tmp_path / "nw.geojson"
    area.write_text('{"type": "Polygon", "coordinates": [[[-170, 10], [-10, 10], [-10, 80], '
                    '[-170, 80], [-170, 10]]]}')
    tick(page, [3])
    page.set_input_files("#upload", str(area))
    page.wait_for_function("document.querySelector('#tiers li[data-tier=\"0\"] .area-kind')"
                           ".textContent.includes('nw.geojson')")
    page.wait_for_function("document.getElementById('totals').dataset.tiles === '16'")
    # a buffer of one tile grows the area; the grid shows the tier's tiles at a level
    page.fill("#buffer", "1tiles")
    page.press("#buffer", "Tab")
    page.wait_for_function("document.getElementById('totals').dataset.tiles === '25'")
    page.fill("#grid-level", "3")
    before = shots.take(page, "no-grid", "#map")
    page.click("#show-grid")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('25 tiles')")
    after = shots.take(page, "grid", "#map")
    dark = colour_mask(after, (20, 20, 20), 60) & ~colour_mask(before, (20, 20, 20), 60)
    assert dark.sum() > 500, "the grid is not drawn"
    # edit the area: drag its corner at (-10°, 10°), just up-left of the map's centre (level 1:
    # 78,271 m a pixel, so 14 px each way), into the blue quadrant
    _, _, rx1, ry1 = box_of(colour_mask(before, QUADRANTS[(0, 0)], 6))
    box = page.locator("#map").bounding_box()
    corner = (box["x"] + rx1 + 1 - 14.2, box["y"] + ry1 + 1 - 14.3)
    page.mouse.move(*corner)
    page.mouse.down()
    page.mouse.move(corner[0] + 60, corner[1] + 60, steps=5)
    page.mouse.move(corner[0] + 120, corner[1] + 120, steps=5)
    page.mouse.up()
    page.wait_for_function("Number(document.getElementById('totals').dataset.tiles) > 25")
    shots.take(page, "edited", "#map")


def test_the_page_without_the_token_says_so(page, wb) -> None:
    page.goto(wb.root_url + "/")
    page.wait_for_function("document.getElementById('error').textContent.includes('session token')")


def test_ticking_level_18_over_a_country_updates_the_table_quickly(page, tmp_path) -> None:
    """A click on a tick box brings the level's count on screen (debounce, request, planner, DOM);
    the time it takes is printed, and measured in bench/workbench_counts.py."""
    import json
    import statistics

    from _tiles import mercator_service_json
    from pyproj import Transformer
    back = Transformer.from_crs(3857, 4326, always_xy=True)
    ring = [list(back.transform(x, y)) for x, y in country()["coordinates"][0]]
    area = tmp_path / "country.geojson"
    area.write_text(json.dumps({"type": "Polygon", "coordinates": [ring]}))
    with TileServer({}, service=mercator_service_json(18)) as srv:
        server = start_workbench(tmp_path)
        try:
            page.goto(server.url)  # (no tiles to wait for: the service has none)
            page.fill("#location", srv.url)
            page.click("#open")
            page.wait_for_selector('#scales input.tick[data-level="18"]')
            page.set_input_files("#upload", str(area))
            page.wait_for_function("document.querySelector('#tiers li[data-tier=\"0\"] .area-kind')"
                                   ".textContent.includes('country')")
            timings = []
            for _ in range(5):
                for level in (17, 18):
                    took = page.evaluate("""level => new Promise(resolve => {
                        const cell = document.querySelector(`#scales tr[data-level="${level}"] td.tiles`);
                        const start = performance.now();
                        const seen = new MutationObserver(() => {
                          if (cell.textContent) { seen.disconnect(); resolve(performance.now() - start); }
                        });
                        seen.observe(cell, {childList: true, characterData: true, subtree: true});
                        document.querySelector(`input.tick[data-level="${level}"]`).click();
                    })""", level)
                    timings.append(took)
                page.click("#clear-levels")
        finally:
            server.stop()
    print(f"\ntick → count on screen, country at level 17/18: median {statistics.median(timings):.0f} ms "
          f"(max {max(timings):.0f} ms, 50 ms of it the page's debounce)")
    assert len(timings) == 10 and all(t > 0 for t in timings), timings


def test_open_a_web_map_see_skipped_layers_export_the_map(page, wb, tmp_path) -> None:
    """A web map naming loopback MapServers: its layers in order with the skipped ones' reasons,
    the layer to draw picked in the list, counts over every layer, the map job exported and its
    outputs read back tile-exact with GDAL, the job list grouping it, the command to copy."""
    import json

    from _maps import MapServices, gdal_tiles_differ
    from test_maps import webmap
    shots = Shots(tmp_path, "map")
    with MapServices() as services:
        (tmp_path / "town.json").write_text(json.dumps(webmap(services)))
        page.goto(wb.url)
        page.select_option("#open-kind", "map")
        page.fill("#location", str(tmp_path / "town.json"))
        page.click("#open")
        page.wait_for_selector('#map-layers tr[data-title="Parcels"]')
        titles = page.eval_on_selector_all("#map-layers tbody tr", "rows => rows.map(r => r.dataset.title)")
        assert titles == ["Hillshade", "Soils tiles", "Parcels", "Roads / Streets", "Soils",
                          "Streets (vector)", "Topo"]
        parcels = page.inner_text('#map-layers tr[data-title="Parcels"]')
        assert "skipped" in parcels and "feature layer" in parcels, parcels
        assert "not cached" in page.inner_text('#map-layers tr[data-title="Soils tiles"]')
        page.wait_for_function("document.querySelector('#map').dataset.tilesLoaded === 'yes'")
        # draw Topo: the tiles the map asks for are Topo's
        page.click('#map-layers tr[data-title="Topo"] input.view')
        page.wait_for_function("document.getElementById('status').textContent.includes('Topo')")
        page.wait_for_function("document.querySelector('#map').dataset.tilesLoaded === 'yes'")
        deadline = __import__("time").monotonic() + 20
        while not any("/tile/" in path for path, _, _ in services.servers["Topo"].log):
            assert __import__("time").monotonic() < deadline, "Topo's tiles are not drawn"
            page.wait_for_timeout(100)
        shots.take(page, "topo", "#map")
        page.fill("#range-from", "0")
        page.fill("#range-to", "2")
        page.click("#select-range")
        page.wait_for_function("document.getElementById('totals').dataset.tiles === '63'")
        assert page.inner_text('#map-layers tr[data-title="Topo"] td.tiles') == "21"
        assert tiles_shown(page, 2) == "16"
        page.fill("#output", str(tmp_path / "offline"))
        page.click("#export")
        page.wait_for_selector('#summary[data-status="completed"]', timeout=60_000)
        shots.take(page, "summary")
        summary = page.inner_text("#map-summary")
        assert "Topo.tpkx" in summary and "feature layer" in summary
        for title, server, name in (("Hillshade", "Hillshade", "Hillshade.tpkx"),
                                    ("Roads / Streets", "Roads", "Roads_Streets.tpkx"),
                                    ("Topo", "Topo", "Topo.tpkx")):
            row = page.inner_text(f'#map-summary tr[data-title="{title}"]')
            assert "completed" in row and name in row, row
            assert gdal_tiles_differ(tmp_path / "offline" / name, services.tiles[server]) == []
        assert (tmp_path / "offline" / "map.json").is_file()
        # the job list: the map job, its three layer jobs under it
        page.click("#refresh-jobs")
        page.wait_for_selector("#jobs tr.map-job")
        assert page.locator("#jobs tr.layer-job").count() == 3
        page.click("#copy-command")
        page.wait_for_selector("#command:not([hidden])")
        command = page.input_value("#command")
        assert command.startswith("cacheorch run --map ") and "--levels 0-2" in command
        assert "map = " in page.input_value("#ini")

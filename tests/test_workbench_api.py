"""The workbench's JSON API over real HTTP, without a browser: token, sources, counts, jobs, safety.

A loopback MapServer serves a Web Mercator world in four coloured quadrants; the API is driven
the way another local tool would, with the session token; outputs are read back with GDAL.
"""
from __future__ import annotations

import json
import shlex
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
from _gdal import open_gdal, tile_centre_rgba
from _tileserver import TileServer
from _workbench import (  # noqa: F401 - fixtures
    QUADRANTS, Api, country, quadrant_tiles, service, service_json, start_workbench, wb,
)

from cacheorch.tiling import web_mercator_scheme

WM = web_mercator_scheme(5)
#: A rectangle in the top-left (red) quadrant, in Web Mercator metres.
RED_BOX = {"type": "Polygon", "coordinates": [[[-15e6, 5e6], [-5e6, 5e6], [-5e6, 15e6],
                                               [-15e6, 15e6], [-15e6, 5e6]]]}


@pytest.fixture
def api(wb) -> Api:
    return Api(wb)


def _open(api: Api, service: TileServer, **extra: str) -> dict:
    return api.ok("POST", "/api/sources", {"location": service.url} | extra)


def _selection(src: dict, tmp_path: Path, **extra) -> dict:
    return {"source": src["id"], "levels": [0, 1, 2, 3],
            "tiers": [{"levels": "0-1", "area": {"kind": "extent"}},
                      {"levels": "2-3", "area": {"kind": "geojson", "geometry": RED_BOX}}],
            "exporter": "tpkx", "output": str(tmp_path / "out.tpkx")} | extra


# -- safety --------------------------------------------------------------------------------------

def test_api_without_the_session_token_is_refused(wb, api, service) -> None:
    plain = requests.Session()
    plain.trust_env = False
    for method, path in (("GET", "/api/info"), ("GET", "/api/jobs"), ("POST", "/api/jobs"),
                         ("POST", "/api/sources"), ("GET", "/api/events"),
                         ("GET", "/api/sources/x/tile/0/0/0")):
        for headers in ({}, {"X-Workbench-Token": "wrong"}):
            response = plain.request(method, wb.root_url + path, headers=headers,
                                     json={"location": service.url}, timeout=10)
            assert response.status_code == 401, (method, path, response.text)
            assert "session token" in response.json()["error"]
    assert service.requests == {}, "a refused call reached the service"
    response = plain.get(f"{wb.root_url}/api/info?token=wrong", timeout=10)
    assert response.status_code == 401
    # the token opens it, in the header or (for images and the event stream) the query
    assert plain.get(f"{wb.root_url}/api/info?token={wb.workbench.token}", timeout=10).ok
    assert api.get("/api/info").ok
    # the page itself holds no secret
    page = plain.get(wb.root_url + "/", timeout=10)
    assert page.ok and wb.workbench.token not in page.text


def test_binds_loopback_and_prints_a_tokened_url(wb) -> None:
    assert wb.host == "127.0.0.1"
    assert wb.url.startswith("http://127.0.0.1:") and f"token={wb.workbench.token}" in wb.url
    assert len(wb.workbench.token) >= 32


def test_no_service_token_or_password_in_answers_catalog_or_logs(api, service, tmp_path, caplog
                                                                 ) -> None:
    secret, password = "SeCrEt-ToKeN-1234567890", "Pa55-w0rd-xyz"
    src = _open(api, service, token=secret)
    assert secret not in json.dumps(src)
    tile = api.get(f"/api/sources/{src['id']}/tile/1/0/0")
    assert tile.ok and tile.headers["content-type"] == "image/png"
    assert any(q.get("token") == [secret] for path, q, _ in service.log if "/tile/" in path), \
        "the service token is used server-side"
    job = api.ok("POST", "/api/jobs", _selection(src, tmp_path))
    api.wait_job(job["job_id"])
    answers = [api.get("/api/jobs").text, api.get(f"/api/jobs/{job['job_id']}").text,
               api.post("/api/command", _selection(src, tmp_path)).text, api.get("/").text]
    assert not any(secret in text for text in answers)
    catalog = Path(api.ok("GET", "/api/info")["catalog"])
    assert secret.encode() not in catalog.read_bytes()
    # a username and password are used as the CLI uses them, never echoed back
    bad = api.post("/api/sources", {"location": service.url, "username": "u", "password": password})
    assert password not in bad.text
    assert secret not in caplog.text and password not in caplog.text
    from cacheorch.workbench.sources import Credentials
    assert secret not in repr(Credentials(token=secret, username="u", password=password))
    assert password not in repr(Credentials(token=secret, username="u", password=password))


def test_paths_outside_the_roots_or_unwritable_are_refused(api, service, tmp_path) -> None:
    src = _open(api, service)
    for output, says in (("/etc/out.tpkx", "outside the workbench's folders"),
                         (str(tmp_path / "no" / "such" / "out.tpkx"), "does not exist"),
                         ("../escape.tpkx", "outside the workbench's folders")):
        response = api.post("/api/jobs", _selection(src, tmp_path, output=output))
        assert response.status_code == 400 and says in response.json()["error"], response.text
    response = api.post("/api/sources", {"location": "/etc"})
    assert response.status_code == 400 and "outside" in response.json()["error"]
    assert api.ok("GET", "/api/jobs")["jobs"] == []


def test_bad_input_is_one_line_json(api, service, tmp_path) -> None:
    src = _open(api, service)
    cases = [
        ("/api/plan", b"{not json", "not JSON"),
        ("/api/plan", {"source": "nope", "levels": [1]}, "unknown source"),
        ("/api/plan", {"source": src["id"], "levels": []}, "no levels ticked"),
        ("/api/plan", {"source": src["id"], "levels": [1], "tiers": [
            {"levels": "1", "area": {"kind": "geojson", "geometry": {"type": "Point",
                                                                    "coordinates": [0, 0]}}}]},
         "draw a polygon"),
        ("/api/plan", {"source": src["id"], "levels": [1], "tiers": [
            {"levels": "1", "area": {"kind": "extent"}, "buffer": "12 parsecs"}]}, "buffer"),
        ("/api/plan", {"source": src["id"], "levels": [9]}, "level"),
        ("/api/sources", {"location": ""}, "no source"),
        ("/api/sources", {"map": "town.aprx"}, "town.aprx: no such file"),
        ("/api/jobs", _selection(src, tmp_path, exporter="nosuch"), "nosuch"),
        ("/api/jobs/99/resume", {}, "99"),
    ]
    for path, body, says in cases:
        if isinstance(body, bytes):
            response = api.session.post(api.base + path, data=body, timeout=30)
        else:
            response = api.post(path, body)
        assert 400 <= response.status_code < 500, (path, body, response.text)
        error = response.json()["error"]
        assert says in error and "\n" not in error and "Traceback" not in error, (path, error)
    assert api.get("/api/jobs/12345").status_code == 400


# -- open, count, command ------------------------------------------------------------------------

def test_open_a_service_shows_its_description_and_levels(api, service) -> None:
    src = _open(api, service)
    assert src["name"] == "Test" and src["kind"] == "MapServer"
    assert src["description"] == "Quadrants for the workbench tests"
    assert src["wkid"] == 102100 and src["tile_size"] == [256, 256] and src["format"] == "PNG"
    assert [lv["level"] for lv in src["levels"]] == list(range(6))
    assert src["levels"][0]["scale"] == pytest.approx(WM.lod(0).scale)
    assert all(lv["tiled"] for lv in src["levels"])
    tile = api.get(f"/api/sources/{src['id']}/tile/2/3/3")
    assert tile.ok and tile.content == quadrant_tiles()[(2, 3, 3)]
    assert api.get(f"/api/sources/{src['id']}/tile/5/0/0").status_code == 404


def test_open_a_cache_folder(api, service, tmp_path) -> None:
    src = _open(api, service)
    job = api.ok("POST", "/api/jobs", _selection(src, tmp_path, exporter="compact-v2",
                                                  output=str(tmp_path / "folder-cache")))
    api.wait_job(job["job_id"])
    local = api.ok("POST", "/api/sources", {"location": str(tmp_path / "folder-cache")})
    assert local["kind"] == "cache"
    assert api.get(f"/api/sources/{local['id']}/tile/1/0/0").content == quadrant_tiles()[(1, 0, 0)]


def test_counts_and_copy_as_command_agree_with_the_cli(api, service, tmp_path, cli) -> None:
    src = _open(api, service)
    selection = _selection(src, tmp_path) | {"tiers": [
        {"levels": "0-1", "area": {"kind": "extent"}},
        {"levels": "2-3", "area": {"kind": "geojson", "geometry": RED_BOX}, "buffer": "1tiles"}]}
    counts = api.ok("POST", "/api/plan", selection | {"estimate": True})
    by_level = {lv["level"]: lv["tiles"] for lv in counts["levels"]}
    assert by_level[0] == 1 and by_level[1] == 4
    import shapely.geometry
    [grown] = counts["buffered"]  # the buffered tier's area, for the map
    assert grown["tier"] == 1 and grown["level"] == 2
    drawn, area = shapely.geometry.shape(RED_BOX), shapely.geometry.shape(grown["geometry"])
    assert area.contains(drawn) and area.area > 3 * drawn.area  # grown by a level-2 tile
    command = api.ok("POST", "/api/command", selection)
    args = shlex.split(command["command"])
    assert args[:2] == ["cacheorch", "run"] and "--token" not in args
    result = cli(*(["plan"] + args[2:] + ["--json"]))
    assert result.code == 0, result.stderr
    cli_plan = json.loads(result.stdout)
    assert {lv["level"]: lv["tiles_planned"] for lv in cli_plan["levels"]} == by_level
    assert counts["tiles"] == cli_plan["tiles_planned"]
    sizes = {lv["level"]: lv["bytes"] for lv in counts["levels"]}
    tile_size = len(quadrant_tiles()[(1, 0, 0)])
    assert sizes[1] == pytest.approx(4 * tile_size, rel=0.01)
    # the [job:NAME] section runs the same plan from cacheorch.ini
    ini = tmp_path / "jobs.ini"
    ini.write_text(api.ok("POST", "/api/command", selection | {"name": "nightly"})["ini"])
    assert "[job:nightly]" in ini.read_text()
    result = cli("--config", str(ini), "plan", "nightly", "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["tiles_planned"] == counts["tiles"]


def test_presets_pick_levels_with_the_cli_policies(api, service) -> None:
    src = _open(api, service)
    picked = api.ok("POST", "/api/select", {"source": src["id"], "policy": "max-tiles:30"})
    assert picked["levels"] == [0, 1, 2] and "max-tiles" in picked["notes"][0]
    scale = WM.lod(3).scale
    picked = api.ok("POST", "/api/select", {"source": src["id"],
                                            "policy": f"scale-range:min_scale=1e12,max_scale={scale}"})
    assert picked["levels"] == [0, 1, 2, 3]


def test_grid_of_a_tier_at_a_level(api, service, tmp_path) -> None:
    src = _open(api, service)
    grid = api.ok("POST", "/api/grid", _selection(src, tmp_path, level=3))
    cells = {(f["properties"]["row"], f["properties"]["col"]) for f in grid["features"]}
    assert cells == {(r, c) for r in range(1, 4) for c in range(1, 4)}  # in the red quadrant
    response = api.post("/api/grid", _selection(src, tmp_path, level=3) | {"tiers": []})
    assert response.ok  # the extent at level 3: 64 tiles
    assert response.json()["tiles"] == 64


def _uploaded(api: Api, src: dict, name: str, data: bytes) -> requests.Response:
    return api.session.post(f"{api.base}/api/sources/{src['id']}/upload",
                            files={"file": (name, data)}, timeout=60)


def _shapefile_zip(folder: Path, lonlat_ring: list[tuple[float, float]]) -> bytes:
    import pyogrio.raw
    import shapely
    folder.mkdir()
    geometry = np.array([shapely.to_wkb(shapely.Polygon(lonlat_ring))], dtype=object)
    pyogrio.raw.write(str(folder / "area.shp"), geometry, [np.array([1])], ["id"],
                      driver="ESRI Shapefile", geometry_type="Polygon", crs="EPSG:4326")
    archive = folder / "area.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for part in folder.glob("area.*"):
            if part.suffix != ".zip":
                z.write(part, f"shape/{part.name}")
    return archive.read_bytes()


def test_upload_geojson_esri_json_and_zipped_shapefile(api, service, tmp_path) -> None:
    src = _open(api, service)
    ring = [(-120.0, 20.0), (-60.0, 20.0), (-60.0, 60.0), (-120.0, 60.0), (-120.0, 20.0)]
    geojson = json.dumps({"type": "Feature", "properties": {},
                          "geometry": {"type": "Polygon", "coordinates": [ring]}}).encode()
    esri = json.dumps({"rings": [[list(p) for p in RED_BOX["coordinates"][0]]],
                       "spatialReference": {"wkid": 3857}}).encode()
    uploads = {"area.geojson": geojson, "area.json": esri,
               "area.zip": _shapefile_zip(tmp_path / "shp", ring)}
    for name, data in uploads.items():
        response = _uploaded(api, src, name, data)
        assert response.ok, (name, response.text)
        area = response.json()["geometry"]
        xs = [p[0] for p in area["coordinates"][0]]
        ys = [p[1] for p in area["coordinates"][0]]
        assert max(xs) < 0 and min(ys) > 0, (name, area)  # in the scheme's metres, top-left
        counts = api.ok("POST", "/api/plan", {"source": src["id"], "levels": [3], "tiers": [
            {"levels": "3", "area": {"kind": "geojson", "geometry": area}}]})
        assert 0 < counts["tiles"] <= 16, (name, counts)
    for name, data, says in (("bad.zip", b"not a zip", "not a zip"),
                             ("empty.zip", _empty_zip(), "holds no"),
                             ("bad.geojson", b"{", "area.geojson")):
        response = _uploaded(api, src, name, data)
        assert response.status_code == 400 and response.json()["error"], (name, response.text)


def _empty_zip() -> bytes:
    import io
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("readme.txt", "nothing here")
    return buffer.getvalue()


# -- export, progress, cancel and resume --------------------------------------------------------

def test_export_is_a_catalog_job_and_the_output_is_tile_exact(api, service, tmp_path, cli) -> None:
    src = _open(api, service)
    job = api.ok("POST", "/api/jobs", _selection(src, tmp_path, name="from-the-page"))
    done = api.wait_job(job["job_id"])
    assert done["status"] == "completed", done
    expected = {(0, 0, 0), *((1, r, c) for r in range(2) for c in range(2)),
                *((2, r, c) for r in range(2) for c in range(2)),
                *((3, r, c) for r in range(1, 4) for c in range(1, 4))}
    assert done["tiles_written"] == len(expected)
    assert {lv["level"]: lv["tiles_written"] for lv in done["levels"]} == {0: 1, 1: 4, 2: 4, 3: 9}
    tiles = quadrant_tiles()
    with open_gdal(tmp_path / "out.tpkx") as ds:
        for level, row, col in sorted(expected):
            rgba = tile_centre_rgba(ds, WM, level, row, col)
            half = 2 ** (level - 1) if level else 1
            want = QUADRANTS[(row // half, col // half)] if level else (128, 128, 128)
            assert rgba[:3] == want, (level, row, col, rgba)
    from cacheorch.formats.cache import open_cache
    with open_cache(tmp_path / "out.tpkx") as cache:
        got = {(lv, r, c): data for lv, br, bc in cache.bundle_keys()
               for r, c, data in cache.bundle_tiles(lv, br, bc)}
    assert got == {k: tiles[k] for k in expected}
    listed = api.ok("GET", "/api/jobs")["jobs"]
    assert [(j["id"], j["name"], j["status"]) for j in listed] == [(job["job_id"], "from-the-page",
                                                                   "completed")]
    result = cli("jobs", "--json")
    assert json.loads(result.stdout)["jobs"][0]["id"] == job["job_id"]
    again = api.post("/api/jobs", _selection(src, tmp_path))  # mode create: the output exists
    assert again.status_code == 400 and "exists" in again.json()["error"], again.text
    verified = api.ok("POST", f"/api/jobs/{job['job_id']}/verify")
    assert verified["ok"] is True, verified
    preview = api.ok("POST", f"/api/jobs/{job['job_id']}/preview")
    assert requests.get(preview["url"], timeout=10).ok


def test_cancel_leaves_the_job_resumable_and_resume_finishes_it(tmp_path) -> None:
    with TileServer(quadrant_tiles(range(0, 6)), service=service_json(), delay=0.02) as slow:
        server = start_workbench(tmp_path)
        try:
            api = Api(server)
            src = _open(api, slow)
            selection = _selection(src, tmp_path) | {"levels": [0, 1, 2, 3, 4, 5], "tiers": []}
            job = api.ok("POST", "/api/jobs", selection)
            time.sleep(0.6)
            cancelled = api.ok("POST", f"/api/jobs/{job['job_id']}/cancel")
            assert cancelled["job_id"] == job["job_id"]
            stopped = api.wait_job(job["job_id"])
            assert stopped["status"] == "interrupted", stopped
            assert 0 < (stopped["tiles_written"] or 0) < 1365
            assert not (tmp_path / "out.tpkx").exists()
            resumed = api.ok("POST", f"/api/jobs/{job['job_id']}/resume", {})
            assert resumed["job_id"] == job["job_id"]
            done = api.wait_job(job["job_id"], timeout=120)
            assert done["status"] == "completed" and done["tiles_written"] == 1365, done
            assert (tmp_path / "out.tpkx").exists()
            again = api.post(f"/api/jobs/{job['job_id']}/resume", {})
            assert again.status_code == 400 and "already completed" in again.json()["error"]
        finally:
            server.stop()


def test_progress_is_streamed_as_server_sent_events(wb, api, service, tmp_path) -> None:
    src = _open(api, service)
    url = f"{wb.root_url}/api/events?token={wb.workbench.token}"
    seen: list[dict] = []
    with requests.get(url, stream=True, timeout=30) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        job = api.ok("POST", "/api/jobs", _selection(src, tmp_path))
        for line in stream.iter_lines(decode_unicode=True):
            if line.startswith("data: "):
                seen.extend(j for j in json.loads(line[6:])["live"] if j["job_id"] == job["job_id"])
                if seen and seen[-1]["status"] == "completed":
                    break
    last = seen[-1]
    assert last["tiles_done"] == last["tiles_planned"] == 18
    assert {lv["level"] for lv in last["levels"]} == {0, 1, 2, 3}
    assert last["tiles_per_second"] > 0 and "eta_s" in last


def test_a_job_run_from_the_cli_is_listed(api, service, tmp_path, cli) -> None:
    result = cli("run", "--service", service.url, "--levels", "0-1",
                     "--output", str(tmp_path / "cli.tpkx"))
    assert result.code == 0, result.stderr
    listed = api.ok("GET", "/api/jobs")["jobs"]
    assert [j["output"] for j in listed] == [str(tmp_path / "cli.tpkx")]


# -- the planner's speed -------------------------------------------------------------------------

def test_a_count_update_for_a_country_at_level_18(tmp_path) -> None:
    """The counts of a 2,000-vertex country at levels 0-18, as the page asks for them on every
    tick (timed in bench/workbench_counts.py: timings are measured there, not asserted here)."""
    from _tiles import mercator_service_json
    with TileServer({}, service=mercator_service_json(18)) as srv:
        server = start_workbench(tmp_path)
        try:
            api = Api(server)
            src = _open(api, srv)
            counts = api.ok("POST", "/api/plan", {
                "source": src["id"], "levels": list(range(0, 19)),
                "tiers": [{"levels": "0-18", "area": {"kind": "geojson", "geometry": country()}}]})
        finally:
            server.stop()
    level18 = next(lv["tiles"] for lv in counts["levels"] if lv["level"] == 18)
    assert level18 > 10_000_000 and counts["planner_ms"] >= 0
    assert counts["tiles"] == sum(lv["tiles"] for lv in counts["levels"])


def test_every_api_route_is_documented(wb) -> None:
    from starlette.routing import Route
    doc = (Path(__file__).resolve().parent.parent / "docs" / "workbench-api.md").read_text()
    routes = [r for r in wb.server.config.app.routes if isinstance(r, Route)]
    for route in routes:
        if route.path.startswith("/api/"):
            path = route.path.replace("{job_id:int}", "{id}").replace("{sid}", "{id}")
            path = path.replace("{mid}", "{id}").replace("{map_id:int}", "{id}")
            path = path.replace("{level:int}/{row:int}/{col:int}", "{level}/{row}/{col}")
            for method in sorted((route.methods or set()) - {"HEAD"}):
                assert f"`{method} {path}`" in doc, f"{method} {path} is not in docs/workbench-api.md"


def test_the_command_prints_a_tokened_loopback_url_and_stops_on_ctrl_c(tmp_path) -> None:
    import os
    import signal
    import subprocess
    import sys
    process = subprocess.Popen([sys.executable, "-m", "cacheorch", "workbench", "--port", "0",
                                "--root", str(tmp_path)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=os.environ | {"NO_PROXY": "*"})
    try:
        line = process.stdout.readline()
        assert line.startswith("cacheorch workbench at http://127.0.0.1:"), line
        url = line.split(" at ", 1)[1].strip()
        root, token = url.split("/?token=")
        plain = requests.Session()
        plain.trust_env = False
        assert plain.get(root + "/api/info", timeout=10).status_code == 401
        info = plain.get(f"{root}/api/info", headers={"X-Workbench-Token": token}, timeout=10)
        assert info.ok and info.json()["roots"] == [str(tmp_path.resolve())]
        plain.close()
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        assert process.wait(20) == 0
        assert time.monotonic() - started < 5
        assert token not in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()


def test_the_maps_tiles_are_fetched_in_concurrent_batches(tmp_path) -> None:
    from concurrent.futures import ThreadPoolExecutor
    tiles = quadrant_tiles()
    with TileServer(tiles, service=service_json(), delay=0.2) as slow:
        server = start_workbench(tmp_path)
        try:
            api = Api(server)
            src = _open(api, slow)
            keys = [(3, r, c) for r in range(4) for c in range(4)]
            started = time.monotonic()
            with ThreadPoolExecutor(16) as pool:
                got = list(pool.map(lambda k: requests.get(
                    f"{server.root_url}/api/sources/{src['id']}/tile/{k[0]}/{k[1]}/{k[2]}"
                    f"?token={server.workbench.token}", timeout=60).content, keys))
            took = time.monotonic() - started
        finally:
            server.stop()
    assert got == [tiles[k] for k in keys]
    assert slow.max_concurrent > 1 and took < 16 * 0.2, (slow.max_concurrent, took)

"""Maps in the workbench's API over real HTTP, without a browser: open a web map file naming
loopback MapServers, list its layers, count per layer, export the map job, copy as command.

Everything the page shows about a map must be what ``plan`` / ``run --map`` would do: the counts
are compared with ``plan --map --json`` and the outputs read back tile-exact with GDAL.
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from _maps import LEVELS, MapServices, gdal_tiles_differ
from _workbench import Api, wb  # noqa: F401 - fixtures
from test_maps import webmap

SECRET = "MaP-SeCrEt-0987654321"
#: A rectangle in the top-left quadrant of the world, in Web Mercator metres.
NW_BOX = {"type": "Polygon", "coordinates": [[[-15e6, 5e6], [-5e6, 5e6], [-5e6, 15e6],
                                              [-15e6, 15e6], [-15e6, 5e6]]]}


@pytest.fixture
def services():
    with MapServices() as svc:
        yield svc


@pytest.fixture
def api(wb) -> Api:  # noqa: F811
    return Api(wb)


@pytest.fixture
def town(services, tmp_path) -> Path:
    path = tmp_path / "town.json"
    path.write_text(json.dumps(webmap(services)))
    return path


def _selection(opened: dict, **extra) -> dict:
    return {"map": opened["id"], "levels": "0-2",
            "tiers": [{"levels": "0-1", "area": {"kind": "extent"}},
                      {"levels": "2", "area": {"kind": "geojson", "geometry": NW_BOX}}]} | extra


def test_open_a_map_lists_its_layers_in_order_with_skip_reasons(api, town, services) -> None:
    opened = api.ok("POST", "/api/sources", {"map": str(town)})
    layers = opened["layers"]
    assert [lyr["title"] for lyr in layers] == ["Hillshade", "Soils tiles", "Parcels",
                                                "Roads / Streets", "Soils", "Streets (vector)",
                                                "Topo"]
    by = {lyr["title"]: lyr for lyr in layers}
    assert by["Topo"]["role"] == "basemap" and by["Hillshade"]["role"] == "reference"
    assert by["Soils tiles"]["visibility"] is False and by["Roads / Streets"]["visibility"]
    assert {t for t, lyr in by.items() if lyr["status"] == "exported"} == {
        "Hillshade", "Roads / Streets", "Topo"}
    assert "dynamic map service" in by["Soils"]["reason"]
    assert "feature layer" in by["Parcels"]["reason"]
    assert "not cached" in by["Soils tiles"]["reason"]
    assert "vector tile" in by["Streets (vector)"]["reason"]
    assert opened["exported"] == 3 and opened["skipped"] == 4
    # the page draws an exported layer: the first one, or any other by its source id
    assert opened["view"]["id"] == by["Hillshade"]["source"]
    assert [lv["level"] for lv in opened["view"]["levels"]] == list(LEVELS)
    topo = api.ok("GET", f"/api/sources/{by['Topo']['source']}")
    assert topo["location"] == services.url("Topo")
    tile = api.get(f"/api/sources/{by['Topo']['source']}/tile/1/0/1")
    assert tile.ok and tile.content == services.tiles["Topo"][(1, 0, 1)]
    assert by["Soils"]["source"] is None
    assert api.ok("GET", f"/api/maps/{opened['id']}")["layers"] == layers
    assert opened["default_output"].endswith("/town")


def test_counts_per_layer_are_plan_map_s(api, town, cli, tmp_path) -> None:
    opened = api.ok("POST", "/api/sources", {"map": str(town)})
    counts = api.ok("POST", "/api/plan", _selection(opened))
    exported = {lyr["title"]: lyr for lyr in counts["layers"] if lyr["status"] == "planned"}
    assert set(exported) == {"Hillshade", "Roads / Streets", "Topo"}
    # levels 0-1 whole world (1 + 4 tiles), level 2 the NW box: 16 tiles of which 4 lie in it
    for layer in exported.values():
        assert [(lv["level"], lv["tiles_planned"]) for lv in layer["levels"]] == \
            [(0, 1), (1, 4), (2, 4)]
    assert counts["tiles"] == 27 and counts["exported"] == 3
    skipped = {lyr["title"]: lyr["reason"] for lyr in counts["layers"]
               if lyr["status"] == "skipped"}
    assert "feature layer" in skipped["Parcels"]
    # the same as the command line's plan --map with the flags "Copy as command" gives
    command = api.ok("POST", "/api/command", _selection(opened))
    args = shlex.split(command["command"])
    assert args[:4] == ["cacheorch", "run", "--map", str(town)]
    res = cli("plan", *args[2:], "--json")
    assert res.code == 0, res.stderr
    planned = {lyr["title"]: lyr["tiles_planned"] for lyr in json.loads(res.stdout)["layers"]
               if lyr["status"] == "planned"}
    assert planned == {t: lyr["tiles_planned"] for t, lyr in exported.items()}
    assert f"map = {town}" in command["ini"] and "levels = 0-2" in command["ini"]
    assert "service =" not in command["ini"]
    # the [job:NAME] section plans the same, as `plan NAME`
    Path("no-config.ini").write_text(command["ini"])
    res = cli("plan", "workbench", "--json")
    assert res.code == 0, res.stderr
    assert {lyr["title"]: lyr["tiles_planned"] for lyr in json.loads(res.stdout)["layers"]
            if lyr["status"] == "planned"} == planned


@pytest.mark.parametrize("name", ["field.mapx", "survey.qgz"])
def test_a_mapx_and_a_qgis_project(api, services, tmp_path, name) -> None:
    """Other formats go through the same readers; a QGIS map's layers default to GeoPackage
    (no exporter in the selection: run --map's default)."""
    import zipfile

    from test_maps import mapx, qgs_text
    path = tmp_path / name
    if name.endswith(".mapx"):
        path.write_text(json.dumps(mapx(services)))
        expect = {"Roads": "exported", "Parcels": "skipped", "Topo": "exported",
                  "World Topographic Map": "skipped"}
    else:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("survey.qgs", qgs_text(services))
        expect = {"Roads": "exported", "Topo XYZ": "exported", "OpenStreetMap": "skipped"}
    opened = api.ok("POST", "/api/sources", {"map": str(path)})
    assert {lyr["title"]: lyr["status"] for lyr in opened["layers"]} == expect
    counts = api.ok("POST", "/api/plan", _selection(opened))
    outputs = sorted(lyr["output"] for lyr in counts["layers"] if lyr["status"] == "planned")
    suffix = ".gpkg" if name.endswith(".qgz") else ".tpkx"
    assert outputs and all(o.endswith(suffix) for o in outputs), outputs
    job = api.ok("POST", "/api/jobs", _selection(opened, output=str(tmp_path / "out")))
    assert _wait_map(api, job["map_id"])["status"] == "completed"
    manifest = json.loads((tmp_path / "out" / "map.json").read_text())
    if name.endswith(".qgz"):
        assert manifest["offline_copies"] == ["survey-offline.qgz"]


def test_export_the_map_job(api, town, services, tmp_path, wb, caplog) -> None:  # noqa: F811
    opened = api.ok("POST", "/api/sources", {"map": str(town), "token": SECRET})
    job = api.ok("POST", "/api/jobs", _selection(opened, levels="0-2", tiers=[],
                                                 output=str(tmp_path / "offline")))
    assert job["map_id"].startswith("m") and job["tiles_planned"] == 3 * 21
    record = _wait_map(api, job["map_id"])
    assert record["status"] == "completed" and record["live"]["tiles_done"] == 63
    assert len(record["layer_jobs"]) == 3
    assert all(j["status"] == "completed" for j in record["layer_jobs"])
    by = {entry["title"]: entry for entry in record["layers"]}
    assert by["Parcels"]["status"] == "skipped" and "feature layer" in by["Parcels"]["reason"]
    manifest = json.loads((tmp_path / "offline" / "map.json").read_text())
    outputs = {e["title"]: e["output"] for e in manifest["layers"] if e["status"] == "completed"}
    assert outputs == {"Hillshade": "Hillshade.tpkx", "Roads / Streets": "Roads_Streets.tpkx",
                       "Topo": "Topo.tpkx"}
    for title, server in (("Hillshade", "Hillshade"), ("Roads / Streets", "Roads"),
                          ("Topo", "Topo")):
        assert gdal_tiles_differ(tmp_path / "offline" / outputs[title],
                                 services.tiles[server]) == [], title
    # the job list groups the layer jobs under their map
    listed = api.ok("GET", "/api/jobs")
    assert [m["id"] for m in listed["maps"]] == [job["map_id"]]
    assert sorted(listed["maps"][0]["jobs"]) == sorted(j["id"] for j in listed["jobs"])
    assert listed["live_maps"][0]["status"] == "completed"
    # the token was used and is nowhere the page or the catalog can see
    assert any(q.get("token") == [SECRET] for path, q, _ in services.servers["Topo"].log)
    catalog = Path(api.ok("GET", "/api/info")["catalog"])
    assert SECRET.encode() not in catalog.read_bytes()
    assert SECRET not in json.dumps(listed) + json.dumps(record) + json.dumps(opened)
    assert SECRET not in caplog.text
    assert SECRET not in (tmp_path / "offline" / "map.json").read_text()
    # the same folder again is refused before anything is written, in one line
    again = api.post("/api/jobs", _selection(opened, output=str(tmp_path / "offline")))
    assert again.status_code == 400 and "already exist" in again.json()["error"]
    assert "\n" not in again.text


def _wait_map(api: Api, map_id: str, timeout: float = 60) -> dict:
    import time
    deadline = time.monotonic() + timeout
    while True:
        record = api.ok("GET", f"/api/jobs/{map_id}")
        if record["live"] and record["live"]["status"] != "running":
            return record
        assert time.monotonic() < deadline, (record["status"], record["live"])
        time.sleep(0.1)


def test_map_errors_are_one_line(api, tmp_path, town) -> None:
    (tmp_path / "bad.json").write_text("{\"not\": \"a map\"")
    cases = [({"map": str(tmp_path / "nosuch.json")}, "no such file"),
             ({"map": str(tmp_path / "bad.json")}, "bad.json"),
             ({"map": "/etc/passwd"}, "outside the workbench's folders")]
    for body, says in cases:
        response = api.post("/api/sources", body)
        assert response.status_code == 400, response.text
        assert says in response.json()["error"] and "\n" not in response.text
    opened = api.ok("POST", "/api/sources", {"map": str(town)})
    for path, body, says in (("/api/plan", {"map": "nope", "levels": "0"}, "unknown map"),
                             ("/api/plan", _selection(opened, levels="9"), "nothing to export"),
                             ("/api/jobs", _selection(opened, output="/etc/x"), "outside")):
        response = api.post(path, body)
        assert response.status_code == 400, response.text
        assert says in response.json()["error"], response.text
    plain = api.session.get(api.base + f"/api/maps/{opened['id']}",
                            headers={"X-Workbench-Token": "wrong"})
    assert plain.status_code == 401


@pytest.mark.parametrize("from_page", [True, False], ids=["resume-in-workbench", "resume-cli"])
def test_cancel_a_map_job_then_resume_it(api, tmp_path, cli, from_page) -> None:
    with MapServices(delay=0.3) as slow:
        (tmp_path / "slow.json").write_text(json.dumps(webmap(slow)))
        opened = api.ok("POST", "/api/sources", {"map": str(tmp_path / "slow.json")})
        job = api.ok("POST", "/api/jobs", _selection(opened, tiers=[],
                                                     output=str(tmp_path / "slow-out")))
        cancelled = api.ok("POST", f"/api/jobs/{job['map_id']}/cancel")
        assert cancelled["map_id"] == job["map_id"]
        record = _wait_map(api, job["map_id"])
        assert record["live"]["status"] == "interrupted", record["live"]
        assert record["status"] == "interrupted", (record["live"]["message"], record["layers"])
        again = api.post(f"/api/jobs/{job['map_id']}/cancel")
        assert again.status_code == 400 and "not running" in again.json()["error"]
        if from_page:
            resumed = api.ok("POST", f"/api/jobs/{job['map_id']}/resume")
            assert resumed["map_id"] == job["map_id"]
            record = _wait_map(api, job["map_id"])
            assert record["status"] == "completed", record
            assert record["live"]["status"] == "completed"
            refused = api.post(f"/api/jobs/{job['map_id']}/resume")
            assert refused.status_code == 400 and "already completed" in refused.json()["error"]
        else:
            res = cli("resume", job["map_id"], "--json")
            assert res.code == 0, res.stdout + res.stderr
            assert json.loads(res.stdout)["status"] == "completed"
        for name, server in (("Topo.tpkx", "Topo"), ("Roads_Streets.tpkx", "Roads")):
            assert gdal_tiles_differ(tmp_path / "slow-out" / name, slow.tiles[server]) == []


def test_a_portal_item_with_a_token(api, services, tmp_path) -> None:
    from _maps import Portal
    from test_maps import ITEM
    info = {"id": ITEM, "title": "Town basemap", "type": "Web Map", "owner": "me"}
    with Portal({ITEM: (info, webmap(services))}, token=SECRET) as portal:
        url = f"{portal.root}/home/item.html?id={ITEM}"
        refused = api.post("/api/sources", {"map": url})
        assert refused.status_code == 400 and "token" in refused.json()["error"]
        opened = api.ok("POST", "/api/sources", {"map": url, "token": SECRET})
        assert opened["title"] == "Town basemap" and opened["exported"] == 3
        command = api.ok("POST", "/api/command", _selection(opened))
        assert f"--map {url}" in command["command"] or shlex.quote(url) in command["command"]
        assert SECRET not in json.dumps(opened) + json.dumps(command)
        assert "ARCGIS_TOKEN" in command["note"]

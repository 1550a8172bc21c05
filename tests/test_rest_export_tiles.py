"""``rest-export-tiles``: the server exports the package, against a loopback job server.

tests/_jobserver.py plays ArcGIS Server (or ArcGIS Online) from spec §3: jobs move through their
statuses with messages, fail or get cancelled when told, refuse more tiles than
``maxExportTilesCount``, answer either result shape, serve Range downloads and expire tokens. Its
packages are real .tpkx files; the merged output is read back with GDAL's ESRIC driver.
"""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from shapely.geometry import box

from _gdal import colour_of, open_gdal, tile_centre_rgba
from _jobserver import PASSWORD, USER, JobServer
from _tiles import pyramid
from cacheorch.delegate import Tier, split_tier
from cacheorch.formats.cache import open_cache
from cacheorch.planner import count_level
from cacheorch.tiling import TilingScheme, web_mercator_scheme

FAST = "rest-export-tiles:poll=0.01,poll_max=0.02"
#: Levels 3-4 get this box (Web Mercator metres): a second area tier.
BOX = "bbox:0,0,6000000,6000000@3857"


@pytest.fixture(scope="module")
def scheme() -> TilingScheme:
    return web_mercator_scheme(6)


@pytest.fixture(scope="module")
def tiles() -> dict[tuple[int, int, int], bytes]:
    return pyramid(range(5))


@pytest.fixture
def server(scheme, tiles) -> Iterator[JobServer]:
    with JobServer(scheme, tiles) as s:
        yield s


def run(cli, url: str, *extra: str, exporter: str = FAST, output: str = "out.tpkx"):
    return cli("run", "--service", url, "--levels", "0-4", "--aoi", "0-2=extent",
               "--aoi", f"3-4={BOX}", "--exporter", exporter, "-o", output, *extra)


def exports(server: JobServer) -> list[dict[str, str]]:
    return [f for f in server.submitted if f["_operation"] == "exportTiles"]


def messages(job_id: int = 1) -> list[tuple[str, str, str]]:
    con = sqlite3.connect("catalog.sqlite")
    try:
        return con.execute("SELECT source, kind, message FROM job_messages WHERE job_id = ? "
                           "ORDER BY id", (job_id,)).fetchall()
    finally:
        con.close()


def test_two_tier_job_ends_in_one_merged_tpkx_that_gdal_reads(cli, server, scheme) -> None:
    result = run(cli, server.url, "--json")
    assert result.code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["status"] == "completed"
    sent = exports(server)
    assert [f["levels"] for f in sent] == ["0-2", "3-4"]
    for form in sent:
        assert form["exportBy"] == "LevelID" and form["tilePackage"] == "true"
        assert form["storageFormatType"] == "esriMapCacheStorageModeCompactV2"
        aoi = json.loads(form["areaOfInterest"])
        assert aoi["features"][0]["geometry"]["spatialReference"]["wkid"] == 102100
    # one package holding both tiers; GDAL shows each tile's own colour
    output = Path("out.tpkx")
    assert output.is_file() and not Path("out.tpkx.partial").exists()
    with open_gdal(output) as ds:
        for key in [(1, 0, 1), (2, 3, 0), (3, 3, 4), (4, 6, 9)]:
            assert tile_centre_rgba(ds, scheme, *key) == (*colour_of(*key), 255)
    # written counts read back from the package match what each tier planned
    levels = {lv["level"]: lv for lv in out["levels"]}
    assert {lv: (v["tiles_planned"], v["tiles_written"]) for lv, v in levels.items()} == \
        {0: (1, 1), 1: (4, 4), 2: (16, 16), 3: (4, 4), 4: (9, 9)}
    assert levels[4]["bytes"] > 0
    said = messages()
    assert ("server", "info", "Executing...") in said
    assert any("Finished: 21 tiles" in m for _, _, m in said)


def test_a_tier_over_the_export_limit_is_split_and_merged(cli, scheme, tiles) -> None:
    with JobServer(scheme, tiles, max_export=6) as server:
        result = run(cli, server.url)
        assert result.code == 0, result.stderr
        sent = exports(server)
        assert all(job.status == "esriJobSucceeded" for job in server.jobs.values())
        assert all(job.tiles <= 6 for job in server.jobs.values())
    assert len(sent) > 3  # level 2 (16 tiles) alone needed cutting
    assert {"0-1"} <= {f["levels"] for f in sent}
    with open_cache("out.tpkx") as cache:
        for lv in range(3):
            for r in range(2 ** lv):
                for c in range(2 ** lv):
                    assert cache.get_tile(lv, r, c) == tiles[(lv, r, c)]
    with open_gdal(Path("out.tpkx")) as ds:
        assert tile_centre_rgba(ds, scheme, 2, 1, 2) == (*colour_of(2, 1, 2), 255)


def test_split_cuts_on_tile_boundaries_into_pieces_that_fit(scheme) -> None:
    area = box(-15e6, -9e6, 14e6, 12e6)
    n = count_level(scheme, 5, area)
    pieces = split_tier(scheme, Tier((5,), area, "x", n), 20)
    assert all(p.tiles <= 20 for p in pieces) and len(pieces) > n // 20
    assert sum(p.tiles for p in pieces) == n  # cuts on tile edges share no tile


def test_job_failure_is_one_line_with_the_server_message(cli, scheme, tiles) -> None:
    with JobServer(scheme, tiles, fail=["ERROR 999999: The cache is locked."]) as server:
        result = run(cli, server.url)
    assert result.code == 1
    assert "ERROR 999999: The cache is locked." in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not Path("out.tpkx").exists()
    assert ("server", "error", "ERROR 999999: The cache is locked.") in messages()
    con = sqlite3.connect("catalog.sqlite")
    assert con.execute("SELECT status FROM jobs").fetchone() == ("failed",)
    con.close()


def test_cancelled_job(cli, scheme, tiles) -> None:
    with JobServer(scheme, tiles, cancel=True) as server:
        result = run(cli, server.url)
    assert result.code == 1
    assert "cancelled on the server" in result.stderr
    assert "Job cancelled by the administrator." in result.stderr


def test_our_deadline_cancels_a_job_that_never_ends(cli, scheme, tiles) -> None:
    with JobServer(scheme, tiles, never_ends=True) as server:
        result = run(cli, server.url, exporter=FAST + ",timeout=0.2")
        assert result.code == 1
        assert "did not finish within 0.2 s" in result.stderr
        assert server.cancelled == ["j0001x"]


def test_expired_tokens_are_renewed_during_submit_poll_and_download(
        cli, scheme, tiles, monkeypatch) -> None:
    monkeypatch.setenv("ARCGIS_USERNAME", USER)
    monkeypatch.setenv("ARCGIS_PASSWORD", PASSWORD)
    monkeypatch.setenv("ARCGIS_TOKEN_URL", "")
    with JobServer(scheme, tiles, token_uses=3) as server:
        result = run(cli, server.url, "--json")
        assert result.code == 0, result.stderr
        assert len(server.issued) >= 4 and server.refused >= 3
        issued = list(server.issued)
    dump = Path("catalog.sqlite").read_bytes()
    for token in issued:
        assert token not in result.stdout and token not in result.stderr
        assert token.encode() not in dump
    assert PASSWORD.encode() not in dump


def test_an_interrupted_download_resumes_with_range(cli, server, scheme, tiles) -> None:
    server.cut_first_download = 200_000  # the client keeps the whole 64 KiB chunks it read
    result = run(cli, server.url)
    assert result.code == 0, result.stderr
    ranges = [h.get("Range") for path, _, h in server.gets if path.endswith("package.tpkx")]
    assert ranges[0] is None and ranges[1] == f"bytes={3 * 65536}-"
    with open_cache("out.tpkx") as cache:
        assert cache.get_tile(4, 6, 9) == tiles[(4, 6, 9)]


def test_arcgis_online_result_shape_and_no_token_to_signed_urls(cli, scheme, tiles,
                                                                monkeypatch) -> None:
    monkeypatch.setenv("ARCGIS_TOKEN", "static-token-abc")
    with JobServer(scheme, tiles, online=True) as server:
        result = run(cli, server.url)
        assert result.code == 0, result.stderr
        s3 = [(p, q) for p, q, _ in server.gets if p.startswith("/s3/")]
    assert len(s3) == 2 and all("token" not in q for _, q in s3)
    with open_gdal(Path("out.tpkx")) as ds:
        assert tile_centre_rgba(ds, scheme, 3, 3, 4) == (*colour_of(3, 3, 4), 255)


def test_plan_shows_the_server_estimate_beside_ours(cli, server) -> None:
    result = cli("plan", "--service", server.url, "--levels", "0-4", "--aoi", "0-2=extent",
                 "--aoi", f"3-4={BOX}", "--exporter", FAST)
    assert result.code == 0, result.stderr
    line = next(l for l in result.stdout.splitlines() if l.startswith("server"))
    assert "34 tiles" in line and "ours: 34 tiles" in line and "2 job(s)" in line
    as_json = cli("plan", "--service", server.url, "--levels", "0-2", "--exporter", FAST, "--json")
    assert json.loads(as_json.stdout)["server_estimate"]["tiles"] == 21
    assert not exports(server)  # plan never exports


def test_a_service_that_does_not_allow_export_fails_at_plan(cli, scheme, tiles) -> None:
    with JobServer(scheme, tiles, export_allowed=False) as server:
        result = cli("plan", "--service", server.url, "--levels", "0-2", "--exporter", FAST)
    assert result.code == 2
    assert "does not allow exportTiles" in result.stderr and "Traceback" not in result.stderr


def test_resume_reuses_the_packages_already_downloaded(cli, server, scheme) -> None:
    server.fail = ["ERROR 000999: out of disk space"]
    server.steps = 2
    first = {"n": 0}
    finish = server._finish

    def fail_second(job):  # the first tier succeeds, the second fails
        first["n"] += 1
        saved, server.fail = server.fail, (None if first["n"] == 1 else server.fail)
        try:
            finish(job)
        finally:
            server.fail = saved

    server._finish = fail_second
    result = run(cli, server.url)
    assert result.code == 1 and "out of disk space" in result.stderr
    assert sorted(p.name for p in Path("out.tpkx.partial").iterdir()) == ["piece-000.tpkx"]
    server.fail = None
    resumed = cli("resume", "1")
    assert resumed.code == 0, resumed.stderr
    assert [f["levels"] for f in exports(server)] == ["0-2", "3-4", "3-4"]  # 0-2 not again
    with open_gdal(Path("out.tpkx")) as ds:
        assert tile_centre_rgba(ds, scheme, 2, 2, 1) == (*colour_of(2, 2, 1), 255)
    assert any("reusing piece-000.tpkx" in m for _, _, m in messages())


def test_job_messages_reach_event_observers(server) -> None:
    from cacheorch import hookimpl
    from cacheorch.catalog import Catalog
    from cacheorch.config import load_config
    from cacheorch.connection import Connection
    from cacheorch.jobplan import make_plan
    from cacheorch.jobspec import job_spec_from
    from cacheorch.pluginmanager import make_plugins
    from cacheorch.runner import run_job

    seen: list[tuple[str, str]] = []

    class Observer:
        @hookimpl
        def cacheorch_track_event(self, event):
            if event.name == "job-message":
                seen.append((event.source, event.message))

    plugins = make_plugins(load_entrypoints=False, extra=[Observer()])
    spec = job_spec_from(load_config(Path("no-config.ini")), None, {
        "service": server.url, "levels": "0-1", "exporter": FAST, "output": "o.tpkx"})
    connection = Connection()
    plan = make_plan(plugins, spec, connection)
    with Catalog.open("catalog.sqlite") as catalog:
        outcome = run_job(plugins, catalog, connection, plan)
        stored = catalog.job_messages(outcome.job_id)
    assert outcome.status == "completed" and outcome.written == 5
    assert ("server", "Executing...") in seen
    assert [(m["source"], m["message"]) for m in stored] == seen


def test_compact_storage_gives_one_merged_tpk_that_mapproxy_reads(cli, server, tiles,
                                                                   tmp_path) -> None:
    import zipfile

    from test_reexport import _mapproxy_v1
    result = run(cli, server.url, exporter=FAST + ",storage=Compact", output="out.tpk")
    assert result.code == 0, result.stderr
    assert {f["storageFormatType"] for f in exports(server)} == {"esriMapCacheStorageModeCompact"}
    with zipfile.ZipFile("out.tpk") as zf:
        zf.extractall(tmp_path / "tpk")
    read = _mapproxy_v1(tmp_path / "tpk" / "v101" / "Layers" / "_alllayers", [0, 1, 2, 3, 4])
    assert len(read) == 34
    assert all(read[key] == tiles[key] for key in read)


def test_plan_still_shows_our_count_when_the_estimate_job_fails(cli, scheme, tiles) -> None:
    with JobServer(scheme, tiles, fail=["ERROR 001: estimate service down"]) as server:
        result = cli("plan", "--service", server.url, "--levels", "0-2", "--exporter", FAST)
    assert result.code == 0, result.stderr
    assert "total    21 tiles" in result.stdout
    assert "server   no estimate: job j0001x failed: ERROR 001: estimate service down" \
        in result.stdout

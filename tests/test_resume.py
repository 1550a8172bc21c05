"""A job killed with SIGKILL resumes without fetching again the bundles it had finished."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path


from _gdal import colour_of, solid_png
from _tileserver import TileServer
from _tiles import mercator_service_json, pad_png
from cacheorch.formats.cache import open_cache
from cacheorch.tiling import web_mercator_scheme

LEVEL = 9
BBOX = "bbox:-179.9,10,179.9,11@4326"  # a thin band: 2 rows × 512 columns = 4 bundles at level 9


def _service() -> dict:
    return mercator_service_json(LEVEL)


def _bundles_done(catalog: Path) -> int:
    if not catalog.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{catalog}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("select count(*) from job_bundles where state = 'done'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:
        return 0


def test_sigkill_then_resume_skips_finished_bundles(tmp_path: Path, cli) -> None:
    web_mercator_scheme(LEVEL)
    tiles = {(LEVEL, r, c): solid_png(colour_of(LEVEL, r, c)) for r in range(240, 250)
             for c in range(512)}
    catalog = Path(os.environ["CACHEORCH_CATALOG"])
    output = tmp_path / "band.tpkx"
    with TileServer(tiles, service=_service(), delay=0.004) as srv:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cacheorch", "run", "--service", srv.url, "--levels", str(LEVEL),
             "--aoi", BBOX, "--output", str(output), "--workers", "2"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while _bundles_done(catalog) < 1:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no bundle finished within 60 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        con = sqlite3.connect(catalog)
        finished = {(r, c): n for r, c, n in con.execute(
            "select bundle_row, bundle_col, tiles_written + tiles_missing from job_bundles "
            "where state = 'done'")}
        con.close()
        assert 1 <= len(finished) < 4, "the kill came too late to test resume"
        assert not output.exists()
        first_pass = dict(srv.requests)
        srv.delay = 0

        jobs = json.loads(cli("jobs", "--json").stdout)["jobs"]
        assert jobs[0]["status"] == "running"  # killed: nobody could record otherwise
        result = cli("resume", str(jobs[0]["id"]), "--json")
        assert result.code == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["status"] == "completed"

    with open_cache(output) as cache:
        got = {(lv, r, c): data for lv, br, bc in cache.bundle_keys()
               for r, c, data in cache.bundle_tiles(lv, br, bc)}
    planned = report["levels"][0]["tiles_planned"]
    assert len(got) == planned == report["tiles_written"] > 1000
    assert all(tiles[key] == data for key, data in got.items())

    # the bundles finished before the kill were not fetched again; every other tile was, once
    for (lv, r, c) in got:
        if (r // 128 * 128, c // 128 * 128) in finished:
            assert srv.requests[srv.tile_path(lv, r, c)] == 1, (r, c)
    tile_requests = {p: n for p, n in srv.requests.items() if "/tile/" in p}
    refetched = sum(tile_requests.values()) - sum(n for p, n in first_pass.items() if "/tile/" in p)
    assert refetched == planned - sum(finished.values())


def test_resume_keeps_the_levels_first_chosen(tmp_path: Path, cli) -> None:
    """max-bytes samples tile sizes; if they grew meanwhile a re-planned resume would pick fewer
    levels than the job started with. Resume uses the levels the catalog recorded instead."""
    small = {(lv, r, c): solid_png(colour_of(lv, r, c), size=8)
             for lv in range(4) for r in range(2 ** lv) for c in range(2 ** lv)}
    with TileServer(small, service=_service(), fail_always={(2, 1, 1)}) as srv:
        output = tmp_path / "out.tpkx"
        first = cli("run", "--service", srv.url, "--policy", "levels:0-3",
                    "--policy", "max-bytes:20KB", "--output", str(output), "--json")
        assert first.code == 1, first.stderr  # partial: one tile failed
        started = [lv["level"] for lv in json.loads(first.stdout)["levels"]]
        assert started == [0, 1, 2, 3]
        job_id = json.loads(first.stdout)["job_id"]
        srv.fail_always.clear()
        big = solid_png((1, 2, 3), size=256)  # sampled now, level 3 would not fit
        big = pad_png(big, len(big) + 4000)
        srv.tiles = {k: big for k in small}
        replanned = json.loads(cli("plan", "--service", srv.url, "--policy", "levels:0-3",
                                   "--policy", "max-bytes:20KB", "--json").stdout)
        assert [lv["level"] for lv in replanned["levels"]] != started  # a re-plan would differ
        again = cli("resume", str(job_id), "--json")
        assert again.code == 0, again.stderr
        assert [lv["level"] for lv in json.loads(again.stdout)["levels"]] == [0, 1, 2, 3]
    with open_cache(output) as cache:
        assert cache.scheme.min_lod == 0 and cache.scheme.max_lod == 3

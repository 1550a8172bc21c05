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

import pytest

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
        # while it runs: shown running; a second job on its output and a resume are refused
        # naming it (the second job's own catalog row is never created)
        live = json.loads(cli("jobs", "--json").stdout)["jobs"]
        assert [j["status"] for j in live] == ["running"]
        second = cli("run", "--service", srv.url, "--levels", str(LEVEL), "--aoi", BBOX,
                     "--output", str(output))
        assert second.code == 2 and f"job {live[0]['id']} is running on {output}" in \
            second.stderr, second.stderr
        refused = cli("resume", str(live[0]["id"]))
        assert refused.code == 2 and f"is running in process {proc.pid}" in refused.stderr
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
        # killed: it could not record that, but its process is gone, so it shows interrupted
        assert [j["status"] for j in jobs] == ["interrupted"]
        assert f"pid {proc.pid} on " in jobs[0]["error"] and "resume" in jobs[0]["error"]
        shown = cli("job", str(jobs[0]["id"]))
        assert shown.stdout.startswith(f"job {jobs[0]['id']} interrupted"), shown.stdout
        raw = sqlite3.connect(catalog)
        assert raw.execute("select status from jobs").fetchall() == [("running",)]  # only shown
        raw.close()
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


@pytest.mark.parametrize("exporter, name, folder", [("tpkx", "out.tpkx", "tile"),
                                                    ("tpk", "out.tpk", "_alllayers")])
def test_resume_refetches_done_bundles_whose_staged_file_is_gone_or_damaged(
        tmp_path: Path, cli, exporter: str, name: str, folder: str) -> None:
    """The catalog says done, but the staged bundle was deleted or cut short (a disk error, a
    clean-up script): resume fetches it again instead of publishing a package with holes."""
    from _gdal import open_gdal, tile_centre_rgba
    from _tiles import all_tiles, pyramid
    tiles = pyramid(range(4))  # one bundle per level
    output = tmp_path / name
    staged = output.with_name(output.name + ".partial") / folder
    with TileServer(tiles, service=_service(), fail_always={(3, 1, 1)}) as srv:
        first = cli("run", "--service", srv.url, "--levels", "0-3", "--output", str(output),
                    "--exporter", exporter, "--json")
        assert first.code == 1, first.stderr  # partial: level 3's bundle has a failed tile
        job_id = json.loads(first.stdout)["job_id"]
        bundles = {p.parent.name: p for p in staged.rglob("*.bundle")}
        assert sorted(bundles) == ["L00", "L01", "L02", "L03"]  # L03 staged with its hole
        bundles["L02"].unlink()  # gone
        with open(bundles["L01"], "r+b") as f:  # damaged: cut in the middle of its tiles
            f.truncate(bundles["L01"].stat().st_size - 300)
        srv.fail_always.clear()
        before = dict(srv.requests)
        again = cli("resume", str(job_id), "--json")
        assert again.code == 0, again.stderr
        report = json.loads(again.stdout)
        refetched = {p for p, n in srv.requests.items() if "/tile/" in p and n > before.get(p, 0)}
    assert report["status"] == "completed"
    assert report["tiles_written"] == len(tiles)
    assert all_tiles(output) == tiles
    # the untouched bundle of level 0 was kept; levels 1 and 2 (and 3) were fetched again
    assert srv.tile_path(0, 0, 0) not in refetched
    assert {srv.tile_path(lv, r, c) for lv, r, c in tiles if lv in (1, 2)} <= refetched
    if exporter != "tpkx":
        return  # GDAL reads Compact V2 only
    scheme = web_mercator_scheme(3)
    with open_gdal(output) as ds:  # GDAL reads the resumed package whole, level 1 included
        for key in [(1, 1, 1), (2, 3, 3), (0, 0, 0)]:
            assert tile_centre_rgba(ds, scheme, *key)[:3] == colour_of(*key)


def test_a_staged_bundle_is_whole_only_at_the_length_its_header_gives(tmp_path: Path) -> None:
    """Cut short or grown past its header (an append cut off before the header was rewritten):
    either way the bundle is not done, and resume fetches it again."""
    from cacheorch.formats.bundle import BundleWriter
    from cacheorch.plugins._staging import _whole_bundle
    path = tmp_path / "R0000C0000.bundle"
    writer = BundleWriter(path, 0, 0)
    writer.add(0, 0, b"tile bytes")
    writer.finish()
    assert _whole_bundle(path)
    data = path.read_bytes()
    path.write_bytes(data + b"\0" * 7)
    assert not _whole_bundle(path)
    path.write_bytes(data[:-1])
    assert not _whole_bundle(path)
    path.write_bytes(data[:40])  # not even a header
    assert not _whole_bundle(path)

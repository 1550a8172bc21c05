"""Kill-and-resume trials: a ``cacheorch run`` killed with SIGKILL at any moment, then resumed,
ends with exactly the tiles of an uninterrupted run; and after every kill, each bundle the catalog
calls done is present and whole on disk (the catalog never gets ahead of the bytes).

Kill moments are seeded and spread from "just started" (before the catalog exists) through the
fetching of every bundle to "committing" (every bundle recorded, the package being written).
Trials run two at a time, each with its own loopback server, catalog and output.
"""
from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from _gdal import colour_of, open_gdal, solid_png, tile_centre_rgba
from _tileserver import TileServer
from _tiles import all_tiles, mercator_service_json
from cacheorch.formats.bundle import BundleReader, bundle_name, level_folder
from cacheorch.tiling import web_mercator_scheme

LEVELS = "8-9"
# A band across the equator: rows 127-128 at level 8 and 255-256 at level 9, every column, so
# 2×2 + 2×4 = 12 bundles (both bundle rows at each level) and 1536 tiles.
BBOX = "bbox:-179.9,-0.3,179.9,0.3@4326"
BUNDLES = 12
TRIALS = 10
DELAY = 0.0015  # per tile, so that the job lasts long enough for the kills to land mid-way

Tiles = dict[tuple[int, int, int], bytes]


def _service() -> dict:
    return mercator_service_json(9)


def _tiles() -> Tiles:
    tiles: Tiles = {}
    for level, rows in ((8, (127, 128)), (9, (255, 256))):
        for r in rows:
            for c in range(2 ** level):
                tiles[(level, r, c)] = solid_png(colour_of(level, r, c))
    return tiles


def _run_args(url: str, output: Path) -> list[str]:
    return [sys.executable, "-m", "cacheorch", "run", "--service", url, "--levels", LEVELS,
            "--aoi", BBOX, "--output", str(output), "--workers", "4", "--json"]


def _env(catalog: Path, home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["CACHEORCH_CATALOG"] = str(catalog)
    env["CACHEORCH_CONFIG"] = str(home / "no-config.ini")
    return env


def _done_bundles(catalog: Path) -> list[tuple[int, int, int, int]]:
    """(level, bundle row, bundle col, tiles written) the catalog records as done."""
    if not catalog.exists():
        return []
    try:
        con = sqlite3.connect(f"file:{catalog}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("select level, bundle_row, bundle_col, tiles_written "
                               "from job_bundles where state = 'done'").fetchall()
        finally:
            con.close()
    except sqlite3.OperationalError:  # not created (or not migrated) yet
        return []


@dataclass
class Trial:
    index: int
    kill_after: float | None  # seconds after start, else ``bundles`` recorded, then ``jitter``
    bundles: int = 0
    jitter: float = 0.0
    phase: str = ""
    done_at_kill: int = 0
    failures: list[str] | None = None


def _check_durable(catalog: Path, output: Path, tiles: Tiles) -> tuple[int, list[str]]:
    """Every bundle the catalog lists as done is whole on disk, staged or in the output."""
    problems: list[str] = []
    done = _done_bundles(catalog)
    staging = output.with_name(output.name + ".partial")
    packaged: Tiles | None = None
    for level, brow, bcol, written in done:
        expected = {(level, r, c): data for (lv, r, c), data in tiles.items()
                    if lv == level and r // 128 * 128 == brow and c // 128 * 128 == bcol}
        path = staging / "tile" / level_folder(level) / bundle_name(brow, bcol)
        if path.is_file():
            try:
                with BundleReader(path, bundle_row=brow, bundle_col=bcol) as reader:
                    got = {(level, r, c): data for r, c, data in reader.tiles()}
            except Exception as exc:  # noqa: BLE001 - a torn bundle is the finding
                problems.append(f"{path.name}: unreadable ({exc})")
                continue
        elif output.is_file():  # committed: the staging folder is (being) removed
            if packaged is None:
                packaged = all_tiles(output)
            got = {k: v for k, v in packaged.items()
                   if k[0] == level and k[1] // 128 * 128 == brow and k[2] // 128 * 128 == bcol}
        else:
            problems.append(f"L{level} {brow},{bcol} recorded done but absent from disk")
            continue
        if got != expected or written != len(expected):
            problems.append(f"L{level} {brow},{bcol}: {len(got)} tiles on disk, {written} recorded,"
                            f" {len(expected)} expected")
    return len(done), problems


def _trial(trial: Trial, root: Path, tiles: Tiles, reference: Tiles) -> Trial:
    home = root / f"trial{trial.index}"
    home.mkdir()
    (home / "no-config.ini").write_text("")
    catalog, output = home / "catalog.sqlite", home / "out.tpkx"
    env = _env(catalog, home)
    problems: list[str] = []
    with TileServer(tiles, service=_service(), delay=DELAY) as srv:
        proc = subprocess.Popen(_run_args(srv.url, output), cwd=home, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        start = time.monotonic()
        while proc.poll() is None:
            elapsed = time.monotonic() - start
            if trial.kill_after is not None and elapsed >= trial.kill_after:
                break
            if trial.kill_after is None and len(_done_bundles(catalog)) >= trial.bundles:
                time.sleep(trial.jitter)
                break
            if elapsed > 60:
                break
            time.sleep(0.002)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            trial.phase = "killed"
        else:
            trial.phase = "finished before the kill"
        out, err = proc.communicate()
        trial.done_at_kill, found = _check_durable(catalog, output, tiles)
        problems += found
        srv.delay = 0
        jobs = _jobs(catalog)
        if not jobs:  # killed before the job was recorded: a new run is the way on
            args = _run_args(srv.url, output)
            if (output.with_name(output.name + ".partial")).exists():
                problems.append("staging left behind by a job the catalog does not know")
        elif jobs[0][1] == "completed":
            args = []
        else:
            args = [sys.executable, "-m", "cacheorch", "resume", str(jobs[0][0]), "--json"]
        if args:
            finish = subprocess.run(args, cwd=home, env=env, capture_output=True, text=True)
            if finish.returncode != 0:
                problems.append(f"finishing failed ({finish.returncode}): {finish.stderr[-500:]}")
            elif json.loads(finish.stdout)["status"] != "completed":
                problems.append(f"finished as {json.loads(finish.stdout)['status']}")
    if not problems:
        got = all_tiles(output)
        if got != reference:
            problems.append(f"output differs from the uninterrupted run: {len(got)} tiles vs "
                            f"{len(reference)}, {sum(got.get(k) != v for k, v in reference.items())}"
                            " differ")
        if any(p.name.endswith((".partial",)) or ".tmp-" in p.name for p in home.iterdir()):
            problems.append(f"leftovers: {sorted(p.name for p in home.iterdir())}")
    trial.failures = problems
    return trial


def _jobs(catalog: Path) -> list[tuple[int, str]]:
    """(id, status) of the catalog's jobs, read with sqlite3 (a process start is a second here)."""
    if not catalog.exists():
        return []
    con = sqlite3.connect(catalog, timeout=5)
    try:
        return con.execute("select id, status from jobs order by id").fetchall()
    except sqlite3.OperationalError:  # killed before the tables were made
        return []
    finally:
        con.close()


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_output(tmp_path: Path
                                                                                ) -> None:
    tiles = _tiles()
    ref_home = tmp_path / "reference"
    ref_home.mkdir()
    (ref_home / "no-config.ini").write_text("")
    with TileServer(tiles, service=_service(), delay=DELAY) as srv:
        started = time.monotonic()
        ref = subprocess.run(_run_args(srv.url, ref_home / "out.tpkx"), cwd=ref_home,
                             env=_env(ref_home / "catalog.sqlite", ref_home),
                             capture_output=True, text=True)
        duration = time.monotonic() - started
    assert ref.returncode == 0, ref.stderr
    assert json.loads(ref.stdout)["status"] == "completed"
    reference = all_tiles(ref_home / "out.tpkx")
    assert reference == tiles  # the uninterrupted run got everything, byte for byte
    with open_gdal(ref_home / "out.tpkx") as ds:  # and GDAL reads it
        assert tile_centre_rgba(ds, web_mercator_scheme(9), 9, 256, 300)[:3] == \
            colour_of(9, 256, 300)

    rng = random.Random(20240611)
    # Kill moments: three by the clock early on (start-up, planning, first tiles), five once a
    # random number of bundles is recorded (plus a random few ms, so the kill lands anywhere in
    # the next bundle's fetching or writing), and two as the last bundle is recorded, when the
    # package is being written and the staging folder removed. Counting bundles rather than
    # seconds keeps the spread when a loaded machine runs the job slower than the reference.
    trials = [Trial(i, rng.uniform(0.05, min(0.6, duration / 3))) for i in range(3)]
    trials += [Trial(3 + i, None, bundles=rng.randint(1, BUNDLES - 2),
                     jitter=rng.uniform(0, 0.05)) for i in range(TRIALS - 5)]
    trials += [Trial(TRIALS - 2, None, bundles=BUNDLES), Trial(TRIALS - 1, None, bundles=BUNDLES,
                                                               jitter=0.003)]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda t: _trial(t, tmp_path, tiles, reference), trials))
    report = [(t.kill_after and round(t.kill_after, 2), t.bundles, t.phase, t.done_at_kill,
               t.failures) for t in results]
    assert all(not t.failures for t in results), report
    assert sum(t.phase == "killed" for t in results) >= TRIALS - 2, report
    # the kills landed at different stages: mid-way, and with every bundle recorded
    done_counts = {t.done_at_kill for t in results if t.phase == "killed"}
    assert any(0 < n < BUNDLES for n in done_counts) and BUNDLES in done_counts, report


class _DiedAfterPublishing(BaseException):
    """Stands for a SIGKILL that lands after the output is published, before the catalog hears."""


@pytest.mark.parametrize("exporter", ["tpkx", "compact-v2"])
def test_killed_after_publishing_resume_records_the_job_done(tmp_path: Path, cli, exporter: str,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """The narrowest window: the output is in place, the catalog still says running. Resume
    must see the published output and record the job as completed, not refuse the output."""
    from cacheorch.catalog.store import Catalog
    tiles = {(2, r, c): solid_png(colour_of(2, r, c)) for r in range(4) for c in range(4)}
    output = tmp_path / ("out.tpkx" if exporter == "tpkx" else "out")
    real = Catalog.set_status

    def dies_before_completed(self, job_id, status, error=None):
        if status == "completed":
            raise _DiedAfterPublishing
        return real(self, job_id, status, error)

    with TileServer(tiles, service=_service()) as srv:
        monkeypatch.setattr(Catalog, "set_status", dies_before_completed)
        with pytest.raises(_DiedAfterPublishing):
            cli("run", "--service", srv.url, "--levels", "2", "--exporter", exporter,
                "--output", str(output), "--json")
        monkeypatch.setattr(Catalog, "set_status", real)
        assert output.exists()
        job = json.loads(cli("jobs", "--json").stdout)["jobs"][0]
        assert job["status"] == "interrupted"  # recorded running; no process runs it
        fetched = sum(srv.requests.values())
        resumed = cli("resume", str(job["id"]), "--json")
        assert resumed.code == 0, resumed.stderr
        assert json.loads(resumed.stdout)["status"] == "completed"
        assert sum(srv.requests.values()) - fetched <= 1  # at most the service JSON again
    assert all_tiles(output) == tiles
    assert not output.with_name(output.name + ".partial").exists()

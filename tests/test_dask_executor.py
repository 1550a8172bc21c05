"""``--executor dask``: a scheduler and two workers on loopback give the local executor's output.

The cluster is real (``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1, started
here), so tasks are pickled, shipped and run in other processes that import cacheorch on their
own, and fetch from the tests' loopback tile server like any remote worker would.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import distributed  # noqa: E402,F401  (in [test]: a missing package fails, never skips)

from _gdal import colour_of, open_gdal, solid_png, tile_centre_rgba  # noqa: E402
from _tileserver import TileServer  # noqa: E402
from _tiles import all_tiles, mercator_service_json  # noqa: E402
from cacheorch.jobspec import JobSpec  # noqa: E402
from cacheorch.planner import BundlePlan  # noqa: E402
from cacheorch.tiling import web_mercator_scheme  # noqa: E402

LEVEL = 9
# rows 240-249, columns 128-383 at level 9: 2,560 tiles in two bundles of 1,280 (each shipped
# as two tasks of at most 1,024 tiles)
BBOX = "bbox:-90,4.3,90,11.1@4326"
TOKEN = "s3cr3t-dask-token-0123456789"


def _service() -> dict:
    return mercator_service_json(LEVEL)


def _dask_exe() -> str:
    exe = Path(sys.executable).with_name("dask")
    if exe.exists():
        return str(exe)
    found = shutil.which("dask")
    if not found:  # dask[distributed] is in [test]: its command line must be there
        pytest.fail("the dask command line is not installed (pip install -e '.[test]')",
                    pytrace=False)
    return found


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A dask scheduler and two single-thread workers, each its own process, on 127.0.0.1."""
    folder = tmp_path_factory.mktemp("dask")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCGIS_")}
    env |= {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    sched_file = folder / "scheduler.json"
    exe = _dask_exe()
    procs: list[subprocess.Popen[bytes]] = []
    logs = []

    def start(name: str, args: list[str]) -> None:
        log = open(folder / f"{name}.log", "wb")
        logs.append(log)
        procs.append(subprocess.Popen([exe, *args], cwd=folder, env=env, stdout=log,
                                      stderr=subprocess.STDOUT))

    try:
        start("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                            "--scheduler-file", str(sched_file)])
        deadline = time.monotonic() + 30
        while not sched_file.exists():
            assert procs[0].poll() is None, (folder / "scheduler.log").read_text()
            assert time.monotonic() < deadline, "the dask scheduler did not start in 30 s"
            time.sleep(0.05)
        for i in range(2):
            start(f"worker{i}", ["worker", "--scheduler-file", str(sched_file), "--host",
                                 "127.0.0.1", "--nthreads", "1", "--no-nanny", "--no-dashboard",
                                 "--name", f"w{i}"])
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        with distributed.Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=30)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
        text = "".join((folder / f"{n}.log").read_text(errors="replace")
                       for n in ("scheduler", "worker0", "worker1"))
        assert TOKEN not in text, "a dask log shows the token"


@functools.cache
def _band_tiles() -> tuple[tuple[tuple[int, int, int], bytes], ...]:
    """256-pixel tiles (GDAL reads them at their level), one colour per tile; made once (2 s)."""
    return tuple(((LEVEL, r, c), solid_png(colour_of(LEVEL, r, c)))
                 for r in range(240, 250) for c in range(128, 384))


def _band() -> dict[tuple[int, int, int], bytes]:
    return dict(_band_tiles())


def _job(cli, job_id: int) -> dict:
    return json.loads(cli("job", str(job_id), "--json").stdout)


@pytest.mark.slow  # ~9 s: two 2,560-tile jobs and the tiles' PNGs
def test_dask_output_equals_local_tile_for_tile(tmp_path: Path, cli, scheduler: str) -> None:
    tiles = _band()
    missing = {(LEVEL, 241, 130), (LEVEL, 249, 300)}
    failing = {(LEVEL, 245, 200), (LEVEL, 246, 370)}
    common = ["--service", "", "--levels", str(LEVEL), "--aoi", BBOX, "--allow-partial",
              "--exporter", "compact-v2", "--workers", "4", "--token", TOKEN, "--json"]
    with TileServer(tiles, service=_service(), missing=missing, fail_always=failing) as srv:
        common[1] = srv.url
        local = cli("run", *common, "--output", str(tmp_path / "local"))
        served_local = sum(n for p, n in srv.requests.items() if "/tile/" in p)
        dask = cli("run", *common, "--output", str(tmp_path / "dask"), "--executor", "dask",
                   "--scheduler", scheduler)
        served_dask = sum(n for p, n in srv.requests.items() if "/tile/" in p) - served_local
        tokens = {q.get("token", [None])[0] for p, q, _ in srv.log if "/tile/" in p}
    assert local.code == dask.code == 1, (local.stderr, dask.stderr)  # partial: 2 tiles failed
    assert local.stdout and dask.stdout, (local.stderr, dask.stderr)
    a, b = json.loads(local.stdout), json.loads(dask.stdout)
    assert a["status"] == b["status"] == "partial"
    for field in ("tiles_planned", "tiles_written", "tiles_missing", "tiles_failed", "bytes"):
        assert a[field] == b[field], field
    assert b["tiles_planned"] == 2560 and b["tiles_written"] == 2556
    assert served_dask == served_local  # every tile asked for once per run (fails retried alike)
    assert tokens == {TOKEN}  # the workers sent the job's token
    with distributed.Client(scheduler, timeout=30) as client:  # the workers ran the tasks
        ran = client.run(lambda: "cacheorch.dask_executor" in sys.modules)
    assert len(ran) == 2 and any(ran.values()), ran

    got_local, got_dask = all_tiles(tmp_path / "local"), all_tiles(tmp_path / "dask")
    assert got_dask == got_local
    assert got_dask == {k: v for k, v in tiles.items() if k not in missing | failing}

    # the catalog recorded the same counts per level and the same failed tiles
    ja, jb = _job(cli, a["job_id"]), _job(cli, b["job_id"])
    assert ja["levels"] == jb["levels"]
    def failed_tiles(job: dict) -> list[str]:
        return sorted(e.split(":")[0] for e in job["errors"] if e.startswith("level "))
    assert failed_tiles(ja) == failed_tiles(jb) == ["level 9 row 245 col 200",
                                                    "level 9 row 246 col 370"]
    assert sum("level 9 row 245 col 200" in e for e in jb["errors"]) == 1
    assert JobSpec.from_parameters(_parameters(b["job_id"])).scheduler == scheduler

    # an independent reader (GDAL's ESRIC driver) sees the tiles where they belong
    scheme = web_mercator_scheme(LEVEL)
    with open_gdal(tmp_path / "dask") as ds:
        for (lv, r, c) in [(LEVEL, 240, 128), (LEVEL, 249, 383), (LEVEL, 244, 255), (LEVEL, 244, 256)]:
            assert tile_centre_rgba(ds, scheme, lv, r, c)[:3] == colour_of(lv, r, c)
        assert tile_centre_rgba(ds, scheme, LEVEL, 245, 200)[3] == 0  # failed: absent


def _parameters(job_id: int) -> dict:
    import sqlite3
    con = sqlite3.connect(os.environ["CACHEORCH_CATALOG"])
    try:
        for (text,) in con.execute("select parameters from jobs where id = ?", (job_id,)):
            return json.loads(text)
    finally:
        con.close()
    raise AssertionError(f"no job {job_id}")


def test_dask_resume_fetches_only_unfinished_bundles(tmp_path: Path, cli, scheduler: str) -> None:
    """A partial dask job resumes on the cluster (the executor is part of the job's parameters)
    and fetches again only the bundle whose tile failed."""
    tiles = _band()
    output = tmp_path / "band.tpkx"
    with TileServer(tiles, service=_service(), fail_always={(LEVEL, 245, 200)}) as srv:
        first = cli("run", "--service", srv.url, "--levels", str(LEVEL), "--aoi", BBOX,
                    "--output", str(output), "--executor", "dask", "--scheduler", scheduler,
                    "--json")
        assert first.code == 1, first.stderr
        report = json.loads(first.stdout)
        assert report["status"] == "partial" and report["tiles_failed"] == 1
        assert not output.exists()
        srv.fail_always.clear()
        before = dict(srv.requests)
        again = cli("resume", str(report["job_id"]), "--json")
        assert again.code == 0, again.stderr
        assert json.loads(again.stdout)["status"] == "completed"
        refetched = {p for p, n in srv.requests.items() if "/tile/" in p and n > before.get(p, 0)}
    # bundle columns 128-255 held the failed tile; 256-383 was done and is not fetched again
    assert refetched == {srv.tile_path(LEVEL, r, c) for r in range(240, 250) for c in range(128, 256)}
    assert all_tiles(output) == tiles


def test_dask_executor_bad_input_is_one_line(tmp_path: Path, cli, monkeypatch) -> None:
    with TileServer(default_tile=solid_png((1, 2, 3), size=8), service=_service()) as srv:
        base = ["run", "--service", srv.url, "--levels", str(LEVEL), "--aoi", BBOX,
                "--output", str(tmp_path / "x.tpkx")]
        no_scheduler = cli(*base, "--executor", "dask")
        assert no_scheduler.code != 0 and "--scheduler" in no_scheduler.stderr
        stray = cli(*base, "--scheduler", "tcp://127.0.0.1:1")
        assert stray.code != 0 and "--executor dask" in stray.stderr
        import cacheorch.dask_executor as executor
        monkeypatch.setattr(executor, "_CONNECT_TIMEOUT", 1.0)
        nobody = cli(*base, "--executor", "dask", "--scheduler", "tcp://127.0.0.1:1")
        served = sum(n for p, n in srv.requests.items() if "/tile/" in p)
    assert nobody.code != 0 and "cannot reach the dask scheduler at tcp://127.0.0.1:1" in nobody.stderr
    for result in (no_scheduler, stray, nobody):
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert served == 0
    assert not (tmp_path / "x.tpkx").exists()


def test_split_bundle_and_credentials() -> None:
    from cacheorch.connection import Connection
    from cacheorch.dask_executor import Credentials, split_bundle
    bundle = BundlePlan(9, 0, 0, ((0, 0, 127), (1, 0, 127), (2, 5, 9)))
    parts = split_bundle(bundle, 100)
    assert [p.tile_count for p in parts] == [100, 100, 61]
    assert [k for p in parts for k in p.keys()] == list(bundle.keys())
    assert split_bundle(bundle, 1000) == [bundle]
    creds = Credentials.of(Connection(token=TOKEN, referer="https://app.example"))
    assert creds.connection().token == TOKEN and creds.connection().token_provider is None
    assert TOKEN not in repr(creds) and TOKEN not in str(creds)
    import pickle
    assert pickle.loads(pickle.dumps(creds)) == creds
    polite = Connection(token=TOKEN, max_rps=100.0, max_failure_rate=0.5, failure_window=50)
    shared = Credentials.of(polite, threads=4).connection()  # --max-rps holds over the cluster
    assert (shared.max_rps, shared.max_failure_rate, shared.failure_window) == (25.0, 0.5, 50)


def test_jobspec_round_trips_the_executor() -> None:
    spec = JobSpec(service="https://x/MapServer", executor="dask", scheduler="tcp://10.0.0.5:8786")
    assert JobSpec.from_parameters(spec.to_parameters()) == spec
    assert JobSpec.from_parameters({"service": "s"}).executor == "local"


def test_dask_merge_fetches_only_what_the_output_lacks(tmp_path: Path, cli, scheduler: str) -> None:
    """--mode merge on the cluster: the client copies the tiles the existing output holds, the
    workers fetch only the rest (as row spans), and old bundles outside the plan are kept."""
    tiles = _band()
    output = tmp_path / "band.tpkx"
    with TileServer(tiles | {(2, 1, 1): solid_png((9, 9, 9))}, service=_service()) as srv:
        base = ["run", "--service", srv.url, "--output", str(output), "--json"]
        assert cli(*base, "--levels", "2", "--aoi", "2=bbox:-1,-1,1,1@4326").code == 0
        left = json.loads(cli(*base, "--levels", str(LEVEL), "--aoi",  # columns 128-255
                              "bbox:-90,4.3,-0.5,11.1@4326", "--mode", "merge").stdout)
        assert left["status"] == "completed"
        before = dict(srv.requests)
        merged = cli(*base, "--levels", str(LEVEL), "--aoi", BBOX, "--mode", "merge",
                     "--executor", "dask", "--scheduler", scheduler)
        assert merged.code == 0, merged.stderr
        asked = {p for p, n in srv.requests.items() if "/tile/" in p and n > before.get(p, 0)}
    report = json.loads(merged.stdout)
    held = {k for k in tiles if k[2] < 256}  # the left half, exported by the first merge
    assert asked == {srv.tile_path(*k) for k in tiles if k not in held}
    # kept: the held half, and the level-2 tile copied with its bundle (outside the plan)
    assert report["tiles_kept"] == len(held) + 1
    assert report["tiles_written"] == len(tiles) - len(held)
    got = all_tiles(output)
    assert got == tiles | {(2, 1, 1): solid_png((9, 9, 9))}  # level 2 kept, outside the plan


def test_dask_resume_failed_fetches_only_the_failed_tiles(tmp_path: Path, cli, scheduler: str
                                                          ) -> None:
    """resume --failed on the cluster: the staged bundle's good tiles are kept on the client and
    the workers are asked for the failed tiles alone."""
    tiles = _band()
    output = tmp_path / "band.tpkx"
    failing = {(LEVEL, 245, 200), (LEVEL, 246, 370)}
    with TileServer(tiles, service=_service(), fail_always=failing) as srv:
        first = cli("run", "--service", srv.url, "--levels", str(LEVEL), "--aoi", BBOX,
                    "--output", str(output), "--executor", "dask", "--scheduler", scheduler,
                    "--json")
        assert first.code == 1 and json.loads(first.stdout)["tiles_failed"] == 2, first.stderr
        srv.fail_always.clear()
        before = dict(srv.requests)
        again = cli("resume", str(json.loads(first.stdout)["job_id"]), "--failed", "--json")
        assert again.code == 0, again.stderr
        refetched = {p for p, n in srv.requests.items() if "/tile/" in p and n > before.get(p, 0)}
    assert refetched == {srv.tile_path(*k) for k in failing}
    assert all_tiles(output) == tiles

"""One catalog shared by concurrent jobs: three ``cacheorch run`` processes at once, from one
service into different outputs, end with every bundle row recorded and no "database is locked".
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from _gdal import colour_of, solid_png
from _tileserver import TileServer
from _tiles import mercator_service_json
from cacheorch.catalog import Catalog

BBOX = "bbox:-179.9,-0.3,179.9,0.3@4326"  # 12 bundles over levels 8-9 (see test_crash_trials)
BUNDLES, TILES_PLANNED = 12, 1536


def _service() -> dict:
    return mercator_service_json(9)


@pytest.mark.slow
def test_concurrent_jobs_on_one_catalog_lose_nothing(tmp_path: Path) -> None:
    tile = solid_png(colour_of(9, 1, 1))
    catalog = Path(os.environ["CACHEORCH_CATALOG"])
    Catalog.open(catalog).close()  # migrated once, so every process starts writing at once
    outputs = [tmp_path / f"out{i}.tpkx" for i in range(3)]
    with TileServer(default_tile=tile, service=_service(), delay=0.0005) as srv:
        procs = [subprocess.Popen(
            [sys.executable, "-m", "cacheorch", "run", "--service", srv.url, "--levels", "8-9",
             "--aoi", BBOX, "--output", str(out), "--workers", "2", "--json"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for out in outputs]
        # a reader polls meanwhile, as `cacheorch jobs` in another terminal would
        stop = threading.Event()
        reads: list[int] = []

        def poll() -> None:
            while not stop.is_set():
                with Catalog.open(catalog) as cat:
                    reads.append(len(cat.list_jobs()))
        reader = threading.Thread(target=poll)
        reader.start()
        results = [p.communicate(timeout=120) for p in procs]
        stop.set()
        reader.join()
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, err
        assert "locked" not in err.lower()
        assert json.loads(out)["status"] == "completed"
    assert reads  # the reader was never locked out either

    con = sqlite3.connect(catalog)
    try:
        jobs = con.execute("select id, status, tiles_planned, tiles_written, output from jobs "
                           "order by id").fetchall()
        assert len(jobs) == 3
        started, finished = zip(*con.execute("select started_at, finished_at from jobs"))
        assert max(started) < min(finished)  # the three really ran at the same time
        assert {row[4] for row in jobs} == {str(o) for o in outputs}
        for job_id, status, planned, written, _ in jobs:
            assert (status, planned, written) == ("completed", TILES_PLANNED, TILES_PLANNED)
            bundles = con.execute("select count(*), sum(tiles_written) from job_bundles "
                                  "where job_id = ? and state = 'done'", (job_id,)).fetchone()
            assert bundles == (BUNDLES, TILES_PLANNED)
            levels = con.execute("select sum(tiles_written) from job_levels where job_id = ?",
                                 (job_id,)).fetchone()
            assert levels == (TILES_PLANNED,)
        assert con.execute("select count(*) from services").fetchone() == (1,)  # shared, once
        assert con.execute("pragma integrity_check").fetchone() == ("ok",)
    finally:
        con.close()
    assert all(o.is_file() for o in outputs)

"""Job states a reader can trust, and exit codes for failures during a job: a catalog on a
read-only mount still lists its jobs; a job whose process vanished is shown interrupted, not
running; a full disk during a job ends it with exit 1 (resumable) and a message naming the path.

Read-only and full file systems are real ones where this runs as root (a tmpfs mounted for the
test); elsewhere the catalog is made read-only with file modes and the disk fills through a
write that raises ENOSPC once a byte budget is spent.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from _gdal import colour_of, open_gdal, tile_centre_rgba
from _tileserver import TileServer
from _tiles import all_tiles, mercator_service_json, pyramid
from cacheorch.catalog import Catalog
from cacheorch.tiling import web_mercator_scheme

TILES = pyramid(range(5))  # one bundle per level


def _mount_tmpfs(where: Path, size: str) -> bool:
    """Mount a tmpfs of ``size`` at ``where``; False where this process may not mount."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True)
    return done.returncode == 0


def _remount(where: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[tuple[Path, bool]]:
    where = tmp_path / "small"
    mounted = _mount_tmpfs(where, "400k")
    yield where, mounted
    if mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


# -- read-only catalog ---------------------------------------------------------------------------

def test_jobs_and_job_read_a_catalog_on_a_read_only_file_system(tmp_path: Path, cli) -> None:
    where = tmp_path / "ro"
    mounted = _mount_tmpfs(where, "4m")
    try:
        path = where / "catalog.sqlite"
        with TileServer(TILES, service=mercator_service_json(4)) as srv:
            done = cli("--catalog", str(path), "run", "--service", srv.url, "--levels", "0-1",
                       "--output", str(tmp_path / "o.tpkx"))
            assert done.code == 0, done.stderr
        before = path.read_bytes()
        if mounted:
            _remount(where, "ro")
        else:  # not root: file modes make it read-only for this process
            path.chmod(0o444)
            where.chmod(0o555)
        assert not os.access(path, os.W_OK)
        listed = cli("--catalog", str(path), "jobs", "--json")
        assert listed.code == 0, listed.stderr
        assert [(j["id"], j["status"]) for j in json.loads(listed.stdout)["jobs"]] == \
            [(1, "completed")]
        table = cli("--catalog", str(path), "jobs")
        assert table.code == 0 and "completed" in table.stdout, table.stderr
        one = cli("--catalog", str(path), "job", "1", "--json")
        assert one.code == 0 and json.loads(one.stdout)["tiles_written"] == 5
        # a command that must write says so in one line, and the file is unchanged
        refused = cli("--catalog", str(path), "resume", "1")
        assert refused.code == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert path.read_bytes() == before
        assert sorted(p.name for p in where.iterdir()) == ["catalog.sqlite", "catalog.sqlite.lock"]
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(where)], check=False)
        elif where.exists():
            where.chmod(0o755)


# -- a job whose process is gone -----------------------------------------------------------------

def _catalog_with_running_job(path: Path, pid: int, host: str | None) -> int:
    from cacheorch.catalog.liveness import PROCESS_EVENT
    with Catalog.open(path) as catalog:
        sid = catalog.ensure_service(url="http://127.0.0.1:9/x/MapServer", name="x",
                                     kind="MapServer", fingerprint="f", scheme={})
        job_id = catalog.create_job(name=None, service_id=sid,
                                    service_url="http://127.0.0.1:9/x/MapServer",
                                    exporter="tpkx", output="o.tpkx", parameters={}, levels=[])
        if host is not None:
            catalog.add_event(job_id, PROCESS_EVENT, f"pid {pid} on {host}")
    return job_id


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(),
                    reason="a process's start time is read from /proc (Linux)")
def test_a_running_job_whose_pid_was_reused_later_is_interrupted(tmp_path: Path, cli) -> None:
    """The pid recorded is alive, but it is a process started after the job: not the job's."""
    import socket
    path = tmp_path / "catalog.sqlite"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _catalog_with_running_job(path, other.pid, socket.gethostname())
        jobs = json.loads(cli("jobs", "--json").stdout)["jobs"]
        assert jobs[0]["status"] == "running", jobs  # its process is alive
        with sqlite3.connect(path) as raw:  # the job started an hour before that process
            raw.execute("update jobs set started_at = ?",
                        ((datetime.now(timezone.utc) - timedelta(hours=1)).isoformat(),))
        raw.close()
        jobs = json.loads(cli("jobs", "--json").stdout)["jobs"]
        assert jobs[0]["status"] == "interrupted", jobs
        assert f"pid {other.pid} on {socket.gethostname()}" in jobs[0]["error"]
    finally:
        other.kill()
        other.wait()


def test_a_running_job_of_another_host_is_shown_running_and_not_resumed_here(tmp_path: Path,
                                                                            cli) -> None:
    path = tmp_path / "catalog.sqlite"
    job_id = _catalog_with_running_job(path, 999_999_999, "another-machine")
    jobs = json.loads(cli("jobs", "--json").stdout)["jobs"]
    assert jobs[0]["status"] == "running"  # nothing here can tell
    refused = cli("resume", str(job_id))
    assert refused.code == 2
    assert "running in process 999999999 on another-machine" in refused.stderr


# -- a full disk during a job --------------------------------------------------------------------

def test_a_full_disk_ends_the_job_with_exit_1_naming_the_path_and_resume_finishes_it(
        tmp_path: Path, cli, small_disk, monkeypatch: pytest.MonkeyPatch) -> None:
    where, mounted = small_disk
    output = where / "out.tpkx"
    from cacheorch.formats import bundle
    real = bundle._writev_all
    if not mounted:  # the same failure, from a write that runs out of a 400 KB budget
        budget = [400_000]

        def writev_all(fd, buffers):
            budget[0] -= sum(len(b) for b in buffers)
            if budget[0] < 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real(fd, buffers)
        monkeypatch.setattr(bundle, "_writev_all", writev_all)
    with TileServer(TILES, service=mercator_service_json(4)) as srv:
        first = cli("run", "--service", srv.url, "--levels", "0-4", "--output", str(output),
                    "--json")
        assert first.code == 1, (first.code, first.stderr)
        assert "Traceback" not in first.stderr and first.stderr.count("\n") == 1, first.stderr
        assert "No space left on device" in first.stderr and str(where) in first.stderr
        job = json.loads(cli("jobs", "--json").stdout)["jobs"][0]
        assert job["status"] == "failed" and "No space left on device" in job["error"]
        assert not output.exists()
        # room again: resume finishes it, without refetching the bundles already staged
        if mounted:
            _remount(where, "size=8m")
        else:
            monkeypatch.setattr(bundle, "_writev_all", real)
        staged = {p.parent.name for p in where.rglob("*.bundle")}
        before = dict(srv.requests)
        again = cli("resume", str(job["id"]), "--json")
        assert again.code == 0, again.stderr
        assert json.loads(again.stdout)["status"] == "completed"
        for level in staged:
            lv = int(level[1:])
            assert srv.requests[srv.tile_path(lv, 0, 0)] == before[srv.tile_path(lv, 0, 0)]
    assert all_tiles(output) == TILES
    scheme = web_mercator_scheme(4)
    with open_gdal(output) as ds:
        for key in [(4, 15, 15), (0, 0, 0)]:
            assert tile_centre_rgba(ds, scheme, *key)[:3] == colour_of(*key)

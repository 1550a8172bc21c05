"""The catalog store: jobs, levels, bundle checkpoints, redaction, and sharing one file."""
from __future__ import annotations

import multiprocessing
import runpy
import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cacheorch.catalog import Catalog
from cacheorch.errors import CatalogError

LEVELS = [
    {"level": 3, "scale": 73957190.948944, "resolution": 19567.87924099992, "tiles_planned": 64,
     "area_name": "extent"},
    {"level": 4, "scale": 36978595.474472, "resolution": 9783.93962049996, "tiles_planned": 256,
     "area_name": "town"},
]


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    with Catalog.open(tmp_path / "c.sqlite") as opened:
        yield opened


def _job(catalog: Catalog, *, name: str = "streets", levels: list[dict] | None = None) -> int:
    sid = catalog.ensure_service(url="http://127.0.0.1:8080/arcgis/rest/services/S/MapServer",
                                 name="S", kind="MapServer", fingerprint="abc",
                                 scheme={"rows": 256, "cols": 256})
    return catalog.create_job(name=name, service_id=sid,
                              service_url="http://127.0.0.1:8080/arcgis/rest/services/S/MapServer",
                              exporter="tpkx", output="/tmp/out.tpkx",
                              parameters={"levels": "3-4", "workers": 8},
                              levels=LEVELS if levels is None else levels)


def _totals(row: dict) -> tuple[int, int, int, int]:
    return row["tiles_written"], row["tiles_missing"], row["tiles_failed"], row["bytes"]


def test_ensure_service_is_idempotent_per_scheme(catalog: Catalog) -> None:
    kw = dict(url="http://127.0.0.1/MapServer", name="S", kind="MapServer", scheme={})
    first = catalog.ensure_service(fingerprint="one", **kw)
    assert catalog.ensure_service(fingerprint="one", **kw) == first
    assert catalog.ensure_service(fingerprint="two", **kw) != first
    # the same service reached with a token is the same service
    tokened = dict(kw, url="http://127.0.0.1/MapServer?token=abc")
    assert catalog.ensure_service(fingerprint="one", **tokened) == first


def test_create_job_records_levels(catalog: Catalog) -> None:
    before = datetime.now(timezone.utc)
    job_id = _job(catalog)
    job = catalog.get_job(job_id)
    assert job["status"] == "running" and job["name"] == "streets"
    assert job["tiles_planned"] == 320 and _totals(job) == (0, 0, 0, 0)
    assert [(lv["level"], lv["scale"], lv["area_name"], lv["tiles_planned"])
            for lv in job["levels"]] == [(3, 73957190.948944, "extent", 64), (4, 36978595.474472,
                                                                            "town", 256)]
    assert job["levels"][1]["resolution"] == 9783.93962049996
    created = datetime.fromisoformat(job["created_at"])
    assert created.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= created <= datetime.now(timezone.utc)
    assert job["finished_at"] is None and job["pid"] > 0
    assert job["parameters"] == {"levels": "3-4", "workers": 8}
    assert catalog.job_parameters(job_id) == {"levels": "3-4", "workers": 8}


def test_create_job_checks_levels_and_service(catalog: Catalog) -> None:
    with pytest.raises(CatalogError, match="lacks resolution"):
        _job(catalog, levels=[{"level": 1, "scale": 1.0, "tiles_planned": 1}])
    with pytest.raises(CatalogError, match="FOREIGN KEY"):
        catalog.create_job(name=None, service_id=999, service_url="u", exporter="e", output="o",
                           parameters={}, levels=[])
    assert catalog.list_jobs() == []  # nothing half-written


def test_record_bundle_totals_and_rerecord(catalog: Catalog) -> None:
    job_id = _job(catalog)
    catalog.record_bundle(job_id, level=3, bundle_row=0, bundle_col=0, written=60, missing=2,
                          failed=2, bytes=6000, errors=[(5, 6, "HTTP 500"), (5, 7, "timeout")])
    catalog.record_bundle(job_id, level=4, bundle_row=0, bundle_col=1, written=100, missing=0,
                          failed=0, bytes=10_000)
    job = catalog.get_job(job_id)
    assert _totals(job) == (160, 2, 2, 16_000)
    assert _totals(job["levels"][0]) == (60, 2, 2, 6000)
    assert _totals(job["levels"][1]) == (100, 0, 0, 10_000)
    assert job["errors"] == [{"level": 3, "row": 5, "col": 6, "error": "HTTP 500"},
                             {"level": 3, "row": 5, "col": 7, "error": "timeout"}]
    assert catalog.done_bundles(job_id) == {(4, 0, 1)}  # the failed bundle is retried on resume

    # a resume retries the failed bundle: one tile still fails
    catalog.record_bundle(job_id, level=3, bundle_row=0, bundle_col=0, written=61, missing=2,
                          failed=1, bytes=6100, errors=[(5, 7, "timeout again")])
    job = catalog.get_job(job_id)
    assert _totals(job) == (161, 2, 1, 16_100)
    assert _totals(job["levels"][0]) == (61, 2, 1, 6100)
    assert job["errors"] == [{"level": 3, "row": 5, "col": 7, "error": "timeout again"}]
    # ... and then succeeds
    catalog.record_bundle(job_id, level=3, bundle_row=0, bundle_col=0, written=62, missing=2,
                          failed=0, bytes=6200)
    job = catalog.get_job(job_id)
    assert _totals(job) == (162, 2, 0, 16_200)
    assert _totals(job["levels"][0]) == (62, 2, 0, 6200)
    assert job["errors"] == [] and job["errors_total"] == 0
    assert catalog.done_bundles(job_id) == {(3, 0, 0), (4, 0, 1)}
    assert catalog.done_bundle_counts(job_id) == {(3, 0, 0): 62, (4, 0, 1): 100}


def test_record_bundle_keeps_jobs_apart(catalog: Catalog) -> None:
    a, b = _job(catalog, name="a"), _job(catalog, name="b")
    catalog.record_bundle(a, level=3, bundle_row=0, bundle_col=0, written=5, missing=0, failed=1,
                          bytes=50, errors=[(1, 1, "x")])
    catalog.record_bundle(b, level=3, bundle_row=0, bundle_col=0, written=7, missing=0, failed=0,
                          bytes=70)
    assert _totals(catalog.get_job(a)) == (5, 0, 1, 50)
    assert _totals(catalog.get_job(b)) == (7, 0, 0, 70)
    assert catalog.get_job(b)["errors"] == []
    assert catalog.done_bundles(a) == set() and catalog.done_bundles(b) == {(3, 0, 0)}


def test_record_bundle_rejects_unknown_level_and_job(catalog: Catalog) -> None:
    job_id = _job(catalog)
    with pytest.raises(CatalogError, match=f"job {job_id} has no level 9"):
        catalog.record_bundle(job_id, level=9, bundle_row=0, bundle_col=0, written=1, missing=0,
                              failed=0, bytes=1)
    with pytest.raises(CatalogError, match="no job 4242 in .*c.sqlite"):
        catalog.record_bundle(4242, level=3, bundle_row=0, bundle_col=0, written=1, missing=0,
                              failed=0, bytes=1)
    assert _totals(catalog.get_job(job_id)) == (0, 0, 0, 0)


def test_get_job_caps_errors(catalog: Catalog) -> None:
    job_id = _job(catalog, levels=[{"level": 12, "scale": 1.0, "resolution": 1.0,
                                    "tiles_planned": 16384}])
    errors = [(r, c, f"tile {r}/{c}") for r in range(128) for c in range(10)]  # 1280 errors
    catalog.record_bundle(job_id, level=12, bundle_row=0, bundle_col=0, written=0, missing=0,
                          failed=len(errors), bytes=0, errors=errors)
    job = catalog.get_job(job_id)
    assert len(job["errors"]) == 1000 and job["errors_total"] == 1280
    assert job["errors"][0] == {"level": 12, "row": 0, "col": 0, "error": "tile 0/0"}
    assert job["tiles_failed"] == 1280


def test_get_job_unknown(catalog: Catalog) -> None:
    with pytest.raises(CatalogError, match=r"^no job 7 in .*c\.sqlite$"):
        catalog.get_job(7)
    with pytest.raises(CatalogError, match="no job 7"):
        catalog.job_parameters(7)


def test_status_timestamps(catalog: Catalog) -> None:
    job_id = _job(catalog)
    catalog.set_status(job_id, "interrupted", error="interrupted")
    job = catalog.get_job(job_id)
    assert job["status"] == "interrupted" and job["error"] == "interrupted"
    assert job["finished_at"] is not None
    first_start = job["started_at"]
    time.sleep(0.002)
    catalog.set_status(job_id, "running")  # a resume
    job = catalog.get_job(job_id)
    assert job["finished_at"] is None and job["error"] is None
    assert job["started_at"] > first_start
    catalog.set_status(job_id, "completed")
    job = catalog.get_job(job_id)
    assert job["status"] == "completed" and job["finished_at"] >= job["started_at"]
    with pytest.raises(CatalogError, match="unknown job status 'done'"):
        catalog.set_status(job_id, "done")
    with pytest.raises(CatalogError, match="no job 99"):
        catalog.set_status(99, "failed")


def test_list_jobs_newest_first(catalog: Catalog) -> None:
    ids = [_job(catalog, name=n) for n in ("first", "second", "third")]
    catalog.record_bundle(ids[1], level=4, bundle_row=0, bundle_col=0, written=3, missing=1,
                          failed=0, bytes=30)
    jobs = catalog.list_jobs()
    assert [j["name"] for j in jobs] == ["third", "second", "first"]
    assert _totals(jobs[1]) == (3, 1, 0, 30) and jobs[1]["tiles_planned"] == 320
    assert {"id", "status", "service_url", "exporter", "output", "created_at",
            "finished_at"} <= jobs[0].keys()


def test_events(catalog: Catalog) -> None:
    job_id = _job(catalog)
    catalog.add_event(job_id, "start", "started 320 tiles")
    catalog.add_event(job_id, "warning", "level 4 snapped")
    assert [(e["kind"], e["message"]) for e in catalog.events(job_id)] == [
        ("start", "started 320 tiles"), ("warning", "level 4 snapped")]
    with pytest.raises(CatalogError, match="no job 5"):
        catalog.add_event(5, "x", "y")


def test_on_connect_hook_sees_every_connection(tmp_path: Path) -> None:
    def on_connect(dbapi_connection: sqlite3.Connection) -> None:
        dbapi_connection.create_function("answer", 0, lambda: 42)

    with Catalog.open(tmp_path / "c.sqlite", on_connect=on_connect) as catalog:
        with catalog.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT answer()").scalar() == 42


TOKEN = "SEKRETtok3n"
PASSWORD = "hunter2pw"
PRIVATE = "private-hostname-x1"


def _raw_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*") if p.is_file())


def test_no_secret_reaches_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    redact_calls: list[str] = []

    def redact(text: str) -> str:
        redact_calls.append(text)
        return text.replace(PRIVATE, "<host>")

    url = f"http://127.0.0.1/arcgis/rest/services/S/MapServer?f=json&token={TOKEN}"
    catalog = Catalog.open(path, redact=redact)
    sid = catalog.ensure_service(url=url, name="S", kind="MapServer", fingerprint="fp",
                                 scheme={"note": f"from {url}"})
    job_id = catalog.create_job(
        name="visible-marker", service_id=sid, service_url=url, exporter="tpkx",
        output=f"/data/{PRIVATE}/out.tpkx",
        parameters={"token": TOKEN, "auth": {"Password": PASSWORD, "user": "me"},
                    "service": url, "aoi": [f"bbox@{PRIVATE}"]},
        levels=[{"level": 0, "scale": 1.0, "resolution": 1.0, "tiles_planned": 1}])
    catalog.record_bundle(job_id, level=0, bundle_row=0, bundle_col=0, written=0, missing=0,
                          failed=1, bytes=0,
                          errors=[(0, 0, f"HTTP 498 for {url} at {PRIVATE}")])
    catalog.add_event(job_id, "request", f"GET {url}&password={PASSWORD}")
    catalog.set_status(job_id, "failed", error=f"gave up on {url}")

    job = catalog.get_job(job_id)
    assert job["service_url"] == "http://127.0.0.1/arcgis/rest/services/S/MapServer?f=json"
    assert job["parameters"] == {"auth": {"user": "me"},
                                 "service": job["service_url"], "aoi": ["bbox@<host>"]}
    assert job["output"] == "/data/<host>/out.tpkx"
    assert job["errors"][0]["error"] == "HTTP 498 for http://127.0.0.1/arcgis/rest/services/S/" \
                                        "MapServer?f=json&token=*** at <host>"
    assert redact_calls  # the caller's redactor was used

    raw = _raw_bytes(path)  # main file, -wal and -shm while open
    assert b"visible-marker" in raw  # the scan does see what was written
    for secret in (TOKEN, PASSWORD, PRIVATE):
        assert secret.encode() not in raw
    catalog.close()
    raw = _raw_bytes(path)
    assert b"visible-marker" in raw
    for secret in (TOKEN, PASSWORD, PRIVATE):
        assert secret.encode() not in raw


def test_threads_share_one_catalog(catalog: Catalog) -> None:
    job_id = _job(catalog, levels=[{"level": 5, "scale": 1.0, "resolution": 1.0,
                                    "tiles_planned": 4 * 40}])
    failures: list[BaseException] = []

    def work(row: int) -> None:
        try:
            for col in range(40):
                catalog.record_bundle(job_id, level=5, bundle_row=row, bundle_col=col, written=1,
                                      missing=0, failed=0, bytes=10)
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(row,)) for row in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert _totals(catalog.get_job(job_id)) == (160, 0, 0, 1600)
    assert len(catalog.done_bundles(job_id)) == 160


# Run in a spawned process with runpy, so it needs no importable test module.
_WRITER = '''
from cacheorch.catalog import Catalog
try:
    with Catalog.open(path) as catalog:
        barrier.wait(timeout=60)
        for col in range(count):
            errors = [(row * 128, col, "HTTP 500")] if col % 10 == 0 else []
            catalog.record_bundle(job_id, level=7, bundle_row=row, bundle_col=col, written=3,
                                  missing=1, failed=len(errors), bytes=300, errors=errors)
            if col % 50 == 0:
                catalog.add_event(job_id, "progress", f"writer {row} at {col}")
    results.put((row, "ok"))
except BaseException as exc:
    results.put((row, f"{type(exc).__name__}: {exc}"))
'''


def test_two_processes_write_one_catalog(tmp_path: Path) -> None:
    path, count = tmp_path / "shared.sqlite", 300
    with Catalog.open(path) as catalog:
        job_id = _job(catalog, levels=[{"level": 7, "scale": 1.0, "resolution": 1.0,
                                        "tiles_planned": 2 * count * 4}])
    worker = tmp_path / "writer.py"
    worker.write_text(_WRITER)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=runpy.run_path, args=(str(worker),), kwargs={"init_globals": {
        "path": str(path), "job_id": job_id, "row": row, "count": count, "barrier": barrier,
        "results": results}}) for row in range(2)]
    for proc in procs:
        proc.start()
    got = dict(results.get(timeout=240) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
    assert got == {0: "ok", 1: "ok"}
    with Catalog.open(path) as catalog:
        job = catalog.get_job(job_id)
        assert _totals(job) == (2 * count * 3, 2 * count, 2 * count // 10, 2 * count * 300)
        assert _totals(job["levels"][0]) == _totals(job)
        assert job["errors_total"] == 2 * count // 10
        assert len(catalog.done_bundles(job_id)) == 2 * count - 2 * count // 10
        assert len(catalog.events(job_id)) == 2 * (count // 50)
    con = sqlite3.connect(path)
    try:
        assert con.execute("SELECT count(*) FROM job_bundles").fetchone() == (2 * count,)
    finally:
        con.close()


@pytest.mark.parametrize(("text", "expected"), [
    ("GET http://h/x?f=json&token=abc&Password=xyz",
     "GET http://h/x?f=json&token=***&Password=***"),
    ('{"error": 498, "token": "abc"}', '{"error": 498, "token": "***"}'),
    ("password: hunter2 rejected", "password: *** rejected"),
    ("the token expired", "the token expired"),
    ("mytoken=abc", "mytoken=abc"),
])
def test_secret_settings_are_masked_in_text(text: str, expected: str) -> None:
    from cacheorch.catalog.scrub import mask_text_secrets
    assert mask_text_secrets(text) == expected


def test_url_secrets_are_dropped_keeping_the_rest_verbatim() -> None:
    from cacheorch.catalog.scrub import Scrubber, strip_url_secrets
    assert strip_url_secrets("http://h/x?bbox=1%2C2,3&TOKEN=abc&f=json#top") == \
        "http://h/x?bbox=1%2C2,3&f=json#top"
    assert strip_url_secrets("http://h/x?token=abc") == "http://h/x"
    assert Scrubber().data({"Token": "x", "nested": [{"password": "y", "keep": "z"}],
                            "path": Path("/a")}) == {"nested": [{"keep": "z"}], "path": "/a"}

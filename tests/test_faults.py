"""Fault injection over a loopback server: resets, time-outs, truncated bodies, HTML with status
200, slow answers, 429 + Retry-After, a burst of 503s tripping the failure threshold; the request
rate limit measured at the server; and jobs that never report "completed" with a failed tile.
"""
from __future__ import annotations

import email.utils
import json
import time
from pathlib import Path

import pytest

from _gdal import colour_of, open_gdal, solid_png, tile_centre_rgba
from _tileserver import TileServer
from _tiles import all_tiles, mercator_service_json
from cacheorch.connection import USER_AGENT
from cacheorch.fetch import (
    FailureWindow, RateLimiter, RetryPolicy, TileFetchEngine, TooManyFailuresError,
)
from cacheorch.tiling import web_mercator_scheme

LEVEL = 3
TILES = {(LEVEL, r, c): solid_png(colour_of(LEVEL, r, c)) for r in range(8) for c in range(8)}
FAST = RetryPolicy(retries=2, backoff=0.01, backoff_cap=0.05)


def _service() -> dict:
    return mercator_service_json(LEVEL)


def _fetch(srv: TileServer, keys, **engine) -> dict:
    engine.setdefault("retry", FAST)
    with TileFetchEngine(workers=4, trust_env=False, **engine) as eng:
        return {r.tag: r for r in eng.fetch((k, srv.url + "/tile/%d/%d/%d" % k) for k in keys)}


def _arrivals(srv: TileServer) -> list[float]:
    """Record when each tile request reaches the server (wraps the server's answer method)."""
    times: list[float] = []
    answer = srv._answer

    def timed(h, path):
        if "/tile/" in path:
            times.append(time.monotonic())
        return answer(h, path)
    srv._answer = timed  # type: ignore[method-assign]
    return times


# -- the engine, fault by fault ----------------------------------------------------------------

def test_each_fault_is_a_failed_tile_with_its_reason_and_good_tiles_still_arrive() -> None:
    keys = list(TILES)
    truncated, html, slow, timeout = keys[1], keys[2], keys[3], keys[4]
    with TileServer(TILES, truncated={truncated}, html={html},
                    delay={slow: 0.1, timeout: 1.5}) as srv:
        got = _fetch(srv, keys, timeout=0.5)
    assert got[truncated].status == "failed" and "truncated" in got[truncated].error
    assert got[html].status == "failed" and "not an image (text/html" in got[html].error
    assert got[timeout].status == "failed" and "timed out" in got[timeout].error
    assert got[slow].status == "ok" and got[slow].data == TILES[slow]  # slow is not failed
    good = [k for k in keys if k not in (truncated, html, timeout)]
    assert all(got[k].status == "ok" and got[k].data == TILES[k] for k in good)


def test_connection_resets_are_retried_and_every_tile_arrives() -> None:
    with TileServer(TILES, reset_reused=True) as srv:
        got = _fetch(srv, list(TILES))
        assert srv.dropped > 0  # connections were reset under the client, and it carried on
    assert {k: r.data for k, r in got.items()} == TILES


def test_429_with_retry_after_is_waited_for_then_the_tile_arrives() -> None:
    key = (LEVEL, 0, 0)
    with TileServer(TILES, retry_after={key: (429, 1, 1)}) as srv:
        started = time.monotonic()
        got = _fetch(srv, [key])
        waited = time.monotonic() - started
        assert srv.requests[srv.tile_path(*key)] == 2
    assert got[key].status == "ok" and got[key].data == TILES[key]
    assert 0.9 <= waited < 3  # the server's second, not the 10 ms backoff


def test_retry_after_forms_and_cap() -> None:
    policy = RetryPolicy(backoff=0.01, backoff_cap=0.02, retry_after_cap=30)
    assert policy.retry_after(b"7", 0) == 7
    in_20s = email.utils.formatdate(time.time() + 20, usegmt=True).encode()
    assert 18 <= policy.retry_after(in_20s, 0) <= 20
    assert policy.retry_after(b"86400", 0) == 30  # capped: no server parks a job for a day
    past = email.utils.formatdate(time.time() - 60, usegmt=True).encode()
    assert policy.retry_after(past, 0) == 0
    assert policy.retry_after(b"soon", 0) <= 0.02  # unreadable: the backoff


def test_a_burst_of_503s_trips_the_failure_threshold() -> None:
    busy = {k: (503, b"Service Unavailable") for k in TILES}
    with TileServer(TILES, status=busy) as srv:
        with pytest.raises(TooManyFailuresError, match=r"more than 50% of the last 20 requests"):
            _fetch(srv, list(TILES), failure_rate=0.5, failure_window=20)
        # it stopped early: 11 failures trip it, far fewer than 64 tiles × 3 attempts
        assert sum(srv.requests.values()) < 40


def test_html_answered_with_status_200_counts_as_a_failure_in_the_window() -> None:
    """A login page or proxy error page sent with 200 is a failed request, not a tile: a server
    answering only that trips the failure window like a burst of 503s."""
    with TileServer(TILES, html=set(TILES)) as srv:
        with pytest.raises(TooManyFailuresError, match=r"more than 50% of the last 20 requests"
                                                       r" failed \(latest: not an image \(text/html"):
            _fetch(srv, list(TILES), failure_rate=0.5, failure_window=20)
        assert sum(srv.requests.values()) < len(TILES)  # stopped early
    # and tiles among the pages still arrive (the window is not tripped by a few pages)
    with TileServer(TILES, html={(LEVEL, 0, 0), (LEVEL, 4, 4)}) as srv:
        results = _fetch(srv, list(TILES), failure_rate=0.5, failure_window=20)
    assert sorted(k for k, r in results.items() if r.status == "failed") == [(LEVEL, 0, 0),
                                                                              (LEVEL, 4, 4)]


def test_failure_window_counts_only_the_latest_requests() -> None:
    window = FailureWindow(0.5, 4)
    assert not any(window.record(ok) for ok in (False, False, True, True, False, True, False))
    assert window.record(False)  # 3 of the last 4 failed


def test_rate_limiter_spaces_requests() -> None:
    limiter = RateLimiter(10)
    assert [round(limiter.delay(100.0), 3) for _ in range(3)] == [0, 0.1, 0.2]
    assert limiter.delay(101.0) == 0  # after a pause: no burst saved up


def test_max_rps_is_what_the_server_sees() -> None:
    with TileServer(TILES) as srv:
        arrivals = _arrivals(srv)
        _fetch(srv, list(TILES)[:41], max_rps=40)
    rate = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    assert len(arrivals) == 41
    assert 32 <= rate <= 48, rate  # 40/s within ±20 %


# -- whole jobs ----------------------------------------------------------------------------------

def test_job_with_faults_ends_partial_then_resume_failed_refetches_only_those(cli, tmp_path: Path
                                                                             ) -> None:
    bad = {(LEVEL, 1, 1), (LEVEL, 2, 5), (LEVEL, 7, 7)}
    output = tmp_path / "out.tpkx"
    with TileServer(TILES, service=_service(), truncated={(LEVEL, 1, 1)}, html={(LEVEL, 2, 5)},
                    status={(LEVEL, 7, 7): (500, b"oops")}) as srv:
        first = cli("run", "--service", srv.url, "--levels", str(LEVEL), "--output", str(output),
                    "--json")
        assert first.code == 1
        report = json.loads(first.stdout)
        assert report["status"] == "partial" and report["tiles_failed"] == 3
        assert len(report["errors"]) == 4  # the summary, then one line per failed tile
        assert all(f"row {r} col {c}" in " ".join(report["errors"]) for _, r, c in bad)
        assert not output.exists()  # never a "completed" output with holes

        srv.truncated.clear()
        srv.html.clear()
        srv.status.clear()
        before = dict(srv.requests)
        again = cli("resume", str(report["job_id"]), "--failed", "--json")
        assert again.code == 0, again.stderr
        assert json.loads(again.stdout)["status"] == "completed"
        refetched = {p: n - before.get(p, 0) for p, n in srv.requests.items()
                     if "/tile/" in p and n - before.get(p, 0)}
    assert refetched == {srv.tile_path(*k): 1 for k in bad}  # 3 requests, not the bundle's 64
    assert all_tiles(output) == TILES
    with open_gdal(output) as ds:  # GDAL's ESRIC driver shows the refetched tiles in place
        for key in sorted(bad) + [(LEVEL, 0, 0)]:
            assert tile_centre_rgba(ds, web_mercator_scheme(LEVEL), *key)[:3] == colour_of(*key)


def test_failure_threshold_stops_the_job_resumable_with_bundles_kept(cli, tmp_path: Path) -> None:
    # two bundles: level 2's (served) and level 3's (every request refused with 503)
    tiles = dict(TILES) | {(2, r, c): solid_png(colour_of(2, r, c)) for r in range(4)
                           for c in range(4)}
    busy = {k: (503, b"busy") for k in TILES}
    output = tmp_path / "out.tpkx"
    with TileServer(tiles, service=_service(), status=busy) as srv:
        first = cli("run", "--service", srv.url, "--levels", "2-3", "--output", str(output),
                    "--workers", "2", "--max-failure-rate", "0.5", "--failure-window", "20",
                    "--json")
        assert first.code == 1
        assert "Traceback" not in first.stderr
        assert first.stderr.count("\n") == 1 and "more than 50% of the last 20" in first.stderr
        job = json.loads(cli("jobs", "--json").stdout)["jobs"][0]
        assert job["status"] == "failed"
        staged = list(output.with_name(output.name + ".partial").rglob("*.bundle"))
        assert [p.parent.name for p in staged] == ["L02"]  # level 2's bundle finished first
        srv.status.clear()
        again = cli("resume", str(job["id"]), "--json")
        assert again.code == 0, again.stderr
        assert json.loads(again.stdout)["status"] == "completed"
        assert srv.requests[srv.tile_path(2, 0, 0)] == 1  # the kept bundle was not refetched
    assert all_tiles(output) == tiles


def test_user_agent_and_max_rps_flags_reach_the_server(cli, tmp_path: Path) -> None:
    with TileServer(TILES, service=_service()) as srv:
        arrivals = _arrivals(srv)
        result = cli("run", "--service", srv.url, "--levels", str(LEVEL), "--output",
                     str(tmp_path / "o.tpkx"), "--user-agent", "survey-bot/2 (ops@example.org)",
                     "--max-rps", "50", "--json")
        assert result.code == 0, result.stderr
        agents = {headers.get("User-Agent") for _, _, headers in srv.log}
    assert agents == {"survey-bot/2 (ops@example.org)"}
    rate = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    # the cap is what is checked (without it, loopback answers hundreds a second); a loaded
    # machine may fall below 50, never above
    assert 15 <= rate <= 60, rate


def test_politeness_settings_come_from_config_and_survive_resume(cli, tmp_path: Path,
                                                                 monkeypatch) -> None:
    from cacheorch.jobspec import JobSpec
    config = tmp_path / "c.ini"
    config.write_text("[job:polite]\nservice = http://127.0.0.1:9/x/MapServer\nmax_rps = 2.5\n"
                      "user_agent = me/1\nmax_failure_rate = 0.25\nfailure_window = 50\n")
    from cacheorch.config import load_config
    from cacheorch.jobspec import job_spec_from
    spec = job_spec_from(load_config(config), "polite", {})
    assert (spec.max_rps, spec.user_agent, spec.max_failure_rate, spec.failure_window) == \
        (2.5, "me/1", 0.25, 50)
    assert JobSpec.from_parameters(json.loads(json.dumps(spec.to_parameters()))) == spec
    assert spec.connection_options()["user_agent"] == "me/1"
    bad = cli("plan", "--service", "http://127.0.0.1:9/x/MapServer", "--max-failure-rate", "1.5")
    assert bad.code == 2 and "--max-failure-rate: must be a fraction up to 1" in bad.stderr
    # By default a job stops once more than half of the last 200 requests failed; 1 turns it off.
    flags = {"service": "http://127.0.0.1:9/x/MapServer"}
    assert job_spec_from(load_config(None), None, flags).max_failure_rate == 0.5
    assert job_spec_from(load_config(None), None,
                         flags | {"max_failure_rate": 1.0}).max_failure_rate is None
    bad = cli("plan", "--service", "http://127.0.0.1:9/x/MapServer", "--max-rps", "0")
    assert bad.code == 2 and "--max-rps: must be above 0" in bad.stderr
    assert USER_AGENT.startswith("cacheorch/")

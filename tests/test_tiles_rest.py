"""The ``rest`` tile source and the fetch engine, against a real loopback HTTP server."""
from __future__ import annotations

import gc
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

import _tileserver
from _tileserver import ProxyServer, TileServer
from cacheorch.connection import Connection
from cacheorch.fetch import FetchResult, RetryPolicy, TileFetchEngine, fetch_tiles
from cacheorch.formats.png import encode_png
from cacheorch.interfaces import Service, TileResult
from cacheorch.plugins import tiles_rest
from cacheorch.plugins.tiles_rest import RestTileSource
from cacheorch.tiling import TileKey, web_mercator_scheme

TOKEN = "s3cr3t-T0ken_abcdef"
SCHEME = web_mercator_scheme(12)


def tile(level: int, row: int, col: int, size: int = 8) -> bytes:
    """A distinct small PNG per key, so a mix-up between tiles cannot pass."""
    px = bytes(((level * 40 + row * 7 + col) % 256, row % 256, col % 256)) * (size * size)
    return encode_png(size, size, px)


def tiles_for(keys: list[tuple[int, int, int]], size: int = 8) -> dict[tuple[int, int, int], bytes]:
    return {k: tile(*k, size=size) for k in keys}


def open_rest(url: str, *, workers: int = 4, token: str | None = None, referer: str | None = None,
              retries: int = 2, timeout: float = 5.0, tile_servers: tuple[str, ...] = (),
              retry_after_cap: float = 5.0, trust_env: bool = False):  # noqa: ANN201
    service = Service(location=url, scheme=SCHEME, tile_servers=tile_servers)
    connection = Connection(token=token, referer=referer, retries=retries, timeout=timeout)
    source = RestTileSource(RestTileSource.Options(backoff=0.001, backoff_cap=0.01,
                                                   retry_after_cap=retry_after_cap,
                                                   trust_env=trust_env))
    return source.open(service, connection, workers)


def by_key(results: Iterator[TileResult]) -> dict[tuple[int, int, int], TileResult]:
    out = {}
    for r in results:
        assert isinstance(r, TileResult)
        k = (r.key.level, r.key.row, r.key.col)
        assert k not in out, f"{k} answered twice"
        out[k] = r
    return out


def keys(*ks: tuple[int, int, int]) -> list[TileKey]:
    return [TileKey(*k) for k in ks]


# -- plugin contract ------------------------------------------------------------------------------

def test_registered_and_accepts_http_only() -> None:
    assert tiles_rest.cacheorch_register_tile_sources() == [RestTileSource]
    assert RestTileSource.name == "rest"
    assert RestTileSource.accepts("https://host/arcgis/rest/services/A/MapServer")
    assert RestTileSource.accepts("http://host/arcgis/rest/services/A/ImageServer")
    assert not RestTileSource.accepts("/data/cache/Layers")
    assert not RestTileSource.accepts("C:/caches/a.tpkx")


# -- answers and how they are classed ---------------------------------------------------------------

def test_ok_bytes_identical_and_one_result_per_key() -> None:
    wanted = [(z, r, c) for z in (3, 4) for r in range(4) for c in range(5)]
    served = tiles_for(wanted)
    served[(4, 3, 4)] = tile(4, 3, 4, size=256)  # one big tile: arrives in several reads
    with TileServer(served) as srv, open_rest(srv.url) as fetcher:
        got = by_key(fetcher.fetch(TileKey(*k) for k in wanted))
    assert set(got) == set(wanted)
    for k in wanted:
        assert got[k].status == "ok", got[k]
        assert got[k].data == served[k]
        assert got[k].error is None
    assert sum(srv.requests.values()) == len(wanted)
    assert srv.connections <= 4  # keep-alive: connections are reused, not one per tile


def test_404_and_blank_tile_are_missing_not_errors() -> None:
    present = tiles_for([(2, 0, 0)])
    with TileServer(present, missing={(2, 0, 1)}, blank={(2, 1, 1)}) as srv, \
            open_rest(srv.url) as fetcher:
        got = by_key(fetcher.fetch(keys((2, 0, 0), (2, 0, 1), (2, 1, 1), (2, 3, 3))))
    assert got[(2, 0, 0)].status == "ok"
    for k in [(2, 0, 1), (2, 1, 1), (2, 3, 3)]:  # (2,3,3): not in the cache at all → 404
        assert got[k].status == "missing" and got[k].data is None and got[k].error is None
    assert srv.requests[srv.tile_path(2, 0, 1)] == 1  # a 404 is an answer: never retried


def test_500_once_is_retried_then_ok() -> None:
    served = tiles_for([(5, 1, 1), (5, 1, 2)])
    with TileServer(served, fail_once={(5, 1, 1)}) as srv, open_rest(srv.url) as fetcher:
        got = by_key(fetcher.fetch(keys((5, 1, 1), (5, 1, 2))))
    assert got[(5, 1, 1)].status == "ok" and got[(5, 1, 1)].data == served[(5, 1, 1)]
    assert srv.requests[srv.tile_path(5, 1, 1)] == 2
    assert srv.requests[srv.tile_path(5, 1, 2)] == 1


def test_500_always_fails_after_bounded_retries() -> None:
    with TileServer(fail_always={(5, 0, 0)}) as srv, open_rest(srv.url, retries=3) as fetcher:
        (r,) = fetcher.fetch(keys((5, 0, 0)))
    assert r.status == "failed" and r.data is None
    assert "HTTP 500" in r.error and "4 attempts" in r.error
    assert srv.requests[srv.tile_path(5, 0, 0)] == 4  # 1 + retries


def test_html_200_is_failed_never_ok() -> None:
    with TileServer(html={(1, 0, 0)}) as srv, open_rest(srv.url) as fetcher:
        (r,) = fetcher.fetch(keys((1, 0, 0)))
    assert r.status == "failed" and r.data is None
    assert r.error == f"not an image (text/html, {len(_tileserver.HTML_404)} bytes)"


def test_truncated_body_is_retried_then_failed() -> None:
    served = tiles_for([(6, 2, 2)], size=64)
    with TileServer(served, truncated={(6, 2, 2)}) as srv, open_rest(srv.url, retries=2) as fetcher:
        (r,) = fetcher.fetch(keys((6, 2, 2)))
    assert r.status == "failed" and r.data is None
    n = len(served[(6, 2, 2)])
    assert f"truncated body ({n // 2} of {n} bytes)" in r.error
    assert srv.requests[srv.tile_path(6, 2, 2)] == 3


def test_arcgis_json_error_is_failed_with_message_and_token_redacted() -> None:
    message = f"Invalid Token (request ?token={TOKEN}&f=image, token {TOKEN})"
    with TileServer(json_error={(3, 3, 3): (498, message)}) as srv, \
            open_rest(srv.url, token=TOKEN) as fetcher:
        (r,) = fetcher.fetch(keys((3, 3, 3)))
    assert r.status == "failed"
    assert r.error.startswith("ArcGIS error 498: Invalid Token")
    assert TOKEN not in r.error and "***" in r.error
    assert srv.requests[srv.tile_path(3, 3, 3)] == 1  # an invalid token does not get better


def test_other_4xx_fails_without_retry() -> None:
    body = b'{"error":{"code":403,"message":"You do not have permissions"}}'
    with TileServer(status={(2, 2, 2): (403, body), (2, 2, 3): (400, b"bad")}) as srv, \
            open_rest(srv.url, retries=4) as fetcher:
        got = by_key(fetcher.fetch(keys((2, 2, 2), (2, 2, 3))))
    assert got[(2, 2, 2)].status == "failed"
    assert got[(2, 2, 2)].error == "HTTP 403 Forbidden (ArcGIS error 403: You do not have permissions)"
    assert got[(2, 2, 3)].error == "HTTP 400 Bad Request"
    assert srv.requests[srv.tile_path(2, 2, 2)] == 1 and srv.requests[srv.tile_path(2, 2, 3)] == 1


def test_chunked_transfer_encoding() -> None:
    served = tiles_for([(7, 5, 5)], size=128)
    with TileServer(served, chunked={(7, 5, 5)}) as srv, open_rest(srv.url) as fetcher:
        (r,) = fetcher.fetch(keys((7, 5, 5)))
        (again,) = fetcher.fetch(keys((7, 5, 5)))  # the connection is still in a sane state
    assert r.status == "ok" and r.data == served[(7, 5, 5)]
    assert again.data == served[(7, 5, 5)]


def test_redirects_are_followed_and_bounded() -> None:
    served = tiles_for([(2, 0, 0)])
    with TileServer(served) as target, TileServer(redirect={
            (2, 0, 0): target.url + "/tile/2/0/0",
            (2, 0, 1): "/arcgis/rest/services/Test/MapServer/tile/2/0/1"}) as srv, \
            open_rest(srv.url) as fetcher:
        got = by_key(fetcher.fetch(keys((2, 0, 0), (2, 0, 1))))
    assert got[(2, 0, 0)].status == "ok" and got[(2, 0, 0)].data == served[(2, 0, 0)]
    assert got[(2, 0, 1)].status == "failed" and got[(2, 0, 1)].error == "more than 5 redirects"


def test_body_ended_by_close_and_image_server() -> None:
    served = tiles_for([(3, 2, 1), (3, 2, 2)], size=48)
    with TileServer(served, kind="ImageServer", no_length={(3, 2, 1)}) as srv, \
            open_rest(srv.url) as fetcher:
        assert srv.url.endswith("/ImageServer")
        got = by_key(fetcher.fetch(keys((3, 2, 1), (3, 2, 2))))
    assert all(got[k].status == "ok" and got[k].data == served[k] for k in served)


def test_gzip_content_encoding_is_decoded() -> None:
    served = tiles_for([(7, 1, 1)], size=64)
    with TileServer(served, gzipped={(7, 1, 1)}) as srv, open_rest(srv.url) as fetcher:
        (r,) = fetcher.fetch(keys((7, 1, 1)))
    assert r.status == "ok" and r.data == served[(7, 1, 1)]


def test_retry_after_is_honoured_and_bounded() -> None:
    served = tiles_for([(4, 0, 0), (4, 0, 1)])
    with TileServer(served, retry_after={(4, 0, 0): (429, 1, 1), (4, 0, 1): (503, 30, 1)}) as srv:
        with open_rest(srv.url, retry_after_cap=5.0) as fetcher:
            t0 = time.monotonic()
            (r,) = fetcher.fetch(keys((4, 0, 0)))
            waited = time.monotonic() - t0
        assert r.status == "ok" and 0.9 <= waited < 3, waited  # backoff alone would be ~1 ms
        with open_rest(srv.url, retry_after_cap=0.2) as fetcher:  # 30 s asked, 0.2 s allowed
            t0 = time.monotonic()
            (r,) = fetcher.fetch(keys((4, 0, 1)))
            waited = time.monotonic() - t0
        assert r.status == "ok" and 0.15 <= waited < 2, waited


def test_timeout_is_retried_then_failed() -> None:
    served = tiles_for([(3, 1, 1), (3, 1, 2)])
    with TileServer(served, delay={(3, 1, 1): 1.0}) as srv, \
            open_rest(srv.url, timeout=0.2, retries=1) as fetcher:
        got = by_key(fetcher.fetch(keys((3, 1, 1), (3, 1, 2))))
    assert got[(3, 1, 1)].status == "failed" and got[(3, 1, 1)].error == "timed out after 2 attempts"
    assert got[(3, 1, 2)].status == "ok"


def test_connection_refused_fails_with_reason() -> None:
    with TileServer() as srv:
        url = srv.url
    with open_rest(url, retries=1) as fetcher:  # the server is gone: nothing listens
        (r,) = fetcher.fetch(keys((1, 1, 1)))
    assert r.status == "failed"
    assert r.error.startswith("cannot connect to 127.0.0.1:") and "after 2 attempts" in r.error


def test_server_closing_idle_keepalive_connections_costs_no_retries() -> None:
    wanted = [(4, 0, c) for c in range(30)]
    served = tiles_for(wanted)
    with TileServer(served, drop_keepalive=True) as srv, \
            open_rest(srv.url, workers=2, retries=0) as fetcher:
        got = by_key(fetcher.fetch(TileKey(*k) for k in wanted))
    assert all(got[k].status == "ok" and got[k].data == served[k] for k in wanted)
    assert all(srv.requests[srv.tile_path(*k)] == 1 for k in wanted)


def test_request_racing_a_keepalive_close_is_replayed_for_free() -> None:
    wanted = [(4, 1, c) for c in range(6)]
    served = tiles_for(wanted)
    with TileServer(served, reset_reused=True) as srv, \
            open_rest(srv.url, workers=1, retries=0) as fetcher:
        got = by_key(fetcher.fetch(TileKey(*k) for k in wanted))
    assert all(got[k].status == "ok" and got[k].data == served[k] for k in wanted), got
    assert srv.dropped >= 1  # the race did happen, and cost no retry (retries=0)


# -- what is sent ---------------------------------------------------------------------------------

def test_token_as_query_parameter_and_headers_sent() -> None:
    served = tiles_for([(2, 1, 0), (2, 1, 1)])
    with TileServer(served) as srv, \
            open_rest(srv.url, token=TOKEN, referer="https://app.example/map") as fetcher:
        got = by_key(fetcher.fetch(keys((2, 1, 0), (2, 1, 1))))
    assert all(r.status == "ok" for r in got.values())
    assert len(srv.log) == 2
    for _path, query, headers in srv.log:
        assert query == {"token": [TOKEN]}
        assert headers["Referer"] == "https://app.example/map"
        assert headers["User-Agent"].startswith("cacheorch/")


def test_tile_servers_spread_by_row_modulo() -> None:
    wanted = [(5, r, c) for r in range(6) for c in range(2)]
    served = tiles_for(wanted)
    with TileServer(served, name="A") as a, TileServer(served, name="B") as b, \
            TileServer(served, name="C") as c:
        with open_rest(a.url, tile_servers=(a.url, b.url, c.url)) as fetcher:
            got = by_key(fetcher.fetch(TileKey(*k) for k in wanted))
    assert all(got[k].data == served[k] for k in wanted)
    for i, srv in enumerate((a, b, c)):
        rows = sorted({int(p.split("/")[-2]) for p in srv.requests})
        assert rows == [r for r in range(6) if r % 3 == i], (srv.name, rows)
        assert sum(srv.requests.values()) == 4


# -- flow control -----------------------------------------------------------------------------------

def test_in_flight_is_bounded_by_workers() -> None:
    with TileServer(default_tile=tile(0, 0, 0), delay=0.03) as srv, \
            open_rest(srv.url, workers=3) as fetcher:
        results = list(fetcher.fetch(TileKey(6, r, c) for r in range(5) for c in range(6)))
    assert len(results) == 30 and all(r.status == "ok" for r in results)
    assert srv.max_concurrent == 3


def test_lazy_on_a_million_keys_with_early_break() -> None:
    pulled = 0

    def million() -> Iterator[TileKey]:
        nonlocal pulled
        for i in range(1_000_000):
            pulled += 1
            yield TileKey(20, i // 1000, i % 1000)

    with TileServer(default_tile=tile(1, 1, 1)) as srv, open_rest(srv.url, workers=8) as fetcher:
        tracemalloc.start()
        t0 = time.monotonic()
        taken = 0
        for r in fetcher.fetch(million()):
            assert r.status == "ok"
            taken += 1
            if taken == 300:
                break
        elapsed = time.monotonic() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        # The same fetcher is still usable after an abandoned iteration.
        (again,) = fetcher.fetch(keys((1, 1, 1)))
    assert again.status == "ok"
    # at most `workers` in flight plus the rest of the batch of results being handed out
    assert pulled <= 300 + 2 * 8
    assert elapsed < 10
    assert peak < 5_000_000, peak


def test_close_while_requests_hang_returns_promptly() -> None:
    with TileServer(default_tile=tile(0, 0, 0), delay=5.0) as srv:
        fetcher = open_rest(srv.url, workers=4, timeout=30)
        it = fetcher.fetch(TileKey(3, 0, c) for c in range(8))
        caught: list[BaseException] = []

        def consume() -> None:
            try:
                next(it)
            except BaseException as e:  # noqa: BLE001
                caught.append(e)
        t = threading.Thread(target=consume)
        t.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        fetcher.close()
        t.join(5)
        assert time.monotonic() - t0 < 3 and not t.is_alive()
        assert caught and isinstance(caught[0], RuntimeError)
        with pytest.raises(RuntimeError, match="closed"):
            list(fetcher.fetch(keys((1, 1, 1))))


def test_generator_closed_early_cancels_in_flight() -> None:
    with TileServer(default_tile=tile(0, 0, 0), delay={(3, 0, c): 3.0 for c in range(1, 8)}) as srv, \
            open_rest(srv.url, workers=4) as fetcher:
        t0 = time.monotonic()
        it = fetcher.fetch(TileKey(3, 0, c) for c in range(8))
        first = next(it)  # (3,0,0) is fast; three slow ones are in flight
        it.close()
        assert time.monotonic() - t0 < 2.5
        assert first.key == TileKey(3, 0, 0)
        assert fetcher.engine._active == 0  # nothing left running or counted


def test_errors_in_the_engine_surface_to_the_caller() -> None:
    with TileServer(default_tile=tile(0, 0, 0)) as srv:
        with TileFetchEngine(workers=2) as engine:
            with pytest.raises(ValueError, match="not an http"):
                list(engine.fetch([("a", "ftp://127.0.0.1/x")]))

            def boom(*_: object) -> None:
                raise ZeroDivisionError("result factory failed")
            with pytest.raises(ZeroDivisionError):
                list(engine.fetch([("a", srv.url + "/tile/1/0/0")], boom))

            def bad_keys() -> Iterator[tuple[str, str]]:
                yield "a", srv.url + "/tile/1/0/0"
                raise KeyError("planner failed")
            with pytest.raises(KeyError):
                list(engine.fetch(bad_keys()))
            # and the engine is still fine afterwards
            assert [r.status for r in engine.fetch([("a", srv.url + "/tile/1/0/0")])] == ["ok"]


def test_forgotten_engine_releases_its_connections() -> None:
    with TileServer(default_tile=tile(0, 0, 0)) as srv:
        engine = TileFetchEngine(workers=2)
        assert [r.status for r in engine.fetch([("a", srv.url + "/tile/1/0/0")])] == ["ok"]
        conns, loop = engine._conns, engine._loop
        assert len(conns) == 1 and loop is not None
        del engine
        gc.collect()
        assert not conns and loop.is_closed()


def test_two_threads_share_one_engine() -> None:
    wanted = [(6, r, c) for r in range(8) for c in range(10)]
    served = tiles_for(wanted)
    out: dict[int, list[FetchResult[str]]] = {}
    with TileServer(served, delay=0.002) as srv, TileFetchEngine(workers=4) as engine:
        def run(part: int) -> None:
            mine = [k for k in wanted if k[1] % 2 == part]
            out[part] = list(engine.fetch((k, srv.url + "/tile/{}/{}/{}".format(*k)) for k in mine))
        threads = [threading.Thread(target=run, args=(p,)) for p in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    assert srv.max_concurrent <= 4
    for part in (0, 1):
        assert sorted(r.tag for r in out[part]) == sorted(k for k in wanted if k[1] % 2 == part)
        assert all(r.status == "ok" and r.data == served[r.tag] for r in out[part])


def test_fetch_tiles_standalone() -> None:
    served = tiles_for([(1, 0, 0), (1, 0, 1)])
    with TileServer(served, missing={(1, 1, 1)}) as srv:
        urls = [srv.url + "/tile/1/0/0", srv.url + "/tile/1/0/1", srv.url + "/tile/1/1/1"]
        got = {r.tag: r for r in fetch_tiles(urls, workers=2, retry=RetryPolicy(retries=0))}
    assert got[urls[0]].data == served[(1, 0, 0)] and got[urls[1]].data == served[(1, 0, 1)]
    assert got[urls[2]].status == "missing"
    gc.collect()


# -- HTTPS and proxies ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    pair = _tileserver.self_signed_cert(tmp_path_factory.mktemp("tls"))
    if pair is None:
        pytest.skip("openssl is not installed")
    return pair


def test_https(cert: tuple[Path, Path]) -> None:
    served = tiles_for([(2, 0, 0)], size=64)
    with TileServer(served, ssl_context=_tileserver.server_ssl_context(*cert)) as srv:
        assert srv.url.startswith("https://")
        with TileFetchEngine(ssl_context=_tileserver.client_ssl_context(cert[0]),
                             trust_env=False) as engine:
            (r,) = engine.fetch([("t", srv.url + "/tile/2/0/0")])
        assert r.status == "ok" and r.data == served[(2, 0, 0)]
        with TileFetchEngine(trust_env=False) as engine:  # the system store does not trust it
            (r,) = engine.fetch([("t", srv.url + "/tile/2/0/0")])
        assert r.status == "failed" and "certificate" in r.error


def test_http_proxy_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    served = tiles_for([(3, 1, 0)])
    with TileServer(served) as srv, ProxyServer(require_auth="Basic dXNlcjpwQHNz") as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url.replace("http://", "http://user:p%40ss@"))
        monkeypatch.setenv("NO_PROXY", "")
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("http_proxy", raising=False)
        with open_rest(srv.url, token=TOKEN, trust_env=True) as fetcher:
            (r,) = fetcher.fetch(keys((3, 1, 0)))
        assert r.status == "ok" and r.data == served[(3, 1, 0)]
        assert proxy.seen == [("GET", srv.url + f"/tile/3/1/0?token={TOKEN}")]
        with open_rest(srv.url, trust_env=False) as fetcher:  # trust_env off: straight there
            (r,) = fetcher.fetch(keys((3, 1, 0)))
        assert r.status == "ok" and len(proxy.seen) == 1


def test_https_through_connect_proxy(cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    wanted = [(4, 2, c) for c in range(6)]
    served = tiles_for(wanted, size=32)
    with TileServer(served, ssl_context=_tileserver.server_ssl_context(*cert)) as srv, \
            ProxyServer() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.delenv("https_proxy", raising=False)
        monkeypatch.setenv("NO_PROXY", "")
        monkeypatch.delenv("no_proxy", raising=False)
        with TileFetchEngine(workers=2, ssl_context=_tileserver.client_ssl_context(cert[0])) as engine:
            urls = ((k, srv.url + "/tile/{}/{}/{}".format(*k)) for k in wanted)
            got = {r.tag: r for r in engine.fetch(urls)}
    assert all(got[k].status == "ok" and got[k].data == served[k] for k in wanted)
    port = srv.url.split(":")[2].split("/")[0]
    assert proxy.seen and all(s == ("CONNECT", f"127.0.0.1:{port}") for s in proxy.seen)
    assert len(proxy.seen) <= 2  # tunnels are kept alive and reused


def test_no_proxy_bypasses(monkeypatch: pytest.MonkeyPatch) -> None:
    served = tiles_for([(3, 1, 0)])
    with TileServer(served) as srv, ProxyServer() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        with TileFetchEngine() as engine:
            (r,) = engine.fetch([("t", srv.url + "/tile/3/1/0")])
    assert r.status == "ok" and proxy.seen == []

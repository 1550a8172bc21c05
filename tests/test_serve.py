"""``cacheorch serve`` against real loopback servers, and the demo cache it is usually pointed at.

Tile bytes are compared with :func:`open_cache`, and decoded tiles with GDAL's ESRIC driver reading
the same cache (an independent reader), so a server that mixed up rows and columns, or levels,
would fail even if it agreed with cacheorch's own reader.
"""
from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from _gdal import decode_rgba, open_gdal, read_tile

from cacheorch.demo import (
    DEMO_AREA, demo_area_bounds, draw_tile, make_demo_cache, write_demo_area,
)
from cacheorch.errors import CacheorchError, FormatError, LevelError, UsageError
from cacheorch.formats.cache import TileCache, open_cache
from cacheorch.serve import CacheServer, default_service_name, run_server
from cacheorch.tiling import web_mercator_scheme

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TPKX = FIXTURES / "esri_tpkx_sample" / "Usa.tpkx"
COMPACT = FIXTURES / "esri_compactcache_sample"
STREET_MAP_JSON = FIXTURES / "mapserver_json" / "World_Street_Map_MapServer_v10.01.json"
#: Usa.tpkx levels 0 and 1 hold malformed records (spec §10.3): never golden data.
TPKX_GOOD_LEVELS = range(2, 6)


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"fixture missing: {path}", pytrace=False)
    return path


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_cache(tmp_path_factory.mktemp("demo") / "demo-cache")


@pytest.fixture(scope="module", params=["demo", "tpkx", "compact"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[CacheServer, TileCache, Path]]:
    """(server, an independent open_cache of the same path, the path) for each kind of cache."""
    if request.param == "demo":
        path = request.getfixturevalue("demo_cache")
    else:
        path = _need(TPKX if request.param == "tpkx" else COMPACT)
    with CacheServer(path) as server, open_cache(path) as cache:
        yield server, cache, path


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.trust_env = False  # never a proxy between us and 127.0.0.1
        yield s


def _good_levels(path: Path, cache: TileCache) -> list[int]:
    levels = sorted({key[0] for key in cache.bundle_keys()})
    return [lv for lv in levels if lv in TPKX_GOOD_LEVELS] if path.suffix == ".tpkx" else levels


def _sample_keys(cache: TileCache, levels: list[int], absent: int = 40) -> list[tuple[int, int, int]]:
    """Every grid position of small levels; of large ones, every tile present plus some absent."""
    rng = random.Random(7)
    keys: list[tuple[int, int, int]] = []
    for level in levels:
        rows, cols = cache.scheme.grid_size(level) or (256, 256)
        if rows * cols <= 256:
            keys += [(level, r, c) for r in range(rows) for c in range(cols)]
            continue
        present = [(level, r, c) for r in range(rows) for c in range(cols)
                   if cache.get_tile(level, r, c) is not None]
        keys += rng.sample(present, min(len(present), 150))
        keys += [(level, rng.randrange(rows), rng.randrange(cols)) for _ in range(absent)]
    return keys


# -- service JSON -----------------------------------------------------------------------------


def test_service_json_describes_the_cache(served, session) -> None:
    server, cache, path = served
    r = session.get(server.url, params={"f": "json"}, timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    doc = r.json()
    scheme = cache.scheme
    info = doc["tileInfo"]
    assert info["lods"] == [lod.to_json() for lod in scheme.lods]
    assert (info["rows"], info["cols"], info["dpi"]) == (scheme.tile_rows, scheme.tile_cols, scheme.dpi)
    assert info["origin"] == {"x": scheme.origin_x, "y": scheme.origin_y}
    assert info["format"] == scheme.tile_format
    assert info["compressionQuality"] == scheme.compression_quality
    levels = sorted({key[0] for key in cache.bundle_keys()})
    assert (doc["minLOD"], doc["maxLOD"]) == (levels[0], levels[-1])
    assert doc["minScale"] == scheme.lod(levels[0]).scale
    assert doc["maxScale"] == scheme.lod(levels[-1]).scale
    assert doc["singleFusedMapCache"] is True
    assert doc["capabilities"] == "Map,TilesOnly,Tilemap"  # bundle caches answer /tilemap
    assert doc["storageInfo"] == {"storageFormat": "esriMapCacheStorageModeCompactV2", "packetSize": 128}
    assert doc["exportTilesAllowed"] is False and doc["maxExportTilesCount"] == 100000
    assert doc["units"] == "esriMeters"
    assert doc["spatialReference"] == scheme.spatial_reference.to_json()
    for key in ("fullExtent", "initialExtent"):
        env = doc[key]
        assert env["xmin"] < env["xmax"] and env["ymin"] < env["ymax"]
        assert env["spatialReference"]
    if cache.full_extent is not None:
        assert doc["fullExtent"]["xmin"] == cache.full_extent.xmin


def test_service_json_has_the_shape_of_a_real_mapserver(served, session) -> None:
    """Every caching key a captured ArcGIS MapServer answer has, ours has too, with the same types."""
    real = json.loads(_need(STREET_MAP_JSON).read_bytes())
    server, _, _ = served
    ours = session.get(server.url + "?f=json", timeout=10).json()
    for key in ("currentVersion", "serviceDescription", "mapName", "description", "copyrightText",
                "layers", "tables", "spatialReference", "singleFusedMapCache", "tileInfo",
                "initialExtent", "fullExtent", "units", "capabilities"):
        assert key in real, key  # the list above is what a real server sends
        assert type(ours[key]) is type(real[key]), key
    assert set(real["tileInfo"]) <= set(ours["tileInfo"])
    assert set(real["tileInfo"]["lods"][0]) == set(ours["tileInfo"]["lods"][0])


@pytest.mark.parametrize("suffix", ["?f=pjson", "/?f=json", "", "/", "?f=json&token=abc"])
def test_service_json_variants_give_the_same_document(served, session, suffix: str) -> None:
    server, _, _ = served
    base = session.get(server.url + "?f=json", timeout=10)
    r = session.get(server.url + suffix, timeout=10)
    assert r.status_code == 200
    assert r.json() == base.json()
    if "pjson" in suffix:
        assert "\n  " in r.text and "\n" not in base.text


def test_services_catalog_lists_the_service(served, session) -> None:
    server, _, _ = served
    for url in (server.root_url + "/arcgis/rest/services?f=json", server.root_url + "/arcgis/rest/services/"):
        doc = session.get(url, timeout=10).json()
        assert doc["folders"] == []
        assert doc["services"] == [{"name": server.name, "type": "MapServer"}]
        assert isinstance(doc["currentVersion"], float)


# -- tiles ------------------------------------------------------------------------------------


def test_tiles_are_byte_identical_to_the_cache(served, session) -> None:
    server, cache, path = served
    keys = _sample_keys(cache, _good_levels(path, cache))
    assert len(keys) > 20
    hits = misses = 0
    for level, row, col in keys:
        expected = cache.get_tile(level, row, col)
        r = session.get(f"{server.url}/tile/{level}/{row}/{col}", timeout=10)
        if expected is None:
            assert r.status_code == 404, (level, row, col)
            assert r.json()["error"]["code"] == 404
            misses += 1
            continue
        assert r.status_code == 200, (level, row, col)
        assert r.content == expected, (level, row, col)
        kind = "image/png" if expected.startswith(b"\x89PNG") else "image/jpeg"
        assert r.headers["Content-Type"] == kind
        assert int(r.headers["Content-Length"]) == len(expected)
        hits += 1
    assert hits >= 20
    if path.suffix == ".tpkx":
        assert misses > 0  # the USA sample does not cover the world at level 5


def test_tiles_match_what_gdal_shows(served, session) -> None:
    """Decoded served tiles equal GDAL's ESRIC reading of the same (level, row, col)."""
    server, cache, path = served
    rng = random.Random(11)
    with open_gdal(path) as ds:
        left, bottom, right, top = ds.bounds
        checked = 0
        for level in _good_levels(path, cache):
            rows, cols = cache.scheme.grid_size(level) or (1, 1)
            candidates = [(r, c) for r in range(rows) for c in range(cols)]
            rng.shuffle(candidates)
            for row, col in candidates[:40]:
                xmin, ymin, xmax, ymax = cache.scheme.tile_bounds(level, row, col)
                inside = xmin >= left - 1 and xmax <= right + 1 and ymin >= bottom - 1 and ymax <= top + 1
                r = session.get(f"{server.url}/tile/{level}/{row}/{col}", timeout=10)
                if r.status_code == 404 or not inside:  # GDAL crops a package to its extent
                    continue
                gdal = read_tile(ds, cache.scheme, level, row, col)
                ours = decode_rgba(r.content)[:ds.count]
                assert np.array_equal(gdal, ours), (level, row, col)
                checked += 1
                if checked >= 3 * len(_good_levels(path, cache)):
                    break
    assert checked >= 3


@pytest.mark.parametrize("tail", [
    "99/0/0",  # a level the scheme does not have
    "23/0/0",  # a level in the scheme without bundles (demo, tpkx), or out of range (compact)
    "-1/0/0", "2/-1/0", "2/0/-1", "2/x/0", "2/0", "2/0/0/1", "2/0/0.png", "2/9999999/9999999",
    "2/" + "9" * 40 + "/0",
])
def test_absent_or_impossible_tiles_are_404(served, session, tail: str) -> None:
    server, _, _ = served
    r = session.get(f"{server.url}/tile/{tail}", timeout=10)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == 404


def test_tile_in_scheme_but_not_in_cache_is_404(session, demo_cache: Path) -> None:
    """Level 6 is not in the demo; a row past the grid of a level that is, is not either."""
    with CacheServer(demo_cache) as server:
        assert session.get(f"{server.url}/tile/0/0/0", timeout=10).status_code == 200
        assert session.get(f"{server.url}/tile/0/0/1", timeout=10).status_code == 404
        assert session.get(f"{server.url}/tile/0/1/0", timeout=10).status_code == 404
        assert session.get(f"{server.url}/tile/6/0/0", timeout=10).status_code == 404


def test_head_gives_get_headers_without_body(served, session) -> None:
    server, cache, path = served
    level = _good_levels(path, cache)[-1]
    row, col = next((r, c) for r in range(64) for c in range(64) if cache.get_tile(level, r, c))
    url = f"{server.url}/tile/{level}/{row}/{col}"
    get, head = session.get(url, timeout=10), session.head(url, timeout=10)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == get.headers["Content-Length"] == str(len(get.content))
    assert head.headers["Content-Type"] == get.headers["Content-Type"]
    missing = session.head(f"{server.url}/tile/99/0/0", timeout=10)
    assert missing.status_code == 404 and missing.content == b""
    doc = session.head(server.url + "?f=json", timeout=10)
    assert doc.status_code == 200 and doc.content == b"" and int(doc.headers["Content-Length"]) > 100
    # the connection is still in step after bodiless answers
    assert session.get(url, timeout=10).content == get.content


@pytest.mark.parametrize("path", [
    "/arcgis", "/arcgis/rest/services/Other/MapServer", "/arcgis/rest/services/{name}/ImageServer",
    "/arcgis/rest/services/{name}/MapServer/0", "/arcgis/rest/services/{name}/MapServer/tilemap/0/0/0/8",
    "/arcgis/rest/services/{name}/MapServer/tilemap/0/0/0/8/x",
    "/arcgis/rest/services/{name}/MapServer/exportTiles", "/static/", "/index.html", "/0/0", "/0/0/0/0",
])
def test_unknown_paths_are_404_json(served, session, path: str) -> None:
    server, _, _ = served
    r = session.get(server.root_url + path.format(name=server.name), timeout=10)
    assert r.status_code == 404
    assert r.headers["Content-Type"].startswith("application/json")
    error = r.json()["error"]
    assert error["code"] == 404 and error["message"]


def test_other_methods_are_refused(served, session) -> None:
    server, _, _ = served
    for method in ("POST", "PUT", "DELETE"):
        r = session.request(method, server.url, data=b"f=json", timeout=10)
        assert r.status_code == 405
        assert r.headers["Allow"] == "GET, HEAD"
        assert r.json()["error"]["code"] == 405
    assert session.get(server.url + "?f=json", timeout=10).status_code == 200


# -- connections ------------------------------------------------------------------------------


def test_keep_alive_reuses_one_connection(session, demo_cache: Path) -> None:
    with CacheServer(demo_cache) as server:
        for i in range(30):
            r = session.get(f"{server.url}/tile/3/{i % 8}/{i // 8}", timeout=10)
            assert r.status_code == 200
            assert "close" not in r.headers.get("Connection", "").lower()
        session.get(f"{server.url}/tile/9/0/0", timeout=10)  # a 404 keeps the connection too
        pools = session.get_adapter(server.url).poolmanager.pools
        assert len(pools) == 1
        pool = pools[next(iter(pools.keys()))]
        assert pool.num_connections == 1
        assert pool.num_requests == 31


def _raw_exchange(port: int, request: bytes, wait: float = 2.0) -> tuple[bytes, bool]:
    """Send raw bytes; return what came back and whether the server closed within ``wait`` s."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        sock.settimeout(wait)
        closed = False
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    closed = True
                    break
                data += chunk
        except TimeoutError:
            pass
    return data, closed


def test_connection_close_and_http_1_0_are_honoured(demo_cache: Path) -> None:
    with CacheServer(demo_cache) as server:
        path = f"/arcgis/rest/services/{server.name}/MapServer/tile/0/0/0"
        data, closed = _raw_exchange(server.port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close"
                                     f"\r\n\r\n".encode())
        assert data.startswith(b"HTTP/1.1 200 OK\r\n") and closed
        assert b"\r\nConnection: close\r\n" in data
        data, closed = _raw_exchange(server.port, f"GET {path} HTTP/1.0\r\n\r\n".encode())
        assert data.startswith(b"HTTP/1.1 200 ") and closed
        # two pipelined HTTP/1.1 requests on one connection get two answers
        two = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\nHEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        data, closed = _raw_exchange(server.port, two, wait=0.5)
        assert data.count(b"HTTP/1.1 200 OK\r\n") == 2 and not closed
        # a HEAD answer carries no body, so the next answer follows its headers at once
        two = f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        data, closed = _raw_exchange(server.port, two, wait=0.5)
        assert data.split(b"\r\n\r\n", 1)[1].startswith(b"HTTP/1.1 404 ")
        for bad, code in ((b"garbage\r\n\r\n", b"400"), (b"GET / HTTP/2.0\r\n\r\n", b"505"),
                          (b"BREW /pot HTTP/1.1\r\n\r\n", b"501")):
            data, closed = _raw_exchange(server.port, bad)
            assert data.startswith(b"HTTP/1.1 " + code) and closed, data[:80]
            assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]["code"] == int(code)


def test_concurrent_clients_get_the_right_tiles(demo_cache: Path) -> None:
    with CacheServer(demo_cache) as server, open_cache(demo_cache) as cache:
        keys = [(4, r, c) for r in range(16) for c in range(16)]
        errors: list[str] = []

        def worker(part: list[tuple[int, int, int]]) -> None:
            with requests.Session() as s:
                s.trust_env = False
                for level, row, col in part:
                    body = s.get(f"{server.url}/tile/{level}/{row}/{col}", timeout=10).content
                    if body != cache.get_tile(level, row, col):
                        errors.append(f"{level}/{row}/{col}")

        threads = [threading.Thread(target=worker, args=(keys[i::8],)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors


def test_stop_ends_idle_keep_alive_connections_promptly(demo_cache: Path, session) -> None:
    server = CacheServer(demo_cache).start()
    assert session.get(server.url + "/tile/0/0/0", timeout=10).status_code == 200  # held open
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 3
    server.stop()  # twice is fine
    with pytest.raises(requests.ConnectionError):  # the held connection is gone too
        session.get(server.url + "/tile/0/0/0", timeout=3)
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url + "/tile/0/0/0", timeout=3)
    with pytest.raises(UsageError):
        server.start()


def test_serve_forever_in_the_foreground_stops_from_another_thread(demo_cache: Path, session) -> None:
    server = CacheServer(demo_cache)
    runner = threading.Thread(target=server.serve_forever)
    runner.start()
    try:
        assert session.get(server.url + "?f=json", timeout=10).status_code == 200
    finally:
        server.stop()
        runner.join(5)
    assert not runner.is_alive()


# -- construction ------------------------------------------------------------------------------


@pytest.mark.parametrize("make", ["missing", "empty-dir", "text-file", "bad-zip"])
def test_a_bad_cache_path_is_one_clear_error(tmp_path: Path, make: str) -> None:
    path = tmp_path / "thing"
    if make == "empty-dir":
        path.mkdir()
    elif make == "text-file":
        path.write_text("not a cache")
    elif make == "bad-zip":
        path = tmp_path / "broken.tpkx"
        path.write_bytes(b"PK\x03\x04" + b"\x00" * 50)
    with pytest.raises(CacheorchError) as info:
        CacheServer(path)
    message = str(info.value)
    assert isinstance(info.value, FormatError)
    assert "\n" not in message and str(path) in message and info.value.exit_code == 2


def test_service_names(tmp_path: Path, demo_cache: Path) -> None:
    assert default_service_name("/data/Usa.tpkx") == "Usa"
    assert default_service_name("/data/my cache-v2.TPKX") == "my_cache_v2"
    assert default_service_name("/caches/Streets/Layers") == "Streets"
    assert default_service_name("/caches/Streets/Layers/conf.xml") == "Streets"
    assert default_service_name("/caches/été") == "t"
    assert default_service_name("/caches/---") == "cache"
    with CacheServer(demo_cache, service_name="Demo_1") as server:
        assert server.url.endswith("/arcgis/rest/services/Demo_1/MapServer")
        assert requests.get(server.url + "/tile/0/0/0", timeout=10).status_code == 200
        # ArcGIS service names are case-insensitive in URLs
        assert requests.get(server.url.replace("Demo_1", "demo_1") + "/tile/0/0/0",
                            timeout=10).status_code == 200
    with pytest.raises(UsageError):
        CacheServer(demo_cache, service_name="bad name/x")


def test_port_in_use_is_a_usage_error(demo_cache: Path) -> None:
    with CacheServer(demo_cache) as first:
        with pytest.raises(UsageError, match="cannot listen"):
            CacheServer(demo_cache, port=first.port)


def test_run_server_prints_the_url(demo_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def interrupted(self: CacheServer) -> None:  # serve a moment, then "Ctrl-C"
        self.start()
        seen.append(requests.get(self.url + "?f=json", timeout=10).json()["mapName"])
        raise KeyboardInterrupt

    monkeypatch.setattr(CacheServer, "serve_forever", interrupted)
    lines: list[str] = []
    run_server(demo_cache, "127.0.0.1", 0, "demo", lines.append)
    text = "\n".join(lines)
    assert "/arcgis/rest/services/demo/MapServer" in text and "Stopped" in text
    assert seen == ["Layers"]


# -- round trip through the real fetcher and exporter -------------------------------------------


def test_export_serve_export_gives_identical_tiles(demo_cache: Path, tmp_path: Path) -> None:
    """Fetch every tile of the served demo with the ``rest`` source, write a new compact cache."""
    from cacheorch.connection import Connection
    from cacheorch.interfaces import ExportRequest, Service
    from cacheorch.plugins.export_compact_v2 import CompactV2Exporter
    from cacheorch.plugins.tiles_rest import RestTileSource
    from cacheorch.tiling import TileKey

    with CacheServer(demo_cache) as server, open_cache(demo_cache) as original:
        scheme = original.scheme
        service = Service(location=server.url, scheme=scheme, name=server.name)
        keys = [TileKey(lv, r, c) for lv in range(6) for r in range(2 ** lv) for c in range(2 ** lv)]
        source = RestTileSource(RestTileSource.Options(trust_env=False))
        started = time.perf_counter()
        with source.open(service, Connection(), workers=8) as fetcher:
            results = {res.key: res for res in fetcher.fetch(keys)}
        elapsed = time.perf_counter() - started
        assert all(res.status == "ok" for res in results.values()), \
            [res for res in results.values() if res.status != "ok"][:3]
        out = tmp_path / "again"
        request = ExportRequest(output=out, service=service, scheme=scheme, levels=scheme.lods)
        session = CompactV2Exporter().open(request)
        for level in range(6):
            sink = session.open_bundle(level, 0, 0)
            for key in keys:
                if key.level == level:
                    sink.add(key.row, key.col, results[key].data)  # type: ignore[arg-type]
            sink.close()
        session.commit()
        session.discard()
        with open_cache(out) as again:
            assert list(again.bundle_keys()) == list(original.bundle_keys())
            for key in keys:
                assert again.get_tile(key.level, key.row, key.col) == \
                    original.get_tile(key.level, key.row, key.col)
    print(f"fetched {len(keys)} tiles in {elapsed:.2f} s ({len(keys) / elapsed:.0f}/s)")


# -- the demo ----------------------------------------------------------------------------------


def test_demo_cache_has_every_tile_of_levels_0_to_5(demo_cache: Path) -> None:
    with open_cache(demo_cache) as cache:
        assert cache.scheme.levels == (0, 1, 2, 3, 4, 5)
        assert cache.scheme.fingerprint() == web_mercator_scheme(5).fingerprint()
        assert list(cache.bundle_keys()) == [(lv, 0, 0) for lv in range(6)]
        count = 0
        sizes = []
        for level in range(6):
            for row in range(2 ** level):
                for col in range(2 ** level):
                    data = cache.get_tile(level, row, col)
                    assert data is not None and data.startswith(b"\x89PNG")
                    sizes.append(len(data))
                    count += 1
            assert cache.get_tile(level, 2 ** level, 0) is None
        assert count == 1365
        corner = {cache.get_tile(5, r, c) for r in range(4) for c in range(4)}
        assert len(corner) == 16  # every tile distinct
        assert max(sizes) < 12_000  # flat areas compress well


def test_demo_tiles_read_by_gdal_show_their_drawing(demo_cache: Path) -> None:
    """GDAL's view of the written demo equals the drawing: the exporter put each tile in its place."""
    scheme = web_mercator_scheme(5)
    with open_gdal(demo_cache) as ds:
        assert ds.count == 4 and ds.width == 256 * 32
        for level, row, col in [(0, 0, 0), (2, 1, 3), (5, 11, 16), (5, 31, 0), (4, 0, 15)]:
            expected = decode_rgba(draw_tile(scheme, level, row, col))
            assert np.array_equal(read_tile(ds, scheme, level, row, col), expected), (level, row, col)


def test_demo_tiles_are_recognisable() -> None:
    scheme = web_mercator_scheme(5)
    alps = decode_rgba(draw_tile(scheme, 5, 11, 16))  # lon 0-11°, lat 41-49°: on land
    ocean = decode_rgba(draw_tile(scheme, 5, 14, 8))  # mid-Atlantic
    centre = (slice(None), slice(100, 160), slice(100, 160))
    land_colour = np.median(alps[centre].reshape(4, -1), axis=1)
    water_colour = np.median(ocean[centre].reshape(4, -1), axis=1)
    assert water_colour[2] > water_colour[0] + 30  # blue water
    assert land_colour[0] > land_colour[2] + 20  # yellow-green land
    assert (alps[:3, 0, :] < 80).all() and (alps[:3, :, -1] < 80).all()  # dark border
    assert not np.array_equal(decode_rgba(draw_tile(scheme, 5, 11, 17)), alps)


def test_demo_cache_refuses_bad_levels_and_existing_output(tmp_path: Path, demo_cache: Path) -> None:
    with pytest.raises(LevelError):
        make_demo_cache(tmp_path / "x", levels=[])
    with pytest.raises(LevelError):
        make_demo_cache(tmp_path / "x", levels=range(0, 12))
    with pytest.raises(CacheorchError):
        make_demo_cache(demo_cache)  # exists, and overwrite was not asked for
    small = make_demo_cache(tmp_path / "small", levels=[0, 1])
    again = make_demo_cache(small, levels=[0, 1, 2], overwrite=True)
    with open_cache(again) as cache:
        assert sorted({k[0] for k in cache.bundle_keys()}) == [0, 1, 2]


def test_demo_area_is_a_wgs84_polygon_around_the_alps(tmp_path: Path) -> None:
    from shapely.geometry import shape

    path = write_demo_area(tmp_path / "alps.geojson")
    doc = json.loads(path.read_text())
    assert doc == DEMO_AREA
    polygon = shape(doc["features"][0]["geometry"])
    assert polygon.is_valid and polygon.geom_type == "Polygon"
    west, south, east, north = demo_area_bounds()
    assert (west, south, east, north) == polygon.bounds
    assert 4 < west < east < 18 and 43 < south < north < 49
    assert polygon.exterior.is_ccw  # RFC 7946 right-hand rule
    assert polygon.contains(shape({"type": "Point", "coordinates": [10.0, 46.5]}))  # Engadin


# -- every format open_cache reads; tilemap; XYZ ---------------------------------------------------


def _export_all(tmp_path: Path, exporter: str) -> Path:
    from test_verify import export
    return export(tmp_path, exporter)


@pytest.mark.parametrize("exporter", ["tpk", "tpkx", "compact-v2", "exploded", "mbtiles", "gpkg"])
def test_every_output_format_is_served(tmp_path: Path, session, exporter: str) -> None:
    """Each format open_cache reads: the service JSON, every tile byte-identical, XYZ the same."""
    from test_verify import _tiles
    output = _export_all(tmp_path, exporter)
    tiles = _tiles()
    with CacheServer(output) as server:
        doc = session.get(server.url, params={"f": "json"}, timeout=10).json()
        assert (doc["minLOD"], doc["maxLOD"]) == (0, 3)
        bundles = exporter in ("tpk", "tpkx", "compact-v2")
        assert ("Tilemap" in doc["capabilities"].split(",")) is bundles
        for (level, row, col), data in tiles.items():
            r = session.get(f"{server.url}/tile/{level}/{row}/{col}", timeout=10)
            assert r.status_code == 200 and r.content == data, (level, row, col)
            assert r.headers["Content-Type"] == "image/png"
            xyz = session.get(f"{server.root_url}/{level}/{col}/{row}", timeout=10)
            assert xyz.status_code == 200 and xyz.content == data
        assert session.get(f"{server.url}/tile/3/8/0", timeout=10).status_code == 404
        assert session.get(f"{server.root_url}/3/0/8", timeout=10).status_code == 404
        assert session.get(f"{server.root_url}/4/0/0", timeout=10).status_code == 404
        assert session.get(f"{server.root_url}/", timeout=10).status_code == 200


@pytest.mark.parametrize("path", ["tpkx", "compact", "tpk", "v1"])
def test_tilemap_says_which_tiles_exist(session, path: str, fixtures: Path) -> None:
    """Compared tile by tile with open_cache over a block that crosses the grid's end."""
    target = {"tpkx": TPKX, "compact": COMPACT, "tpk": fixtures / "tpk_v1" / "states_filled.tpk",
              "v1": fixtures / "gwc" / "compactcacheV1"}[path]
    with CacheServer(_need(target)) as server, open_cache(target) as cache:
        for level in sorted({k[0] for k in cache.bundle_keys()}):
            r = session.get(f"{server.url}/tilemap/{level}/0/0/40/40", params={"f": "json"}, timeout=10)
            assert r.status_code == 200
            doc = r.json()
            assert doc["valid"] is True and doc["adjusted"] is False
            assert doc["location"] == {"left": 0, "top": 0, "width": 40, "height": 40}
            want = [int(cache.get_tile(level, row, col) is not None)
                    for row in range(40) for col in range(40)]
            assert doc["data"] == want and sum(want) > 0


def test_tilemap_is_clipped_to_one_bundle_and_empty_where_nothing_is(session, demo_cache: Path
                                                                     ) -> None:
    with CacheServer(demo_cache) as server, open_cache(demo_cache) as cache:
        doc = session.get(f"{server.url}/tilemap/5/120/100/20/30", timeout=10).json()
        assert doc["adjusted"] is True
        assert doc["location"] == {"left": 100, "top": 120, "width": 20, "height": 8}
        assert doc["data"] == [int(cache.get_tile(5, r, c) is not None)
                               for r in range(120, 128) for c in range(100, 120)]
        empty = session.get(f"{server.url}/tilemap/9/0/0/4/4", timeout=10).json()
        assert empty["data"] == [0] * 16 and empty["valid"] is True
        assert session.get(f"{server.url}/tilemap/2/0/0/0/4", timeout=10).status_code == 400


def test_run_against_a_served_cache_uses_its_tilemap(tmp_path: Path, demo_cache: Path, cli) -> None:
    """`run` sees Tilemap in the capabilities and asks per bundle; the copy is still complete."""
    output = tmp_path / "copy.tpkx"
    with CacheServer(demo_cache) as server:
        result = cli("run", "--service", server.url, "--levels", "0-3", "--exporter", "tpkx",
                     "--output", str(output), "--json")
    assert result.code == 0, result.stderr
    with open_cache(demo_cache) as a, open_cache(output) as b:
        keys = [(lv, r, c) for lv in range(4) for r in range(2 ** lv) for c in range(2 ** lv)]
        assert all(a.get_tile(*k) == b.get_tile(*k) for k in keys)


def test_xyz_is_only_for_the_standard_grid(tmp_path: Path, session, fixtures: Path) -> None:
    from cacheorch.serve import xyz_zooms
    v1 = fixtures / "gwc" / "compactcacheV1"
    with open_cache(v1) as cache:
        assert xyz_zooms(cache.scheme) == {z: z for z in range(20)}
    from test_preview import nztm_cache
    nz = nztm_cache(tmp_path / "nz")
    with CacheServer(nz) as server:
        r = session.get(f"{server.root_url}/0/0/0", timeout=10)
        assert r.status_code == 404 and "Web Mercator" in r.json()["error"]["message"]
        assert session.get(f"{server.url}/tile/0/13/5", timeout=10).status_code == 200

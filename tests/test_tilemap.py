"""The tilemap filter: absent tiles answered `missing` without a request, against a loopback server."""
from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from _tileserver import TileServer
from _tiles import all_tiles
from cacheorch.connection import Connection
from cacheorch.formats.png import encode_png
from cacheorch.interfaces import Service, TileFetcher, TileResult
from cacheorch.plugins import tilemap as tm
from cacheorch.plugins.tiles_rest import RestTileSource
from cacheorch.tiling import TileKey, web_mercator_scheme

SCHEME = web_mercator_scheme(12)
TOKEN = "tilemap-T0ken_xyz"


def png(level: int, row: int, col: int) -> bytes:
    return encode_png(4, 4, bytes(((level * 31 + row) % 256, col % 256, 7)) * 16)


def service_for(url: str, *, capabilities: str = "Map,TilesOnly,Tilemap",
                tile_servers: tuple[str, ...] = ()) -> Service:
    return Service(location=url, scheme=SCHEME, capabilities=frozenset(capabilities.split(",")),
                   tile_servers=tile_servers)


def open_rest(service: Service, connection: Connection, workers: int = 4) -> TileFetcher:
    source = RestTileSource(RestTileSource.Options(backoff=0.001, backoff_cap=0.01, trust_env=False))
    return source.open(service, connection, workers)


def tile_requests(srv: TileServer) -> set[tuple[int, int, int]]:
    head = srv.prefix + "/tile/"
    return {tuple(int(p) for p in path[len(head):].split("/"))  # type: ignore[misc]
            for path in srv.requests if path.startswith(head)}


def tilemap_requests(srv: TileServer) -> list[str]:
    return sorted(p for p in srv.requests if "/tilemap/" in p)


def by_key(results: Iterator[TileResult]) -> dict[tuple[int, int, int], TileResult]:
    out: dict[tuple[int, int, int], TileResult] = {}
    for r in results:
        k = (r.key.level, r.key.row, r.key.col)
        assert k not in out, f"{k} answered twice"
        out[k] = r
    return out


#: Level 9: pieces of three bundles of one bundle row, a sparse diagonal of present tiles in each,
#: in the planner's order (bundle by bundle).
LEVEL = 9
COLS = list(range(100, 141)) + list(range(248, 270))  # across the bundle lines at 128 and 256
KEYS = [TileKey(LEVEL, r, c) for bundle in (0, 128, 256) for r in range(0, 12) for c in COLS
        if bundle <= c < bundle + 128]
PRESENT = {(k.level, k.row, k.col) for k in KEYS if (k.row * 7 + k.col) % 23 == 0}


@pytest.fixture
def sparse():
    with TileServer({k: png(*k) for k in PRESENT}, tilemap=True) as srv:
        yield srv


def test_absent_tiles_are_never_requested(sparse):
    service = service_for(sparse.url)
    connection = Connection(token=TOKEN, timeout=5)
    fetcher = tm.with_tilemap(open_rest(service, connection), service, connection)
    assert isinstance(fetcher, tm.TilemapFilter)
    with fetcher:
        results = by_key(fetcher.fetch(iter(KEYS)))
    assert set(results) == {(k.level, k.row, k.col) for k in KEYS}
    for k, r in results.items():
        if k in PRESENT:
            assert r.status == "ok" and r.data == png(*k)
        else:
            assert r.status == "missing" and r.data is None
    assert tile_requests(sparse) == PRESENT  # not one request for an absent tile
    # one aligned 128×128 tilemap per bundle, with the token
    assert tilemap_requests(sparse) == [f"{sparse.prefix}/tilemap/{LEVEL}/0/{c}/128/128"
                                        for c in (0, 128, 256)]
    assert all(q.get("token") == [TOKEN] and q.get("f") == ["json"]
               for path, q, _ in sparse.log if "/tilemap/" in path)
    assert fetcher.skipped == len(KEYS) - len(PRESENT) and fetcher.bundles == 3


def test_fetch_tilemap_reads_presence_and_clipped_answers(sparse):
    service = service_for(sparse.url)
    connection = Connection(timeout=5)
    tilemap = tm.fetch_tilemap(service, connection, LEVEL, 0, 128)
    assert tilemap is not None and tilemap.present.shape == (128, 128)
    for r in range(12):
        for c in range(128, 256):
            assert tilemap.has(r, c) is ((LEVEL, r, c) in PRESENT)
    assert tilemap.has(0, 127) is None and tilemap.has(128, 200) is None  # outside: unknown
    # a block crossing a bundle line: the server clips it to the first bundle (adjusted)
    clipped = tm.fetch_tilemap(service, connection, LEVEL, 0, 100, 64, 64)
    assert clipped is not None and clipped.present.shape == (64, 28)
    assert clipped.has(0, 127) is ((LEVEL, 0, 127) in PRESENT) and clipped.has(0, 128) is None


@pytest.mark.parametrize("answer, skipped", [
    ((422, b'{"error": {"code": 422, "message": "Unable to complete operation."}}'), True),
    ((500, b"<html>Internal Server Error</html>"), False),
    ((200, b'{"valid": false, "data": [], "location": {"left": 0, "top": 0, "width": 0, "height": 0}}'), False),
    ((200, b'{"adjusted": false, "data": [1, 0, 1], "location": {"left": 128, "top": 0, "width": 128, "height": 128}}'), False),
    ((200, b"not json"), False),
    ((200, b'{"error": {"code": 498, "message": "Invalid token."}}'), False),
])
def test_a_bundle_without_a_usable_tilemap_is_fetched_tile_by_tile(answer, skipped):
    """422 is "nothing here"; anything else unusable falls back to asking for every tile."""
    with TileServer({k: png(*k) for k in PRESENT}, tilemap=True,
                    tilemap_status={(LEVEL, 0, 128): answer}) as srv:
        service = service_for(srv.url)
        connection = Connection(timeout=5)
        with tm.TilemapFilter.for_service(open_rest(service, connection), service,
                                          connection) as fetcher:
            results = by_key(fetcher.fetch(iter(KEYS)))
        middle = {(k.level, k.row, k.col) for k in KEYS if 128 <= k.col < 256}
        requested = tile_requests(srv)
        if skipped:  # the whole bundle answered missing, nothing asked for it
            assert not requested & middle
            assert all(results[k].status == "missing" for k in middle)
        else:
            assert requested & middle == middle  # every tile of that bundle was asked for
            assert all(results[k].status == ("ok" if k in PRESENT else "missing") for k in middle)
            assert fetcher.unknown == 1
        # the other bundles still used their tilemaps
        assert requested - middle == PRESENT - middle


def test_tilemaps_go_through_tile_servers_by_row():
    with TileServer(tilemap=True, default_tile=png(0, 0, 0)) as a, \
            TileServer(tilemap=True, default_tile=png(0, 0, 0)) as b, \
            TileServer(tilemap=True, default_tile=png(0, 0, 0)) as c:
        service = service_for(a.url, tile_servers=(a.url, b.url, c.url))
        assert tm.tilemap_url(service, 5, 128, 0).startswith(c.url + "/tilemap/5/128/0/")  # 128 % 3
        assert tm.tilemap_url(service, 5, 0, 128).startswith(a.url + "/tilemap/5/0/128/")
        assert tm.fetch_tilemap(service, Connection(timeout=5), 9, 128, 0) is not None
        assert tilemap_requests(c) == [f"{c.prefix}/tilemap/9/128/0/128/128"]
        assert not tilemap_requests(a) and not tilemap_requests(b)


def test_with_tilemap_only_when_listed_or_asked():
    inner = _Scripted(set())
    listed = service_for("https://example.invalid/arcgis/rest/services/X/MapServer")
    unlisted = service_for(listed.location, capabilities="Map,Query")
    local = service_for("/data/cache.tpkx")
    conn = Connection()
    assert isinstance(tm.with_tilemap(inner, listed, conn), tm.TilemapFilter)
    assert tm.with_tilemap(inner, unlisted, conn) is inner
    assert isinstance(tm.with_tilemap(inner, unlisted, conn, enabled=True), tm.TilemapFilter)
    assert tm.with_tilemap(inner, listed, conn, enabled=False) is inner
    assert tm.with_tilemap(inner, local, conn, enabled=True) is inner


# -- streaming -------------------------------------------------------------------------------------

class _Scripted(TileFetcher):
    """A fetcher without a network: ``ok`` for every key, consuming at most ``workers`` ahead."""

    def __init__(self, present: set[TileKey], workers: int = 8) -> None:
        self.present, self.workers = present, workers
        self.asked: list[TileKey] = []
        self.calls = 0

    def fetch(self, keys):
        self.calls += 1
        it = iter(keys)
        inflight: list[TileKey] = []
        while True:
            while len(inflight) < self.workers:
                key = next(it, None)
                if key is None:
                    break
                inflight.append(key)
                self.asked.append(key)
            if not inflight:
                return
            yield TileResult(inflight.pop(0), "ok", b"x")


def test_memory_stays_bounded_through_a_run_of_empty_bundles():
    """50,000 keys, almost all absent: the filter never holds more than its backlog."""
    level = 12
    keys = [TileKey(level, r, c) for b in range(0, 128 * 12, 128) for r in range(0, 128)
            for c in range(b, b + 128)][:50_000]
    present = set(keys[::2477])
    lookup_calls = []

    def lookup(level, brow, bcol):
        lookup_calls.append((level, brow, bcol))
        block = np.zeros((128, 128), dtype=bool)
        for k in present:
            if k.bundle == (brow, bcol):
                block[k.row - brow, k.col - bcol] = True
        return tm.Tilemap(level, brow, bcol, block)

    inner = _Scripted(present)
    filt = tm.TilemapFilter(inner, lookup, backlog=500)
    pulled = 0

    def source():
        nonlocal pulled
        for k in keys:
            pulled += 1
            yield k

    answered = 0
    seen = set()
    for result in filt.fetch(source()):
        answered += 1
        seen.add(result.key)
        assert pulled - answered <= 500 + inner.workers + 1
        assert result.status == ("ok" if result.key in present else "missing")
    assert answered == len(keys) == len(seen)
    assert set(inner.asked) == present
    assert inner.calls > 50  # the stream to the inner fetcher was cut and restarted
    assert len(lookup_calls) == len({k.bundle for k in keys})  # one tilemap per bundle


# -- end to end ----------------------------------------------------------------------------------

def _service_json(scheme, capabilities: str) -> dict:
    sr = {"wkid": 102100, "latestWkid": 3857}
    half = 20037508.342787
    extent = {"xmin": -half, "ymin": -half, "xmax": half, "ymax": half, "spatialReference": sr}
    return {"currentVersion": 11.1, "mapName": "Layers", "singleFusedMapCache": True,
            "capabilities": capabilities, "spatialReference": sr, "units": "esriMeters",
            "tileInfo": scheme.to_json(), "fullExtent": extent, "initialExtent": extent}


def _sparse_site():
    scheme = web_mercator_scheme(5)
    every = [(lv, r, c) for lv in range(0, 6) for r in range(2 ** lv) for c in range(2 ** lv)]
    present = {k for k in every if k[0] <= 2 or (k[1] + k[2]) % 5 == 0}
    server = TileServer({k: png(*k) for k in present}, tilemap=True,
                        service=_service_json(scheme, "Map,Tilemap"))
    return server, every, present


@pytest.mark.parametrize("flag", [[], ["--tilemap"]], ids=["listed", "asked"])
def test_run_skips_absent_tiles_when_the_service_lists_tilemap(cli, tmp_path: Path, flag):
    """The runner wraps its fetcher: same output, no request for an absent tile."""
    server, every, present = _sparse_site()
    with server as srv:
        output = tmp_path / "out.tpkx"
        result = cli("run", "--service", srv.url, "--levels", "0-5", "--output", str(output),
                     "--json", *flag)
        assert result.code == 0, result.stderr
        report = json.loads(result.stdout)
        assert tile_requests(srv) == present  # nothing asked for an absent tile
        assert tilemap_requests(srv)  # one per bundle
    assert sum(lv["tiles_missing"] for lv in report["levels"]) == len(every) - len(present)
    assert sum(lv["tiles_written"] for lv in report["levels"]) == len(present)
    assert all_tiles(output) == {k: png(*k) for k in present}


def test_no_tilemap_fetches_every_tile(cli, tmp_path: Path):
    server, every, present = _sparse_site()
    with server as srv:
        result = cli("run", "--service", srv.url, "--levels", "0-5", "--output",
                     str(tmp_path / "out.tpkx"), "--json", "--no-tilemap")
        assert result.code == 0, result.stderr
        assert tile_requests(srv) == set(every)
        assert not tilemap_requests(srv)
    report = json.loads(result.stdout)
    assert sum(lv["tiles_written"] for lv in report["levels"]) == len(present)


class _Issuer:
    """A stand-in token provider: hands out fresh-1, fresh-2... (the HTTP side is real)."""

    secrets: list[str] = []

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, service: str, timeout: float):  # noqa: ANN201
        from cacheorch.tokens import IssuedToken
        self.calls += 1
        return IssuedToken(f"fresh-{self.calls}", None)


@pytest.mark.parametrize("status", [498, 200], ids=["http-498", "json-498"])
def test_a_tilemap_refused_for_an_expired_token_renews_it_once(status):
    """ArcGIS answers an expired token with 498 (or 200 and an error JSON): renew, ask again."""
    expired = json.dumps({"error": {"code": 498, "message": "Invalid Token"}}).encode()
    with TileServer({(LEVEL, 0, 115): png(LEVEL, 0, 115)}, tilemap=True) as srv:
        real = srv._tilemap

        def guarded(h, path):
            token = parse_qs(urlsplit(h.path).query).get("token", [""])[0]
            if not token.startswith("fresh-"):
                return srv._send(h, status, expired, "application/json")
            return real(h, path)

        srv._tilemap = guarded
        issuer = _Issuer()
        conn = Connection(token="stale", token_provider=issuer)  # type: ignore[arg-type]
        tilemap = tm.fetch_tilemap(service_for(srv.url), conn, LEVEL, 0, 0)
    assert issuer.calls == 1 and conn.token == "fresh-1"
    assert tilemap is not None and tilemap.has(0, 115) and not tilemap.has(0, 116)

"""Tokens from generateToken: discovery, the POST, one renewal for many refusals, and a job whose
token expires mid-way that still ends with every tile, with no secret in any output.

The loopback site below plays a secured ArcGIS Server: ``rest/info`` names its token service,
``generateToken`` checks the username and password and issues tokens good for a few requests
only, the service JSON needs a token (499 without, 498 with a bad one) and so do the tiles (498 as
an HTTP status or as a JSON error body, as servers differ).
"""
from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from _gdal import colour_of, open_gdal, solid_png, tile_centre_rgba
from _tiles import mapproxy_tiles
from cacheorch.connection import Connection
from cacheorch.errors import AuthError
from cacheorch.formats.bundle import BundleReader, parse_bundle_name
from cacheorch.plugins.scales_rest import RestScaleSource
from cacheorch.plugins.tiles_rest import RestTileSource, tile_url_maker, with_token
from cacheorch.tiling import TileKey, TilingScheme, web_mercator_scheme
from cacheorch.tokens import IssuedToken, TokenProvider, _secure, default_token_url, site_root

USER, PASSWORD = "gis-admin", "pa55-w0rd!secret"
SERVICE = "/arcgis/rest/services/Secure/MapServer"
PORTAL_TOKENS = "/portal/sharing/rest/generateToken"
SERVER_TOKENS = "/arcgis/tokens/generateToken"


def service_json(scheme: TilingScheme) -> dict[str, Any]:
    sr = {"wkid": 102100, "latestWkid": 3857}
    half = 20037508.342787
    extent = {"xmin": -half, "ymin": -half, "xmax": half, "ymax": half, "spatialReference": sr}
    return {"currentVersion": 11.1, "mapName": "Layers", "singleFusedMapCache": True,
            "capabilities": "Map", "spatialReference": sr, "units": "esriMeters",
            "tileInfo": scheme.to_json(), "fullExtent": extent, "initialExtent": extent}


class SecureSite:
    """A secured ArcGIS site on 127.0.0.1 (see the module docstring).

    :param uses: tile requests a token is good for (then it answers 498: "expired").
    :param discover: whether ``rest/info`` names the (portal) token service; else the server's own.
    :param status_498: answer expired tiles with HTTP 498 (else HTTP 200 + a JSON error).
    """

    def __init__(self, scheme: TilingScheme, tiles: dict[tuple[int, int, int], bytes], *,
                 uses: int = 30, discover: bool = True, status_498: bool = True,
                 needs_token: bool = True) -> None:
        self.scheme, self.tiles = scheme, tiles
        self.uses, self.discover, self.status_498 = uses, discover, status_498
        self.needs_token = needs_token
        self.refuse_credentials = False
        self.remaining: dict[str, int] = {}
        self.issued: list[str] = []
        self.forms: list[dict[str, str]] = []
        self.gets: list[tuple[str, dict[str, str], dict[str, str]]] = []
        self.tile_requests: Counter[tuple[int, int, int]] = Counter()
        self.refused = 0
        self.lock = threading.Lock()
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                with site.lock:
                    site.gets.append((parts.path, query, dict(self.headers)))
                site.get(self, parts.path, query)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                site.post(self, urlsplit(self.path).path, form)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.url = self.base + SERVICE

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @staticmethod
    def send(h: BaseHTTPRequestHandler, status: int, body: bytes | dict[str, Any],
             ctype: str = "application/json") -> None:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _use(self, token: str | None, spend: bool) -> int | None:
        """None when ``token`` is good, else the ArcGIS error code. Tiles (``spend``) use it up;
        the service JSON only needs a token that was issued."""
        if not self.needs_token:
            return None
        if not token:
            return 499
        with self.lock:
            left = self.remaining.get(token)
            if left is None or (spend and left <= 0):
                self.refused += spend
                return 498
            if spend:
                self.remaining[token] = left - 1
        return None

    def get(self, h: BaseHTTPRequestHandler, path: str, query: dict[str, str]) -> None:
        if path == "/arcgis/rest/info":
            info: dict[str, Any] = {"currentVersion": 11.1, "fullVersion": "11.1.0"}
            if self.discover:
                info["authInfo"] = {"isTokenBasedSecurity": True,
                                    "tokenServicesUrl": self.base + PORTAL_TOKENS}
            return self.send(h, 200, info)
        if path == SERVICE:
            code = self._use(query.get("token"), spend=False)
            if code is not None:
                message = "Token Required" if code == 499 else "Invalid Token"
                return self.send(h, 200, {"error": {"code": code, "message": message,
                                                    "details": []}})
            return self.send(h, 200, service_json(self.scheme))
        if path.startswith(SERVICE + "/tile/"):
            level, row, col = (int(p) for p in path.rsplit("/", 3)[1:])
            with self.lock:
                self.tile_requests[(level, row, col)] += 1
            code = self._use(query.get("token"), spend=True)
            if code is not None:
                error = {"error": {"code": code, "message": "Invalid Token", "details": []}}
                return self.send(h, code if self.status_498 else 200, error)
            tile = self.tiles.get((level, row, col))
            if tile is None:
                return self.send(h, 404, b"not found", "text/plain")
            return self.send(h, 200, tile, "image/png")
        return self.send(h, 404, b"not found", "text/plain")

    def post(self, h: BaseHTTPRequestHandler, path: str, form: dict[str, str]) -> None:
        if path not in (PORTAL_TOKENS, SERVER_TOKENS):
            return self.send(h, 404, b"not found", "text/plain")
        with self.lock:
            self.forms.append(dict(form, _path=path))
        if self.refuse_credentials or form.get("username") != USER or \
                form.get("password") != PASSWORD:
            return self.send(h, 200, {"error": {"code": 400, "message": "Unable to generate token.",
                                                "details": ["Invalid username or password."]}})
        with self.lock:
            token = f"tok{len(self.issued)}-{'x' * 20}"
            self.issued.append(token)
            self.remaining[token] = self.uses
        expires = int((time.time() + 60) * 1000)
        return self.send(h, 200, {"token": token, "expires": expires, "ssl": False})


@pytest.fixture(scope="module")
def scheme() -> TilingScheme:
    return web_mercator_scheme(5)


@pytest.fixture(scope="module")
def tiles(scheme: TilingScheme) -> dict[tuple[int, int, int], bytes]:
    return {(lv, r, c): solid_png(colour_of(lv, r, c), size=256)
            for lv in range(0, 4) for r in range(2 ** lv) for c in range(2 ** lv)}


@pytest.fixture
def site(scheme, tiles) -> Iterator[SecureSite]:
    s = SecureSite(scheme, tiles)
    yield s
    s.close()


@pytest.fixture
def creds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARCGIS_USERNAME", USER)
    monkeypatch.setenv("ARCGIS_PASSWORD", PASSWORD)
    monkeypatch.delenv("ARCGIS_TOKEN_URL", raising=False)


def provider(**kw: Any) -> TokenProvider:
    return TokenProvider(USER, PASSWORD, **kw)


# -- the provider ------------------------------------------------------------------------------

def test_site_root_and_default_token_url() -> None:
    url = "https://gis.example.org/server/rest/services/Folder/Roads/MapServer"
    assert site_root(url) == "https://gis.example.org/server"
    assert default_token_url(url) == "https://gis.example.org/server/tokens/generateToken"
    hosted = "https://tiles.arcgis.com/tiles/AbC123/arcgis/rest/services/NYC/MapServer"
    assert site_root(hosted) == "https://tiles.arcgis.com/tiles/AbC123/arcgis"
    assert site_root("https://proxy.example.org/maps/roads") == "https://proxy.example.org"


def test_password_only_over_https_except_loopback() -> None:
    assert _secure("http://gis.example.org/arcgis/tokens/generateToken") == \
        "https://gis.example.org/arcgis/tokens/generateToken"
    for url in ("http://127.0.0.1:8080/t", "http://localhost/t", "http://[::1]:80/t",
                "https://gis.example.org/t"):
        assert _secure(url) == url


def test_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert TokenProvider.from_env(environ={}) is None
    with pytest.raises(AuthError, match="ARCGIS_PASSWORD is not set"):
        TokenProvider.from_env(environ={"ARCGIS_USERNAME": USER})
    p = TokenProvider.from_env(referer="https://app.example/",
                               environ={"ARCGIS_USERNAME": USER, "ARCGIS_PASSWORD": PASSWORD,
                                        "ARCGIS_TOKEN_URL": "https://portal.example/gen"})
    assert p is not None and p.referer == "https://app.example/"
    assert p.token_url("https://x.example/arcgis/rest/services/A/MapServer") == \
        "https://portal.example/gen"
    assert PASSWORD not in repr(p) and PASSWORD not in repr(Connection(token_provider=p))
    assert "xyz" not in repr(IssuedToken("xyz", 1.0))
    monkeypatch.setenv("ARCGIS_USERNAME", USER)
    monkeypatch.setenv("ARCGIS_PASSWORD", PASSWORD)
    assert Connection.from_env().can_renew_token
    monkeypatch.delenv("ARCGIS_PASSWORD")
    monkeypatch.delenv("ARCGIS_USERNAME")
    assert not Connection.from_env().can_renew_token


def test_discovered_token_service_and_the_post(site: SecureSite) -> None:
    issued = provider(expiration=15).generate(site.url, timeout=5)
    assert issued.token == site.issued[0] and issued.expires == pytest.approx(time.time() + 60, abs=5)
    form = site.forms[0]
    assert form["_path"] == PORTAL_TOKENS  # from rest/info authInfo.tokenServicesUrl
    assert form == {"username": USER, "password": PASSWORD, "client": "requestip",
                    "expiration": "15", "f": "json", "_path": PORTAL_TOKENS}
    assert all(PASSWORD not in json.dumps(q) for _, q, _ in site.gets)  # never in a URL
    provider(referer="https://app.example/map").generate(site.url, timeout=5)
    assert site.forms[1]["client"] == "referer"
    assert site.forms[1]["referer"] == "https://app.example/map"


def test_falls_back_to_the_servers_own_token_service(scheme, tiles) -> None:
    s = SecureSite(scheme, tiles, discover=False)
    try:
        p = provider()
        p.generate(s.url, timeout=5)
        p.generate(s.url, timeout=5)
        assert [f["_path"] for f in s.forms] == [SERVER_TOKENS, SERVER_TOKENS]
        assert [path for path, _, _ in s.gets].count("/arcgis/rest/info") == 1  # discovered once
    finally:
        s.close()


def test_refused_credentials_are_one_line_without_the_password(site: SecureSite) -> None:
    with pytest.raises(AuthError) as err:
        TokenProvider(USER, "wrong-password").generate(site.url, timeout=5)
    text = str(err.value)
    assert "refused ARCGIS_USERNAME/ARCGIS_PASSWORD" in text and "Invalid username" in text
    assert "wrong-password" not in text and "\n" not in text


# -- the connection --------------------------------------------------------------------------

def test_many_concurrent_refusals_make_one_renewal(site: SecureSite) -> None:
    conn = Connection(token="expired-token", token_provider=provider(), timeout=5)
    got: list[str | None] = []
    barrier = threading.Barrier(16)

    def refused() -> None:
        barrier.wait()
        got.append(conn.renew_token("expired-token", site.url))

    threads = [threading.Thread(target=refused) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(site.forms) == 1 and got == [site.issued[0]] * 16
    assert conn.token == site.issued[0]
    text = conn.redact(f"expired-token {site.issued[0]} {PASSWORD}")
    assert "expired-token" not in text and site.issued[0] not in text and PASSWORD not in text


def test_renewals_are_rate_limited(site: SecureSite) -> None:
    conn = Connection(token_provider=provider(), timeout=5, max_renewals_per_minute=2)
    first = conn.renew_token(None, site.url)
    second = conn.renew_token(first)
    assert first and second and first != second
    assert conn.renew_token(second) is None  # a third within the minute: give up
    assert len(site.forms) == 2
    assert Connection(token="t").renew_token("t", site.url) is None  # no provider


# -- the rest scale source ---------------------------------------------------------------------

def test_scale_source_gets_a_token_when_the_service_asks(site: SecureSite) -> None:
    conn = Connection(token_provider=provider(), timeout=5)
    service = RestScaleSource().read(site.url + "?f=pjson", conn)
    assert service.scheme.levels == tuple(range(6))
    asked = [q.get("token") for path, q, _ in site.gets if path == SERVICE]
    assert asked == [None, site.issued[0]]
    # an expired token given by the user is replaced the same way
    conn2 = Connection(token="stale-user-token", token_provider=provider(), timeout=5)
    RestScaleSource().read(site.url, conn2)
    assert conn2.token == site.issued[1]


def test_public_service_never_sees_the_credentials(scheme, tiles) -> None:
    s = SecureSite(scheme, tiles, needs_token=False)
    try:
        conn = Connection(token_provider=provider(), timeout=5)
        RestScaleSource().read(s.url, conn)
        assert s.forms == [] and conn.token is None
    finally:
        s.close()


def test_without_credentials_the_error_says_how_to_give_them(site: SecureSite) -> None:
    with pytest.raises(AuthError, match=r"token required \(ArcGIS error 499\) \(set ARCGIS_TOKEN, "
                                        r"or ARCGIS_USERNAME and ARCGIS_PASSWORD\)"):
        RestScaleSource().read(site.url, Connection(timeout=5))


# -- tiles -----------------------------------------------------------------------------------------

def test_tile_urls_follow_the_current_token(scheme) -> None:
    from cacheorch.interfaces import Service
    conn = Connection(token="one")
    url = tile_url_maker(Service("https://h/arcgis/rest/services/S/MapServer", scheme), conn)
    assert url(TileKey(1, 0, 1)).endswith("/tile/1/0/1?token=one")
    conn.token = "two"
    assert url(TileKey(1, 0, 1)).endswith("/tile/1/0/1?token=two")
    assert with_token("https://h/t/1/2/3?a=1&token=old", "new") == "https://h/t/1/2/3?a=1&token=new"
    assert with_token("https://h/t/1/2/3", "n") == "https://h/t/1/2/3?token=n"


@pytest.mark.parametrize("status_498", [True, False], ids=["http-498", "json-498"])
def test_tokens_expiring_mid_fetch_are_renewed_and_every_tile_arrives(scheme, tiles, status_498
                                                                       ) -> None:
    # a token lasts 40 requests: about 7 rounds of 6 workers, so a tile that renewed the token
    # retries with it before the others use it up, even on a loaded machine (real tokens last
    # minutes; one refused fresh token means the server refuses new tokens, and the tile fails)
    s = SecureSite(scheme, tiles, uses=40, status_498=status_498)
    keys, got = fetch_every_tile(s, tiles, workers=6)
    assert all(got[k].status == "ok" and got[k].data == tiles[(k.level, k.row, k.col)]
               for k in keys)
    assert s.refused > 0  # tokens did expire mid-way
    # one renewal per expiry (plus the first token), never one per refused tile
    assert len(s.issued) <= math.ceil(len(keys) / 40) + 2 < s.refused + 1
    assert_never_resent_with_the_same_token(s)


def fetch_every_tile(s: SecureSite, tiles: dict[tuple[int, int, int], bytes], workers: int,
                     **conn: Any) -> tuple[list[TileKey], dict[TileKey, Any]]:
    """Every tile of ``tiles`` from the site (closed afterwards) with renewable tokens."""
    try:
        connection = Connection(token_provider=provider(), timeout=5, **conn)
        service = RestScaleSource().read(s.url, connection)
        keys = [TileKey(*k) for k in sorted(tiles)]
        with RestTileSource().open(service, connection, workers=workers) as fetcher:
            return keys, {r.key: r for r in fetcher.fetch(keys)}
    finally:
        s.close()


def assert_never_resent_with_the_same_token(s: SecureSite) -> None:
    """Each tile's retries carry ever newer tokens: a tile is re-authorised at most once, and
    besides only catches up with tokens renewed by other requests since its URL was made."""
    order = {t: i for i, t in enumerate(s.issued)}
    sent: dict[str, list[int]] = {}
    for path, q, _ in s.gets:
        if "/tile/" in path:
            sent.setdefault(path, []).append(order[q["token"]])
    assert sent and all(a < b for seq in sent.values() for a, b in zip(seq, seq[1:])), sent


def test_a_server_that_rejects_every_token_fails_tiles_and_stops_asking(scheme, tiles) -> None:
    s = SecureSite(scheme, tiles, uses=0)
    try:
        conn = Connection(token_provider=provider(), timeout=5, max_renewals_per_minute=3)
        service = RestScaleSource().read(s.url, conn)  # tokens open the service, no tile
        keys = [TileKey(*k) for k in sorted(tiles)][:40]
        with RestTileSource().open(service, conn, workers=4) as fetcher:
            got = list(fetcher.fetch(keys))
    finally:
        s.close()
    assert len(got) == 40 and all(r.status == "failed" and "498" in (r.error or "") for r in got)
    assert all(t not in (r.error or "") for r in got for t in s.issued)
    assert len(s.issued) <= 3
    assert_never_resent_with_the_same_token(s)  # so at most one request per issued token


class RetiringSite(SecureSite):
    """Tokens are good for a few tiles and only until the next one is issued; the first two
    requests of tile ``held`` are answered only once a newer token than theirs was issued."""

    held = (2, 0, 0)

    def _use(self, token: str | None, spend: bool) -> int | None:
        with self.lock:
            if token in self.issued[:-1]:
                self.refused += spend
                return 498
        return super()._use(token, spend)

    def get(self, h: BaseHTTPRequestHandler, path: str, query: dict[str, str]) -> None:
        if path == f"{SERVICE}/tile/{'/'.join(map(str, self.held))}" and \
                self.tile_requests[self.held] < 2:
            token = query.get("token")
            deadline = time.monotonic() + 10
            while self.issued[-1] == token and time.monotonic() < deadline:
                time.sleep(0.002)
        super().get(h, path, query)


def test_a_tile_refused_with_a_token_renewed_meanwhile_keeps_its_reauthorisation(scheme, tiles
                                                                                 ) -> None:
    """The held tile is refused twice for tokens other requests renewed meanwhile: catching
    up with the current token is not its one re-authorisation, so it still arrives."""
    s = RetiringSite(scheme, tiles, uses=20)
    keys, got = fetch_every_tile(s, tiles, workers=4, max_renewals_per_minute=60)
    assert got[TileKey(*RetiringSite.held)].status == "ok"
    assert s.tile_requests[RetiringSite.held] >= 3  # refused with T0 and T1, renewed by others
    assert len(s.issued) <= math.ceil(len(keys) / 20) + 2  # still one renewal per expiry
    assert_never_resent_with_the_same_token(s)


def test_credentials_refused_at_renewal_end_the_fetch(scheme, tiles) -> None:
    s = SecureSite(scheme, tiles, uses=10)
    try:
        conn = Connection(token_provider=provider(), timeout=5)
        service = RestScaleSource().read(s.url, conn)
        s.refuse_credentials = True  # the password was changed mid-job
        keys = [TileKey(*k) for k in sorted(tiles)]
        with pytest.raises(AuthError, match="refused"):
            with RestTileSource().open(service, conn, workers=4) as fetcher:
                for _ in fetcher.fetch(keys):
                    pass
    finally:
        s.close()


# -- a whole job -------------------------------------------------------------------------------

def output_tiles(output: Path) -> dict[tuple[int, int, int], bytes]:
    """Every tile of a Compact V2 folder output, through the bundle indexes."""
    out: dict[tuple[int, int, int], bytes] = {}
    for path in output.rglob("*.bundle"):
        level = int(path.parent.name[1:])
        brow, bcol = parse_bundle_name(path.name)  # type: ignore[misc]
        with BundleReader(path, bundle_row=brow, bundle_col=bcol) as reader:
            for row, col, data in reader.tiles():
                out[(level, row, col)] = data
    return out


def test_job_whose_token_expires_mid_way_completes_without_leaking(cli, creds, scheme, tiles,
                                                                   tmp_path: Path) -> None:
    s = SecureSite(scheme, tiles, uses=25)
    output = tmp_path / "secure-cache"
    try:
        result = cli("run", "--service", s.url, "--levels", "0-3", "--aoi", "0-3=extent",
                     "--exporter", "compact-v2", "--output", str(output), "--json")
    finally:
        s.close()
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "completed"
    assert s.refused > 0 and len(s.issued) >= 3  # it expired, more than once
    assert output_tiles(output) == tiles  # every tile, byte for byte
    assert mapproxy_tiles(output, tiles) == tiles  # and MapProxy's reader agrees
    with open_gdal(output) as ds:  # an independent reader agrees
        assert tile_centre_rgba(ds, scheme, 3, 5, 2)[:3] == colour_of(3, 5, 2)
    secrets = [PASSWORD, *s.issued]
    assert not any(x in result.stdout + result.stderr for x in secrets)
    for path in tmp_path.rglob("*"):
        if path.is_file() and (path.name.startswith("catalog.sqlite") or path.suffix == ".xml"):
            data = path.read_bytes()
            assert not any(x.encode() in data for x in secrets), path


class _ClockIssuer:
    """A stand-in provider (no HTTP): tokens t1, t2... each valid for ``lifetime`` seconds."""

    secrets: list[str] = []

    def __init__(self, lifetime: float) -> None:
        self.lifetime, self.calls = lifetime, 0

    def generate(self, service_url: str, timeout: float = 30.0):  # noqa: ANN201
        from cacheorch.tokens import IssuedToken
        self.calls += 1
        return IssuedToken(f"t{self.calls}", time.time() + self.lifetime)


def test_a_token_about_to_expire_is_renewed_before_the_next_request(scheme) -> None:
    """Renewing ahead spares every request in flight a 498 at the moment of expiry; a token
    with a short life is renewed a quarter of its life ahead, not on every request."""
    from cacheorch.interfaces import Service
    issuer = _ClockIssuer(lifetime=600)
    conn = Connection(token_provider=issuer, renew_ahead=120)  # type: ignore[arg-type]
    conn.renew_token(None, "https://h/arcgis/rest/services/S/MapServer")
    url = tile_url_maker(Service("https://h/arcgis/rest/services/S/MapServer", scheme), conn)
    assert url(TileKey(1, 0, 0)).endswith("token=t1") and issuer.calls == 1
    conn.token_expires = time.time() + 60  # now inside the 120 s margin
    assert url(TileKey(1, 0, 1)).endswith("token=t2") and issuer.calls == 2
    assert url(TileKey(1, 1, 1)).endswith("token=t2") and issuer.calls == 2  # fresh: no more
    short = _ClockIssuer(lifetime=40)  # a quarter of its life (10 s) ahead, not 120 s
    conn = Connection(token_provider=short, renew_ahead=120)  # type: ignore[arg-type]
    conn.renew_token(None, "https://h/arcgis/rest/services/S/MapServer")
    assert [conn.current_token() for _ in range(5)] == ["t1"] * 5 and short.calls == 1
    conn.token_expires = time.time() + 5
    assert conn.current_token() == "t2" and short.calls == 2

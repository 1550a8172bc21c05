"""One network layer: the requests session (service JSON, tokens, jobs) and the tile engine take
their trust store, proxy choice and timeouts from one :class:`NetworkSettings`, and say why a
connection failed in words. Every case runs both clients against loopback servers: TLS with a
throwaway CA, a CONNECT proxy, an ``https://`` proxy, and raw sockets that misbehave."""
from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import _tileserver
from _proxies import CA, RawServer, TLSFront, throwaway_ca
from _tiles import mercator_service_json, pyramid
from _tileserver import ProxyServer, TileServer
from cacheorch.connection import Connection
from cacheorch.errors import CacheorchError
from cacheorch.fetch import FetchResult, RetryPolicy, TileFetchEngine
from cacheorch.net import NetworkSettings, ProxyNotSupportedError, bypasses_proxy
from conftest import run_cli

TILES = pyramid([0, 1], size=8)
KEY = (1, 0, 1)
_ENV = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "SSL_CERT_DIR", "CURL_CA_BUNDLE", "HTTP_PROXY",
        "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def no_network_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's CA variables and proxies are not the test's."""
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    made = throwaway_ca(tmp_path_factory.mktemp("ca"))
    if made is None:
        pytest.skip("the openssl command is needed to make a throwaway CA")
    return made


@pytest.fixture
def tls_server(ca: CA) -> Iterator[TileServer]:
    with TileServer(TILES, service=mercator_service_json(1),
                    ssl_context=ca.server_context()) as srv:
        yield srv


def settings(**kw: Any) -> NetworkSettings:
    """Settings from ``kw`` (flags) and an ``environ`` (default: empty), never the machine's."""
    environ = kw.pop("environ", {})
    config = kw.pop("config", None)
    return NetworkSettings.build(environ=environ, config=config, **kw)


def get_json(network: NetworkSettings | None, url: str) -> Any:
    """The service JSON through the requests side, or the error's text."""
    connection = Connection(network=network) if network is not None else Connection()
    try:
        return connection.get_json(url)
    except CacheorchError as exc:
        return f"error: {exc}"
    finally:
        connection.close()


def get_tile(network: NetworkSettings | None, url: str) -> FetchResult[str]:
    """One tile through the tile engine, no retries."""
    kw: dict[str, Any] = {"network": network} if network is not None else {}
    with TileFetchEngine(workers=1, retry=RetryPolicy(retries=0), **kw) as engine:
        return next(iter(engine.fetch([(url, url)])))


def tile_url(srv: TileServer, key: tuple[int, int, int] = KEY) -> str:
    return srv.url + "/tile/{}/{}/{}".format(*key)


def assert_both_ok(network: NetworkSettings | None, srv: TileServer) -> None:
    assert get_json(network, srv.url) == mercator_service_json(1)
    result = get_tile(network, tile_url(srv))
    assert (result.status, result.error, result.data) == ("ok", None, TILES[KEY])


def assert_both_fail(network: NetworkSettings | None, srv: TileServer, words: str) -> None:
    text = get_json(network, srv.url)
    assert isinstance(text, str) and words in text, text
    result = get_tile(network, tile_url(srv))
    assert result.status == "failed" and words in (result.error or ""), result.error


# -- NO_PROXY ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("host", "port", "entries", "direct"), [
    ("tiles.example.com", 443, "example.com", True),
    ("tiles.example.com", 443, ".example.com", True),
    ("example.com", 443, ".example.com", True),
    ("badexample.com", 443, "example.com", False),
    ("tiles.example.org", 443, "example.com,localhost", False),
    ("TILES.Example.COM", 443, "example.com", True),
    ("10.1.2.3", 80, "10.0.0.0/8", True),
    ("11.1.2.3", 80, "10.0.0.0/8", False),
    ("tiles.example.com", 80, "10.0.0.0/8", False),
    ("::1", 80, "::1/128", True),
    ("192.168.1.9", 80, "192.168.1.9", True),
    ("anything.at.all", 80, "*", True),
    ("intranet", 8080, "intranet:8080", True),
    ("intranet", 8443, "intranet:8080", False),
    ("tiles.example.com", 443, "", False),
])
def test_no_proxy_hosts_domains_cidr_and_star(host: str, port: int, entries: str,
                                              direct: bool) -> None:
    no_proxy = settings(environ={"NO_PROXY": entries}).no_proxy
    assert bypasses_proxy(host, port, no_proxy) is direct


def test_settings_precedence_flags_config_environment() -> None:
    env = {"SSL_CERT_FILE": "/env/a.pem", "REQUESTS_CA_BUNDLE": "/env/b.pem",
           "https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:1",
           "ALL_PROXY": "http://all:1"}
    s = settings(environ=env)
    assert [p for p, _ in s.ca_bundles] == ["/env/a.pem", "/env/b.pem"]  # both honoured
    assert s.https_proxy == ("http://lower:1", "https_proxy") and s.http_proxy[0] == "http://all:1"
    s = settings(environ=env, config={"ca_bundle": "/conf.pem", "https_proxy": "http://conf:1",
                                      "read_timeout": "7"})
    assert s.ca_bundles == (("/conf.pem", "[cacheorch] ca_bundle"),)
    assert s.https_proxy[0] == "http://conf:1" and s.timeouts == (10.0, 7.0)
    s = settings(environ=env, config={"ca_bundle": "/conf.pem", "read_timeout": "7"},
                 ca_bundle="/flag.pem", read_timeout=3, connect_timeout=2)
    assert s.ca_bundles == (("/flag.pem", "--ca-bundle"),) and s.timeouts == (2.0, 3.0)
    with pytest.raises(CacheorchError, match=r"read_timeout: 'soon' is not a number"):
        settings(config={"read_timeout": "soon"})


# -- one trust store ----------------------------------------------------------------------------

def test_ca_bundle_is_trusted_by_both_clients_and_nothing_else_is(ca: CA,
                                                                 tls_server: TileServer) -> None:
    assert_both_ok(settings(ca_bundle=str(ca.cert)), tls_server)
    # the system store does not know the throwaway CA: both clients refuse, in the same words
    assert_both_fail(settings(), tls_server,
                     "certificate verify failed: unable to get local issuer certificate "
                     "for 127.0.0.1")


@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"])
def test_either_ca_variable_is_honoured_by_both_clients(variable: str, ca: CA,
                                                        tls_server: TileServer,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(variable, str(ca.cert))
    assert_both_ok(None, tls_server)  # the defaults: Connection() and TileFetchEngine()


def test_both_ca_variables_are_loaded_together(ca: CA, tls_server: TileServer,
                                               tmp_path: Path) -> None:
    other = throwaway_ca(tmp_path)
    assert other is not None
    for first, second in ((other.cert, ca.cert), (ca.cert, other.cert)):
        env = {"SSL_CERT_FILE": str(first), "REQUESTS_CA_BUNDLE": str(second)}
        assert_both_ok(settings(environ=env), tls_server)


def test_self_signed_certificate_is_reported_in_words(tmp_path: Path) -> None:
    pair = _tileserver.self_signed_cert(tmp_path)
    assert pair is not None
    with TileServer(TILES, service=mercator_service_json(1),
                    ssl_context=_tileserver.server_ssl_context(*pair)) as srv:
        assert_both_fail(settings(), srv,
                         "certificate verify failed: self-signed certificate for 127.0.0.1")


def test_a_missing_ca_bundle_is_bad_input(tmp_path: Path, tls_server: TileServer) -> None:
    network = settings(environ={"SSL_CERT_FILE": str(tmp_path / "nowhere.pem")})
    with pytest.raises(CacheorchError, match=r"SSL_CERT_FILE .*nowhere.pem: no such CA bundle"):
        Connection(network=network).get_json(tls_server.url)
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(CacheorchError, match=r"--ca-bundle .*junk.pem: not a PEM CA bundle"):
        get_tile(settings(ca_bundle=str(tmp_path / "junk.pem")), tile_url(tls_server))


# -- one proxy policy ---------------------------------------------------------------------------

def test_https_through_a_connect_proxy_for_both_clients(ca: CA, tls_server: TileServer) -> None:
    with ProxyServer(require_auth="Basic dXNlcjpwQHNz") as proxy:
        url = proxy.url.replace("http://", "http://user:p%40ss@")
        assert_both_ok(settings(ca_bundle=str(ca.cert), environ={"HTTPS_PROXY": url}), tls_server)
    port = tls_server.url.split(":")[2].split("/")[0]
    assert proxy.seen == [("CONNECT", f"127.0.0.1:{port}")] * 2  # one tunnel per client
    assert set(proxy.auth) == {"Basic dXNlcjpwQHNz"}


def test_plain_http_through_a_proxy_for_both_clients() -> None:
    with TileServer(TILES, service=mercator_service_json(1)) as srv, ProxyServer() as proxy:
        assert_both_ok(settings(environ={"http_proxy": proxy.url}), srv)
    assert [m for m, _ in proxy.seen] == ["GET", "GET"]
    assert proxy.seen[1][1] == tile_url(srv)


@pytest.mark.parametrize("no_proxy", ["127.0.0.0/8", "127.0.0.1", "*", "localhost,127.0.0.1/32"])
def test_no_proxy_sends_both_clients_direct(no_proxy: str, ca: CA,
                                            tls_server: TileServer) -> None:
    with ProxyServer() as proxy:
        env = {"HTTPS_PROXY": proxy.url, "NO_PROXY": no_proxy}
        assert_both_ok(settings(ca_bundle=str(ca.cert), environ=env), tls_server)
    assert proxy.seen == []


def test_https_proxy_url_tls_to_the_proxy_for_both_clients(ca: CA,
                                                           tls_server: TileServer) -> None:
    with ProxyServer() as proxy, TLSFront(int(proxy.url.rsplit(":", 1)[1]),
                                          ca.server_context()) as front, \
            TileServer(TILES, service=mercator_service_json(1)) as plain:
        env = {"HTTPS_PROXY": front.url, "HTTP_PROXY": front.url}
        assert_both_ok(settings(ca_bundle=str(ca.cert), environ=env), tls_server)  # TLS in TLS
        assert_both_ok(settings(ca_bundle=str(ca.cert), environ=env), plain)
        assert front.connections >= 4
        # the proxy's own certificate is checked against the same trust store
        text = get_json(settings(environ=env), plain.url)
        assert "certificate verify failed: unable to get local issuer certificate" in text
        result = get_tile(settings(environ=env), tile_url(plain))
        assert "certificate verify failed: unable to get local issuer certificate" in result.error
    kinds = [m for m, _ in proxy.seen]
    assert kinds.count("CONNECT") == 2 and kinds.count("GET") == 2


def test_proxy_failures_are_reported_in_the_same_words(ca: CA, tls_server: TileServer) -> None:
    with ProxyServer(require_auth="Basic dXNlcjpwQHNz") as proxy:  # no credentials given
        network = settings(ca_bundle=str(ca.cert), environ={"HTTPS_PROXY": proxy.url})
        assert_both_fail(network, tls_server, "proxy refused CONNECT to 127.0.0.1")
        assert_both_fail(network, tls_server, "HTTP 407 Proxy Authentication Required")
    with socket.socket() as sock:  # a proxy nobody listens on
        sock.bind(("127.0.0.1", 0))
        down = sock.getsockname()[1]
    network = settings(ca_bundle=str(ca.cert), environ={"HTTPS_PROXY": f"127.0.0.1:{down}"})
    assert_both_fail(network, tls_server,
                     f"cannot connect to proxy 127.0.0.1:{down}: connection refused")
    with ProxyServer() as proxy, TLSFront(int(proxy.url.rsplit(":", 1)[1]),
                                          ca.server_context()) as front:
        assert_both_fail(settings(environ={"HTTPS_PROXY": front.url}), tls_server,
                         "proxy certificate verify failed: unable to get local issuer "
                         "certificate for 127.0.0.1")


@pytest.mark.parametrize("scheme", ["socks5", "socks5h", "socks4"])
def test_socks_proxies_are_refused_in_words(scheme: str) -> None:
    with TileServer(TILES, service=mercator_service_json(1)) as srv:
        network = settings(environ={"ALL_PROXY": f"{scheme}://127.0.0.1:1080"})
        with pytest.raises(ProxyNotSupportedError, match="SOCKS proxies are not supported"):
            Connection(network=network).get_json(srv.url)
        with pytest.raises(ProxyNotSupportedError, match="ALL_PROXY: SOCKS proxies"):
            get_tile(network, tile_url(srv))


def test_socks_proxy_on_the_command_line_is_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    with TileServer(TILES, service=mercator_service_json(1)) as srv:
        monkeypatch.setenv("HTTP_PROXY", "socks5h://user:secret@127.0.0.1:1080")
        result = run_cli("scales", srv.url)
    assert result.code == 2
    assert "HTTP_PROXY: SOCKS proxies are not supported" in result.stderr
    assert "secret" not in result.stderr and "Traceback" not in result.stderr


# -- servers that misbehave --------------------------------------------------------------------

def test_garbage_answer_is_reported_in_words() -> None:
    with RawServer(lambda head: b"SSH-2.0-OpenSSH_9.2\r\n\r\n") as raw:
        text = get_json(settings(), raw.url + "/arcgis/rest/services/X/MapServer")
        result = get_tile(settings(), raw.url + "/tile/1/0/0")
    assert "not an HTTP response" in text and "SSH-2.0" in text, text
    assert result.status == "failed" and "not an HTTP response" in result.error


def test_tls_to_a_plain_http_server_is_reported_in_words() -> None:
    with RawServer(greet=b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n") as raw:
        url = raw.url.replace("http://", "https://") + "/arcgis/rest/services/X/MapServer"
        text = get_json(settings(), url)
        result = get_tile(settings(), url + "/tile/1/0/0")
    words = "TLS handshake with 127.0.0.1 failed: wrong version number"
    assert words in text, text
    assert result.status == "failed" and words in result.error
    for shown in (text, result.error):
        assert "1006" not in shown and "SSLError" not in shown


def test_refused_connection_is_reported_in_words() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = "http://127.0.0.1:%d" % sock.getsockname()[1]
    text = get_json(settings(), url + "/arcgis/rest/services/X/MapServer")
    result = get_tile(settings(), url + "/tile/1/0/0")
    assert text.endswith("connection refused"), text
    assert result.error.endswith("connection refused")


def test_redirect_to_a_non_http_scheme_fails_that_request_only() -> None:
    bad = (1, 1, 1)
    with TileServer(TILES, service=mercator_service_json(1),
                    redirect={bad: "ftp://files.example.com/tile.png"}) as srv:
        with TileFetchEngine(workers=2, network=settings()) as engine:
            results = {tag: r for tag, r in ((r.tag, r) for r in engine.fetch(
                (key, tile_url(srv, key)) for key in TILES))}
    assert results[bad].status == "failed"
    assert results[bad].error == "redirected to a non-HTTP URL (ftp:), not followed"
    assert all(r.status == "ok" for key, r in results.items() if key != bad)
    location = b"HTTP/1.1 302 Found\r\nLocation: file:///etc/passwd\r\nContent-Length: 0\r\n\r\n"
    with RawServer(lambda head: location) as raw:
        text = get_json(settings(), raw.url + "/arcgis/rest/services/X/MapServer")
    assert "redirected to a non-HTTP URL (file:), not followed" in text, text


def test_redirect_to_a_non_http_scheme_does_not_end_the_job(tmp_path: Path) -> None:
    with TileServer(TILES, service=mercator_service_json(1),
                    redirect={(1, 1, 1): "javascript:alert(1)"}) as srv:
        result = run_cli("run", "--service", srv.url, "--levels", "0-1", "--exporter",
                         "compact-v2", "--output", str(tmp_path / "out"), "--allow-partial",
                         "--json")
    assert result.code == 1, result.stderr  # partial: one tile failed, with its reason
    assert "internal error" not in result.stderr
    job = json.loads(result.stdout)
    assert job["status"] == "partial" and job["tiles_failed"] == 1


# -- one timeout setting ----------------------------------------------------------------------

def test_read_timeout_applies_to_both_clients() -> None:
    network = settings(read_timeout=0.3)
    with RawServer(hold=3) as raw:  # reads the request, never answers
        text = get_json(network, raw.url + "/arcgis/rest/services/X/MapServer")
        result = get_tile(network, raw.url + "/tile/1/0/0")
    assert "no answer within 0.3 s" in text, text
    assert result.status == "failed" and "timed out" in result.error


@pytest.mark.parametrize("how", ["flag", "config"])
def test_timeouts_and_ca_bundle_from_flags_or_config(how: str, ca: CA, tls_server: TileServer,
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    if how == "flag":
        args = ["--ca-bundle", str(ca.cert)]
    else:
        config = tmp_path / "net.ini"
        config.write_text(f"[cacheorch]\nca_bundle = {ca.cert}\nconnect_timeout = 5\n"
                          "read_timeout = 0.3\n")
        monkeypatch.setenv("CACHEORCH_CONFIG", str(config))
        args = []
    ok = run_cli("scales", tls_server.url, "--json", *args)
    assert ok.code == 0, ok.stderr
    assert len(json.loads(ok.stdout)["levels"]) == 2
    refused = run_cli("scales", tls_server.url)
    if how == "flag":
        assert refused.code == 2
        assert "certificate verify failed: unable to get local issuer certificate" \
            in refused.stderr
    with RawServer(hold=3) as raw:
        slow = run_cli("scales", raw.url + "/arcgis/rest/services/X/MapServer",
                       *(["--read-timeout", "0.3"] if how == "flag" else []))
    assert slow.code == 2 and "no answer within 0.3 s" in slow.stderr, slow.stderr


def test_settings_survive_pickling_for_dask_workers(ca: CA, tls_server: TileServer) -> None:
    import pickle
    network = settings(ca_bundle=str(ca.cert), environ={"NO_PROXY": "*"})
    network.proxy_for(tls_server.url)
    copy = pickle.loads(pickle.dumps(network))
    assert copy == network
    assert_both_ok(copy, tls_server)
    assert isinstance(copy.ssl_context(), ssl.SSLContext)


def test_a_whole_job_goes_through_one_configuration(ca: CA, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Service JSON, tilemaps and tiles of ``run``: one CA (the flag), one proxy (the env)."""
    service = dict(mercator_service_json(1), capabilities="Map,TilesOnly,Tilemap")
    with TileServer(TILES, service=service, tilemap=True,
                    ssl_context=ca.server_context()) as srv, ProxyServer() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        result = run_cli("run", "--service", srv.url, "--levels", "0-1", "--exporter",
                         "compact-v2", "--output", str(tmp_path / "out"), "--json",
                         "--ca-bundle", str(ca.cert))
        paths = set(srv.requests)
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "completed"
    assert any("/tilemap/" in p for p in paths) and any("/tile/" in p for p in paths)
    assert proxy.seen and {m for m, _ in proxy.seen} == {"CONNECT"}  # nothing went around it

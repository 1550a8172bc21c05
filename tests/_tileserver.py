"""A loopback ArcGIS-like tile server (and a forward proxy) for tests, with scriptable misbehaviour.

Real servers answer 404s as HTML, send blank tiles with a header, fail once under load, cut
bodies short, hand out JSON errors with HTTP 200 and sit on requests; every one of those is a
switch here, so client tests run against real sockets and real HTTP/1.1 keep-alive rather than
mocks. Everything binds 127.0.0.1 on port 0.

    with TileServer({(3, 2, 1): png}, missing={(3, 0, 0)}) as srv:
        ...fetch srv.url + "/tile/3/2/1"...
        assert srv.requests["/arcgis/rest/services/Test/MapServer/tile/3/2/1"] == 1
"""
from __future__ import annotations

import gzip
import json
import select
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["TileServer", "ProxyServer", "Key", "HTML_404", "self_signed_cert", "server_ssl_context",
           "client_ssl_context"]

Key = tuple[int, int, int]

#: What an ArcGIS/IIS front end sends for a missing tile in the wild (text/html, ~572 bytes).
HTML_404 = (b"<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Strict//EN\" "
            b"\"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd\">\r\n<html xmlns=\"http://www.w3."
            b"org/1999/xhtml\">\r\n<head>\r\n<meta http-equiv=\"Content-Type\" content=\"text/html; "
            b"charset=iso-8859-1\"/>\r\n<title>404 - File or directory not found.</title>\r\n"
            b"</head>\r\n<body>\r\n<div id=\"header\"><h1>Server Error</h1></div>\r\n<div id=\"content"
            b"\">\r\n <div class=\"content-container\"><fieldset>\r\n  <h2>404 - File or directory "
            b"not found.</h2>\r\n  <h3>The resource you are looking for might have been removed, had "
            b"its name changed, or is temporarily unavailable.</h3>\r\n </fieldset></div>\r\n</div>"
            b"\r\n</body>\r\n</html>\r\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError, ssl.SSLError)):
            return  # clients that hang up (cancelled, timed out, closed) are part of the tests
        super().handle_error(request, client_address)


class TileServer:
    """A threaded HTTP/1.1 server for one cached service at ``/arcgis/rest/services/<name>/MapServer``.

    :param tiles: tile bytes by (level, row, col); a key found nowhere else answers 404.
    :param default_tile: bytes for any tile not in ``tiles`` (instead of 404).
    :param service: the service JSON answered at the MapServer URL (any ``f=``).
    :param missing: keys answering 404 with an HTML body.
    :param fail_once: keys answering 500 on their first request, then the tile.
    :param fail_always: keys always answering 500.
    :param blank: keys answering 200 with ``blank-tile: true`` (and a body that is an image).
    :param html: keys answering 200 with an HTML error page.
    :param truncated: keys announcing the full Content-Length but sending half, then closing.
    :param json_error: key → (code, message): 200 with an ArcGIS ``{"error": ...}`` body.
    :param status: key → (status, body): any other status (403, 400...).
    :param retry_after: key → (status, seconds, times): 429/503 with ``Retry-After`` ``times``
        times, then the tile.
    :param chunked: keys sent with ``Transfer-Encoding: chunked`` (in small chunks).
    :param redirect: key → Location: a 302 to that URL (absolute or relative).
    :param no_length: keys answered without Content-Length, ended by closing the connection.
    :param gzipped: keys sent with ``Content-Encoding: gzip`` (unasked, as some servers do).
    :param delay: seconds to sit on every tile request before answering (or key → seconds).
    :param drop_keepalive: close the connection after every response without saying so, the
        way an idle keep-alive timeout does, so a client's next request on it meets a dead socket.
    :param reset_reused: when a second request arrives on a kept-alive connection, close it
        without answering: an idle timeout that races the client's request (counted in
        ``dropped``, not in ``requests``).
    :param ssl_context: serve HTTPS.
    :param tilemap: answer ``/tilemap/{level}/{row}/{col}/{width}/{height}`` (spec §2.3): ``data``
        is 1 where a tile would be served (in ``tiles``, or ``default_tile``, and not in
        ``missing`` or ``blank``), clipped to the bundle of the top-left tile (``adjusted``).
    :param tilemap_status: (level, row, col) of a tilemap's top-left tile → (status, body):
        answer that instead (422, 500, a ``valid: false`` body...).
    """

    def __init__(self, tiles: dict[Key, bytes] | None = None, *, name: str = "Test",
                 kind: str = "MapServer", default_tile: bytes | None = None,
                 service: dict[str, Any] | None = None, missing: Iterable[Key] = (),
                 fail_once: Iterable[Key] = (), fail_always: Iterable[Key] = (),
                 blank: Iterable[Key] = (), html: Iterable[Key] = (),
                 truncated: Iterable[Key] = (), json_error: dict[Key, tuple[int, str]] | None = None,
                 status: dict[Key, tuple[int, bytes]] | None = None,
                 retry_after: dict[Key, tuple[int, int, int]] | None = None,
                 chunked: Iterable[Key] = (), redirect: dict[Key, str] | None = None,
                 no_length: Iterable[Key] = (), gzipped: Iterable[Key] = (),
                 delay: float | dict[Key, float] = 0.0, drop_keepalive: bool = False,
                 reset_reused: bool = False, ssl_context: ssl.SSLContext | None = None,
                 tilemap: bool = False,
                 tilemap_status: dict[Key, tuple[int, bytes]] | None = None) -> None:
        self.tiles = dict(tiles or {})
        self.default_tile = default_tile
        self.name, self.kind = name, kind
        self.service = service
        self.missing, self.fail_once, self.fail_always = set(missing), set(fail_once), set(fail_always)
        self.blank, self.html, self.truncated = set(blank), set(html), set(truncated)
        self.json_error = dict(json_error or {})
        self.status = dict(status or {})
        self.retry_after = dict(retry_after or {})
        self.chunked = set(chunked)
        self.gzipped = set(gzipped)
        self.redirect = dict(redirect or {})
        self.no_length = set(no_length)
        self.delay = delay
        self.drop_keepalive = drop_keepalive
        self.reset_reused = reset_reused
        #: Requests closed unanswered by ``reset_reused``.
        self.dropped = 0
        self.ssl_context = ssl_context
        self.tilemap = tilemap
        self.tilemap_status = dict(tilemap_status or {})
        #: Requests per path (without the query string).
        self.requests: Counter[str] = Counter()
        #: (path, query parameters, headers) of every request, in arrival order.
        self.log: list[tuple[str, dict[str, list[str]], dict[str, str]]] = []
        #: Most requests being answered at the same moment.
        self.max_concurrent = 0
        #: TCP connections accepted.
        self.connections = 0
        self._current = 0
        self._seen: Counter[Key] = Counter()
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def prefix(self) -> str:
        return f"/arcgis/rest/services/{self.name}/{self.kind}"

    @property
    def url(self) -> str:
        """The service URL (what a user passes as ``--service``)."""
        assert self._server is not None, "start the server first (use it as a context manager)"
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}{self.prefix}"

    def tile_path(self, level: int, row: int, col: int) -> str:
        return f"{self.prefix}/tile/{level}/{row}/{col}"

    def start(self) -> TileServer:
        server = _Server(("127.0.0.1", 0), _make_handler(self))
        if self.ssl_context is not None:
            server.socket = self.ssl_context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)  # type: ignore[union-attr]

    def __enter__(self) -> TileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- behaviour ----------------------------------------------------------------------------
    def _answer(self, h: BaseHTTPRequestHandler, path: str) -> None:
        if path.rstrip("/") == self.prefix:
            if self.service is None:
                return self._send(h, 404, HTML_404, "text/html")
            return self._send(h, 200, json.dumps(self.service).encode(), "application/json")
        if self.tilemap and path.startswith(self.prefix + "/tilemap/"):
            return self._tilemap(h, path)
        key = self._key(path)
        if key is None:
            return self._send(h, 404, HTML_404, "text/html")
        with self._lock:
            self._seen[key] += 1
            seen = self._seen[key]
        delay = self.delay.get(key, 0.0) if isinstance(self.delay, dict) else self.delay
        if delay:
            time.sleep(delay)
        tile = self.tiles.get(key, self.default_tile)
        if key in self.redirect:
            return self._send(h, 302, b"", "text/html", {"Location": self.redirect[key]})
        if key in self.missing:
            return self._send(h, 404, HTML_404, "text/html")
        if key in self.fail_always or (key in self.fail_once and seen == 1):
            return self._send(h, 500, b"<html><body>Internal Server Error</body></html>", "text/html")
        if key in self.retry_after:
            code, seconds, times = self.retry_after[key]
            if seen <= times:
                return self._send(h, code, b"slow down", "text/plain",
                                  {"Retry-After": str(seconds)})
        if key in self.status:
            code, body = self.status[key]
            return self._send(h, code, body, "application/json" if body[:1] == b"{" else "text/html")
        if key in self.json_error:
            code, message = self.json_error[key]
            body = json.dumps({"error": {"code": code, "message": message, "details": []}})
            return self._send(h, 200, body.encode(), "text/plain; charset=utf-8")
        if key in self.html:
            return self._send(h, 200, HTML_404, "text/html")
        if key in self.blank:
            return self._send(h, 200, tile or b"\x89PNG\r\n\x1a\n", "image/png", {"blank-tile": "true"})
        if tile is None:
            return self._send(h, 404, HTML_404, "text/html")
        if key in self.truncated:
            h.send_response(200)
            h.send_header("Content-Type", "image/png")
            h.send_header("Content-Length", str(len(tile)))
            h.end_headers()
            h.wfile.write(tile[:len(tile) // 2])
            h.wfile.flush()
            h.close_connection = True
            return None
        if key in self.chunked:
            h.send_response(200)
            h.send_header("Content-Type", "image/png")
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            step = max(1, len(tile) // 7)
            for i in range(0, len(tile), step):
                part = tile[i:i + step]
                h.wfile.write(f"{len(part):x};ext=1\r\n".encode() + part + b"\r\n")
                h.wfile.flush()
            h.wfile.write(b"0\r\nX-Trailer: yes\r\n\r\n")
            return None
        if key in self.no_length:
            h.send_response(200)
            h.send_header("Content-Type", "image/png")
            h.send_header("Connection", "close")
            h.end_headers()
            h.wfile.write(tile)
            h.close_connection = True
            return None
        if key in self.gzipped:
            return self._send(h, 200, gzip.compress(tile), _content_type(tile),
                              {"Content-Encoding": "gzip"})
        return self._send(h, 200, tile, _content_type(tile))

    def _tilemap(self, h: BaseHTTPRequestHandler, path: str) -> None:
        parts = path[len(self.prefix + "/tilemap/"):].split("/")
        if len(parts) != 5 or not all(p.isdigit() for p in parts):
            return self._send(h, 404, HTML_404, "text/html")
        level, top, left, width, height = map(int, parts)
        if (level, top, left) in self.tilemap_status:
            code, body = self.tilemap_status[(level, top, left)]
            return self._send(h, code, body, "application/json" if body[:1] == b"{" else "text/html")
        # the server clips a request crossing a bundle line to the top-left tile's bundle
        w = min(width, 128 - left % 128)
        hgt = min(height, 128 - top % 128)
        data = [int((level, r, c) not in self.missing and (level, r, c) not in self.blank
                    and ((level, r, c) in self.tiles or self.default_tile is not None))
                for r in range(top, top + hgt) for c in range(left, left + w)]
        body = {"adjusted": (w, hgt) != (width, height), "valid": True, "data": data,
                "location": {"left": left, "top": top, "width": w, "height": hgt}}
        return self._send(h, 200, json.dumps(body).encode(), "application/json")

    def _key(self, path: str) -> Key | None:
        head = self.prefix + "/tile/"
        if not path.startswith(head):
            return None
        parts = path[len(head):].split("/")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            return None
        return int(parts[0]), int(parts[1]), int(parts[2])

    def _send(self, h: BaseHTTPRequestHandler, code: int, body: bytes, ctype: str,
              headers: dict[str, str] | None = None) -> None:
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)
        if self.drop_keepalive:
            h.close_connection = True


def _content_type(data: bytes) -> str:
    return "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "image/png"


def _make_handler(server: TileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 10
        # headers and body are two writes; without this, Nagle's algorithm holds the body until
        # the client's delayed ACK (~40 ms), which would make every request look slow
        disable_nagle_algorithm = True

        def setup(self) -> None:
            super().setup()
            self.served = 0
            with server._lock:
                server.connections += 1

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.served += 1
            if server.reset_reused and self.served > 1:
                with server._lock:
                    server.dropped += 1
                self.close_connection = True
                return
            parts = urlsplit(self.path)
            with server._lock:
                server.requests[parts.path] += 1
                server.log.append((parts.path, parse_qs(parts.query), dict(self.headers.items())))
                server._current += 1
                server.max_concurrent = max(server.max_concurrent, server._current)
            try:
                server._answer(self, parts.path)
            finally:
                with server._lock:
                    server._current -= 1

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


# -- a forward proxy ----------------------------------------------------------------------------

class ProxyServer:
    """An HTTP forward proxy: absolute-form GETs are relayed, CONNECT opens a byte tunnel.

    ``seen`` records each request line's method and target, so a test can tell the client went
    through the proxy (and how).
    """

    def __init__(self, require_auth: str | None = None) -> None:
        self.seen: list[tuple[str, str]] = []
        self.auth: list[str | None] = []
        self.require_auth = require_auth
        self._server: _Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> ProxyServer:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10

            def _allowed(self) -> bool:
                auth = self.headers.get("Proxy-Authorization")
                proxy.auth.append(auth)
                if proxy.require_auth and auth != proxy.require_auth:
                    self.send_response(407)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return False
                return True

            def do_CONNECT(self) -> None:  # noqa: N802
                proxy.seen.append(("CONNECT", self.path))
                if not self._allowed():
                    return
                host, _, port = self.path.rpartition(":")
                upstream = socket.create_connection((host, int(port)), timeout=10)
                self.send_response(200, "Connection established")
                self.end_headers()
                self.wfile.flush()
                _pipe(self.connection, upstream)
                self.close_connection = True

            def do_GET(self) -> None:  # noqa: N802
                proxy.seen.append(("GET", self.path))
                if not self._allowed():
                    return
                parts = urlsplit(self.path)
                upstream = socket.create_connection((parts.hostname, parts.port or 80), timeout=10)
                target = parts.path + ("?" + parts.query if parts.query else "")
                lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
                lines += [f"{k}: {v}" for k, v in self.headers.items()
                          if k.lower() not in ("host", "connection", "proxy-authorization")]
                upstream.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
                reply = b""
                while chunk := upstream.recv(65536):
                    reply += chunk
                upstream.close()
                head, _, body = reply.partition(b"\r\n\r\n")
                status = head.split(b"\r\n")[0].split(None, 2)
                self.send_response(int(status[1]))
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.decode("latin-1").partition(":")
                    if k.lower() not in ("connection", "content-length", "transfer-encoding",
                                         "date", "server"):
                        self.send_header(k, v.strip())
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()


def _pipe(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes (TLS bytes already decrypted count as
    ready: select cannot see them)."""
    socks = [a, b]
    try:
        while True:
            ready = [s for s in socks if isinstance(s, ssl.SSLSocket) and s.pending()] or \
                select.select(socks, [], [], 10)[0]
            if not ready:
                return
            for s in ready:
                data = s.recv(65536)
                if not data:
                    return
                (b if s is a else a).sendall(data)
    except OSError:
        return
    finally:
        b.close()


# -- TLS ----------------------------------------------------------------------------------------

def self_signed_cert(directory: Path) -> tuple[Path, Path] | None:
    """A certificate and key for 127.0.0.1 (openssl CLI), or None when openssl is missing."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def client_ssl_context(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


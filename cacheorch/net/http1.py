"""The HTTP/1.1 wire protocol of the tile engine: one keep-alive connection, its framing, and
where requests go.

Why a module of its own: parsing status lines and headers, reading fixed, chunked and
close-delimited bodies, undoing a Content-Encoding and building request heads is the lean
client that makes :class:`cacheorch.fetch.TileFetchEngine` cheap per tile; it knows nothing
of retries, tokens or ArcGIS, which the engine (:mod:`cacheorch.net.tileget`) decides from the
:class:`_Response` or :class:`_AttemptError` this module hands back.
"""
from __future__ import annotations

import asyncio
import re
import zlib
from urllib.parse import urlsplit

from cacheorch.connection import _SECRET_IN_TEXT as _SECRET_RE
from cacheorch.net import Proxy
from cacheorch.net.acceptor import DEFAULT_MAX_TILE_SIZE

__all__ = ["redact_text"]

_MAX_HEAD = 64 * 1024
#: A chunk-size or trailer line longer than this is not HTTP (it would grow a buffer forever).
_MAX_LINE = 4096
_HEX = re.compile(rb"[0-9a-fA-F]{1,15}")


def redact_text(text: object) -> str:
    """``text`` with secret URL parameters (``token=``, ``password=``...) masked as ``***``."""
    return _SECRET_RE.sub(r"\1***", str(text))


# -- errors inside one attempt ---------------------------------------------------------------

class _AttemptError(Exception):
    """One attempt failed; ``retry`` says whether another attempt may succeed."""

    def __init__(self, message: str, retry: bool = True, stale: bool = False) -> None:
        super().__init__(message)
        self.retry = retry
        #: A reused keep-alive connection died before any byte came back: the server closed it
        #: while idle, so the request never reached it and is replayed at once, for free.
        self.stale = stale


# -- one HTTP/1.1 connection -----------------------------------------------------------------

_HEAD, _FIXED, _CHUNKED, _UNTIL_CLOSE, _DONE = range(5)


class _Response:
    __slots__ = ("status", "reason", "headers", "body")

    def __init__(self, status: int, reason: str, headers: dict[bytes, bytes], body: bytes) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body


class _Conn(asyncio.Protocol):
    """A keep-alive HTTP/1.1 connection carrying one request at a time (no pipelining)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, registry: set[_Conn],
                 max_body: int = DEFAULT_MAX_TILE_SIZE) -> None:
        self.loop = loop
        self.registry = registry
        #: Bytes of body at most: a larger answer is refused while it is read, not after.
        self.max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.usable = False
        self.fut: asyncio.Future[_Response] | None = None
        self.made: asyncio.Future[None] = loop.create_future()
        self.sent = 0
        self._reset()

    def _reset(self) -> None:
        self.state = _HEAD
        self.buf = b""
        self.chunks: list[bytes] = []
        self.got = 0
        self.need = 0
        self.status = 0
        self.reason = ""
        self.headers: dict[bytes, bytes] = {}
        self.keep = True
        self.no_body = False
        self.received_any = False

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.usable = True
        self.registry.add(self)
        if not self.made.done():
            self.made.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.usable = False
        self.registry.discard(self)
        if not self.made.done():
            self.made.set_exception(ConnectionError("connection closed during set-up"))
        fut = self.fut
        if fut is None or fut.done():
            return
        if self.state == _UNTIL_CLOSE:
            self._finish()
        elif self.state == _FIXED:
            fut.set_exception(_AttemptError(f"truncated body ({self.got} of {self.need} bytes)"))
        elif self.state == _CHUNKED:
            fut.set_exception(_AttemptError(f"truncated chunked body ({self.got} bytes)"))
        else:
            why = f": {exc}" if exc else ""
            fut.set_exception(_AttemptError(f"connection closed by server{why}",
                                            stale=self.sent > 1 and not self.received_any))

    def eof_received(self) -> None:
        self.usable = False  # the server is closing: never hand this connection out again

    def data_received(self, data: bytes) -> None:
        fut = self.fut
        if fut is None or fut.done():  # nothing asked: a broken server; drop the connection
            self.abort()
            return
        self.received_any = True
        try:
            if self.state == _HEAD:
                data = self._head(data)
                if self.state == _HEAD or (not data and self.state != _DONE):
                    return
            if self.state == _FIXED:
                self.chunks.append(data)
                self.got += len(data)
                if self.got >= self.need:
                    if self.got > self.need:  # more than announced: never reuse this connection
                        self.keep = False
                        body = b"".join(self.chunks)[:self.need]
                        self.chunks = [body]
                    self._finish()
            elif self.state == _CHUNKED:
                self._chunked(data)
            elif self.state == _UNTIL_CLOSE:
                self.chunks.append(data)
                self.got += len(data)
                if self.got > self.max_body:
                    raise self._too_big(f"more than {self.got} bytes")
            elif self.state == _DONE:
                self._finish()
        except _AttemptError as e:
            self.keep = False
            if not fut.done():
                fut.set_exception(e)
            self.abort()

    # parsing
    def _head(self, data: bytes) -> bytes:
        buf = self.buf + data if self.buf else data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    raise _AttemptError("response headers too long", retry=False)
                self.buf = buf
                return b""
            lines = buf[:end].split(b"\r\n")
            rest = buf[end + 4:]
            parts = lines[0].split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
                raise _AttemptError(f"not an HTTP response: {lines[0][:60]!r}")
            status = int(parts[1])
            if 100 <= status < 200 and status != 101:  # interim (100 Continue): skip
                buf = rest
                continue
            break
        self.buf = b""
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name in headers:  # repeated: one comma-separated list (RFC 9110 §5.3)
                headers[name] += b"," + value.strip()
            else:
                headers[name] = value.strip()
        self.status = status
        self.reason = parts[2].decode("latin-1", "replace") if len(parts) > 2 else ""
        self.headers = headers
        connection = headers.get(b"connection", b"").lower()
        if parts[0] == b"HTTP/1.0":
            self.keep = b"keep-alive" in connection
        else:
            self.keep = b"close" not in connection
        if self.no_body or status in (204, 304):
            self.state = _DONE
            if rest:
                self.keep = False
            return b""
        te = headers.get(b"transfer-encoding")
        if te is not None and b"chunked" in te.lower():
            self.state = _CHUNKED
            self.cbuf = b""
            self.cstate = 0
            self.cleft = 0
            if b"content-length" in headers:  # both: chunked wins, the connection is suspect
                self.keep = False
        elif b"content-length" in headers:
            self.need = _content_length(headers[b"content-length"])
            if self.need > self.max_body:
                raise self._too_big(f"{self.need} bytes announced")
            self.state = _FIXED
            if self.need == 0:
                self.state = _DONE
                if rest:
                    self.keep = False
                return b""
        else:
            self.state = _UNTIL_CLOSE
            self.keep = False
        return rest

    def _chunked(self, data: bytes) -> None:
        buf = self.cbuf + data if self.cbuf else data
        pos = 0
        n = len(buf)
        while pos < n:
            if self.cstate == 0:  # size line
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                size_text = buf[pos:eol].split(b";", 1)[0].strip()
                if _HEX.fullmatch(size_text) is None:
                    raise _AttemptError(f"bad chunk size {size_text[:20]!r}")
                size = int(size_text, 16)
                if self.got + size > self.max_body:
                    raise self._too_big(f"a chunk of {size} bytes after {self.got}")
                pos = eol + 2
                if size == 0:
                    self.cstate = 3
                else:
                    self.cleft = size
                    self.cstate = 1
            elif self.cstate == 1:  # chunk data
                take = min(self.cleft, n - pos)
                self.chunks.append(buf[pos:pos + take])
                self.got += take
                self.cleft -= take
                pos += take
                if self.cleft == 0:
                    self.cstate = 2
            elif self.cstate == 2:  # CRLF after data
                if n - pos < 2:
                    break
                if buf[pos:pos + 2] != b"\r\n":
                    raise _AttemptError("malformed chunked body")
                pos += 2
                self.cstate = 0
            else:  # trailers, up to an empty line
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                line = buf[pos:eol]
                pos = eol + 2
                if not line:
                    if pos < n:
                        self.keep = False
                    self.cbuf = b""
                    self._finish()
                    return
        self.cbuf = buf[pos:]
        if self.cstate != 1 and len(self.cbuf) > _MAX_LINE:
            raise _AttemptError("malformed chunked body (a chunk-size or trailer line too long)")

    def _too_big(self, what: str) -> _AttemptError:
        return _AttemptError(f"tile larger than the maximum tile size of {self.max_body} bytes "
                             f"({what})")

    def _finish(self) -> None:
        fut = self.fut
        body = b"".join(self.chunks)
        resp = _Response(self.status, self.reason, self.headers, body)
        self.state = _DONE
        self.chunks = []
        if fut is not None and not fut.done():
            fut.set_result(resp)

    # used by the engine
    def send(self, request: bytes, no_body: bool = False) -> asyncio.Future[_Response]:
        self._reset()
        self.no_body = no_body
        self.sent += 1
        self.fut = fut = self.loop.create_future()
        transport = self.transport
        if transport is None or transport.is_closing():
            self.usable = False
            fut.set_exception(_AttemptError("connection closed by server", stale=self.sent > 1))
        else:
            transport.write(request)
        return fut

    def on_timeout(self) -> None:
        fut = self.fut
        if fut is not None and not fut.done():
            fut.set_exception(_AttemptError("timed out"))
            self.abort()

    @property
    def reusable(self) -> bool:
        return self.usable and self.keep and self.state == _DONE

    def abort(self) -> None:
        self.usable = False
        if self.transport is not None:
            self.transport.abort()


# -- where requests go -----------------------------------------------------------------------

class _Origin:
    """One scheme://host:port, with its idle connections and how to reach it (direct or proxy)."""

    __slots__ = ("scheme", "host", "port", "base", "header_block", "idle", "connect_host",
                 "connect_port", "absolute", "tunnel", "proxy_auth", "proxy")

    def __init__(self, base: str, header_block: bytes, proxy: Proxy | None) -> None:
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {redact_text(base)}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base = base
        default_port = self.port == (443 if self.scheme == "https" else 80)
        host = self.host if self.host.isascii() else self.host.encode("idna").decode("ascii")
        host_text = f"[{host}]" if ":" in host else host
        host_header = host_text if default_port else f"{host_text}:{self.port}"
        self.idle: list[_Conn] = []
        self.absolute = False
        self.tunnel = False
        self.proxy_auth = b""
        #: The proxy connections go through (TLS to it when ``proxy.tls``), or None.
        self.proxy = proxy
        self.connect_host, self.connect_port = self.host, self.port
        if proxy is not None:
            self.connect_host, self.connect_port = proxy.host, proxy.port
            if proxy.authorization:
                self.proxy_auth = (b"Proxy-Authorization: " + proxy.authorization.encode("ascii")
                                   + b"\r\n")
            if self.scheme == "https":
                self.tunnel = True
            else:
                self.absolute = True
        extra = self.proxy_auth if self.absolute else b""
        self.header_block = (b" HTTP/1.1\r\nHost: " + host_header.encode("ascii") + b"\r\n"
                             + header_block + extra + b"\r\n")


def _header_block(headers: dict[str, str]) -> bytes:
    out = []
    for name, value in headers.items():
        if any(c in name + value for c in "\r\n\0") or not name or ":" in name:
            raise ValueError(f"invalid HTTP header {name!r}")
        out.append(f"{name}: {value}\r\n".encode("latin-1"))
    return b"".join(out)


def _content_length(value: bytes) -> int:
    """A Content-Length header's value; repeated ones must agree (RFC 9110 §8.6).

    Why strict: a negative length, or two lengths that differ, mean the server (or something
    between) frames responses wrongly, and a body taken by either reading may be a piece of
    another; ``int()`` alone would also take ``-5``, ``+5`` and ``5_0``.
    """
    values = {v.strip() for v in value.split(b",")} if b"," in value else {value}
    if len(values) != 1:
        raise _AttemptError(f"conflicting Content-Length values {value[:40]!r}")
    text = values.pop()
    if not text.isdigit() or len(text) > 18:
        raise _AttemptError(f"bad Content-Length {text[:20]!r}")
    return int(text)


def _decode(encoding: bytes, body: bytes, limit: int = DEFAULT_MAX_TILE_SIZE) -> bytes:
    """The body without its Content-Encoding (we ask for none, but some servers gzip anyway).

    Inflated at most to ``limit`` bytes: a gzip bomb (kilobytes that inflate to gigabytes) costs
    ``limit`` bytes of memory and is refused; a stream cut short is refused too.
    """
    name = encoding.strip().lower()
    if name in (b"", b"identity"):
        return body
    if name in (b"gzip", b"x-gzip"):
        wbits = (16 + zlib.MAX_WBITS,)
    elif name == b"deflate":  # zlib-wrapped per the RFC; raw deflate in practice, too
        wbits = (zlib.MAX_WBITS, -zlib.MAX_WBITS)
    else:
        raise _AttemptError(f"unsupported Content-Encoding {name.decode('latin-1')!r}", retry=False)
    for i, bits in enumerate(wbits):
        inflater = zlib.decompressobj(bits)
        try:
            out = inflater.decompress(body, limit + 1)
        except zlib.error as e:
            if i + 1 < len(wbits):
                continue
            raise _AttemptError(f"corrupt {name.decode('latin-1')} body: {e}") from None
        if len(out) > limit:
            raise _AttemptError(f"tile larger than the maximum tile size of {limit} bytes (a "
                                f"{len(body)}-byte {name.decode('latin-1')} body inflates past it)")
        if not inflater.eof:
            raise _AttemptError(f"corrupt {name.decode('latin-1')} body: the stream is cut short")
        return out
    raise AssertionError("unreachable")

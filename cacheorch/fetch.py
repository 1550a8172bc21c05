"""Bulk HTTP GET of tiles: many small images, fast, over a few keep-alive connections.

Why not requests or aiohttp here: exporting a cache is millions of identical small GETs, and on a
two-core machine the client's CPU per tile bounds the whole job. ``bench/http_clients.py`` measured
requests, urllib3, aiohttp and this engine side by side against nginx (bench/README.md has the
table); this engine spends about half the CPU per tile of aiohttp (a quarter of urllib3's, a
tenth of requests') because it is a lean HTTP/1.1 client on :class:`asyncio.Protocol` that does
only what a tile GET needs. It still
handles what real servers do: chunked and close-delimited bodies, gzip/deflate content-encoding,
redirects, HTTPS, and ``http://`` or ``https://`` proxies (``CONNECT`` tunnels for HTTPS). Its CA
bundle, proxy choice and timeouts come from :class:`~cacheorch.net.NetworkSettings`, as those of
the requests session that stays the client for service JSON and jobs.

:meth:`TileFetchEngine.fetch` is an ordinary generator: it pulls URLs lazily, keeps at most
``workers`` requests in flight, runs the event loop in the caller's thread until results are in,
and yields them as they complete, so memory stays flat for any number of tiles.
"""
from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import re
import ssl
import threading
import time
import weakref
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote, urljoin, urlsplit

from cacheorch.connection import _SECRET_IN_TEXT as _SECRET_RE
from cacheorch.connection import USER_AGENT, Reauth
from cacheorch.errors import JobFailedError
from cacheorch.jsonlimits import loads
from cacheorch.net import NetworkSettings, Proxy, os_words, tls_words
from cacheorch.net.acceptor import DEFAULT_MAX_TILE_SIZE, TileAcceptor

__all__ = ["RetryPolicy", "FetchResult", "TileFetchEngine", "fetch_tiles", "redact_text",
           "RateLimiter", "FailureWindow", "TooManyFailuresError"]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
Status = Literal["ok", "missing", "failed"]

_UNSAFE_TARGET = re.compile(r"[^\x21-\x7e]")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_HEAD = 64 * 1024
#: A chunk-size or trailer line longer than this is not HTTP (it would grow a buffer forever).
_MAX_LINE = 4096
_HEX = re.compile(rb"[0-9a-fA-F]{1,15}")
#: ArcGIS's "invalid or expired token" and "token required".
_TOKEN_CODES = frozenset({498, 499})


def redact_text(text: object) -> str:
    """``text`` with secret URL parameters (``token=``, ``password=``...) masked as ``***``."""
    return _SECRET_RE.sub(r"\1***", str(text))


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one tile: bounded retries with jittered exponential backoff.

    Transient failures (5xx, 429, timeouts, refused or reset connections, truncated bodies) are
    retried up to ``retries`` times; the n-th wait is ``backoff × 2ⁿ`` capped at ``backoff_cap``,
    with "equal jitter" (half fixed, half random) so that many workers that failed together do not
    come back together. A ``Retry-After`` on 429/503 replaces the wait, bounded by
    ``retry_after_cap`` so one server cannot park a job for hours.
    """

    retries: int = 4
    backoff: float = 0.2
    backoff_cap: float = 10.0
    retry_after_cap: float = 60.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt + 1``."""
        d = min(self.backoff_cap, self.backoff * (2.0 ** attempt))
        return d / 2 + random.uniform(0, d / 2)

    def retry_after(self, value: bytes | None, attempt: int) -> float:
        """The wait a 429/503 asks for (seconds or an HTTP date), bounded; else the backoff."""
        if value:
            text = value.decode("latin-1").strip()
            seconds: float | None = None
            if text.isdigit():
                seconds = float(text)
            else:
                try:
                    when = email.utils.parsedate_to_datetime(text)
                    seconds = when.timestamp() - time.time()
                except (TypeError, ValueError, IndexError, OverflowError):
                    seconds = None
            if seconds is not None:
                return max(0.0, min(seconds, self.retry_after_cap))
        return self.delay(attempt)


class TooManyFailuresError(JobFailedError):
    """Too many of the latest requests failed: the server is down or refusing us, and going on
    would only turn the rest of the job into failed tiles (and load on a struggling server)."""


class RateLimiter:
    """At most ``rate`` requests per second across every connection of an engine.

    A token bucket holding one token: requests are spaced ``1/rate`` apart, and a pause lets
    no burst through afterwards, which is what a server's rate limit (or a polite crawler's
    promise) counts. Used from inside the engine's event loop only.
    """

    def __init__(self, rate: float) -> None:
        if not rate > 0:
            raise ValueError("the request rate must be above 0")
        self.interval = 1.0 / rate
        self._next = 0.0

    def delay(self, now: float) -> float:
        """Reserve the next slot; the seconds to wait for it."""
        slot = max(now, self._next)
        self._next = slot + self.interval
        return slot - now

    async def wait(self) -> None:
        seconds = self.delay(time.monotonic())
        if seconds > 0:
            await asyncio.sleep(seconds)


class FailureWindow:
    """Whether more than ``rate`` of the last ``size`` requests failed.

    Every attempt counts, retries included: a server answering 503 to everything trips it
    after ``rate × size`` attempts, long before the retries of every tile are spent. Fewer
    requests than ``size`` count as what they are (10 failures of 10 trip a 0.5 × 20 window
    once failures exceed 10), so a dead server is noticed early too.
    """

    def __init__(self, rate: float, size: int) -> None:
        if not 0 <= rate < 1:
            raise ValueError("the failure rate must be at least 0 and below 1")
        if size < 1:
            raise ValueError("the failure window must hold at least one request")
        self.rate, self.size = rate, size
        self._last: deque[bool] = deque(maxlen=size)
        self.failed = 0

    def record(self, ok: bool) -> bool:
        """Count one request; True when the failures now exceed the limit."""
        if len(self._last) == self.size and not self._last[0]:
            self.failed -= 1
        self._last.append(ok)
        if not ok:
            self.failed += 1
        return self.failed > self.rate * self.size


@dataclass(frozen=True)
class FetchResult(Generic[T]):
    """One URL's outcome in :func:`fetch_tiles`: same meaning as :class:`~cacheorch.interfaces.TileResult`."""

    tag: T
    status: Status
    data: bytes | None = None
    error: str | None = None


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


# -- the engine ------------------------------------------------------------------------------

class _Raise:
    """An exception to re-raise in the caller's thread."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Call:
    """One :meth:`TileFetchEngine.fetch` iteration: results not yet taken, and running tasks."""

    __slots__ = ("pending", "tasks", "cancelled", "make")

    def __init__(self, make: Callable[..., Any]) -> None:
        self.pending: list[Any] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        self.cancelled = False
        self.make = make


#: A first attempt already on the wire: (origin, request bytes, connection, response, timer).
_Begun = tuple[_Origin, bytes, "_Conn | None", "asyncio.Future[_Response] | None",
               "asyncio.TimerHandle | None"]


def _finalize(loop: asyncio.AbstractEventLoop, conns: set[_Conn]) -> None:
    """Release sockets of an engine that was never closed (garbage collected)."""
    if loop.is_running() or loop.is_closed():
        return
    for conn in list(conns):
        conn.abort()
    try:
        loop.run_until_complete(asyncio.sleep(0))  # the transports close their sockets
    except RuntimeError:  # another event loop runs in this thread: the sockets close on GC
        pass
    loop.close()


class TileFetchEngine:
    """Fetches many URLs concurrently over pooled keep-alive connections.

    Why the event loop runs in the caller's thread, inside :meth:`fetch`, and not in a
    background thread: a loop thread handing results over a queue cost 10-30 % more CPU per
    tile in bench/http_clients.py runs, and while the consumer works (writing bundles) the two
    threads would fight over the GIL. Here requests go on the wire as soon as they are
    submitted, the server works while the consumer does, and responses wait in socket buffers
    until the next ``next()``. Several threads may iterate ``fetch`` on one engine: whichever
    needs results runs the loop, under a lock, for everybody. Not usable from inside a running
    asyncio event loop (run it in a thread there).

    :param workers: requests in flight at most, across every :meth:`fetch` in progress.
    :param headers: sent with every request (User-Agent, Referer...).
    :param network: CA bundle, proxies and timeouts, shared with the requests session of the
        same command (default: from the environment, or no proxies when ``trust_env`` is false).
    :param timeout: seconds for one attempt (connect, or request to last byte), overriding both
        of ``network``'s timeouts; None: the network's connect timeout to connect (through a
        proxy: to the end of the tunnel's TLS handshake), its read timeout from request to
        last byte.
    :param retry: retries and backoff for transient failures.
    :param redact: applied to every error message, so that a token in a URL or an echoing
        server's message never reaches a log or catalog.
    :param trust_env: without ``network``: take proxies and CA bundles from the environment
        (``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY``, ``SSL_CERT_FILE``/``REQUESTS_CA_BUNDLE``).
    :param ssl_context: for HTTPS, instead of ``network``'s trust store.
    :param max_rps: requests per second at most, over every connection (None: no limit).
    :param failure_rate: with ``failure_window``: end the fetch with
        :class:`TooManyFailuresError` once more than this fraction of the last
        ``failure_window`` requests (attempts, retries included) failed. None: never.
    :param reauth: called with the URL of a request refused for its token (ArcGIS 498 invalid
        or expired, 499 required; as an HTTP status or a JSON error body) and whether it may
        renew the token; returns the URL to retry with (:class:`~cacheorch.connection.Reauth`),
        carrying a renewed token, or None to fail the tile. It runs in a worker thread, so it
        may block on a token service while other requests go on; each tile is re-authorised at
        most once (a token renewed by another request since its URL was made is only caught
        up with, which does not count). An exception it raises ends the fetch.
    :param acceptor: what a whole tile is (the service's format, the maximum tile size): a body
        it refuses is never a tile, and a body past its size is not read on. Images of any
        format, up to 16 MiB, by default.
    """

    def __init__(self, *, workers: int = 8, headers: dict[str, str] | None = None,
                 timeout: float | None = None, retry: RetryPolicy | None = None,
                 redact: Callable[[str], str] = redact_text, trust_env: bool = True,
                 ssl_context: ssl.SSLContext | None = None, max_redirects: int = 5,
                 reauth: Callable[[str, bool], Reauth | None] | None = None,
                 max_rps: float | None = None, failure_rate: float | None = None,
                 failure_window: int = 200, network: NetworkSettings | None = None,
                 acceptor: TileAcceptor | None = None) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._limiter = RateLimiter(max_rps) if max_rps else None
        self._failures = (FailureWindow(failure_rate, failure_window)
                          if failure_rate is not None else None)
        self._tripped: TooManyFailuresError | None = None
        self.workers = workers
        if network is None:
            network = NetworkSettings.build(trust_env=trust_env)
        if timeout is not None:
            network = network.with_timeout(timeout)
        self.network = network
        #: Seconds from request to last byte; connecting has ``network.connect_timeout``.
        self.timeout = network.read_timeout
        self.retry = retry or RetryPolicy()
        self.redact = redact
        self.max_redirects = max_redirects
        self.reauth = reauth
        self.acceptor = acceptor or TileAcceptor()
        hdrs = {"User-Agent": USER_AGENT, "Accept": "*/*"}
        hdrs.update(headers or {})
        self._header_block = _header_block(hdrs)
        self._ssl = ssl_context
        self._origins: dict[str, _Origin] = {}
        self._conns: set[_Conn] = set()
        self._calls: set[_Call] = set()
        self._active = 0
        self._waiting: deque[tuple[_Call, Any, str]] = deque()
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    # -- the caller's side --------------------------------------------------------------

    def fetch(self, requests: Iterable[tuple[T, str]],
              result: Callable[[T, Status, bytes | None, str | None], R] = FetchResult,  # type: ignore[assignment]
              ) -> Iterator[R]:
        """Yield ``result(tag, status, data, error)`` for each ``(tag, url)``, as they complete.

        ``requests`` is consumed lazily, at most ``workers`` ahead of the results taken.
        Stopping early (``break``, ``close()`` of the generator) cancels what is still in
        flight. An exception raised in the engine or by ``result`` is re-raised here; a URL that
        is not http(s) raises :class:`ValueError`.
        """
        call = _Call(result)
        it = iter(requests)
        workers = self.workers
        inflight = 0
        more = True
        got: list[Any] = []
        try:
            while True:
                # Submit first: new requests go on the wire before the caller handles results.
                if more and inflight < workers:
                    want = workers - inflight
                    batch = list(islice(it, want))
                    if len(batch) < want:
                        more = False
                    if batch:
                        with self._locked():
                            self._check_open()
                            inflight += len(batch)
                            self._submit(call, batch)
                for r in got:
                    if type(r) is _Raise:
                        raise r.exc
                    yield r
                if not inflight:
                    return
                got = self._collect(call)
                inflight -= len(got)
        finally:
            if inflight:
                self._abandon(call)

    def close(self) -> None:
        """Cancel what is in flight and close every connection."""
        if self._closed:
            return
        self._closed = True  # first, so that a thread running the loop stops when kicked
        with self._locked():
            loop = self._loop
            if loop is None:
                return
            if loop.is_running():  # closed from inside a result callback: finish on the way out
                self._cancel_all()
                self._wake()
                return
            self._shutdown()

    def __enter__(self) -> TileFetchEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self._lock
        if not lock.acquire(blocking=False):
            # Another thread holds the lock and runs the loop, or is about to: a wake-up queued
            # now ends its run (or its next one) so it hands over soon.
            loop = self._loop
            if loop is not None and not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(self._wake)
                except RuntimeError:
                    pass
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def _check_open(self) -> None:
        if self._closed:
            if self._loop is not None and not self._loop.is_running():
                self._shutdown()
            raise RuntimeError("the tile fetcher is closed")

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.new_event_loop()
            me = weakref.ref(self)  # the loop must not keep the engine alive (see _finalize)

            def on_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
                engine = me()
                if engine is not None:
                    engine._loop_error(loop, context)
            loop.set_exception_handler(on_error)
            weakref.finalize(self, _finalize, loop, self._conns)
        return loop

    def _collect(self, call: _Call) -> list[Any]:
        """Run the loop until ``call`` has results; take them."""
        while True:
            with self._locked():
                self._check_open()
                if call.pending:
                    got, call.pending = call.pending, []
                    return got
                loop = self._ensure_loop()
                if loop.is_running():
                    raise RuntimeError("fetch() iterated from inside its own engine's callbacks")
                waiter = self._waiter = loop.create_future()
                try:
                    loop.run_until_complete(waiter)
                finally:
                    self._waiter = None
                self._check_open()
                if call.pending:
                    got, call.pending = call.pending, []
                    return got
            time.sleep(0)  # the results were another thread's: let it take the lock first

    def _abandon(self, call: _Call) -> None:
        """The caller stopped early: cancel the call's requests and let them settle."""
        call.cancelled = True
        try:
            with self._locked():
                self._calls.discard(call)
                if self._waiting:
                    self._waiting = deque(w for w in self._waiting if w[0] is not call)
                tasks = [t for t in call.tasks if not t.done()]
                for t in tasks:
                    t.cancel()
                loop = self._loop
                if tasks and loop is not None and not loop.is_running() and not loop.is_closed():
                    loop.run_until_complete(asyncio.wait(tasks))
        except RuntimeError:  # the loop was closed meanwhile: nothing left to settle
            pass

    def _cancel_all(self) -> list[asyncio.Task[Any]]:
        tasks = [t for call in self._calls for t in call.tasks if not t.done()]
        for call in self._calls:
            call.cancelled = True
        self._calls.clear()
        self._waiting.clear()
        for t in tasks:
            t.cancel()
        for conn in list(self._conns):
            conn.abort()
        for origin in self._origins.values():
            origin.idle.clear()
        return tasks

    def _shutdown(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        tasks = self._cancel_all()
        try:
            if tasks:
                loop.run_until_complete(asyncio.wait(tasks))
            loop.run_until_complete(asyncio.sleep(0))  # transports run their connection_lost
        finally:
            loop.close()

    # -- inside the loop ----------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if exc is None or isinstance(exc, (ConnectionError, ssl.SSLError)):
            # asyncio's own noise about transports (a reset while closing): not ours to raise
            log.debug("event loop: %s", context.get("message"))
            return
        for call in list(self._calls):  # a bug in the engine: every caller must see it
            self._deliver(call, _Raise(exc))

    def _deliver(self, call: _Call, item: Any) -> None:
        call.pending.append(item)
        self._wake()

    def _submit(self, call: _Call, batch: list[tuple[Any, str]]) -> None:
        try:
            self._ensure_loop()
            self._calls.add(call)
            for tag, url in batch:
                if self._active < self.workers:
                    self._spawn(call, tag, url)
                else:
                    self._waiting.append((call, tag, url))
        except BaseException as e:  # noqa: BLE001 - surfaced in the caller's thread
            self._deliver(call, _Raise(e))

    def _spawn(self, call: _Call, tag: Any, url: str) -> None:
        # a rate-limited request waits for its slot in _get before it goes on the wire
        begun: _Begun | None = self._begin(url) if self._limiter is None else None
        task = self._loop.create_task(self._one(call, tag, url, begun))  # type: ignore[union-attr]
        self._active += 1
        call.tasks.add(task)
        task.add_done_callback(lambda t: self._task_done(call, begun, t))

    async def _one(self, call: _Call, tag: Any, url: str, begun: _Begun | None) -> Any:
        try:
            status, data, error = await self._get(url, begun)
            return call.make(tag, status, data, error)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001 - surfaced in the caller's thread
            return _Raise(e)

    def _task_done(self, call: _Call, begun: _Begun | None, task: asyncio.Task[Any]) -> None:
        self._active -= 1
        call.tasks.discard(task)
        if task.cancelled():
            if begun is not None:
                conn, fut, timer = begun[2], begun[3], begun[4]
                if conn is not None and fut is not None and not fut.done():  # never awaited
                    conn.abort()
                    if timer is not None:
                        timer.cancel()
        elif not call.cancelled:
            self._deliver(call, task.result())
        waiting = self._waiting
        while waiting and self._active < self.workers:
            nxt = waiting.popleft()
            if not nxt[0].cancelled:
                try:
                    self._spawn(*nxt)
                except BaseException as e:  # noqa: BLE001 - surfaced in the caller's thread
                    self._deliver(nxt[0], _Raise(e))

    # -- one URL ------------------------------------------------------------------------

    async def _get(self, url: str, begun: _Begun | None = None
                   ) -> tuple[Status, bytes | None, str | None]:
        retry = self.retry
        acceptor = self.acceptor
        attempt = 0
        redirects = 0
        stale_replays = 0
        fresh = False
        reauthorised = False
        count = self._count
        while True:
            if self._tripped is not None:
                raise self._tripped
            if self._limiter is not None:
                await self._limiter.wait()
            try:
                resp = await self._request(url, begun, fresh)
            except _AttemptError as e:
                begun = None
                if e.stale and stale_replays < 2:
                    stale_replays += 1
                    fresh = True  # replay on a new connection, not on another idle one
                    continue
                count(False, str(e))
                if not e.retry or attempt >= retry.retries:
                    return "failed", None, self._fail(str(e), attempt)
                await self._pause(url, str(e), retry.delay(attempt))
                attempt += 1
                continue
            begun = None
            status = resp.status
            if status == 200:
                if resp.headers.get(b"blank-tile", b"").lower() == b"true":
                    count(True)
                    return "missing", None, None
                body = resp.body
                defect = acceptor.defect(body)
                if defect is None and (acceptor.images_only or _arcgis_error(body) is None):
                    count(True)
                    return "ok", body, None
                arcgis = _arcgis_error(body)
                if arcgis is not None:
                    code, message = arcgis
                    count(False, message)
                    if code in _TOKEN_CODES:
                        new_url, reauthorised = await self._reauth(url, reauthorised)
                        if new_url is not None:
                            url = new_url
                            continue
                    if code in (500, 502, 503, 504) and attempt < retry.retries:
                        await self._pause(url, message, retry.delay(attempt))
                        attempt += 1
                        continue
                    return "failed", None, self._fail(message, attempt)
                if defect is not None and not acceptor.wrong_kind(defect):
                    # cut short, trailing bytes, too big: a whole copy may come next time
                    message = str(defect)
                    count(False, message)
                    if attempt < retry.retries:
                        await self._pause(url, message, retry.delay(attempt))
                        attempt += 1
                        continue
                    return "failed", None, self._fail(message, attempt)
                ctype = resp.headers.get(b"content-type", b"no content type").decode("latin-1")
                ctype = ctype.split(";")[0].strip()
                message = f"not {acceptor.expected} ({ctype}, {len(body)} bytes)"
                count(False, message)
                return "failed", None, self.redact(message)
            if status == 404 or status == 204:
                count(True)
                return "missing", None, None
            if status in _REDIRECTS and b"location" in resp.headers:
                redirects += 1
                if redirects > self.max_redirects:
                    return "failed", None, self.redact(f"more than {self.max_redirects} redirects")
                url = urljoin(url, resp.headers[b"location"].decode("latin-1"))
                target = urlsplit(url)
                if target.scheme not in ("http", "https") or not target.hostname:
                    count(False, "redirect")
                    scheme = f"{target.scheme}:" if target.scheme else "a URL without a host"
                    return "failed", None, self.redact(f"redirected to a non-HTTP URL ({scheme}), "
                                                       "not followed")
                continue
            message = f"HTTP {status} {resp.reason}".rstrip()
            arcgis = _arcgis_error(resp.body)
            if arcgis is not None:
                message += f" ({arcgis[1]})"
            count(False, message)
            if status in _TOKEN_CODES or (arcgis is not None and arcgis[0] in _TOKEN_CODES):
                new_url, reauthorised = await self._reauth(url, reauthorised)
                if new_url is not None:
                    url = new_url
                    continue
            if (status >= 500 or status == 429) and attempt < retry.retries:
                if status in (429, 503):
                    wait = retry.retry_after(resp.headers.get(b"retry-after"), attempt)
                else:
                    wait = retry.delay(attempt)
                await self._pause(url, message, wait)
                attempt += 1
                continue
            return "failed", None, self._fail(message, attempt)

    def _count(self, ok: bool, why: str = "") -> None:
        """Feed the failure window; past its limit, end every fetch of this engine."""
        window = self._failures
        if window is None or self._tripped is not None:
            return
        if window.record(ok):
            self._tripped = TooManyFailuresError(
                f"stopped: more than {window.rate:.0%} of the last {window.size} requests failed "
                f"(latest: {self.redact(why)}); the server may be down or refusing requests. "
                f"Finished bundles are kept: resume the job when it recovers")
            raise self._tripped

    async def _reauth(self, url: str, reauthorised: bool) -> tuple[str | None, bool]:
        """The URL to retry a token refusal with (None: fail the tile), from :attr:`reauth` run
        off the event loop, and whether the tile has spent its one re-authorisation: catching up
        with a token renewed meanwhile does not spend it, and once spent only that is asked."""
        if self.reauth is None:
            return None, True
        assert self._loop is not None
        again = await self._loop.run_in_executor(None, self.reauth, url, not reauthorised)
        if again is None:
            return None, True
        return again.url, reauthorised or again.renewed

    def _fail(self, message: str, attempt: int) -> str:
        tries = f" after {attempt + 1} attempts" if attempt else ""
        return self.redact(message + tries)

    async def _pause(self, url: str, why: str, seconds: float) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("retrying %s in %.2fs: %s", self.redact(url), seconds, self.redact(why))
        await asyncio.sleep(seconds)

    def _begin(self, url: str, pooled: bool = True) -> _Begun:
        """Parse ``url`` and, when a pooled connection is idle, send the request right away.

        :param pooled: False to leave the pool alone (a replay after a stale connection: the
            other idle ones are likely as stale, having idled as long).
        """
        i = url.find("/", url.find("://") + 3)
        base, target = (url, "/") if i < 0 else (url[:i], url[i:])
        origin = self._origins.get(base)
        if origin is None:
            origin = self._origin(base)
        if origin.absolute:
            target = origin.base + target
        if _UNSAFE_TARGET.search(target):
            target = quote(target, safe="/?&=%:;,+@!$'()*~#[]")
        request = b"GET " + target.encode("ascii") + origin.header_block
        idle = origin.idle
        while pooled and idle:
            conn = idle.pop()
            if conn.usable:
                fut = conn.send(request)
                timer = self._loop.call_later(self.timeout, conn.on_timeout)  # type: ignore[union-attr]
                return origin, request, conn, fut, timer
        return origin, request, None, None, None

    async def _request(self, url: str, begun: _Begun | None, fresh: bool = False) -> _Response:
        origin, request, conn, fut, timer = begun or self._begin(url, pooled=not fresh)
        if conn is None:
            conn = await self._connect(origin)
            fut = conn.send(request)
            timer = self._loop.call_later(self.timeout, conn.on_timeout)  # type: ignore[union-attr]
        assert fut is not None and timer is not None
        try:
            resp = await fut
        except asyncio.CancelledError:
            conn.abort()
            raise
        finally:
            timer.cancel()
        if conn.reusable:
            origin.idle.append(conn)
        else:
            conn.abort()
        encoding = resp.headers.get(b"content-encoding")
        if encoding is not None and resp.body:
            resp.body = _decode(encoding, resp.body, self.acceptor.max_size)
        return resp

    def _origin(self, base: str) -> _Origin:
        origin = _Origin(base, self._header_block, self.network.proxy_for(base))
        self._origins[base] = origin
        return origin

    async def _connect(self, origin: _Origin) -> _Conn:
        loop = self._loop
        assert loop is not None
        proxy = origin.proxy
        if self._ssl is None and (origin.scheme == "https" or (proxy is not None and proxy.tls)):
            self._ssl = self.network.ssl_context()
        ssl_ctx = self._ssl if origin.scheme == "https" else None
        conn = _Conn(loop, self._conns, self.acceptor.max_size)
        # TLS from here to the first hop: the proxy when it is an https:// one, else the origin
        first_tls = self._ssl if proxy is not None and proxy.tls else \
            (ssl_ctx if not origin.tunnel else None)
        first_host = proxy.host if proxy is not None else origin.host
        where = f"{origin.connect_host}:{origin.connect_port}"
        if proxy is not None:
            where = f"proxy {where}"
        # whose TLS a handshake failure is about: "proxy " while talking to an https:// proxy
        tls_host, tls_of = first_host, "proxy " if proxy is not None else ""
        try:
            async with asyncio.timeout(self.network.connect_timeout):
                await loop.create_connection(
                    lambda: conn, origin.connect_host, origin.connect_port, ssl=first_tls,
                    server_hostname=first_host if first_tls else None)
                await conn.made
                if origin.tunnel:
                    tls_host, tls_of = origin.host, ""
                    await self._tunnel(conn, origin, ssl_ctx)  # type: ignore[arg-type]
        except ssl.SSLError as e:
            conn.abort()
            raise _AttemptError(tls_of + tls_words(e, tls_host),  # a distrusted one stays so
                                retry=not isinstance(e, ssl.SSLCertVerificationError)) from None
        except TimeoutError:
            conn.abort()
            raise _AttemptError(f"timed out connecting to {where}") from None
        except (_AttemptError, asyncio.CancelledError):
            conn.abort()
            raise
        except OSError as e:
            conn.abort()
            raise _AttemptError(f"cannot connect to {where}: {os_words(e)}") from None
        return conn

    async def _tunnel(self, conn: _Conn, origin: _Origin, ssl_ctx: ssl.SSLContext) -> None:
        authority = f"{origin.host}:{origin.port}".encode("ascii")
        request = (b"CONNECT " + authority + b" HTTP/1.1\r\nHost: " + authority + b"\r\n"
                   + origin.proxy_auth + b"\r\n")
        resp = await conn.send(request, no_body=True)
        if resp.status != 200:
            raise _AttemptError(f"proxy refused CONNECT to {origin.host}:{origin.port}: HTTP "
                                f"{resp.status} {resp.reason}".rstrip(), retry=resp.status >= 500)
        loop = self._loop
        assert loop is not None and conn.transport is not None
        conn.fut = None
        # over an https:// proxy this is TLS inside TLS (asyncio supports it since 3.11)
        transport = await loop.start_tls(conn.transport, conn, ssl_ctx, server_hostname=origin.host)
        conn.transport = transport  # type: ignore[assignment]


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


def _arcgis_error(body: bytes) -> tuple[int | None, str] | None:
    """``(code, message)`` of an ArcGIS JSON error body (``{"error": {...}}``), else None."""
    if len(body) > 65536 or body.lstrip()[:1] != b"{":
        return None
    try:
        doc = loads(body)
    except ValueError:
        return None
    err = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(err, dict):
        return None
    code = err.get("code")
    code = code if isinstance(code, int) else None
    text = str(err.get("message") or "error")
    details = [str(d) for d in err.get("details") or () if d and str(d) != text]
    if details:
        text += ": " + "; ".join(details)
    return code, f"ArcGIS error {code}: {text}" if code is not None else f"ArcGIS error: {text}"


def fetch_tiles(urls: Iterable[str], *, workers: int = 8, **engine_options: Any
                ) -> Iterator[FetchResult[str]]:
    """Fetch ``urls`` with a private engine; yield :class:`FetchResult` (``tag`` = URL) as they come.

    For scripts and one-off use; a long job keeps one :class:`TileFetchEngine` open instead.
    """
    with TileFetchEngine(workers=workers, **engine_options) as engine:
        yield from engine.fetch((url, url) for url in urls)

"""One tile's GET inside the engine: retries, redirects, token refusals, ArcGIS error bodies,
and the pooled or new connection each attempt goes out on.

Why a module of its own: :class:`cacheorch.fetch.TileFetchEngine` has two jobs, running the
event loop in the caller's thread (scheduling, collecting, cancelling) and deciding what one
URL's answer means. This is the second, as a mixin of the engine's own methods: it reads the
engine's attributes (``retry``, ``acceptor``, ``_loop``, ``_origins``...) set in
``TileFetchEngine.__init__``, and adds no call per tile.
"""
from __future__ import annotations

import asyncio
import logging
import re
import ssl
from typing import Literal
from urllib.parse import quote, urljoin, urlsplit

from cacheorch.jsonlimits import loads
from cacheorch.net import os_words, tls_words
from cacheorch.net.http1 import _AttemptError, _Conn, _decode, _Origin, _Response
from cacheorch.net.politeness import TooManyFailuresError

__all__ = ["TileGetMixin"]

#: The engine's logger, whichever module a message comes from.
log = logging.getLogger("cacheorch.fetch")

Status = Literal["ok", "missing", "failed"]

_UNSAFE_TARGET = re.compile(r"[^\x21-\x7e]")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: ArcGIS's "invalid or expired token" and "token required".
_TOKEN_CODES = frozenset({498, 499})

#: A first attempt already on the wire: (origin, request bytes, connection, response, timer).
_Begun = tuple[_Origin, bytes, "_Conn | None", "asyncio.Future[_Response] | None",
               "asyncio.TimerHandle | None"]


class TileGetMixin:
    """The per-URL methods of :class:`cacheorch.fetch.TileFetchEngine`."""

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

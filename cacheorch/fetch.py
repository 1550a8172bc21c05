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

The engine is split by responsibility: this module runs the event loop for callers
(:class:`TileFetchEngine`, :func:`fetch_tiles`, :class:`FetchResult`);
:mod:`cacheorch.net.tileget` decides what one URL's answer means (retries, redirects, tokens);
:mod:`cacheorch.net.http1` speaks HTTP/1.1 on one connection; :mod:`cacheorch.net.politeness`
holds the retry, rate and failure-window policies. Every name is importable from here.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from typing import Any, Generic, TypeVar

from cacheorch.connection import USER_AGENT, Reauth
from cacheorch.net import NetworkSettings
from cacheorch.net.acceptor import TileAcceptor
from cacheorch.net.http1 import _Conn, _header_block, _Origin, redact_text
from cacheorch.net.politeness import FailureWindow, RateLimiter, RetryPolicy, TooManyFailuresError
from cacheorch.net.tileget import Status, TileGetMixin, _Begun

__all__ = ["RetryPolicy", "FetchResult", "TileFetchEngine", "fetch_tiles", "redact_text",
           "RateLimiter", "FailureWindow", "TooManyFailuresError"]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class FetchResult(Generic[T]):
    """One URL's outcome in :func:`fetch_tiles`: same meaning as :class:`~cacheorch.interfaces.TileResult`."""

    tag: T
    status: Status
    data: bytes | None = None
    error: str | None = None


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


class TileFetchEngine(TileGetMixin):
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


def fetch_tiles(urls: Iterable[str], *, workers: int = 8, **engine_options: Any
                ) -> Iterator[FetchResult[str]]:
    """Fetch ``urls`` with a private engine; yield :class:`FetchResult` (``tag`` = URL) as they come.

    For scripts and one-off use; a long job keeps one :class:`TileFetchEngine` open instead.
    """
    with TileFetchEngine(workers=workers, **engine_options) as engine:
        yield from engine.fetch((url, url) for url in urls)

"""The threaded HTTP server and the lifecycle every ``cacheorch serve`` server shares.

A raster cache (:class:`cacheorch.serve.CacheServer`) and a vector output
(:class:`cacheorch.vector.serve.VectorServer`) answer different paths but are started, served and
stopped alike: bound on construction (``port=0`` picks a free port, so the URL is known before
serving), served in a daemon thread or in the caller's, and stopped by ending idle keep-alive
connections too, so that a stop does not wait on a client. That lives here, once.
"""
from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from cacheorch.errors import UsageError

__all__ = ["ThreadedServer", "TrackedHandler", "ServerLifecycle"]


class ThreadedServer(ThreadingHTTPServer):
    """Tracks open connections so that :meth:`ServerLifecycle.stop` can end idle keep-alive ones."""

    daemon_threads = True
    request_queue_size = 128  # a benchmark opens many connections at once

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 routes: Any = None) -> None:
        #: what the handler answers from (the raster server's route table)
        self.routes = routes
        self._connections: set[socket.socket] = set()
        self._lock = threading.Condition()
        self._closing = False
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-answer is normal under load; only real bugs get a traceback."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    def track(self, conn: socket.socket, opened: bool) -> None:
        with self._lock:
            if opened:
                self._connections.add(conn)
                if self._closing:  # accepted just as the server stopped
                    _shutdown(conn)
            else:
                self._connections.discard(conn)
                self._lock.notify_all()

    def close_connections(self, wait: float = 5.0) -> None:
        """Wake every handler blocked on an idle connection and wait for them to finish."""
        with self._lock:
            self._closing = True
            for conn in list(self._connections):
                _shutdown(conn)
            self._lock.wait_for(lambda: not self._connections, timeout=wait)


def _shutdown(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _ThreadedServer6(ThreadedServer):
    address_family = socket.AF_INET6


class TrackedHandler(BaseHTTPRequestHandler):
    """A handler whose connection the server knows of while it is open."""

    server: ThreadedServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)


class ServerLifecycle:
    """Start, serve, stop and the context manager of a server bound by :meth:`_listen`.

    Entering the context starts serving in a background thread; leaving it stops the server and
    releases what it serves (:meth:`_release`).
    """

    host: str
    port: int
    _httpd: ThreadedServer
    _thread: threading.Thread | None = None
    _serving = False
    _stopped = False

    def _listen(self, host: str, port: int, handler: type[BaseHTTPRequestHandler],
                routes: Any = None) -> None:
        """Bind ``host:port`` (an IPv6 address on an IPv6 socket); a bind failure is one line."""
        server_cls = _ThreadedServer6 if ":" in host else ThreadedServer
        try:
            self._httpd = server_cls((host, port), handler, routes)
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.host, self.port = host, self._httpd.server_address[1]

    def _release(self) -> None:
        """Close what the server serves; called once, by :meth:`stop`."""

    @property
    def root_url(self) -> str:
        """``http://host:port`` as a client on this machine reaches it."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        host = "[::1]" if host == "::" else (f"[{host}]" if ":" in host else host)
        return f"http://{host}:{self.port}"

    def start(self) -> Self:
        """Serve in a daemon thread and return at once (idempotent)."""
        if self._stopped:
            raise UsageError(f"the server was stopped; make a new {type(self).__name__}")
        if self._thread is None:
            self._serving = True
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                            name=f"cacheorch-serve-{self.port}", daemon=True)
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve until :meth:`stop` (or Ctrl-C), in this thread or by waiting on the started one."""
        if self._stopped:
            raise UsageError(f"the server was stopped; make a new {type(self).__name__}")
        if self._thread is not None:
            while self._thread.is_alive():
                self._thread.join(0.5)
            return
        self._serving = True
        self._httpd.serve_forever(poll_interval=0.2)

    def serve_until_interrupted(self, echo: Callable[[str], Any]) -> None:
        """The ``serve`` command's last step: say how to stop, then serve until Ctrl-C."""
        echo("Press Ctrl-C to stop.")
        try:
            self.serve_forever()
        except KeyboardInterrupt:
            echo("Stopped.")

    def stop(self) -> None:
        """Stop serving, end open connections, release what is served. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        if self._serving:
            self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd.close_connections()
        if self._thread is not None:
            self._thread.join(5.0)
        self._release()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Loopback network oddities for tests: a throwaway CA, a TLS proxy front, a misbehaving raw server.

- :func:`throwaway_ca` makes a CA and a certificate it signs for 127.0.0.1 (openssl CLI), the way
  a corporate CA signs an intranet server's, so a client trusts it only when given the CA.
- :class:`TLSFront` terminates TLS and pipes the bytes to a plain server: put it in front of
  :class:`~_tileserver.ProxyServer` and it is an ``https://`` proxy (TLS to the proxy itself).
- :class:`RawServer` answers each connection with scripted bytes (garbage, a redirect to
  ``ftp:``, nothing at all), which no well-behaved HTTP server library would send.
"""
from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from _tileserver import _pipe

__all__ = ["CA", "throwaway_ca", "TLSFront", "RawServer"]


@dataclass(frozen=True)
class CA:
    """A CA certificate, and a server certificate and key it signed for 127.0.0.1."""

    cert: Path
    server_cert: Path
    server_key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.server_cert, self.server_key)
        return ctx


def throwaway_ca(directory: Path) -> CA | None:
    """A new CA and a 127.0.0.1 certificate signed by it; None when openssl is missing."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    d = directory

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        "/CN=cacheorch test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-keyout", "ca.key", "-out", "ca.pem")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                               "extendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "server.pem")
    return CA(d / "ca.pem", d / "server.pem", d / "server.key")


class _Listener:
    """Accepts on 127.0.0.1 in a daemon thread; ``handle(sock)`` runs per connection."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self.port = self._sock.getsockname()[1]
        #: Connections accepted.
        self.connections = 0

    def handle(self, sock: socket.socket) -> None:
        raise NotImplementedError

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            threading.Thread(target=self._guarded, args=(sock,), daemon=True).start()

    def _guarded(self, sock: socket.socket) -> None:
        try:
            self.handle(sock)
        except (OSError, ssl.SSLError):
            pass
        finally:
            sock.close()

    def __enter__(self) -> _Listener:
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._sock.close()


class TLSFront(_Listener):
    """TLS on the outside, bytes piped to ``127.0.0.1:target_port`` inside."""

    def __init__(self, target_port: int, context: ssl.SSLContext) -> None:
        super().__init__()
        self.target_port, self.context = target_port, context

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def handle(self, sock: socket.socket) -> None:
        sock.settimeout(10)
        tls = self.context.wrap_socket(sock, server_side=True)
        _pipe(tls, socket.create_connection(("127.0.0.1", self.target_port), timeout=10))


class RawServer(_Listener):
    """Reads a request head, then sends ``reply(head)`` (bytes; None: send nothing, hold on).

    :param greet: sent as soon as a connection is accepted, before reading anything, then the
        connection is closed (a server speaking first: plain HTTP to a TLS client).
    """

    def __init__(self, reply: Callable[[bytes], bytes | None] = lambda head: None,
                 hold: float = 5.0, greet: bytes | None = None) -> None:
        super().__init__()
        self.reply, self.hold, self.greet = reply, hold, greet
        #: Request heads received.
        self.heads: list[bytes] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def handle(self, sock: socket.socket) -> None:
        sock.settimeout(10)
        if self.greet is not None:
            sock.sendall(self.greet)
            return
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            if not chunk:
                return
            head += chunk
        self.heads.append(head)
        answer = self.reply(head)
        if answer is None:
            self._stop.wait(self.hold)
            return
        sock.sendall(answer)

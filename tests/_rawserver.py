"""A misbehaving HTTP server on a raw socket: it sends exactly the bytes a test scripts.

``http.server`` cannot send a negative Content-Length, two that disagree, a body shorter than it
announced or an endless body; this one answers every request on a connection with the bytes
``respond(path)`` returns (or streams them from an iterator), then closes unless told to keep the
connection open. Binds 127.0.0.1 on port 0.

    with RawServer(lambda path: b"HTTP/1.1 200 OK\\r\\nContent-Length: -5\\r\\n\\r\\nhello") as srv:
        ...GET srv.url + "/tile/0/0/0"...
"""
from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterable

__all__ = ["RawServer", "response"]

Answer = bytes | Iterable[bytes]


def response(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    """``HTTP/1.1 status``, the header lines as given (nothing added), a blank line, the body."""
    head = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 {status}\r\n{head}\r\n".encode("latin-1") + body


class RawServer:
    """Answers each request with ``respond(path)``; counts requests and bytes sent per path.

    :param keep_open: keep the connection open after an answer (for keep-alive cases);
        otherwise it is closed, which ends a close-delimited or short body.
    """

    def __init__(self, respond: Callable[[str], Answer], *, keep_open: bool = False) -> None:
        self.respond = respond
        self.keep_open = keep_open
        self.requests: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.05)  # accept() wakes up to see the stop flag
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(10)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode("latin-1").split("?", 1)[0]
                self.requests[path] += 1
                answer = self.respond(path)
                for part in ([answer] if isinstance(answer, bytes) else answer):
                    conn.sendall(part)
                    self.sent[path] += len(part)
                if not self.keep_open:
                    return
        except OSError:  # the client hung up: part of the tests
            return
        finally:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

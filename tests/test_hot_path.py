"""Per-tile hot path: the token the tile URL maker asks for on every tile, and the writer
thread that takes every tile off the fetching thread."""
from __future__ import annotations

import time

import pytest

from cacheorch.connection import Connection
from cacheorch.errors import CacheorchError
from cacheorch.writer import BundleWriterThread


class _DownIssuer:
    secrets: list[str] = []

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, service_url: str, timeout: float = 30.0):  # noqa: ANN201
        self.calls += 1
        raise CacheorchError("token service unreachable")


def test_a_failed_ahead_renewal_is_not_retried_on_every_tile() -> None:
    issuer = _DownIssuer()
    conn = Connection(token="t0", token_provider=issuer,  # type: ignore[arg-type]
                      token_service="https://h/arcgis/rest/services/S/MapServer")
    conn.token_expires = time.time() + 30  # inside the renew-ahead margin
    assert [conn.current_token() for _ in range(1000)] == ["t0"] * 1000
    assert issuer.calls == 1
    conn._ahead_retry_at = 0.0  # the back-off has passed: one more attempt
    assert conn.current_token() == "t0" and issuer.calls == 2


# -- the writer thread: its errors reach the job's thread, and nothing half-written stays ------

class _Sink:
    def __init__(self, log: list, key, fail_at: int | None) -> None:
        self.log, self.key, self.fail_at, self.n = log, key, fail_at, 0

    def add(self, row: int, col: int, data: bytes) -> None:
        self.n += 1
        if self.fail_at is not None and self.n >= self.fail_at:
            raise OSError(28, "No space left on device")

    def close(self) -> None:
        self.log.append(("close", self.key))

    def abort(self) -> None:
        self.log.append(("abort", self.key))


class _Session:
    def __init__(self, fail_key=None, fail_at: int | None = None) -> None:
        self.log: list = []
        self.fail_key, self.fail_at = fail_key, fail_at

    def open_bundle(self, *key):  # noqa: ANN002, ANN201
        return _Sink(self.log, key, self.fail_at if key == self.fail_key else None)


def test_writer_thread_reports_bundles_in_order_after_they_are_closed() -> None:
    session, done = _Session(), []
    writer = BundleWriterThread(session, lambda key, payload: done.append((key, payload)))
    for b in range(3):
        for i in range(100):
            writer.add((1, 0, b), 0, i, b"x")
        writer.finish((1, 0, b), f"p{b}")
    writer.finish((1, 0, 9), "empty")  # a bundle with no tile: reported, never opened
    writer.close()
    assert done == [((1, 0, 0), "p0"), ((1, 0, 1), "p1"), ((1, 0, 2), "p2"), ((1, 0, 9), "empty")]
    assert session.log == [("close", (1, 0, b)) for b in range(3)]


def test_writer_thread_error_reaches_the_job_and_leaves_no_bundle_half_written() -> None:
    session, done = _Session(fail_key=(1, 0, 1), fail_at=50), []
    writer = BundleWriterThread(session, lambda key, payload: done.append(key), max_queued=32)
    for b in range(4):
        for i in range(200):
            writer.add((1, 0, b), 0, i, b"x")
        writer.finish((1, 0, b), None)
    with pytest.raises(OSError, match="No space left"):
        writer.close()
    writer.abort()  # as the runner does on the way out: must not raise again
    assert done == [(1, 0, 0)]  # the failed bundle and those after it are never checkpointed
    assert ("close", (1, 0, 1)) not in session.log and ("abort", (1, 0, 1)) in session.log

"""A thread that writes tiles into bundles and finishes them, so disk writes overlap with fetching.

The fetcher runs its event loop in the job's thread; a file write there stops fetching for as long
as the kernel copies the bytes (a third of a job's time in the benchmark). Writes release the GIL,
so on their own thread they run beside the fetching on the other core. The queue is bounded, so a
slow disk slows the fetching instead of filling memory.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from cacheorch.interfaces import BundleSink, ExportSession

__all__ = ["BundleWriterThread"]

BundleKey = tuple[int, int, int]
_STOP = object()
#: Tiles handed to the writer thread at once.
_BATCH = 32


class BundleWriterThread:
    """Adds tiles to bundle sinks and closes finished bundles, in order, on one thread.

    :param on_finished: called on the writer thread after a bundle's bytes are durable (the
        catalog checkpoint), with the bundle key and the payload given to :meth:`finish`.
    """

    def __init__(self, session: ExportSession,
                 on_finished: Callable[[BundleKey, Any], None], max_queued: int = 512) -> None:
        self._session = session
        self._on_finished = on_finished
        self._queue: queue.Queue[Any] = queue.Queue(max(1, max_queued // _BATCH))
        self._batch: list[tuple[BundleKey, int | None, int | None, Any]] = []
        self._sinks: dict[BundleKey, BundleSink] = {}
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="cacheorch-writer", daemon=True)
        self._thread.start()

    # -- the job's thread ---------------------------------------------------------------------

    def add(self, key: BundleKey, row: int, col: int, data: bytes) -> None:
        batch = self._batch
        batch.append((key, row, col, data))
        if len(batch) >= _BATCH:
            self._flush()

    def finish(self, key: BundleKey, payload: Any) -> None:
        """Close the bundle (if it got any tile), then report it through ``on_finished``."""
        self._batch.append((key, None, None, payload))
        self._flush()

    def _flush(self) -> None:
        """Hand the batch over: one queue operation (and one wake-up) per batch, not per tile."""
        if self._batch:
            batch, self._batch = self._batch, []
            self._put(batch)

    def check(self) -> None:
        """Raise the writer's error, if it had one, in the job's thread."""
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Wait until everything queued is written and reported; raise the writer's error."""
        self._flush()
        self._put(_STOP)
        self._thread.join()
        self.check()

    def abort(self) -> None:
        """Stop, dropping queued work and every unfinished bundle (nothing half-written remains).

        Never raises the writer's error: it runs while another exception (the one that stopped
        the job, or the writer's own, raised by :meth:`close`) is on its way out.
        """
        if self._error is None:
            self._error = _Aborted()
        while self._thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=0.5)
                break
            except queue.Full:
                continue
        self._thread.join()

    def _put(self, item: Any) -> None:
        while True:
            if not self._thread.is_alive():
                self.check()
                return
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    # -- the writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        get = self._queue.get
        sinks = self._sinks
        while True:
            item = get()
            if item is _STOP:
                break
            if self._error is not None:
                continue  # drain without working, so the job's thread never blocks on a full queue
            try:
                for key, row, col, data in item:
                    if row is not None:
                        sink = sinks.get(key)
                        if sink is None:
                            sink = sinks[key] = self._session.open_bundle(*key)
                        sink.add(row, col, data)
                    else:
                        sink = sinks.pop(key, None)
                        if sink is not None:
                            sink.close()  # durable before anyone hears of it
                        self._on_finished(key, data)
            except BaseException as exc:  # handed to the job's thread by check()/close()
                self._error = exc
        for sink in sinks.values():
            try:
                sink.abort()
            except Exception:
                pass
        sinks.clear()


class _Aborted(Exception):
    """The job stopped the writer; not an error of the writer's own."""

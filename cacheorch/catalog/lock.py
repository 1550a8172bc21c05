"""An exclusive, blocking lock on a side file, so two processes never migrate one catalog at once.

It locks ``<catalog>.lock`` and never the catalog itself: closing any descriptor of a file drops
the POSIX locks SQLite holds on it, so only SQLite may open the catalog file.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cacheorch.errors import CatalogError

__all__ = ["exclusive_lock", "lock_path"]


def lock_path(catalog: Path) -> Path:
    """Where the lock of ``catalog`` lives (next to it, so every process agrees)."""
    return catalog.with_name(catalog.name + ".lock")


@contextmanager
def exclusive_lock(catalog: Path, timeout: float = 300.0) -> Iterator[None]:
    """Hold the catalog's lock file for the duration of the block.

    :param timeout: seconds to wait for another process (a long migration) before giving up.
    :raises CatalogError: the lock could not be taken in time or the file cannot be created.
    """
    path = lock_path(catalog)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise CatalogError(f"cannot create the catalog lock {path}: {exc.strerror}") from exc
    try:
        _acquire(fd, path, timeout)
        try:
            yield
        finally:
            _release(fd)
    finally:
        os.close(fd)


if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _release(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _release(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _acquire(fd: int, path: Path, timeout: float) -> None:
    # Polling (rather than a blocking flock) lets the wait end with a clear error.
    deadline = time.monotonic() + timeout
    delay = 0.01
    while not _try_lock(fd):
        if time.monotonic() >= deadline:
            raise CatalogError(
                f"another cacheorch process has held {path} for over {timeout:.0f} s "
                "(a migration still running?); try again when it has finished")
        time.sleep(delay)
        delay = min(delay * 2, 0.25)

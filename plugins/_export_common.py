"""What the tpk, mbtiles, gpkg and exploded exporters share: the skip_blank option and bundle checks.

Each session counts the tiles it left out (``skipped_blank``) and the tiles it stored once because
an identical one was already stored (``duplicates``), so the job summary can report both.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TypeVar

from cacheorch.errors import ExportError
from cacheorch.formats.blank import BlankCounter
from cacheorch.formats.bundle import bundle_name, level_folder
from cacheorch.interfaces import BundleSink
from cacheorch.tiling import BUNDLE_SIZE

__all__ = ["BlankOptions", "BundleGuard", "SkippingSink"]

T = TypeVar("T")


@dataclass
class BlankOptions:
    """Options of the exporters that can leave blank tiles out."""

    #: Leave out PNG tiles of a single colour (fully transparent, open water); JPEG is kept.
    skip_blank: bool = False


class BundleGuard:
    """Refuses what a session must never do: a bundle off the 128 grid, of a level not exported,
    opened twice at once, or opened after commit."""

    def __init__(self, levels: Collection[int], output: object) -> None:
        self.levels = frozenset(levels)
        self.output = output
        self.committed = False
        self._open: set[tuple[int, int, int]] = set()
        self._lock = threading.Lock()

    def open(self, level: int, bundle_row: int, bundle_col: int, make: Callable[[], T]) -> T:
        """Check, mark the bundle open, and build its sink with ``make`` (unmarked if it fails)."""
        if self.committed:
            raise ExportError(f"{self.output}: the export was already committed")
        if bundle_row % BUNDLE_SIZE or bundle_col % BUNDLE_SIZE or bundle_row < 0 or bundle_col < 0:
            raise ExportError(f"bundle origin ({bundle_row}, {bundle_col}) is not a multiple of "
                              f"{BUNDLE_SIZE}")
        if level not in self.levels:
            raise ExportError(f"level {level} is not one of the levels being exported")
        key = (level, bundle_row, bundle_col)
        with self._lock:
            if key in self._open:
                raise ExportError(f"bundle {level_folder(level)}/{bundle_name(bundle_row, bundle_col)}"
                                  f" is already being written")
            self._open.add(key)
        try:
            return make()
        except BaseException:
            self.release(key)
            raise

    def release(self, key: tuple[int, int, int]) -> None:
        with self._lock:
            self._open.discard(key)

    def check_idle(self) -> None:
        """Before commit: every bundle closed or aborted."""
        with self._lock:
            if self._open:
                raise ExportError(f"{len(self._open)} bundle(s) are still being written; close "
                                  f"or abort them before committing")


class SkippingSink(BundleSink):
    """Wraps a sink, leaving out the tiles ``blank`` says to skip."""

    def __init__(self, inner: BundleSink, blank: BlankCounter) -> None:
        self.inner = inner
        self.blank = blank

    def add(self, row: int, col: int, data: bytes) -> None:
        if not self.blank.skip(data):
            self.inner.add(row, col, data)

    def close(self) -> int:
        return self.inner.close()

    def abort(self) -> None:
        self.inner.abort()

"""Staging for the SQLite outputs (mbtiles, gpkg): one database, one writer, renamed into place.

Peers corrupted SQLite outputs by writing them from several processes; here exactly one
connection writes, and only the runner's writer thread (through the sinks) and the job's thread
at commit ever use it, never at once. The database is built as ``<output>.partial/tiles.sqlite``
beside a marker naming the exporter and grid, so a resume never mixes two services.

Resume: a ``cacheorch_bundles`` table inside the staging database lists the bundles whose tiles
are all in (recorded in the same transaction as the bundle's last tile), and it is what
:meth:`has_bundle` answers from. A bundle begun but not recorded is cleared when it is opened
again. The table is dropped at commit, so outputs carry no trace of it.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Any, Protocol

from cacheorch.errors import ExportError, OutputExistsError
from cacheorch.formats.blank import BlankCounter
from cacheorch.interfaces import BundleSink, ExportRequest, ExportSession, staging_path
from cacheorch.plugins._export_common import BundleGuard
from cacheorch.plugins._staging import MARKER, atomic_write, check_marker, publish_file
from cacheorch.tiling import BUNDLE_SIZE

__all__ = ["TileStore", "SqliteStagingSession", "STAGED_DB"]

#: The database's name inside the staging folder.
STAGED_DB = "tiles.sqlite"
_BOOKKEEPING = ("CREATE TABLE IF NOT EXISTS cacheorch_bundles (level INTEGER NOT NULL, bundle_row "
                "INTEGER NOT NULL, bundle_col INTEGER NOT NULL, tiles INTEGER NOT NULL, "
                "PRIMARY KEY (level, bundle_row, bundle_col))")


class TileStore(Protocol):
    """How one SQLite format stores tiles (see :mod:`cacheorch.formats.mbtiles` and ``gpkg``)."""

    duplicates: int

    def create(self, conn: sqlite3.Connection) -> None: ...

    def put(self, conn: sqlite3.Connection, level: int, row: int, col: int, data: bytes) -> None: ...

    def clear(self, conn: sqlite3.Connection, level: int, bundle_row: int, bundle_col: int,
              size: int) -> None: ...


class _SqliteSink(BundleSink):
    def __init__(self, session: SqliteStagingSession, key: tuple[int, int, int]) -> None:
        self.session = session
        self.key = key
        self.count = 0
        self.bytes = 0
        self._done = False

    def add(self, row: int, col: int, data: bytes) -> None:
        level, brow, bcol = self.key
        if not (brow <= row < brow + BUNDLE_SIZE and bcol <= col < bcol + BUNDLE_SIZE):
            raise ExportError(f"tile row {row} col {col} is outside the bundle at row {brow} col {bcol}")
        if not data:
            raise ExportError(f"tile row {row} col {col} is empty; not stored")
        if self.session.blank.skip(data):
            return
        self.session.put(level, row, col, data)
        self.count += 1
        self.bytes += len(data)

    def close(self) -> int:
        if self._done:
            raise ExportError("bundle already closed")
        try:
            self.session.finish_bundle(self.key, self.count)
        finally:
            self._done = True
            self.session.guard.release(self.key)
        return self.bytes

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self.session.clear_bundle(self.key)
        finally:
            self.session.guard.release(self.key)


class SqliteStagingSession(ExportSession):
    """Builds one SQLite output in ``<output>.partial/`` (subclasses write the metadata)."""

    exporter_name = ""

    def __init__(self, request: ExportRequest, store: TileStore, *, skip_blank: bool = False) -> None:
        if not request.levels:
            raise ExportError("nothing to export: no levels selected")
        self.request = request
        self.output = Path(request.output)
        self.staging = staging_path(self.output)
        self.store = store
        self.blank = BlankCounter(skip_blank)
        self.guard = BundleGuard({lod.level for lod in request.levels}, self.output)
        self._lock = threading.RLock()
        self._in_tx = False
        if request.mode == "create" and os.path.lexists(self.output):
            raise OutputExistsError.at(self.output)
        self._conn = self._prepare()
        self._done = {(lv, r, c) for lv, r, c in
                      self._conn.execute("SELECT level, bundle_row, bundle_col FROM cacheorch_bundles")}

    # -- counters for the job summary -----------------------------------------------------------

    @property
    def skipped_blank(self) -> int:
        """Tiles left out because they were blank (``skip_blank``)."""
        return self.blank.skipped

    @property
    def duplicates(self) -> int:
        """Tiles whose bytes were already stored, so they were stored once."""
        return self.store.duplicates

    # -- staging --------------------------------------------------------------------------------

    @property
    def db_path(self) -> Path:
        return self.staging / STAGED_DB

    def _marker(self) -> dict[str, str]:
        return {"exporter": self.exporter_name, "scheme": self.request.service.scheme.fingerprint()}

    def _prepare(self) -> sqlite3.Connection:
        marker = self.staging / MARKER
        try:
            check_marker(marker, self._marker())
            self.staging.mkdir(parents=True, exist_ok=True)
            if not marker.is_file():
                atomic_write(marker, json.dumps(self._marker()).encode())
            conn = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            self.store.create(conn)
            conn.execute(_BOOKKEEPING)
            return conn
        except ExportError:
            raise
        except (OSError, ValueError, sqlite3.Error) as exc:
            raise ExportError(f"cannot prepare staging database in {self.staging}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None

    def _begin(self) -> None:
        if not self._in_tx:
            self._conn.execute("BEGIN")
            self._in_tx = True

    def _commit_tx(self) -> None:
        if self._in_tx:
            self._conn.execute("COMMIT")
            self._in_tx = False

    def _sql(self, action: str, fn: Any, *args: Any) -> Any:
        with self._lock:
            try:
                return fn(*args)
            except sqlite3.Error as exc:
                raise ExportError(f"cannot {action} in {self.db_path}: {exc}") from None

    # -- what sinks call (the writer thread) ------------------------------------------------------

    def put(self, level: int, row: int, col: int, data: bytes) -> None:
        def run() -> None:
            self._begin()
            self.store.put(self._conn, level, row, col, data)
        self._sql("store a tile", run)

    def finish_bundle(self, key: tuple[int, int, int], count: int) -> None:
        """Record the bundle as whole and make it durable (with every tile written before it)."""
        def run() -> None:
            self._begin()
            self._conn.execute("INSERT OR REPLACE INTO cacheorch_bundles VALUES (?, ?, ?, ?)",
                               (*key, count))
            self._commit_tx()
            self._done.add(key)
        self._sql("finish a bundle", run)

    def clear_bundle(self, key: tuple[int, int, int]) -> None:
        def run() -> None:
            self._begin()
            self.store.clear(self._conn, *key, BUNDLE_SIZE)
            self._conn.execute("DELETE FROM cacheorch_bundles WHERE level = ? AND bundle_row = ? "
                               "AND bundle_col = ?", key)
            self._done.discard(key)
        self._sql("clear a bundle", run)

    # -- ExportSession --------------------------------------------------------------------------

    def has_bundle(self, level: int, bundle_row: int, bundle_col: int) -> bool:
        with self._lock:
            return (level, bundle_row, bundle_col) in self._done

    def open_bundle(self, level: int, bundle_row: int, bundle_col: int) -> BundleSink:
        key = (level, bundle_row, bundle_col)

        def make() -> BundleSink:
            self.clear_bundle(key)  # a bundle redone starts clean
            return _SqliteSink(self, key)
        return self.guard.open(level, bundle_row, bundle_col, make)

    def commit(self) -> Path:
        self.guard.check_idle()
        if self.guard.committed:
            raise ExportError(f"{self.output}: already committed")
        if self.request.mode == "create" and os.path.lexists(self.output):
            raise OutputExistsError.at(self.output)

        def finalise() -> None:
            self._begin()
            self._finish_output(self._conn)
            self._conn.execute("DROP TABLE IF EXISTS cacheorch_bundles")
            self._commit_tx()
            self._conn.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
            self._conn.close()
        self._sql("finish the output", finalise)
        try:
            with open(self.db_path, "rb+") as f:
                os.fsync(f.fileno())
            self._publish()
        except OSError as exc:
            raise ExportError(f"cannot write {self.output}: {exc.strerror or exc}") from None
        self.guard.committed = True
        shutil.rmtree(self.staging, ignore_errors=True)
        return self.output

    def _publish(self) -> None:
        publish_file(self.db_path, self.output, self.request.mode, what="finishing")

    def discard(self) -> None:
        with self._lock:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
        shutil.rmtree(self.staging, ignore_errors=True)

    # -- for subclasses -------------------------------------------------------------------------

    def _finish_output(self, conn: sqlite3.Connection) -> None:
        raise NotImplementedError

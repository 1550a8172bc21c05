"""What the MBTiles and GeoPackage formats share: reading tiles from SQLite by (level, row, col).

Both keep tiles in a table of (zoom_level, tile_column, tile_row, tile_data); they differ in the
table's name and in which way rows count (MBTiles from the bottom, GeoPackage from the top). A
reader answers ArcGIS (level, row, col) either way, so ``serve``, ``verify`` and the ``cache`` tile
source read them like any bundle cache. Each thread gets its own read-only connection: an SQLite
connection must not be shared by threads that query at once.
"""
from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from cacheorch.errors import FormatError
from cacheorch.tiling import BUNDLE_SIZE

__all__ = ["SQLITE_MAGIC", "is_sqlite", "table_names", "SqliteTiles", "SqliteBundle",
           "connect_readonly"]

#: The first 16 bytes of every SQLite 3 database file.
SQLITE_MAGIC = b"SQLite format 3\x00"


def is_sqlite(path: str | Path) -> bool:
    """Whether ``path`` is a file that starts like an SQLite database."""
    try:
        with open(path, "rb") as f:
            return f.read(16) == SQLITE_MAGIC
    except OSError:
        return False


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection (never creates a file, never takes a write lock)."""
    try:
        conn = sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=ro", uri=True,
                               check_same_thread=False)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise FormatError(f"{path}: cannot read as SQLite ({exc})") from None
    return conn


def table_names(conn: sqlite3.Connection) -> set[str]:
    """Tables and views of the database, lower-cased."""
    rows = conn.execute("SELECT lower(name) FROM sqlite_master WHERE type IN ('table', 'view')")
    return {row[0] for row in rows}


#: (level, row) → the stored tile_row (and back: the mapping is its own inverse).
RowMap = Callable[[int, int], int]


class SqliteBundle:
    """The tiles of one 128×128 block, read with one range query (the ``BundleView`` methods)."""

    def __init__(self, tiles: SqliteTiles, level: int, bundle_row: int, bundle_col: int) -> None:
        self._tiles = tiles
        self.key = (level, bundle_row, bundle_col)

    def get(self, row: int, col: int) -> bytes | None:
        return self._tiles.get(self.key[0], row, col)

    def tiles(self) -> Iterator[tuple[int, int, bytes]]:
        level, brow, bcol = self.key
        flip = self._tiles.row_map
        rows = sorted((flip(level, brow), flip(level, brow + BUNDLE_SIZE - 1)))
        query = (f"SELECT tile_row, tile_column, tile_data FROM {self._tiles.quoted} WHERE "
                 "zoom_level = ? AND tile_column BETWEEN ? AND ? AND tile_row BETWEEN ? AND ?")
        found = [(flip(level, r), c, bytes(d)) for r, c, d in self._tiles.query(
            query, (level, bcol, bcol + BUNDLE_SIZE - 1, rows[0], rows[1])) if d]
        yield from sorted(found, key=lambda item: (item[0], item[1]))

    def close(self) -> None:
        return None


class SqliteTiles:
    """A tiles table open for reading from many threads."""

    def __init__(self, path: Path, table: str, row_map: RowMap) -> None:
        self.path = Path(path)
        self.table = table
        self.quoted = '"' + table.replace('"', '""') + '"'
        self.row_map = row_map
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            with self._lock:
                if self._closed:
                    raise FormatError(f"{self.path}: the cache is closed")
                conn = connect_readonly(self.path)
                self._all.append(conn)
            self._local.conn = conn
        return conn

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple]:
        try:
            return self.connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise FormatError(f"{self.path}: {exc}") from None

    def get(self, level: int, row: int, col: int) -> bytes | None:
        rows = self.query(f"SELECT tile_data FROM {self.quoted} WHERE zoom_level = ? AND "
                          "tile_column = ? AND tile_row = ?", (level, col, self.row_map(level, row)))
        return bytes(rows[0][0]) if rows and rows[0][0] else None

    def levels(self) -> set[int]:
        return {row[0] for row in self.query(f"SELECT DISTINCT zoom_level FROM {self.quoted}")}

    def bundle_keys(self) -> list[tuple[int, int, int]]:
        keys: set[tuple[int, int, int]] = set()
        for level in self.levels():
            for stored_row, bcol in self.query(
                    f"SELECT DISTINCT tile_row, tile_column / {BUNDLE_SIZE} FROM {self.quoted} "
                    "WHERE zoom_level = ?", (level,)):
                row = self.row_map(level, stored_row)
                keys.add((level, row // BUNDLE_SIZE * BUNDLE_SIZE, bcol * BUNDLE_SIZE))
        return sorted(keys)

    def open_bundle(self, level: int, bundle_row: int, bundle_col: int) -> SqliteBundle:
        return SqliteBundle(self, level, bundle_row, bundle_col)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for conn in self._all:
                conn.close()
            self._all.clear()

"""The catalog's SQLAlchemy engine: SQLite pragmas for sharing one file between processes.

WAL lets readers run while one process writes; ``busy_timeout`` makes a second writer wait
instead of failing; ``BEGIN IMMEDIATE`` takes the write lock up front, because a deferred
transaction that reads first and writes later cannot wait for the lock once another process has
committed (SQLite answers ``SQLITE_BUSY`` at once in that case: "database is locked").
"""
from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL

__all__ = ["make_engine", "make_read_only_engine", "writer", "sqlite_url", "OnConnect",
           "BUSY_TIMEOUT_MS"]

#: How long a writer waits for another process's transaction before giving up.
BUSY_TIMEOUT_MS = 30_000
#: Called with each new raw ``sqlite3.Connection`` (the ``cacheorch_catalog_connect`` hook).
OnConnect = Callable[[sqlite3.Connection], Any]
#: Execution option read by the ``begin`` listener: the word after ``BEGIN``.
_BEGIN_OPTION = "cacheorch_begin"


def sqlite_url(path: str | os.PathLike[str]) -> URL:
    """A ``sqlite+pysqlite`` URL for a file (a URL object: odd characters need no quoting)."""
    return URL.create("sqlite+pysqlite", database=str(Path(path)))


def make_engine(path: str | os.PathLike[str], *, on_connect: OnConnect | None = None) -> Engine:
    """An engine for the catalog file at ``path`` (created on first connection if absent).

    Transactions are begun by SQLAlchemy, not by the sqlite3 module, so that DDL is
    transactional and writes can say ``BEGIN IMMEDIATE`` (see :func:`writer`).
    """
    engine = create_engine(sqlite_url(path), connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself, below
        cur = dbapi_connection.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # Switching to WAL needs an exclusive lock; once a file is WAL the setting persists,
            # so only ask for it when the file is not WAL yet.
            if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA foreign_keys = ON")
            cur.execute("PRAGMA synchronous = NORMAL")
        finally:
            cur.close()
        if on_connect is not None:
            on_connect(dbapi_connection)

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def make_read_only_engine(path: Path) -> Engine:
    """An engine that only reads the catalog at ``path``, for a file this process cannot write
    (a read-only mount, another user's catalog): ``mode=ro``, or where SQLite cannot even create
    the WAL's shared-memory file beside it, ``immutable=1`` (then nobody can be writing it)."""
    from urllib.parse import quote
    uri = "file:" + quote(str(path.absolute()))

    def connect() -> sqlite3.Connection:
        try:
            con = sqlite3.connect(uri + "?mode=ro", uri=True, check_same_thread=False)
            con.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.OperationalError:
            con = sqlite3.connect(uri + "?mode=ro&immutable=1", uri=True, check_same_thread=False)
        con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return con

    return create_engine("sqlite+pysqlite://", creator=connect)


def writer(engine: Engine) -> Engine:
    """The same engine (same pool) whose transactions begin with ``BEGIN IMMEDIATE``.

    Use it for every transaction that writes, so concurrent writers queue on ``busy_timeout``.
    """
    return engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})

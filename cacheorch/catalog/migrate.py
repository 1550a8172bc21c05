"""Alembic, run from code: bring a catalog to the head revision when it is opened.

No ``alembic.ini`` ships with cacheorch: the config is built here and points at the migrations
inside the installed package, found with ``importlib.resources`` (the ``package:dir`` form breaks
in editable installs). The app's connection reaches ``env.py`` through
``config.attributes["connection"]`` so the whole upgrade is one ``BEGIN IMMEDIATE`` transaction.
"""
from __future__ import annotations

import logging
import os
import sqlite3
from datetime import datetime, timezone
from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect
from sqlalchemy.exc import DBAPIError

from cacheorch.catalog.engine import OnConnect, make_engine, sqlite_url, writer
from cacheorch.catalog.lock import exclusive_lock
from cacheorch.catalog.models import Base
from cacheorch.errors import CatalogError, CatalogTooNewError

__all__ = [
    "alembic_config", "head", "current", "upgrade", "downgrade", "migrate_engine", "backup",
]

log = logging.getLogger("cacheorch.catalog")


def _script_location(script_location: str | None) -> str:
    return script_location or str(files("cacheorch.migrations"))


def alembic_config(path: str | os.PathLike[str] | None = None, *,
                   script_location: str | None = None) -> Config:
    """An Alembic config for the catalog at ``path`` (for ``alembic`` commands run from code).

    :param script_location: another migrations directory (tests use a copy with extra revisions).
    """
    cfg = Config()
    cfg.set_main_option("script_location", _script_location(script_location))
    if path is not None:
        url = sqlite_url(Path(path)).render_as_string(hide_password=False)
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # configparser escapes
    return cfg


def head(*, script_location: str | None = None) -> str:
    """The newest revision this cacheorch knows."""
    script = ScriptDirectory(_script_location(script_location))
    heads = script.get_heads()
    if len(heads) != 1:
        raise CatalogError(f"the catalog migrations have {len(heads)} heads; expected one")
    return heads[0]


def current(path: str | os.PathLike[str], *, on_connect: OnConnect | None = None) -> str | None:
    """The revision of the catalog at ``path``; None if it does not exist or was never migrated."""
    path = Path(path)
    if not path.exists():
        return None
    engine = make_engine(path, on_connect=on_connect)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except DBAPIError as exc:
        raise CatalogError(f"cannot read catalog {path}: {exc.orig}") from exc
    finally:
        engine.dispose()


def upgrade(path: str | os.PathLike[str], *, on_connect: OnConnect | None = None,
            script_location: str | None = None) -> tuple[str | None, str]:
    """Migrate the catalog at ``path`` (creating it if absent) to head.

    :returns: the revision before and after (equal if nothing had to be done).
    :raises CatalogTooNewError: a newer cacheorch migrated this catalog.
    """
    path = Path(path).absolute()
    engine = make_engine(path, on_connect=on_connect)
    try:
        return migrate_engine(engine, path, script_location=script_location)
    finally:
        engine.dispose()


def downgrade(path: str | os.PathLike[str], revision: str = "base", *,
              script_location: str | None = None) -> None:
    """Migrate the catalog at ``path`` down to ``revision`` (``base`` drops every table)."""
    path = Path(path).absolute()
    engine = make_engine(path)
    cfg = alembic_config(path, script_location=script_location)
    try:
        with exclusive_lock(path), writer(engine).begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, revision)
    except DBAPIError as exc:
        raise CatalogError(f"cannot downgrade catalog {path}: {exc.orig}") from exc
    finally:
        engine.dispose()


def migrate_engine(engine: Engine, path: Path, *,
                   script_location: str | None = None) -> tuple[str | None, str]:
    """Bring the catalog behind ``engine`` to head; what :meth:`Catalog.open` runs.

    Holds the catalog's lock file throughout, so two processes opening a brand-new catalog
    cannot both create its tables. An existing catalog at an older revision is copied to a
    ``.bak`` file first, since a migration may rewrite whole tables.
    """
    cfg = alembic_config(path, script_location=script_location)
    script = ScriptDirectory.from_config(cfg)
    target = head(script_location=script_location)
    known = {rev.revision for rev in script.walk_revisions()}
    try:
        with exclusive_lock(path):
            with engine.connect() as conn:
                before = _current_revision(conn, path, known, target)
            if before == target:
                return before, target
            if before is not None:
                saved = backup(path, before)
                log.info("catalog %s: upgrading %s -> %s (copy in %s)", path, before, target, saved)
            with writer(engine).begin() as conn:
                before = _current_revision(conn, path, known, target)
                if before is None:
                    _refuse_foreign(conn, path)
                if before != target:
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, "head")
    except DBAPIError as exc:
        raise CatalogError(f"cannot open catalog {path}: {exc.orig}") from exc
    return before, target


def backup(path: Path, revision: str) -> Path:
    """Copy the catalog with SQLite's online backup (consistent even while others write)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.{revision}-{stamp}.bak")
    src = sqlite3.connect(path)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()
    return target


def _current_revision(conn: Connection, path: Path, known: set[str], target: str) -> str | None:
    heads = MigrationContext.configure(conn).get_current_heads()
    unknown = [rev for rev in heads if rev not in known]
    if unknown:
        raise CatalogTooNewError(
            f"catalog {path} is at revision {unknown[0]}, newer than this cacheorch knows "
            f"(up to {target}); upgrade cacheorch (pip install -U cacheorch) "
            "or use another catalog")
    if len(heads) > 1:
        raise CatalogError(f"catalog {path} has several revisions {heads}; it was not migrated "
                           "by cacheorch")
    return heads[0] if heads else None


def _refuse_foreign(conn: Connection, path: Path) -> None:
    """Refuse to create tables in a SQLite file that already holds some of the same names."""
    clash = set(inspect(conn).get_table_names()) & set(Base.metadata.tables)
    if clash:
        raise CatalogError(f"{path} is not a cacheorch catalog (it has tables {sorted(clash)} "
                           "but no migration revision); use another catalog path")

"""Alembic environment of the catalog, for cacheorch itself and for the ``alembic`` command.

cacheorch passes its open connection (already inside ``BEGIN IMMEDIATE``) in
``config.attributes["connection"]``. From the ``alembic`` command at the repo root, the catalog
comes from ``sqlalchemy.url`` or the ``CACHEORCH_CATALOG`` environment variable (a path or a
``sqlite:///`` URL), and is opened with the same pragmas cacheorch uses.
"""
from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection, make_url

from cacheorch.catalog.engine import make_engine, writer
from cacheorch.catalog.models import Base

config = context.config
target_metadata = Base.metadata


def _catalog_url() -> str:
    # Without an alembic.ini (pyproject.toml only) the main section does not exist at all.
    has_main = config.file_config.has_section(config.config_ini_section)
    url = (has_main and config.get_main_option("sqlalchemy.url")) or os.environ.get(
        "CACHEORCH_CATALOG")
    if not url:
        raise SystemExit("no catalog: set CACHEORCH_CATALOG=path/to/cacheorch.sqlite "
                         "(or sqlalchemy.url)")
    return url if "://" in url else f"sqlite:///{url}"


def _run(connection: Connection) -> None:
    # render_as_batch: SQLite cannot ALTER most things, so autogenerate writes batch operations.
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    """``alembic upgrade --sql``: print the SQL instead of running it."""
    context.configure(url=_catalog_url(), target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = make_url(_catalog_url())
    if url.get_backend_name() != "sqlite" or not url.database:
        raise SystemExit(f"the catalog is a SQLite file; got {url.render_as_string()}")
    engine = make_engine(url.database)
    try:
        with writer(engine).begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

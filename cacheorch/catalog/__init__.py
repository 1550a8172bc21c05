"""The SQLite catalog: jobs, the levels they extracted, bundles done (for resume) and tile errors.

Opening a catalog migrates it to the newest schema (Alembic, shipped as ``cacheorch.migrations``).
"""
from __future__ import annotations

from typing import Any

from cacheorch.catalog.store import Catalog

__all__ = ["Catalog", "upgrade", "current", "head", "downgrade"]


def __getattr__(name: str) -> Any:
    """The migration helpers import Alembic, so they load only when asked for."""
    if name in ("upgrade", "current", "head", "downgrade"):
        from cacheorch.catalog import migrate
        return getattr(migrate, name)
    raise AttributeError(name)

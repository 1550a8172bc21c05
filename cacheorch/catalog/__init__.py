"""The SQLite catalog: jobs, the levels they extracted, bundles done (for resume) and tile errors.

Opening a catalog migrates it to the newest schema (Alembic, shipped as ``cacheorch.migrations``).
"""
from __future__ import annotations

from cacheorch.catalog.migrate import current, downgrade, head, upgrade
from cacheorch.catalog.store import Catalog

__all__ = ["Catalog", "upgrade", "current", "head", "downgrade"]

"""Alembic migrations of the cacheorch catalog, shipped inside the package as cacheorch.migrations."""

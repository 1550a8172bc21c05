"""cacheorch: export cached ArcGIS map services to offline tile caches and packages."""
from __future__ import annotations

from cacheorch.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl"]

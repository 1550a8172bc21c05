"""``cacheorch workbench``: a local web application over the same engine, catalog and plugins as the CLI.

:mod:`.app` is the Starlette application (the page and the JSON API under ``/api/``), :mod:`.server`
runs it with uvicorn on 127.0.0.1, :mod:`.sources`, :mod:`.tiers` and :mod:`.jobs` are the thin
layer over the calls the CLI makes (read a service, plan, ``run_job``, the catalog).
"""
from __future__ import annotations

__all__ = ["WorkbenchServer"]


def __getattr__(name: str) -> object:
    if name == "WorkbenchServer":
        from cacheorch.workbench.server import WorkbenchServer
        return WorkbenchServer
    raise AttributeError(name)

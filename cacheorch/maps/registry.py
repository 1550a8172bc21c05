"""The map readers and writers registered through the hooks, and the one way a map is read.

They are registries of :class:`~cacheorch.pluginmanager.Plugins` like every other kind, filled by
``make_plugins`` with the same validation, blocking and entry points.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from cacheorch.errors import MapError
from cacheorch.maps.interfaces import MapReader, MapWriter
from cacheorch.registry import Registry

if TYPE_CHECKING:
    from cacheorch.connection import Connection
    from cacheorch.maps.model import MapDocument
    from cacheorch.pluginmanager import Plugins

__all__ = ["map_readers", "map_writers", "read_map", "readable_formats"]

def map_readers(plugins: Plugins) -> Registry[MapReader]:
    """Every registered :class:`MapReader` (collected with the other kinds by ``make_plugins``)."""
    return plugins.map_readers


def map_writers(plugins: Plugins) -> Registry[MapWriter]:
    """Every registered :class:`MapWriter`."""
    return plugins.map_writers


def readable_formats(plugins: Plugins) -> str:
    """``web map JSON file, portal item URL, ...``: what can be read here (for error lines)."""
    return ", ".join(e.cls.formats or e.name for e in map_readers(plugins) if e.cls.available())


def read_map(plugins: Plugins, location: str, connection: Connection) -> MapDocument:
    """The map at ``location`` read by the first reader that accepts it.

    :raises MapError: no reader accepts it, the one that does cannot run here (arcpy), or the
        map is unreadable; always one line naming what can be read here.
    """
    readers = [e.cls for e in map_readers(plugins) if e.cls.accepts(location)]
    if not readers:
        if not location.lower().startswith(("http://", "https://")) and not os.path.exists(location):
            raise MapError(f"{location}: no such file")
        raise MapError(f"{location}: not a map cacheorch can read (maps readable here: "
                       f"{readable_formats(plugins)})")
    usable = [cls for cls in readers if cls.available()]
    if not usable:
        raise MapError(f"{location}: {readers[0].formats or readers[0].name} needs arcpy (ArcGIS "
                       f"Pro), which is not installed here; maps readable here: "
                       f"{readable_formats(plugins)}")
    return usable[0]().read(location, connection)

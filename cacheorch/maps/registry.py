"""The map readers and writers registered through the hooks, and the one way a map is read.

Why not fields of :class:`~cacheorch.pluginmanager.Plugins`: only ``plan`` / ``run --map`` need
them, so they are collected on first use from the same plugin manager (the same blocking,
the same entry points) without every command paying for them.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from cacheorch.errors import MapError, PluginError
from cacheorch.maps.interfaces import MapReader, MapWriter
from cacheorch.registry import Registry

if TYPE_CHECKING:
    from cacheorch.connection import Connection
    from cacheorch.maps.model import MapDocument
    from cacheorch.pluginmanager import Plugins

__all__ = ["map_readers", "map_writers", "read_map", "readable_formats"]

_HOOKS = {"cacheorch_register_map_readers": ("map reader", MapReader),
          "cacheorch_register_map_writers": ("map writer", MapWriter)}


def _collect(plugins: Plugins, hook_name: str) -> Registry[Any]:
    cache: dict[str, Registry[Any]] = plugins.__dict__.setdefault("_map_registries", {})
    if hook_name not in cache:
        kind, base = _HOOKS[hook_name]
        registry: Registry[Any] = Registry(kind)
        for impl in getattr(plugins.pm.hook, hook_name).get_hookimpls():
            for cls in impl.function() or ():
                if not (isinstance(cls, type) and issubclass(cls, base)):
                    raise PluginError(f"plugin {impl.plugin_name!r} returned {cls!r} from "
                                      f"{hook_name}; expected a {base.__name__} subclass")
                registry.add(cls, impl.plugin_name)
        cache[hook_name] = registry
    return cache[hook_name]


def map_readers(plugins: Plugins) -> Registry[MapReader]:
    """Every registered :class:`MapReader`."""
    return _collect(plugins, "cacheorch_register_map_readers")


def map_writers(plugins: Plugins) -> Registry[MapWriter]:
    """Every registered :class:`MapWriter`."""
    return _collect(plugins, "cacheorch_register_map_writers")


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

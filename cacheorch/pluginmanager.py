"""Build the plugin manager: built-in plugins from cacheorch.plugins, third-party ones from entry points.

Entry points load in a factory, never at import time, so tests and tools can build a manager
without the plugins installed in the environment.
"""
from __future__ import annotations

import functools
import importlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from cacheorch import hookspecs
from cacheorch.errors import PluginError
from cacheorch.interfaces import AOIGenerator, Exporter, ScaleSource, SelectionPolicy, TileSource
from cacheorch.maps.interfaces import MapReader, MapWriter
from cacheorch.registry import Registry

__all__ = ["DEFAULT_PLUGINS", "ENTRY_POINT_GROUP", "Plugins", "get_plugins", "make_plugins",
           "plugin_manager"]

log = logging.getLogger(__name__)

#: The entry-point group (and pluggy project name) third-party plugins register under.
ENTRY_POINT_GROUP = "cacheorch"
#: Built-in plugins: ordinary plugin modules, registered under their dotted names.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "cacheorch.plugins.scales_rest",
    "cacheorch.plugins.scales_status_gdb",  # before conf: a Status.gdb sits inside a cache folder
    "cacheorch.plugins.scales_conf",
    "cacheorch.plugins.scales_defaults",
    "cacheorch.plugins.scales_vector",
    "cacheorch.plugins.policy_levels",
    "cacheorch.plugins.policy_scale_range",
    "cacheorch.plugins.policy_snap",
    "cacheorch.plugins.policy_budget",
    "cacheorch.plugins.policy_service_limits",
    "cacheorch.plugins.policy_exclude",
    "cacheorch.plugins.aoi_extent",
    "cacheorch.plugins.aoi_bbox",
    "cacheorch.plugins.aoi_wkt",
    "cacheorch.plugins.aoi_file",
    "cacheorch.plugins.aoi_layer",
    "cacheorch.plugins.aoi_buffer",
    "cacheorch.plugins.tiles_rest",
    "cacheorch.plugins.tiles_cache",
    "cacheorch.plugins.tiles_vector",
    "cacheorch.plugins.export_compact_v2",
    "cacheorch.plugins.export_tpkx",
    "cacheorch.plugins.export_tpk",
    "cacheorch.plugins.export_mbtiles",
    "cacheorch.plugins.export_gpkg",
    "cacheorch.plugins.export_exploded",
    "cacheorch.plugins.export_rest_tiles",
    "cacheorch.plugins.export_arcpy",
    "cacheorch.plugins.export_vtpk",
    "cacheorch.plugins.vector_package",
    "cacheorch.plugins.maps_readers",
    "cacheorch.plugins.maps_writers",
)

#: hook name → (registry kind label, base class)
_KINDS: dict[str, tuple[str, type]] = {
    "cacheorch_register_scale_sources": ("scale source", ScaleSource),
    "cacheorch_register_tile_sources": ("tile source", TileSource),
    "cacheorch_register_policies": ("policy", SelectionPolicy),
    "cacheorch_register_aoi_generators": ("area generator", AOIGenerator),
    "cacheorch_register_exporters": ("exporter", Exporter),
    "cacheorch_register_map_readers": ("map reader", MapReader),
    "cacheorch_register_map_writers": ("map writer", MapWriter),
}


def _blocked_names(config_path: str | None = None) -> set[str]:
    raw = os.environ.get("CACHEORCH_DISABLE_PLUGINS", "")
    return {name.strip() for name in raw.split(",") if name.strip()} | \
        _config_blocked_names(config_path)


def _config_blocked_names(config_path: str | None = None) -> set[str]:
    """``[cacheorch] disable_plugins = a, b`` in the config file (``--config``, else
    $CACHEORCH_CONFIG or ./cacheorch.ini)."""
    from cacheorch.config import load_config
    raw = load_config(config_path).main.get("disable_plugins", "")
    return {name.strip() for name in raw.replace("\n", ",").split(",") if name.strip()}


def plugin_manager(load_entrypoints: bool = True, extra: Iterable[Any] = (),
                   config_path: str | None = None) -> pluggy.PluginManager:
    """A fresh manager with the hook specs, the built-ins, entry-point plugins and ``extra`` objects.

    ``CACHEORCH_DISABLE_PLUGINS=a,b`` (or ``[cacheorch] disable_plugins = a, b`` in the config
    file) blocks entry-point plugins (or built-ins by dotted or module name) before they load,
    for a misbehaving third-party plugin.
    """
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    blocked = _blocked_names(config_path)
    for name in blocked:
        pm.set_blocked(name)
    for dotted in DEFAULT_PLUGINS:
        if pm.is_blocked(dotted) or dotted.rpartition(".")[2] in blocked:  # export_tpkx works too
            continue
        pm.register(importlib.import_module(dotted), name=dotted)
    if load_entrypoints:
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {exc.plugin!r} is invalid: {exc}") from None
        except Exception as exc:  # an entry point that fails to import
            raise PluginError(f"a plugin in entry-point group {ENTRY_POINT_GROUP!r} failed to load: "
                              f"{type(exc).__name__}: {exc}") from None
    for obj in extra:
        pm.register(obj)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {exc.plugin!r} implements a hook cacheorch does not have: {exc}") \
            from None
    return pm


@dataclass
class Plugins:
    """The plugin manager and the registries built from it, one per plugin kind."""

    pm: pluggy.PluginManager
    scale_sources: Registry[ScaleSource] = field(default_factory=lambda: Registry("scale source"))
    tile_sources: Registry[TileSource] = field(default_factory=lambda: Registry("tile source"))
    policies: Registry[SelectionPolicy] = field(default_factory=lambda: Registry("policy"))
    aoi_generators: Registry[AOIGenerator] = field(default_factory=lambda: Registry("area generator"))
    exporters: Registry[Exporter] = field(default_factory=lambda: Registry("exporter"))
    map_readers: Registry[MapReader] = field(default_factory=lambda: Registry("map reader"))
    map_writers: Registry[MapWriter] = field(default_factory=lambda: Registry("map writer"))

    def registries(self) -> dict[str, Registry[Any]]:
        return {"scale_sources": self.scale_sources, "tile_sources": self.tile_sources,
                "policies": self.policies, "aoi_generators": self.aoi_generators,
                "exporters": self.exporters, "map_readers": self.map_readers,
                "map_writers": self.map_writers}

    def plugin_label(self, plugin: object) -> str:
        return self.pm.get_name(plugin) or repr(plugin)

    def distribution_of(self, plugin_name: str) -> tuple[str, str] | None:
        """(project name, version) of the distribution that provided an entry-point plugin."""
        for plugin, dist in self.pm.list_plugin_distributions():
            if self.pm.get_name(plugin) == plugin_name:
                return (dist.metadata["name"], dist.version)
        return None


def make_plugins(load_entrypoints: bool = True, extra: Iterable[Any] = (),
                 config_path: str | None = None) -> Plugins:
    """Build the manager and fill the registries, attributing each class to its plugin."""
    pm = plugin_manager(load_entrypoints, extra, config_path)
    plugins = Plugins(pm)
    registries = {
        "cacheorch_register_scale_sources": plugins.scale_sources,
        "cacheorch_register_tile_sources": plugins.tile_sources,
        "cacheorch_register_policies": plugins.policies,
        "cacheorch_register_aoi_generators": plugins.aoi_generators,
        "cacheorch_register_exporters": plugins.exporters,
        "cacheorch_register_map_readers": plugins.map_readers,
        "cacheorch_register_map_writers": plugins.map_writers,
    }
    for hook_name, registry in registries.items():
        kind, base = _KINDS[hook_name]
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            classes = impl.function() or ()
            for cls in classes:
                if not (isinstance(cls, type) and issubclass(cls, base)):
                    raise PluginError(f"plugin {impl.plugin_name!r} returned {cls!r} from {hook_name}; "
                                      f"expected a {base.__name__} subclass")
                registry.add(cls, impl.plugin_name)
    return plugins


@functools.lru_cache(maxsize=1)
def get_plugins(config_path: str | None = None) -> Plugins:
    """The process-wide plugins, built on first use (``config_path``: the ``--config`` file)."""
    return make_plugins(config_path=config_path)


def distribution_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None

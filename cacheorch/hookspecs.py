"""Hook specifications for cacheorch plugins (marker name and entry-point group: ``cacheorch``).

Registration hooks return plugin *classes*, each with a ``name``; the core collects them into one
registry per kind. Call hooks with keyword arguments: an implementation may accept fewer
arguments than the spec, which lets new arguments be added without breaking plugins.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import sqlite3

    import click

    from cacheorch.events import Event
    from cacheorch.interfaces import AOIGenerator, Exporter, ScaleSource, SelectionPolicy, TileSource
    from cacheorch.maps.interfaces import MapReader, MapWriter

__all__ = [
    "hookspec", "hookimpl",
    "cacheorch_register_scale_sources", "cacheorch_register_tile_sources",
    "cacheorch_register_policies", "cacheorch_register_aoi_generators",
    "cacheorch_register_exporters", "cacheorch_track_event", "cacheorch_catalog_connect",
    "cacheorch_register_commands", "cacheorch_register_map_readers",
    "cacheorch_register_map_writers",
]

#: Marker for hook specifications (used only here).
hookspec = pluggy.HookspecMarker("cacheorch")
#: Marker to be imported and used in plugins (and for cacheorch's own built-ins).
hookimpl = pluggy.HookimplMarker("cacheorch")


# -- Registration: return classes; each has ``name: ClassVar[str]`` ---------------------------

@hookspec
def cacheorch_register_scale_sources() -> Sequence[type[ScaleSource]]:
    """Return :class:`~cacheorch.interfaces.ScaleSource` classes.

    Called once when the plugin manager is built. A scale source reads a service, cache or
    package and answers with its tiling scheme; ``cacheorch scales SOURCE`` and every job use
    the first source whose ``accepts(location)`` is true, unless ``--source NAME`` picks one.

    :return: a sequence of ScaleSource subclasses.
    """


@hookspec
def cacheorch_register_tile_sources() -> Sequence[type[TileSource]]:
    """Return :class:`~cacheorch.interfaces.TileSource` classes.

    Called once when the plugin manager is built. A job fetches tile bytes from the first tile
    source whose ``accepts(location)`` is true for the service location.

    :return: a sequence of TileSource subclasses.
    """


@hookspec
def cacheorch_register_policies() -> Sequence[type[SelectionPolicy]]:
    """Return :class:`~cacheorch.interfaces.SelectionPolicy` classes.

    Called once when the plugin manager is built. Policies named by ``--policy NAME:k=v``,
    ``--levels`` or ``--scales`` run in order; each narrows the selected levels.

    :return: a sequence of SelectionPolicy subclasses.
    """


@hookspec
def cacheorch_register_aoi_generators() -> Sequence[type[AOIGenerator]]:
    """Return :class:`~cacheorch.interfaces.AOIGenerator` classes.

    Called once when the plugin manager is built. ``--aoi LEVELS=NAME:spec`` builds the area of
    a level range with the generator called NAME (or the first whose ``accepts(spec)`` is true).

    :return: a sequence of AOIGenerator subclasses.
    """


@hookspec
def cacheorch_register_exporters() -> Sequence[type[Exporter]]:
    """Return :class:`~cacheorch.interfaces.Exporter` classes.

    Called once when the plugin manager is built; ``--exporter NAME`` picks one.

    :return: a sequence of Exporter subclasses.
    """


@hookspec
def cacheorch_register_map_readers() -> Sequence[type[MapReader]]:
    """Return :class:`~cacheorch.maps.interfaces.MapReader` classes.

    Called when a command first needs a map (``plan`` / ``run --map MAP``). The first reader
    whose ``accepts(MAP)`` is true reads it into a :class:`~cacheorch.maps.model.MapDocument`;
    a reader whose ``available()`` is false (arcpy missing) is named in the error instead.

    :return: a sequence of MapReader subclasses.
    """


@hookspec
def cacheorch_register_map_writers() -> Sequence[type[MapWriter]]:
    """Return :class:`~cacheorch.maps.interfaces.MapWriter` classes.

    Called after ``run --map`` exported the map's layers: each writer whose
    ``accepts(document)`` is true writes an offline copy of the map into the output folder
    (the built-in one: ``<project>-offline.qgs`` for a QGIS project).

    :return: a sequence of MapWriter subclasses.
    """


# -- Events and catalog ---------------------------------------------------------------------

@hookspec
def cacheorch_track_event(event: Event) -> None:
    """Observe a job event (job started, bundle done, job finished...).

    Called for every event, in the process that runs the job; bundle events fire once per
    bundle, never per tile. An implementation must not raise: an exception is logged with the
    plugin's name and swallowed, so an observer can never abort an export.

    :param event: a frozen :class:`~cacheorch.events.Event` dataclass.
    """


@hookspec
def cacheorch_catalog_connect(dbapi_connection: sqlite3.Connection) -> None:
    """Customise each new catalog SQLite connection (functions, extensions, pragmas).

    Called from SQLAlchemy's ``connect`` event after cacheorch has set WAL mode, foreign keys
    and the busy timeout.

    :param dbapi_connection: the raw sqlite3 connection.
    """


# -- CLI ------------------------------------------------------------------------------------

@hookspec
def cacheorch_register_commands(cli: click.Group) -> None:
    """Add commands or groups to the ``cacheorch`` command line.

    Called once when the CLI is built, after the built-in commands are added.

    :param cli: the top-level click group; use ``@cli.command()``.
    """

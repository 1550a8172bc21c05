"""The two plugin kinds of maps: a reader turns a map into a :class:`~cacheorch.maps.model.MapDocument`;
a writer makes an offline copy of the map that points at the exported files.

They are plugin kinds like the others (``name``, ``Options``, a registration hook in
:mod:`cacheorch.hookspecs`, a contract in :mod:`cacheorch.testing`), so a team whose maps live in
another format (a viewer app's config) adds a reader, not a fork.
"""
from __future__ import annotations

import abc
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from cacheorch.interfaces import Plugin

if TYPE_CHECKING:
    from cacheorch.connection import Connection
    from cacheorch.maps.model import MapDocument

__all__ = ["MapReader", "MapWriter"]


class MapReader(Plugin):
    """Reads one map format into a MapDocument.

    ``accepts`` must be cheap and never fetch (a suffix, a URL pattern); ``read`` raises
    :class:`~cacheorch.errors.MapError` (one line) for anything it cannot read.
    """

    #: What it reads, for the one-line message listing the formats readable here.
    formats: ClassVar[str] = ""

    @classmethod
    def accepts(cls, location: str) -> bool:
        """Whether ``location`` (a path or URL) looks like this reader's format."""
        return False

    @classmethod
    def available(cls) -> bool:
        """Whether this reader can run here (e.g. arcpy is importable); False lists it apart."""
        return True

    @abc.abstractmethod
    def read(self, location: str, connection: Connection) -> MapDocument:
        """The map at ``location``; JSON over HTTP only through ``connection.get_json``."""


class MapWriter(Plugin):
    """Writes an offline copy of a map whose exported layers point at their local files."""

    @classmethod
    def accepts(cls, document: MapDocument) -> bool:
        """Whether this writer makes a copy of ``document`` (usually: by its ``format``)."""
        return False

    @abc.abstractmethod
    def write(self, document: MapDocument, outputs: Mapping[int, Path], folder: Path) -> Path:
        """Write the copy into ``folder`` and return its path.

        :param outputs: index into ``document.layers`` → the exported file of that layer;
            layers not in it (skipped, failed) stay as they were.
        """

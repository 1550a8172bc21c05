"""The ``status-gdb`` scale source: a server cache's Status.gdb, for its levels and completeness.

The levels and scales come from the conf.xml beside the Status.gdb; the Status.gdb adds which of
them were cached and how complete each is (bundles done out of bundles recorded), which
``cacheorch scales`` shows. What is assumed of the unpublished Status.gdb schema is written in
:mod:`cacheorch.statusgdb`. Needs pyogrio (``pip install 'cacheorch[gdal]'``).
"""
from __future__ import annotations

from dataclasses import dataclass

from cacheorch import hookimpl
from cacheorch.connection import Connection
from cacheorch.interfaces import ScaleSource, Service
from cacheorch.statusgdb import is_status_gdb, status_service

__all__ = ["StatusGdbScaleSource"]


class StatusGdbScaleSource(ScaleSource):
    """Levels and their completeness from a server cache's Status.gdb (needs pyogrio)."""

    name = "status-gdb"

    @dataclass
    class Options:
        #: The cache's conf.xml or folder, when it is not beside the Status.gdb.
        conf: str = ""
        #: The status layer, when it is not called TaskStatus.
        layer: str = ""

    @classmethod
    def accepts(cls, location: str) -> bool:
        return is_status_gdb(location)

    def read(self, location: str, connection: Connection) -> Service:
        opts = self.options
        return status_service(location.strip(), conf=opts.conf or None, layer=opts.layer or None)


@hookimpl
def cacheorch_register_scale_sources() -> list[type[ScaleSource]]:
    return [StatusGdbScaleSource]

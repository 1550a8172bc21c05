"""The ``conf`` scale source: the levels of a local cache or tile package.

It reads what ArcGIS itself reads: conf.xml (with conf.cdi for the extent) in a cache folder, an
ArcGIS Server cache directory or a .tpk, and root.json in a .tpkx or an unzipped one. The cache is
opened, not only its descriptor, so a package that cannot be read fails here, before a job exists.

Which levels hold tiles: a .tpkx says so itself (``minLOD``..``maxLOD``; its scheme lists every
level of the service and is kept whole). conf.xml lists the scheme's levels whether or not they
were cached, so the levels whose folders (or package members) hold bundles set the range instead.
"""
from __future__ import annotations

from dataclasses import replace

from cacheorch import hookimpl
from cacheorch.connection import Connection
from cacheorch.errors import UsageError
from cacheorch.formats.cache import TileCache, open_cache
from cacheorch.formats.locate import local_path, looks_like_cache_path
from cacheorch.interfaces import ScaleSource, Service
from cacheorch.tiling import TilingScheme
from cacheorch.vector.reader import is_vector_output

__all__ = ["ConfScaleSource", "service_of_cache"]


def _tiled_range(cache: TileCache) -> TilingScheme:
    scheme = cache.scheme
    if scheme.min_lod is not None or scheme.max_lod is not None:
        return scheme
    present = [level for level in cache.levels_with_tiles() if level in set(scheme.levels)]
    if not present:  # a scheme file without tiles: every level may be asked for
        return scheme
    return replace(scheme, min_lod=present[0], max_lod=present[-1], _by_level={})


def service_of_cache(cache: TileCache, location: str) -> Service:
    """The :class:`Service` a cache stands for; ``location`` is kept as the user's absolute path."""
    return Service(location=location, scheme=_tiled_range(cache), kind="cache", name=cache.name,
                   description=cache.description, storage_format=cache.storage_format)


class ConfScaleSource(ScaleSource):
    """Levels of a local cache: folder (conf.xml), ArcGIS Server cache directory, .tpk or .tpkx."""

    name = "conf"

    @classmethod
    def accepts(cls, location: str) -> bool:
        return looks_like_cache_path(location) and not is_vector_output(location)  # vector-package's

    def read(self, location: str, connection: Connection) -> Service:
        path = local_path(location)
        if path is None:
            raise UsageError(f"{location}: the conf scale source reads a local cache folder or "
                             "package, not a URL")
        absolute = str(path)
        with open_cache(absolute) as cache:
            return service_of_cache(cache, absolute)


@hookimpl
def cacheorch_register_scale_sources() -> list[type[ScaleSource]]:
    return [ConfScaleSource]

"""The ``conf`` scale source: the levels of a local cache or tile package.

It reads what ArcGIS itself reads: conf.xml (with conf.cdi for the extent) in a cache folder, an
ArcGIS Server cache directory or a .tpk, and root.json in a .tpkx or an unzipped one. The cache is
opened, not only its descriptor, so a package that cannot be read fails here, before a job exists.

Which levels hold tiles: a .tpkx says so itself (``minLOD``..``maxLOD``; its scheme lists every
level of the service and is kept whole). conf.xml lists the scheme's levels whether or not they
were cached, so the levels whose folders (or package members) hold bundles set the range instead,
and a level between them without bundles is known to hold none. A cache folder's conf.properties
may say the scales the cache was drawn for (``minScale``/``maxScale``); the ``service-limits``
policy honours them as it does a service's.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from cacheorch import hookimpl
from cacheorch.connection import Connection
from cacheorch.errors import FormatError, UsageError
from cacheorch.formats.cache import TileCache, open_cache
from cacheorch.formats.locate import find_ci, local_path, looks_like_cache_path
from cacheorch.interfaces import ScaleSource, Service
from cacheorch.tiling import TilingScheme
from cacheorch.vector.reader import is_vector_output

__all__ = ["ConfScaleSource", "service_of_cache"]


def _tiled_range(cache: TileCache) -> tuple[TilingScheme, frozenset[int] | None]:
    """The scheme with the range of levels holding tiles, and exactly those levels (None when
    the source says its range itself, or no level holds a tile)."""
    scheme = cache.scheme
    if scheme.min_lod is not None or scheme.max_lod is not None:
        return scheme, None
    present = [level for level in cache.levels_with_tiles() if level in set(scheme.levels)]
    if not present:  # a scheme file without tiles: every level may be asked for
        return scheme, None
    return replace(scheme, min_lod=present[0], max_lod=present[-1], _by_level={}), \
        frozenset(present)


def conf_properties_scales(cache: TileCache) -> tuple[float | None, float | None]:
    """(minScale, maxScale) from a cache folder's conf.properties (a PropertySet; keys
    ``minScale`` / ``maxScale`` in any case), None where absent, 0 or unreadable."""
    from cacheorch.formats.confxml import parse_xml
    found: dict[str, float | None] = {"minscale": None, "maxscale": None}
    path = find_ci(Path(cache.path), "conf.properties") if cache.kind == "folder" else None
    if path is None or not path.is_file():
        return None, None
    try:
        root = parse_xml(path.read_bytes(), str(path))
    except (OSError, FormatError):
        return None, None
    for prop in root.iter("PropertySetProperty"):
        key = (prop.findtext("Key") or "").strip().lower()
        value = (prop.findtext("Value") or "").strip()
        if key in found:
            try:
                number = float(value)
            except ValueError:
                continue
            found[key] = number if number > 0 else None
    return found["minscale"], found["maxscale"]


def service_of_cache(cache: TileCache, location: str) -> Service:
    """The :class:`Service` a cache stands for; ``location`` is kept as the user's absolute path."""
    scheme, present = _tiled_range(cache)
    min_scale, max_scale = conf_properties_scales(cache)
    return Service(location=location, scheme=scheme, kind="cache", name=cache.name,
                   description=cache.description, storage_format=cache.storage_format,
                   levels_with_tiles=present, min_scale=min_scale, max_scale=max_scale)


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

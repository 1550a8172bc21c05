"""Finding a cache from whatever path a user names.

Users point at many things that all mean "this cache": the cache folder, its ``conf.xml`` (spelt
``Conf.xml`` in the wild; a tiling scheme file saved under another ``.xml`` name counts too), the
ArcGIS Server service folder above it (``arcgiscache/<service>/<map name>/``, where ``<map name>``
is the data frame's name: usually ``Layers``, but localised or custom in real caches), the
``arcgiscache`` folder when it holds one service, the service's ``Status.gdb``, an unzipped
package, a ``root.json``, or a .tpk / .tpkx file. Names are matched without regard to case and
folders are discovered, never assumed, so a cache ArcGIS finds is found here too. A folder holding
several caches is an error naming them, never a guess.
"""
from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cacheorch.errors import FormatError

__all__ = ["CacheLocation", "locate_cache", "find_ci", "find_conf_xml", "local_path",
           "looks_like_cache_path", "SEARCH_DEPTH"]

#: How many folder levels below the named folder a cache is looked for: two reaches
#: ``arcgiscache/<service>/<map name>/`` from ``arcgiscache`` and ``v101/<map name>/`` from an
#: unzipped .tpk.
SEARCH_DEPTH = 2
_DESCRIPTORS = ("conf.xml", "root.json")
_PACKAGE_SUFFIXES = (".tpk", ".tpkx", ".zip")
_CACHE_SUFFIXES = (*_PACKAGE_SUFFIXES, ".xml", ".json")
_TILE_FOLDER = re.compile(r"^(?:[Ll]\d{1,3}|R[0-9a-fA-F]{8})$")


@dataclass(frozen=True)
class CacheLocation:
    """What a path names: a folder cache (and its conf.xml or root.json) or a zip package."""

    #: The path as given, made absolute.
    given: Path
    kind: Literal["folder", "package"]
    #: The folder holding the descriptor, or the package file.
    path: Path
    #: The conf.xml or root.json file of a folder cache (None for a package).
    descriptor: Path | None
    #: A name for the cache: the service folder's name, or the package's stem.
    name: str


def find_ci(folder: Path, name: str) -> Path | None:
    """The entry of ``folder`` called ``name`` in any letter case, or None."""
    wanted = name.lower()
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.lower() == wanted:
                    return Path(entry.path)
    except OSError:
        return None
    return None


def find_conf_xml(folder: Path) -> Path | None:
    """conf.xml in ``folder`` whatever its case (``Conf.xml`` exists in the wild)."""
    found = find_ci(folder, "conf.xml")
    return found if found is not None and found.is_file() else None


def _descriptor(folder: Path) -> Path | None:
    for name in _DESCRIPTORS:
        found = find_ci(folder, name)
        if found is not None and found.is_file():
            return found
    return None


def _skip(name: str) -> bool:
    """Folders never worth searching: tiles (``_alllayers``, ``L05``, ``R0000012a``), hidden ones,
    file geodatabases. Descending into an exploded cache's row folders would list every tile."""
    lower = name.lower()
    return lower.startswith(("_", ".")) or lower.endswith(".gdb") or bool(_TILE_FOLDER.match(name))


def _search(folder: Path, depth: int) -> list[Path]:
    """Descriptors in the folders below ``folder``, down to ``depth`` levels, nearest first."""
    found: list[Path] = []
    layer = [folder]
    for _ in range(depth):
        below: list[Path] = []
        for parent in layer:
            try:
                with os.scandir(parent) as entries:
                    subs = sorted(Path(e.path) for e in entries
                                  if not _skip(e.name) and e.is_dir(follow_symlinks=True))
            except OSError:
                continue
            for sub in subs:
                descriptor = _descriptor(sub)
                if descriptor is not None:
                    found.append(descriptor)
                else:
                    below.append(sub)
        if found:
            return found  # the nearest caches win; deeper ones would be inside them
        layer = below
    return found


def _folder_name(folder: Path) -> str:
    """The map folder's name, unless it is the generic ``Layers``: then its service folder's."""
    if folder.name.lower() == "layers" and folder.parent.name:
        return folder.parent.name
    return folder.name or str(folder)


def _service_name(descriptor: Path) -> str:
    """The name of the folder above the map folder: ``arcgiscache/<service>/<map name>/``.

    An unzipped .tpk has ``v101`` there (``<package>/v101/<map name>/``): then the package's.
    """
    service = descriptor.parent.parent
    if service.name.lower() == "v101" and service.parent.name:
        service = service.parent
    return service.name or str(service)


def local_path(location: str) -> Path | None:
    """``location`` as an absolute local path, or None when it is a URL (``scheme://``)."""
    text = location.strip()
    if not text or "://" in text:
        return None
    return Path(os.path.abspath(os.path.expanduser(text)))


def _in_gdb(path: Path) -> bool:
    return any(part.lower().endswith(".gdb") for part in path.parts)


def looks_like_cache_path(location: str) -> bool:
    """Whether ``location`` is for the ``conf`` scale source: an existing path, or a missing one
    with a cache's suffix (``caches/roads.tpkx``), so its error is "no such file" rather than
    "no scale source recognises it".

    Not ``defaults`` (a scale source of its own, even if a folder has that name) and not a file
    geodatabase (``Status.gdb`` is the ``status-gdb`` source's).
    """
    path = local_path(location)
    text = location.strip().lower()
    if path is None or text == "defaults" or _in_gdb(path):
        return False
    return path.exists() or text.endswith(_CACHE_SUFFIXES)


def locate_cache(path: str | os.PathLike[str]) -> CacheLocation:
    """Work out what ``path`` names; a FormatError says in one line why it is not a cache."""
    given = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    if given.is_dir() and given.name.lower().endswith(".gdb"):
        # a server cache's Status.gdb sits in the cache (or service) folder it describes
        found = locate_cache(given.parent)
        return CacheLocation(given, found.kind, found.path, found.descriptor, found.name)
    if given.is_dir() and given.name.lower() == "_alllayers":
        raise FormatError(f"{given}: the tiles of a cache; name the folder above it, which holds "
                          "conf.xml")
    if given.is_dir():
        descriptor = _descriptor(given)
        if descriptor is not None:
            return CacheLocation(given, "folder", given, descriptor, _folder_name(given))
        found = _search(given, SEARCH_DEPTH)
        if len(found) > 1:
            shown = ", ".join(str(d.parent.relative_to(given)) for d in found[:3])
            more = f" and {len(found) - 3} more" if len(found) > 3 else ""
            raise FormatError(f"{given}: holds several caches ({shown}{more}); name one of them")
        if found:
            return CacheLocation(given, "folder", found[0].parent, found[0], _service_name(found[0]))
        raise FormatError(f"{given}: no conf.xml or root.json here or in the folders below; "
                          "not a tile cache folder")
    if not given.exists():
        raise FormatError(f"{given}: no such file or folder")
    lower = given.name.lower()
    if lower in _DESCRIPTORS or lower.endswith(".xml"):
        # any .xml: a tiling scheme file saved under its own name is a conf.xml too
        return CacheLocation(given, "folder", given.parent, given, _folder_name(given.parent))
    if zipfile.is_zipfile(given):
        return CacheLocation(given, "package", given, None, given.stem)
    if lower.endswith(_PACKAGE_SUFFIXES):
        raise FormatError(f"{given}: not a readable zip file (a .tpk or .tpkx package is a zip)")
    raise FormatError(f"{given}: not a cache folder, conf.xml, root.json, .tpk or .tpkx package")

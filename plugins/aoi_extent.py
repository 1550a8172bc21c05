"""The ``extent`` area: an extent the service or cache gives, clipped to the tiling grid.

- ``extent`` or ``extent:full``: the service's full extent;
- ``extent:initial``: its initial extent;
- ``extent:cdi`` (or ``extent:conf.cdi``): the data extent in the cache's conf.cdi, when
  ``--service`` is a cache folder, a conf.xml, an ArcGIS Server cache directory or a .tpk;
- ``extent:PATH/conf.cdi``: the extent in that conf.cdi file.

Why conf.cdi apart from full: a server cache's conf.cdi is the extent the cache was built for,
which is often smaller than the map's full extent (and what ArcGIS clients show for it); a
conf.cdi without a spatial reference is in the scheme's.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

from cacheorch import hookimpl
from cacheorch.areas import crs_of, finish_area, project, rectangle
from cacheorch.connection import Connection
from cacheorch.errors import AreaError, FormatError
from cacheorch.formats.confxml import read_conf_cdi, read_conf_cdi_bytes
from cacheorch.formats.locate import find_ci
from cacheorch.formats.tpk import TilePackage
from cacheorch.interfaces import AOIGenerator, Service
from cacheorch.tiling import Envelope

__all__ = ["ExtentArea", "find_conf_cdi"]

_CDI = "conf.cdi"


def _child(folder: Path, name: str) -> Path | None:
    """The file ``name`` of ``folder`` in any letter case, or None."""
    found = find_ci(folder, name)
    return found if found is not None and found.is_file() else None


def _in_folder(folder: Path) -> Path | None:
    """conf.cdi here, or in the one cache folder below (``arcgiscache/<service>/<map name>/``)."""
    found = _child(folder, _CDI)
    if found is not None:
        return found
    for depth in (1, 2):
        hits = [c for c in sorted(folder.glob("/".join(["*"] * depth))) if c.is_dir()
                and _child(c, "conf.xml") is not None and _child(c, _CDI) is not None]
        if len(hits) == 1:
            return _child(hits[0], _CDI)
        if len(hits) > 1:
            names = ", ".join(str(h.relative_to(folder)) for h in hits[:4])
            raise AreaError(f"extent:cdi: {folder} holds several caches ({names}); "
                            "name the cache folder as --service")
    return None


def find_conf_cdi(location: str) -> tuple[str, Envelope | None] | None:
    """(where, extent) of the conf.cdi belonging to a local cache or package; None if it has none."""
    path = Path(location)
    if path.is_dir():
        found = _in_folder(path)
        return (str(found), read_conf_cdi(found)) if found else None
    if not path.is_file():
        return None
    if path.name.lower() == "conf.xml":
        found = _child(path.parent, _CDI)
        return (str(found), read_conf_cdi(found)) if found else None
    if path.suffix.lower() == ".cdi":
        return str(path), read_conf_cdi(path)
    if zipfile.is_zipfile(path):  # .tpk: v101/<map name>/conf.cdi
        with TilePackage(path) as package:  # reads members within their bounds
            members = sorted((n for n in package.members if n.rsplit("/", 1)[-1] == _CDI),
                             key=lambda n: n.count("/"))
            if not members:
                return None
            where = package.display(members[0])
            return where, read_conf_cdi_bytes(package.read(members[0]), where)
    return None


class ExtentArea(AOIGenerator):
    """The service's extent (extent, extent:initial, extent:cdi or extent:PATH/conf.cdi), clipped."""

    name = "extent"

    def area(self, spec: str, service: Service, connection: Connection):  # noqa: ANN201
        which = (spec or "full").strip()
        scheme = service.scheme
        if which.lower() in ("full", "initial"):
            which = which.lower()
            env = scheme.full_extent if which == "full" else scheme.initial_extent
            if env is None:  # the whole grid would be a guess, and on a world cache a huge one
                raise AreaError(f"{service.location} gives no {which} extent; name an area with "
                                "--aoi (bbox:xmin,ymin,xmax,ymax[@wkid] or a GeoJSON file)")
            return self._envelope(env, service, f"the {which} extent",
                                  f"the service's {which} extent")
        if which.lower() in ("cdi", _CDI):
            found = self._cdi(service.location, service)
        elif which.lower().endswith(".cdi"):
            if not os.path.isfile(which):
                raise AreaError(f"extent:{which}: no such file")
            found = self._cdi(which, service)
        else:
            raise AreaError(f"extent:{spec}: expected extent, extent:full, extent:initial, "
                            "extent:cdi or extent:PATH/conf.cdi")
        where, env = found
        return self._envelope(env, service, f"the extent in {where}", f"the extent in {where}")

    @staticmethod
    def _cdi(location: str, service: Service) -> tuple[str, Envelope]:
        try:
            found = find_conf_cdi(location)
        except FormatError as exc:
            raise AreaError(str(exc)) from None
        except (OSError, zipfile.BadZipFile) as exc:
            raise AreaError(f"extent:cdi: cannot read {location} ({exc})") from None
        if found is None:
            raise AreaError(f"extent:cdi: {location} has no conf.cdi (only cache folders, conf.xml "
                            "and .tpk packages have one; use extent:full)")
        where, env = found
        if env is None:
            raise AreaError(f"{where} holds no extent (its corners are not numbers)")
        return where, env

    @staticmethod
    def _envelope(env: Envelope, service: Service, what: str, label: str):  # noqa: ANN205
        scheme = service.scheme
        geom = rectangle(*env.bounds)
        sr = env.spatial_reference
        if sr is not None and (sr.epsg or sr.wkt) and sr.epsg != scheme.spatial_reference.epsg:
            src = crs_of(sr, what)
            dst = crs_of(scheme.spatial_reference, "the tiling scheme")
            span = max(env.xmax - env.xmin, env.ymax - env.ymin) / 128 or None
            geom = project(geom, src, dst, what, densify=span)
        return finish_area(geom, scheme, label)


@hookimpl
def cacheorch_register_aoi_generators() -> list[type[AOIGenerator]]:
    return [ExtentArea]

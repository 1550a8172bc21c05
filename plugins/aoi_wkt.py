"""The ``wkt`` area: a polygon written inline, ``wkt:POLYGON((x y, …))[@wkid]``.

Without ``@wkid`` (or an EWKT ``SRID=n;`` prefix) the coordinates are in the tiling scheme's own
spatial reference, as for ``bbox``. A bare ``POLYGON((…))`` / ``MULTIPOLYGON(…)`` given to ``--aoi``
is taken as WKT too. For a WKT file, use its path (``area.wkt`` or ``area.wkt@4326``: the ``file``
area).
"""
from __future__ import annotations

from cacheorch import hookimpl
from cacheorch.areas import area_from, crs_from_text, read_wkt, split_crs
from cacheorch.connection import Connection
from cacheorch.interfaces import AOIGenerator, Service

__all__ = ["WktArea"]

_KEYWORDS = ("POLYGON", "MULTIPOLYGON", "GEOMETRYCOLLECTION", "SRID=")


def _label(spec: str) -> str:
    """A short name for messages: long WKT is cut, so one line stays one line."""
    text = " ".join(spec.split())
    return "wkt:" + (text if len(text) <= 48 else text[:45] + "…")


class WktArea(AOIGenerator):
    """A polygon in WKT: wkt:POLYGON((x y, ...))[@wkid] (default: the scheme's spatial reference)."""

    name = "wkt"

    @classmethod
    def accepts(cls, spec: str) -> bool:
        return spec.lstrip().upper().replace(" ", "").startswith(_KEYWORDS)

    def area(self, spec: str, service: Service, connection: Connection):  # noqa: ANN201
        what = _label(spec)
        body, override = split_crs(spec)
        geom, srid = read_wkt(body, what)
        crs_text = override or srid
        src = crs_from_text(crs_text, what) if crs_text else None  # None: the scheme's own SR
        return area_from(geom, src, service.scheme, what)


@hookimpl
def cacheorch_register_aoi_generators() -> list[type[AOIGenerator]]:
    return [WktArea]

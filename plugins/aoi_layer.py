"""The ``layer`` area: the polygons of a shapefile, GeoPackage or File GDB layer, read with GDAL.

Spec: ``PATH[#LAYER][@wkid]``, or ``layer:PATH…`` for a format recognised by no suffix::

    --aoi 12-17=parcels.shp
    --aoi 12-17=data.gpkg#districts
    --aoi 12-17=City.gdb#Boundary
    --aoi 12-17=old.shp@2056          (a shapefile without a .prj)

The layer may be left out when the source has one polygon layer. All of the layer's polygons are
united; points and lines in it are ignored. The layer's own spatial reference is used; ``@wkid``
names one for a source that has none (a ``@wkid`` on a layer that has one is an error, since one of
the two is wrong).

Reading goes through pyogrio (GDAL's vector drivers), an optional dependency: without it this area
says how to install it, and everything else in cacheorch works.
"""
from __future__ import annotations

import os
from typing import Any

import shapely
import shapely.errors

from cacheorch import hookimpl
from cacheorch.areas import VECTOR_SUFFIXES, area_from, crs_from_text, crs_of, repair, split_crs
from cacheorch.connection import Connection
from cacheorch.errors import AreaError
from cacheorch.interfaces import AOIGenerator, Service

__all__ = ["LayerArea", "NEEDS_PYOGRIO"]

NEEDS_PYOGRIO = ("reading shapefile/GeoPackage/File GDB layers needs pyogrio "
                 "(pip install 'cacheorch[gdal]')")


def _pyogrio() -> Any:
    try:
        import pyogrio
        import pyogrio.errors
        import pyogrio.raw
    except ImportError:
        raise AreaError(NEEDS_PYOGRIO) from None
    return pyogrio


def _split(spec: str) -> tuple[str, str | None, str | None]:
    """``data.gpkg#roads@2056`` → ("data.gpkg", "roads", "2056")."""
    body, crs = split_crs(spec)
    path, sep, layer = body.rpartition("#")
    if sep and path and not os.path.exists(body):
        return path, layer.strip() or None, crs
    return body, None, crs


def _is_polygonal(kind: Any) -> bool:
    text = str(kind or "")
    return "Polygon" in text or "Surface" in text


class LayerArea(AOIGenerator):
    """Polygons of a shapefile / GeoPackage / File GDB layer: PATH[#LAYER][@wkid] (needs pyogrio)."""

    name = "layer"

    @classmethod
    def accepts(cls, spec: str) -> bool:
        path = _split(spec)[0]
        return path.lower().rstrip("/\\").endswith(VECTOR_SUFFIXES)

    def area(self, spec: str, service: Service, connection: Connection):  # noqa: ANN201
        path, layer, override = _split(spec)
        name = os.path.basename(path.rstrip("/\\")) or path
        if not os.path.exists(path):
            raise AreaError(f"{path}: no such file or folder")
        pyogrio = _pyogrio()
        errors = (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError,
                  pyogrio.errors.FieldError, pyogrio.errors.GeometryError, OSError, ValueError)
        try:
            layers = [(str(n), t) for n, t in pyogrio.list_layers(path)]
        except errors as exc:
            raise AreaError(f"{name}: GDAL cannot read it ({_one_line(exc)})") from None
        if layer is None:
            layer = self._pick_layer(name, layers)
        elif layer not in {n for n, _ in layers}:
            raise AreaError(f"{name} has no layer {layer!r} (layers: "
                            f"{', '.join(n for n, _ in layers) or 'none'})")
        what = f"{name}#{layer}" if len(layers) > 1 else name
        try:
            meta, _, wkb, _ = pyogrio.raw.read(path, layer=layer, columns=[], force_2d=True)
        except errors as exc:
            raise AreaError(f"{what}: GDAL cannot read it ({_one_line(exc)})") from None
        crs_text = meta.get("crs")
        if override and crs_text:
            raise AreaError(f"{what} has its own spatial reference ({_short(crs_text)}); "
                            f"drop @{override}")
        if not override and not crs_text:
            raise AreaError(f"{what} has no spatial reference (no .prj?); name one: {name}@wkid")
        src = crs_from_text(override, what) if override else crs_of(crs_text, what)
        try:
            shapes = [g for g in shapely.from_wkb([b for b in wkb if b is not None])
                      if g is not None and not g.is_empty]
        except shapely.errors.ShapelyError as exc:
            raise AreaError(f"{what}: unsupported geometry ({_one_line(exc)}); curved "
                            "geometries must be densified first") from None
        polygons = [g for g in shapes if g.geom_type in ("Polygon", "MultiPolygon")]
        if not polygons:
            raise AreaError(f"{what} has no polygon")
        geom = shapely.union_all([repair(g, what) for g in polygons])
        return area_from(geom, src, service.scheme, what)

    @staticmethod
    def _pick_layer(name: str, layers: list[tuple[str, Any]]) -> str:
        polygonal = [n for n, t in layers if _is_polygonal(t)]
        if len(polygonal) == 1:
            return polygonal[0]
        if not polygonal:
            raise AreaError(f"{name} has no polygon layer (layers: "
                            f"{', '.join(n for n, _ in layers) or 'none'})")
        raise AreaError(f"{name} has several polygon layers ({', '.join(polygonal)}); name one: "
                        f"{name}#{polygonal[0]}")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _short(crs_text: str) -> str:
    text = " ".join(str(crs_text).split())
    return text if len(text) <= 40 else text[:37] + "…"


@hookimpl
def cacheorch_register_aoi_generators() -> list[type[AOIGenerator]]:
    return [LayerArea]

"""A VectorTileServer's ``?f=json`` → :class:`VectorService`; which layer URLs are vector tile layers.

Kept apart from HTTP (as :mod:`cacheorch.arcgis_json` is for raster) so a package's ``p12/root.json``
parses the same way as a live service's JSON.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

from cacheorch.arcgis_json import scheme_from_tile_info
from cacheorch.errors import NotCachedError, ServiceError
from cacheorch.interfaces import Service
from cacheorch.tiling import Envelope, TilingScheme

__all__ = ["VectorService", "vector_service_from_json", "is_vector_scheme", "is_vector_json",
           "is_vector_tile_layer", "vector_tile_service_url", "DEFAULT_TILE_TEMPLATE", "KIND",
           "standard_vector_json", "check_exporter", "VECTOR_EXPORTERS"]

#: ``Service.kind`` of a vector tile layer.
KIND = "VectorTileServer"
#: Esri's tile template: row before column (spec §1.1, surprise 2).
DEFAULT_TILE_TEMPLATE = "tile/{z}/{y}/{x}.pbf"
_MARK = "/vectortileserver"
#: Built-in exporters that write vector tiles (a third-party exporter says so with a class
#: attribute ``vector_tiles = True``).
VECTOR_EXPORTERS = frozenset({"vtpk", "mbtiles", "compact-v2", "rest-export-tiles"})
#: Built-in exporters that write only vector tiles.
_VECTOR_ONLY = frozenset({"vtpk"})
_HALF = 20037508.342787
#: Level 0 of Esri's 512-px Web Mercator vector scheme (spec §1.2).
_RES0 = 2 * _HALF / 512
_SCALE0 = 295828763.7957775


@dataclass(frozen=True)
class VectorService(Service):
    """A vector tile layer: the raster :class:`Service` plus where its tiles, tilemap and style are.

    ``fetch`` reads a resource URL (sprite, glyph range) through the connection the service was
    read with, returning None for a 404; exporters use it to copy the resources at commit.
    """

    #: The tile URL template, absolute (``…/tile/{z}/{y}/{x}.pbf``).
    tile_template: str = ""
    #: The quadtree tilemap's URL (None: the service has no index; every tile is asked for).
    tilemap_url: str | None = None
    #: The default style's URL (``…/resources/styles/root.json``: its relative paths resolve
    #: from there, spec §1.4).
    style_url: str = ""
    #: The service JSON as read (written back, adjusted, as the package's root.json).
    source_json: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    fetch: Callable[[str], bytes | None] | None = field(default=None, compare=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without ``fetch`` (bound to a connection, which holds locks and secrets):
        dask workers fetch tiles only; resources are fetched where the export is written."""
        return dict(self.__dict__, fetch=None)


def is_vector_scheme(scheme: TilingScheme) -> bool:
    """Whether a tiling scheme is a vector tile scheme (tiles are ``pbf``)."""
    return scheme.tile_format.lower() in ("pbf", "mvt")


def is_vector_json(data: Any) -> bool:
    """Whether a service JSON describes a vector tile layer (pbf tiles, a ``tiles`` template)."""
    if not isinstance(data, dict):
        return False
    info = data.get("tileInfo")
    fmt = str(info.get("format") or "").lower() if isinstance(info, dict) else ""
    return fmt == "pbf" or (isinstance(data.get("tiles"), list) and "defaultStyles" in data)


def _clean(url: str) -> str:
    parts = urlsplit(url.strip())
    return urlunsplit(parts._replace(query="", fragment="")).rstrip("/")


def vector_tile_service_url(layer: str | dict[str, Any]) -> str | None:
    """The VectorTileServer URL cacheorch can export for a layer, or None if it is not one.

    ``layer`` is a URL (a ``…/VectorTileServer`` service, or one of its style or resource URLs)
    or a web map operational layer (``layerType`` ``VectorTileLayer``, with ``url`` or a
    ``styleUrl`` under a VectorTileServer). A style saved as a portal item only (no service URL)
    is not exportable here: its tiles live wherever its ``sources`` say, and None is returned.
    """
    if isinstance(layer, dict):
        if layer.get("layerType") not in (None, "VectorTileLayer"):
            return None
        for key in ("url", "styleUrl"):
            value = layer.get(key)
            if isinstance(value, str):
                found = vector_tile_service_url(value)
                if found:
                    return found
        return None
    if not isinstance(layer, str) or not layer.lower().startswith(("http://", "https://")):
        return None
    url = _clean(layer)
    at = url.lower().find(_MARK)
    if at < 0:
        return None
    return url[:at + len(_MARK)]


def is_vector_tile_layer(layer: str | dict[str, Any]) -> bool:
    """Whether ``layer`` (URL or web map layer JSON) is a vector tile layer cacheorch exports.

    For maps: a layer for which this is True goes to the ``vtpk`` (or vector ``mbtiles``)
    exporter with :func:`vector_tile_service_url` as ``--service``, instead of being skipped.
    """
    return vector_tile_service_url(layer) is not None


def _service_name(location: str, data: dict[str, Any]) -> str:
    parts = [p for p in location.split("?")[0].rstrip("/").split("/") if p]
    if len(parts) >= 2 and parts[-1].lower() == KIND.lower():
        return parts[-2]
    return str(data.get("name") or (parts[-1] if parts else "vector"))


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value)


def _deepest(data: dict[str, Any]) -> int | None:
    """The deepest level with tiles: ``maxLOD``, lowered to ``maxzoom`` when that is smaller
    (packages list the whole LOD table and say with ``maxzoom`` where their tiles stop)."""
    max_lod, max_zoom = _int_or_none(data.get("maxLOD")), _int_or_none(data.get("maxzoom"))
    if max_lod is None or max_zoom is None:
        return max_lod if max_lod is not None else None
    return min(max_lod, max_zoom)


def vector_service_from_json(location: str, data: Any,
                             fetch: Callable[[str], bytes | None] | None = None) -> VectorService:
    """Parse a VectorTileServer JSON (or a vtpk's root.json, with ``location`` its folder)."""
    if not isinstance(data, dict):
        raise ServiceError(f"{location}: the service JSON is not an object")
    info = data.get("tileInfo")
    if not isinstance(info, dict) or not info:
        raise NotCachedError(f"{location} is not a vector tile service (no tileInfo)")
    if not is_vector_json(data):
        raise NotCachedError(f"{location}: tileInfo.format is {info.get('format')!r}, not pbf; "
                             f"not a vector tile service")
    scheme = scheme_from_tile_info(
        dict(info, format="pbf"), location,
        full_extent=Envelope.from_json(data.get("fullExtent")),
        initial_extent=Envelope.from_json(data.get("initialExtent")),
        min_lod=_int_or_none(data.get("minLOD")), max_lod=_deepest(data),
        name=str(data.get("name") or "Layers"))
    base = location.rstrip("/") + "/"
    tiles = data.get("tiles")
    template = tiles[0] if isinstance(tiles, list) and tiles and isinstance(tiles[0], str) \
        else DEFAULT_TILE_TEMPLATE
    if "{z}" not in template or "{y}" not in template or "{x}" not in template:
        raise ServiceError(f"{location}: tile template {template!r} lacks {{z}}, {{y}} or {{x}}")
    tile_map = data.get("tileMap")
    styles = str(data.get("defaultStyles") or "resources/styles")
    capabilities = frozenset(c.strip() for c in str(data.get("capabilities") or "").split(",")
                             if c.strip() and c.strip().lower() != "tilemap")
    return VectorService(
        location=location, scheme=scheme, kind=KIND, name=_service_name(location, data),
        capabilities=capabilities,
        export_tiles_allowed=bool(data.get("exportTilesAllowed", False)),
        max_export_tiles_count=_int_or_none(data.get("maxExportTilesCount")),
        description=str(data.get("description") or data.get("serviceDescription") or ""),
        copyright=str(data.get("copyrightText") or ""),
        tile_template=urljoin(base, template),
        tilemap_url=urljoin(base, tile_map) if isinstance(tile_map, str) and tile_map else None,
        style_url=urljoin(base, styles.rstrip("/") + "/root.json"), source_json=data, fetch=fetch)


def standard_vector_json(name: str, min_lod: int, max_lod: int, max_level: int = 23
                         ) -> dict[str, Any]:
    """The service JSON of Esri's standard 512-px Web Mercator vector scheme (levels 0-23), for
    outputs that carry no scheme of their own (MBTiles: zoom L is vector level L)."""
    sr = {"wkid": 102100, "latestWkid": 3857}
    world = {"xmin": -_HALF, "ymin": -_HALF, "xmax": _HALF, "ymax": _HALF, "spatialReference": sr}
    lods = [{"level": z, "resolution": _RES0 / 2 ** z, "scale": _SCALE0 / 2 ** z}
            for z in range(max_level + 1)]
    return {"name": name, "capabilities": "TilesOnly", "type": "indexedVector",
            "tiles": [DEFAULT_TILE_TEMPLATE], "defaultStyles": "resources/styles",
            "minLOD": min_lod, "maxLOD": max_lod, "maxzoom": max_lod,
            "fullExtent": world, "initialExtent": world,
            "tileInfo": {"rows": 512, "cols": 512, "dpi": 96, "format": "pbf",
                         "origin": {"x": -_HALF, "y": _HALF}, "spatialReference": sr,
                         "lods": lods},
            "resourceInfo": {"styleVersion": 8, "tileCompression": "gzip"}}


def check_exporter(service: Service, exporter: Any) -> None:
    """UsageError, at plan time, when ``exporter`` cannot hold ``service``'s kind of tiles: pbf
    tiles in a tpkx or GeoPackage would make an output no client reads. An exporter whose
    output for a vector layer is another kind of file names it in ``vector_extension``, and its
    ``extension`` (the default output's) becomes that."""
    from cacheorch.errors import UsageError

    name = str(getattr(exporter, "name", ""))
    vector = is_vector_scheme(service.scheme)
    takes_vector = getattr(exporter, "vector_tiles", name in VECTOR_EXPORTERS)
    if vector and getattr(exporter, "vector_extension", None):
        exporter.extension = exporter.vector_extension  # rest-export-tiles: the server's .vtpk
    if vector and not takes_vector:
        raise UsageError(f"{service.location} is a vector tile layer; exporter {name} writes "
                         f"raster tiles (use {', '.join(sorted(VECTOR_EXPORTERS))})")
    if not vector and name in _VECTOR_ONLY:
        raise UsageError(f"exporter {name} writes vector tile layers; {service.location} is a "
                         f"{service.kind} (use tpkx, compact-v2, mbtiles...)")

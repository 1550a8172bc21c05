"""ArcGIS REST service JSON (MapServer / ImageServer ``?f=json``) → :class:`Service` and tiling scheme.

Kept apart from HTTP so that any JSON of this shape (a captured file, a package's service
description) parses the same way.
"""
from __future__ import annotations

import math
from typing import Any
from urllib.parse import urljoin

from cacheorch.errors import NotCachedError, SchemeError, ServiceError
from cacheorch.interfaces import Service
from cacheorch.tiling import MAX_LEVEL_ID, Envelope, LevelOfDetail, SpatialReference, TilingScheme

__all__ = ["scheme_from_tile_info", "service_from_json", "arcgis_error", "storage_format",
           "service_name", "tile_servers"]

#: The data-frame name ArcMap/Pro give a map nobody renamed; it says nothing about the service.
_DEFAULT_MAP_NAME = "Layers"


def arcgis_error(data: Any) -> tuple[int | None, str] | None:
    """(code, message) of an ArcGIS error body ``{"error": {"code": 498, "message": ...}}``."""
    if not isinstance(data, dict) or not isinstance(data.get("error"), dict):
        return None
    err = data["error"]
    code = err.get("code")
    message = str(err.get("message") or "").strip()
    details = [str(d) for d in err.get("details") or [] if str(d).strip()]
    if details and details[0] not in message:
        message = f"{message} ({'; '.join(details)})" if message else "; ".join(details)
    try:
        return (int(code) if code is not None else None, message)
    except (TypeError, ValueError):
        return (None, message)


def _number(value: Any, what: str, where: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SchemeError(f"{where}: {what} is {value!r:.40}, not a number") from None


def scheme_from_tile_info(tile_info: dict[str, Any], where: str, *, units: str = "esriMeters",
                          full_extent: Envelope | None = None,
                          initial_extent: Envelope | None = None,
                          min_lod: int | None = None, max_lod: int | None = None,
                          name: str = "Layers") -> TilingScheme:
    """Build the scheme from a REST/root.json ``tileInfo`` object."""
    if not isinstance(tile_info, dict):
        raise SchemeError(f"{where}: tileInfo is not an object")
    origin = tile_info.get("origin") or {}
    lods_json = tile_info.get("lods")
    if not isinstance(lods_json, list) or not lods_json:
        raise SchemeError(f"{where}: tileInfo has no lods")
    if len(lods_json) > MAX_LEVEL_ID + 1:
        raise SchemeError(f"{where}: tileInfo lists {len(lods_json)} lods; a scheme has at most "
                          f"{MAX_LEVEL_ID + 1}")
    lods = []
    for i, lod in enumerate(lods_json):
        if not isinstance(lod, dict):
            raise SchemeError(f"{where}: lods[{i}] is not an object")
        level = _number(lod.get("level", i), f"lods[{i}].level", where)
        if not math.isfinite(level) or level != int(level):
            raise SchemeError(f"{where}: lods[{i}].level is {lod.get('level')!r}, not a whole number")
        lods.append(LevelOfDetail(int(level), _number(lod.get("scale"), f"lods[{i}].scale", where),
                                  _number(lod.get("resolution"), f"lods[{i}].resolution", where)))
    if not isinstance(origin, dict):
        raise SchemeError(f"{where}: tileInfo.origin is not an object")
    # Validated before any planning (TilingScheme checks the values): a hostile tileInfo is
    # one line and exit 2, never a MemoryError, an OverflowError or a NaN grid.
    try:
        sr = SpatialReference.from_json(tile_info.get("spatialReference"))
        if not sr.is_known:
            raise SchemeError("tileInfo has no spatialReference (wkid or wkt)")
        return TilingScheme(
            origin_x=_number(origin.get("x"), "origin.x", where),
            origin_y=_number(origin.get("y"), "origin.y", where),
            tile_cols=_whole(tile_info.get("cols"), "cols", 256),
            tile_rows=_whole(tile_info.get("rows"), "rows", 256),
            dpi=_whole(tile_info.get("dpi"), "dpi", 96), spatial_reference=sr, lods=tuple(lods),
            tile_format=str(tile_info.get("format") or "PNG"),
            compression_quality=_whole(tile_info.get("compressionQuality"), "compressionQuality", 0),
            units=units or "esriMeters", full_extent=full_extent, initial_extent=initial_extent,
            min_lod=min_lod, max_lod=max_lod, name=name,
        )
    except SchemeError as exc:
        text = str(exc)
        raise SchemeError(text if text.startswith(where) else f"{where}: {text}") from None


def _whole(value: Any, what: str, default: int) -> int:
    """A whole number of tileInfo (cols, rows, dpi...), ``default`` when absent or 0."""
    if not value:
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SchemeError(f"tileInfo.{what} is {value!r:.40}, not a number") from None
    if not math.isfinite(number) or number != int(number):
        raise SchemeError(f"tileInfo.{what} is {value!r:.40}, not a whole number")
    return int(number)


def service_name(location: str, data: dict[str, Any]) -> str:
    """The name people know the service by: mapName, else documentInfo Title, else the URL's.

    ``Layers`` is the default data-frame name, so it only wins when nothing better is known.
    """
    map_name = str(data.get("mapName") or "").strip()
    if map_name and map_name != _DEFAULT_MAP_NAME:
        return map_name
    doc = data.get("documentInfo")
    title = str(doc.get("Title") or "").strip() if isinstance(doc, dict) else ""
    if title:
        return title
    parts = [p for p in location.split("?")[0].rstrip("/").split("/") if p]
    if len(parts) >= 2 and parts[-1].lower() in ("mapserver", "imageserver"):
        return parts[-2]
    return str(data.get("name") or map_name or (parts[-1] if parts else "service"))


def storage_format(data: dict[str, Any]) -> str | None:
    """``esriMapCacheStorageMode…`` from ``storageInfo`` (11.1+) or ``tileInfo`` (hosted), if told.

    Older servers say neither (spec §10.7): None then means "unknown, use /tile".
    """
    for holder in (data.get("storageInfo"), data.get("tileInfo")):
        if isinstance(holder, dict) and isinstance(holder.get("storageFormat"), str):
            return holder["storageFormat"] or None
    return None


def service_from_json(location: str, data: Any) -> Service:
    """Parse a service JSON; raise NotCachedError when it has no tiling scheme."""
    if not isinstance(data, dict):
        raise ServiceError(f"{location}: the service JSON is not an object")
    kind = "ImageServer" if "/imageserver" in location.lower() else "MapServer"
    tile_info = data.get("tileInfo")
    if not isinstance(tile_info, dict) or not tile_info:
        raise NotCachedError(f"{location} is not a cached map service (no tileInfo)")
    sr_json = tile_info.get("spatialReference") or data.get("spatialReference")
    if not tile_info.get("spatialReference") and sr_json:
        tile_info = dict(tile_info, spatialReference=sr_json)

    def lod_bound(key: str) -> int | None:
        value = data.get(key)
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value) else None

    scheme = scheme_from_tile_info(
        tile_info, location, units=str(data.get("units") or "esriMeters"),
        full_extent=Envelope.from_json(data.get("fullExtent")),
        initial_extent=Envelope.from_json(data.get("initialExtent")),
        min_lod=lod_bound("minLOD"), max_lod=lod_bound("maxLOD"),
        name=str(data.get("mapName") or _DEFAULT_MAP_NAME))
    capabilities = frozenset(c.strip() for c in str(data.get("capabilities") or "").split(",")
                             if c.strip())
    servers = tile_servers(location, data.get("tileServers"))
    max_export = data.get("maxExportTilesCount")
    fused = data.get("singleFusedMapCache")
    return Service(
        location=location, scheme=scheme, kind=kind, name=service_name(location, data),
        capabilities=capabilities, tile_servers=servers,
        export_tiles_allowed=bool(data.get("exportTilesAllowed", False)),
        max_export_tiles_count=int(max_export) if isinstance(max_export, (int, float))
        and not isinstance(max_export, bool) and math.isfinite(max_export) else None,
        description=str(data.get("serviceDescription") or data.get("description") or ""),
        copyright=str(data.get("copyrightText") or ""),
        storage_format=storage_format(data),
        min_scale=_scale_limit(data.get("minScale")), max_scale=_scale_limit(data.get("maxScale")),
        single_fused_cache=fused if isinstance(fused, bool) else None,
    )


def _scale_limit(value: Any) -> float | None:
    """A minScale / maxScale: a positive scale, or None (0 or absent means no limit)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        return None
    return float(value)


def tile_servers(location: str, value: Any) -> tuple[str, ...]:
    """The ``tileServers`` hosts as absolute service URLs, without duplicates or query strings.

    Hosted tile layers list hosts that serve the same cache (``tiles1.arcgis.com``...); some
    write them protocol-relative (``//tiles1…``) or relative to the service. One that is the
    service itself still counts: the list's order and length decide ``row % n``.
    """
    if not isinstance(value, list):
        return ()
    out: list[str] = []
    for item in value:
        if not isinstance(item, str) or not item.strip():
            continue
        url = urljoin(location + "/", item.strip()).split("?", 1)[0].split("#", 1)[0].rstrip("/")
        if url.lower().startswith(("http://", "https://")) and url not in out:
            out.append(url)
    return tuple(out)

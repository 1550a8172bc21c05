"""root.json and iteminfo.json of a .tpkx (Compact Tile Package), shaped like Esri's own packages.

Key names follow real files (Esri's Usa.tpkx), not the prose specification, which misspells some.
``tileInfo.lods`` lists the whole scheme while ``minLOD``/``maxLOD`` say which levels hold bundles;
GDAL keeps only the LODs inside that range and names the level folder ``minLOD + position``, so
the range must be one the package really has, and the listed levels must be contiguous inside it.
"""
from __future__ import annotations

import math
import time
import uuid
from typing import Any

from cacheorch.errors import FormatError
from cacheorch.tiling import Envelope, LevelOfDetail, SpatialReference, TilingScheme

__all__ = ["COMPACT_V2", "TILE_BUNDLES_PATH", "root_json", "iteminfo_json", "read_root_json",
           "root_json_storage", "wgs84_bounds"]

COMPACT_V2 = "esriMapCacheStorageModeCompactV2"
#: Where bundles live inside the package (relative to root.json).
TILE_BUNDLES_PATH = "./tile"


def _extent_json(extent: Envelope | None, sr: SpatialReference) -> dict[str, Any] | None:
    if extent is None:
        return None
    out = {"xmin": extent.xmin, "ymin": extent.ymin, "xmax": extent.xmax, "ymax": extent.ymax}
    out["spatialReference"] = (extent.spatial_reference or sr).to_json()
    return out


def root_json(scheme: TilingScheme, *, name: str, min_lod: int, max_lod: int,
              full_extent: Envelope | None, initial_extent: Envelope | None,
              min_scale: float | None = None, max_scale: float | None = None,
              description: str = "", resampling: bool = False) -> dict[str, Any]:
    """The root.json of a package whose bundles cover levels ``min_lod``..``max_lod``.

    ``scheme`` should be the service's whole scheme: its LODs are listed in full, as ArcGIS does.
    ``min_scale``/``max_scale`` default to the scales of the first and last packaged level.
    ``resampling`` (clients may upsample beyond ``max_lod``) is off unless asked for.
    """
    if min_lod > max_lod:
        raise ValueError(f"min_lod {min_lod} is above max_lod {max_lod}")
    lo, hi = scheme.lod(min_lod), scheme.lod(max_lod)  # LevelError if absent
    sr = scheme.spatial_reference.to_json()
    return {
        "tileImageInfo": {"format": scheme.tile_format,
                          "compressionQuality": scheme.compression_quality,
                          "bandCount": 1, "lercError": 0},
        "name": name,
        "version": 1.0,
        "serviceDescription": description,
        "tileBundlesPath": TILE_BUNDLES_PATH,
        "spatialReference": sr,
        "units": scheme.units,
        "minLOD": min_lod,
        "maxLOD": max_lod,
        "minScale": lo.scale if min_scale is None else min_scale,
        "maxScale": hi.scale if max_scale is None else max_scale,
        "resampling": resampling,
        "tileInfo": {
            "rows": scheme.tile_rows,
            "cols": scheme.tile_cols,
            "dpi": scheme.dpi,
            "origin": {"x": scheme.origin_x, "y": scheme.origin_y},
            "spatialReference": sr,
            "lods": [lod.to_json() for lod in scheme.lods],
        },
        "exportTilesAllowed": False,
        "storageInfo": {"storageFormat": COMPACT_V2, "packetSize": 128},
        "initialExtent": _extent_json(initial_extent or full_extent, scheme.spatial_reference),
        "fullExtent": _extent_json(full_extent, scheme.spatial_reference),
    }


def iteminfo_json(*, name: str, title: str, extent_wgs84: tuple[float, float, float, float] | None,
                  snippet: str = "", description: str = "", summary: str = "", tags: str = "",
                  guid: str | None = None, created_ms: int | None = None,
                  creator: str = "cacheorch") -> dict[str, Any]:
    """iteminfo.json: the portal item description of the package (extent in WGS84 degrees)."""
    out: dict[str, Any] = {
        "creator": creator,
        "name": name,
        "guid": guid or str(uuid.uuid4()).upper(),
        "version": 1.0,
        "created": int(time.time() * 1000) if created_ms is None else created_ms,
        "snippet": snippet,
        "description": description,
        "summary": summary,
        "title": title,
        "tags": tags,
        "type": "Compact Tile Package",
        "typeKeywords": ["Compact Tile Package", "Tile Package", "tpkx"],
        "thumbnail": "./thumbnail.png",
    }
    if extent_wgs84 is not None:
        xmin, ymin, xmax, ymax = extent_wgs84
        out["extent"] = {"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax,
                         "spatialReference": {"wkid": 4326, "latestWkid": 4326}}
    return out


def wgs84_bounds(bounds: tuple[float, float, float, float], sr: SpatialReference
                 ) -> tuple[float, float, float, float] | None:
    """``bounds`` (in ``sr``) as WGS84 degrees, clamped to the globe; None if it cannot project."""
    try:
        from pyproj import CRS, Transformer

        transformer = Transformer.from_crs(CRS.from_user_input(sr.crs_input()), CRS.from_epsg(4326),
                                           always_xy=True)
        xmin, ymin, xmax, ymax = transformer.transform_bounds(*bounds, densify_pts=21)
    except Exception:
        return None
    if not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)):
        return None
    return (max(xmin, -180.0), max(ymin, -90.0), min(xmax, 180.0), min(ymax, 90.0))


def root_json_storage(data: dict[str, Any]) -> tuple[str, int]:
    """(storage format, packet size) of a root.json; hosted services may nest it in tileInfo."""
    info = data.get("storageInfo") or {}
    fmt = info.get("storageFormat") or (data.get("tileInfo") or {}).get("storageFormat") or ""
    return str(fmt), int(info.get("packetSize") or 128)


def read_root_json(data: dict[str, Any]) -> TilingScheme:
    """The whole tiling scheme of a root.json, with ``min_lod``/``max_lod`` set when present."""
    try:
        tile_info = data["tileInfo"]
        origin = tile_info["origin"]
        lods = tuple(LevelOfDetail(int(lod["level"]), float(lod["scale"]), float(lod["resolution"]))
                     for lod in tile_info["lods"])
        sr = SpatialReference.from_json(tile_info.get("spatialReference")
                                        or data.get("spatialReference"))
        image = data.get("tileImageInfo") or {}
        min_lod = data.get("minLOD")
        max_lod = data.get("maxLOD")
        return TilingScheme(
            origin_x=float(origin["x"]), origin_y=float(origin["y"]),
            tile_cols=int(tile_info.get("cols", tile_info.get("rows", 256))),
            tile_rows=int(tile_info.get("rows", 256)),
            dpi=int(tile_info.get("dpi", 96)), spatial_reference=sr, lods=lods,
            tile_format=str(image.get("format") or tile_info.get("format") or "PNG"),
            compression_quality=int(image.get("compressionQuality")
                                    or tile_info.get("compressionQuality") or 0),
            units=str(data.get("units") or "esriMeters"),
            full_extent=Envelope.from_json(data.get("fullExtent")),
            initial_extent=Envelope.from_json(data.get("initialExtent")),
            min_lod=int(min_lod) if min_lod is not None else None,
            max_lod=int(max_lod) if max_lod is not None else None,
            name=str(data.get("name") or "Layers"),
        )
    except FormatError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"root.json: missing or malformed {exc}") from None
    except Exception as exc:  # SchemeError: no levels, bad resolution
        raise FormatError(f"root.json: {exc}") from None

"""``MapServer/export`` over a tile cache: the image of a bbox, stitched from the cache's tiles.

Clients that only speak export (MapProxy's ``arcgis`` source, GDAL's AGS driver) can then read a
served cache. Nothing is reprojected: ``bboxSR``/``imageSR`` must be the cache's own spatial
reference. The level used is the coarsest one at least as fine as the request, so an image at a
level's own resolution, aligned to its pixels, holds exactly the tiles' pixels; other requests are
resampled (bilinear). Tiles the cache does not have are transparent (``png``) or the background
colour (``jpg``), never an error.
"""
from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode

if TYPE_CHECKING:
    from cacheorch.formats.cache import TileCache
    from cacheorch.tiling import TilingScheme

__all__ = ["BadExportRequest", "export_image", "stitch", "pick_level", "MAX_IMAGE_SIZE",
           "MAX_TILES", "IMAGE_FORMATS"]

#: ``maxImageWidth``/``maxImageHeight``: ArcGIS's defaults.
MAX_IMAGE_SIZE = 4096
#: Tiles read for one image at most (a 4096-pixel image at a level's resolution needs 17×17).
MAX_TILES = 1024
#: format parameter → (Pillow format, mode, content type).
IMAGE_FORMATS = {
    "png": ("PNG", "RGBA", "image/png"), "png32": ("PNG", "RGBA", "image/png"),
    "png24": ("PNG", "RGB", "image/png"), "png8": ("PNG", "RGBA", "image/png"),
    "jpg": ("JPEG", "RGB", "image/jpeg"), "jpeg": ("JPEG", "RGB", "image/jpeg"),
}


class BadExportRequest(ValueError):
    """A request export cannot answer: the message goes back as ArcGIS error JSON (HTTP 400)."""


def _numbers(text: str, count: int, name: str) -> list[float]:
    text = text.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
            keys = ("xmin", "ymin", "xmax", "ymax") if count == 4 else ("width", "height")
            return [float(data[k]) for k in keys]
        except (ValueError, KeyError, TypeError):
            raise BadExportRequest(f"{name} is not valid JSON with {count} numbers") from None
    parts = text.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise BadExportRequest(f"{name} must be {count} comma-separated numbers, got {text[:80]!r}")
    return values


def _wkid(text: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    if text.startswith("{"):
        try:
            data = json.loads(text)
            return int(data.get("latestWkid") or data["wkid"])
        except (ValueError, KeyError, TypeError):
            raise BadExportRequest(f"spatial reference {text[:80]!r} has no wkid") from None
    try:
        return int(text.rsplit(":", 1)[-1])
    except ValueError:
        raise BadExportRequest(f"spatial reference {text[:80]!r} is not a wkid") from None


def pick_level(scheme: TilingScheme, levels: Sequence[int], resolution: float) -> int:
    """The coarsest of ``levels`` at least as fine as ``resolution`` (else the finest there is)."""
    fine_enough = [lv for lv in levels if scheme.lod(lv).resolution <= resolution * (1 + 1e-9)]
    if fine_enough:
        return max(fine_enough, key=lambda lv: scheme.lod(lv).resolution)
    return min(levels, key=lambda lv: scheme.lod(lv).resolution)


def stitch(scheme: TilingScheme, get_tile: Callable[[int, int, int], bytes | None], level: int,
           bbox: Sequence[float], width: int, height: int) -> Any:
    """An RGBA Pillow image of ``bbox`` at ``width``×``height`` from the tiles of ``level``
    (``get_tile(level, row, col)``: the bytes, or None where there is no tile)."""
    from PIL import Image

    res = scheme.lod(level).resolution
    tw, th = scheme.tile_cols, scheme.tile_rows
    xmin, ymin, xmax, ymax = bbox
    px0, px1 = (xmin - scheme.origin_x) / res, (xmax - scheme.origin_x) / res
    py0, py1 = (scheme.origin_y - ymax) / res, (scheme.origin_y - ymin) / res
    eps = 1e-6
    c0, c1 = math.floor(px0 / tw + eps), math.ceil(px1 / tw - eps) - 1
    r0, r1 = math.floor(py0 / th + eps), math.ceil(py1 / th - eps) - 1
    c1, r1 = max(c1, c0), max(r1, r0)
    if (c1 - c0 + 1) * (r1 - r0 + 1) > MAX_TILES:
        raise BadExportRequest(f"the image would need {(c1 - c0 + 1) * (r1 - r0 + 1):,} tiles of level "
                          f"{level} (at most {MAX_TILES:,}); ask for a smaller bbox or a larger size")
    canvas = Image.new("RGBA", ((c1 - c0 + 1) * tw, (r1 - r0 + 1) * th), (0, 0, 0, 0))
    grid = scheme.grid_size(level)
    for row in range(max(r0, 0), r1 + 1):
        if grid is not None and row >= grid[0]:
            break
        for col in range(max(c0, 0), c1 + 1):
            if grid is not None and col >= grid[1]:
                break
            try:
                data = get_tile(level, row, col)
            except (ValueError, OverflowError):
                data = None
            if data is None:
                continue
            with Image.open(io.BytesIO(data)) as tile:
                canvas.paste(tile.convert("RGBA"), ((col - c0) * tw, (row - r0) * th))
    extent = (px0 - c0 * tw, py0 - r0 * th, px1 - c0 * tw, py1 - r0 * th)
    same_scale = math.isclose(px1 - px0, width, rel_tol=1e-6) and math.isclose(py1 - py0, height, rel_tol=1e-6)
    resample = Image.Resampling.NEAREST if same_scale else Image.Resampling.BILINEAR
    return canvas.transform((width, height), Image.Transform.EXTENT, extent, resample=resample,
                            fillcolor=(0, 0, 0, 0))


def export_image(cache: TileCache, levels: list[int], query: str, path: str
                 ) -> tuple[str, bytes]:
    """Answer ``export?{query}``: (content type, body). Raises :class:`BadExportRequest` for bad input.

    ``path`` is the export URL path, for the ``href`` of an ``f=json`` answer.
    """
    params = {k.lower(): v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    f = (params.get("f") or "json").lower()
    if f not in ("json", "pjson", "image"):
        raise BadExportRequest(f"f={f} is not served; use f=image or f=json")
    if not levels:
        raise BadExportRequest("the cache holds no tiles")
    if "bbox" not in params:
        raise BadExportRequest("bbox is required: xmin,ymin,xmax,ymax")
    bbox = _numbers(params["bbox"], 4, "bbox")
    if bbox[0] >= bbox[2] or bbox[1] >= bbox[3]:
        raise BadExportRequest(f"bbox {params['bbox']!r} is empty: xmin < xmax and ymin < ymax are needed")
    width, height = (int(v) for v in _numbers(params.get("size") or "400,400", 2, "size"))
    if not (1 <= width <= MAX_IMAGE_SIZE and 1 <= height <= MAX_IMAGE_SIZE):
        raise BadExportRequest(f"size must be 1-{MAX_IMAGE_SIZE} pixels each way, got {width},{height}")
    from cacheorch.tiling import WEB_MERCATOR_WKIDS
    sr = cache.scheme.spatial_reference
    own = {sr.wkid, sr.latest_wkid, sr.epsg} - {None}
    for key in ("bboxsr", "imagesr"):
        wkid = _wkid(params.get(key, ""))
        if wkid is not None and wkid not in own and not (sr.is_web_mercator and wkid in WEB_MERCATOR_WKIDS):
            raise BadExportRequest(f"{key[:-2]}SR {wkid} is not the cache's spatial reference ({sr}); "
                              "this server does not reproject")
    fmt = (params.get("format") or "png").lower()
    if fmt not in IMAGE_FORMATS:
        raise BadExportRequest(f"format {fmt} is not served; use one of {', '.join(IMAGE_FORMATS)}")
    if f != "image":
        resolution = max((bbox[2] - bbox[0]) / width, (bbox[3] - bbox[1]) / height)
        doc = {"href": f"{path}?{urlencode({**params, 'f': 'image'})}", "width": width,
               "height": height,
               "extent": {"xmin": bbox[0], "ymin": bbox[1], "xmax": bbox[2], "ymax": bbox[3],
                          "spatialReference": sr.to_json()},
               "scale": cache.scheme.scale_of(resolution)}
        return "application/json; charset=utf-8", json.dumps(doc, indent=2 if f == "pjson" else None).encode()
    resolution = min((bbox[2] - bbox[0]) / width, (bbox[3] - bbox[1]) / height)
    level = pick_level(cache.scheme, levels, resolution)
    image = stitch(cache.scheme, cache.get_tile, level, bbox, width, height)
    pil_format, mode, content_type = IMAGE_FORMATS[fmt]
    transparent = (params.get("transparent") or "false").lower() == "true"
    if mode == "RGB" or not transparent and fmt != "png32":
        from PIL import Image
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image).convert(mode if mode == "RGB" else "RGBA")
    out = io.BytesIO()
    image.save(out, pil_format, **({"quality": 90} if pil_format == "JPEG" else {}))
    return content_type, out.getvalue()

"""Test helpers that read caches with GDAL's ESRIC driver (through rasterio), not with cacheorch.

An independent reader is the point: a writer and a reader from the same hands can agree on the
same mistake. Import as ``from _gdal import ...`` (tests/ is on sys.path via conftest.py, or run
pytest with ``PYTHONPATH=tests``).
"""
from __future__ import annotations

import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile

from cacheorch.formats.png import encode_png
from cacheorch.tiling import TilingScheme

__all__ = ["gdal_path", "open_gdal", "read_tile", "tile_centre_rgba", "decode_rgba", "solid_png",
           "colour_of"]


def gdal_path(output: Path) -> str:
    """What to hand GDAL: a folder cache's conf.xml (any case), or the package itself."""
    output = Path(output)
    if output.is_dir():
        for entry in output.iterdir():
            if entry.name.lower() == "conf.xml":
                return str(entry)
        raise FileNotFoundError(f"no conf.xml in {output}")
    return str(output)


def open_gdal(output: Path, **open_options: Any) -> rasterio.io.DatasetReader:
    """Open a cache or package with the ESRIC driver only (never another driver by accident)."""
    return rasterio.open(gdal_path(output), driver="ESRIC", **open_options)


def read_tile(ds: rasterio.io.DatasetReader, scheme: TilingScheme, level: int, row: int, col: int
              ) -> np.ndarray:
    """The pixels GDAL shows for one tile, at the tile's own resolution (bands, rows, cols).

    The window comes from the tile's map bounds and the dataset's geotransform, so it is right
    whether GDAL exposes the whole grid or crops to a package's fullExtent; reading it decimated
    to the tile size makes GDAL use the overview that is that level.
    """
    window = ds.window(*scheme.tile_bounds(level, row, col))
    return ds.read(window=window, out_shape=(ds.count, scheme.tile_rows, scheme.tile_cols),
                   resampling=Resampling.nearest, boundless=False)


def tile_centre_rgba(ds: rasterio.io.DatasetReader, scheme: TilingScheme, level: int, row: int,
                     col: int) -> tuple[int, ...]:
    """The colour GDAL shows at the centre of a tile (robust to a fractional crop at the edges)."""
    pixels = read_tile(ds, scheme, level, row, col)
    return tuple(int(v) for v in pixels[:, scheme.tile_rows // 2, scheme.tile_cols // 2])


def decode_rgba(data: bytes) -> np.ndarray:
    """Decode one tile with GDAL and expand it the way ESRIC does (palette → RGBA, add alpha)."""
    with warnings.catch_warnings():  # a bare tile has no georeferencing, and needs none
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile(data) as mem, mem.open() as tile:
            return _expand(tile)


def _expand(tile: rasterio.io.DatasetReader) -> np.ndarray:
    pixels = tile.read()
    if tile.count == 1:
        try:
            cmap = tile.colormap(1)
        except ValueError:
            cmap = None
        if cmap:
            table = np.zeros((256, 4), dtype=np.uint8)
            for index, rgba in cmap.items():
                table[index] = rgba
            return np.moveaxis(table[pixels[0]], -1, 0)
        grey = pixels[0]
        return np.stack([grey, grey, grey, np.full_like(grey, 255)])
    if tile.count == 3:
        return np.concatenate([pixels, np.full_like(pixels[:1], 255)])
    return pixels


def solid_png(rgb: tuple[int, int, int], size: int = 256) -> bytes:
    """A one-colour PNG tile (compresses to well under a kilobyte)."""
    return encode_png(size, size, bytes(rgb) * (size * size), level=1)


def colour_of(level: int, row: int, col: int) -> tuple[int, int, int]:
    """A colour unique to (level, row, col) within the small grids tests use."""
    h = zlib.crc32(f"{level}/{row}/{col}".encode())
    return (h & 0xFF, (h >> 8) & 0xFF, (h >> 16) & 0xFF)

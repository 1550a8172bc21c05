"""The tpkx/tpk thumbnail is a picture of the package's own tiles, not a plain colour."""
from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from _gdal import decode_rgba, solid_png
from _tiles import write_tiles
from test_preview import QUADRANTS, quadrant_tiles

from cacheorch.interfaces import ExportRequest, Service
from cacheorch.plugins.export_tpk import TpkExporter
from cacheorch.plugins.export_tpkx import THUMBNAIL_SIZE, TpkxExporter
from cacheorch.tiling import WEB_MERCATOR_HALF, web_mercator_scheme

MEMBER = {"tpkx": "thumbnail.png", "tpk": "esriinfo/thumbnail/thumbnail.png"}


def _export(exporter, output: Path, tiles: dict, extent) -> bytes:
    scheme = web_mercator_scheme(6)
    levels = sorted({k[0] for k in tiles})
    request = ExportRequest(output=output, service=Service(location="test://", scheme=scheme, name="t"),
                            scheme=scheme.with_levels(levels), levels=tuple(scheme.lod(n) for n in levels),
                            mode="create", extent=extent)
    session = exporter().open(request)
    write_tiles(session, tiles)
    with zipfile.ZipFile(session.commit()) as zf:
        return zf.read(MEMBER[exporter.name])


@pytest.mark.parametrize("exporter", [TpkxExporter, TpkExporter])
def test_thumbnail_shows_the_tiles_in_place(exporter, tmp_path: Path) -> None:
    world = (-WEB_MERCATOR_HALF, -WEB_MERCATOR_HALF, WEB_MERCATOR_HALF, WEB_MERCATOR_HALF)
    png = _export(exporter, tmp_path / f"q.{exporter.name}", quadrant_tiles(), world)
    pixels = decode_rgba(png)  # GDAL's PNG driver, not Pillow
    width, height = THUMBNAIL_SIZE
    assert pixels.shape[1:] == (height, width)
    # the world is square: it spans the thumbnail's height, centred; white beside it
    side = height
    left = (width - side) // 2
    for (qr, qc), rgb in QUADRANTS.items():
        y = int(side * (0.25 + 0.5 * qr))
        x = left + int(side * (0.25 + 0.5 * qc))
        assert tuple(pixels[:3, y, x]) == rgb, ((qr, qc), tuple(pixels[:3, y, x]))
    assert tuple(pixels[:3, height // 2, 2]) == (255, 255, 255)


def test_thumbnail_of_an_area_uses_a_finer_level(tmp_path: Path) -> None:
    """Level 4 only, over one tile's area: that tile's colour fills the thumbnail."""
    scheme = web_mercator_scheme(6)
    tiles = {(4, 5, 8): solid_png((10, 120, 200)), (4, 5, 9): solid_png((200, 120, 10))}
    x0, y0, _, y1 = scheme.tile_bounds(4, 5, 8)
    _, _, x1, _ = scheme.tile_bounds(4, 5, 9)
    png = _export(TpkxExporter, tmp_path / "a.tpkx", tiles, (x0, y0, x1, y1))
    pixels = decode_rgba(png)
    assert tuple(pixels[:3, 66, 50]) == (10, 120, 200) and tuple(pixels[:3, 66, 150]) == (200, 120, 10)

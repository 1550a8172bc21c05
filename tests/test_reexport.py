"""A cache or package given as ``--service`` re-exports to .tpkx with byte-identical tiles.

For each real fixture (a .tpk, a .tpkx, a Compact V2 folder, a Compact V1 folder) the real CLI runs
``run --service PATH --levels ... --exporter tpkx --json``. Then:

* every tile of the output equals the source's tile byte for byte, and every source tile of those
  levels is in the output (the default area, the cache's own extent, covers them all);
* the source is read by someone else too: MapProxy's Compact V1 reader for V1 bundles, GDAL's ESRIC
  driver for V2 folders and .tpkx (decoded pixels of a few tiles);
* the output is read by GDAL's ESRIC driver, and shows the source tiles' pixels.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from _gdal import decode_rgba, open_gdal, read_tile
from _localcache import use_local_plugins
from cacheorch.formats.cache import open_cache

__all__ = ["use_local_plugins"]
pytestmark = pytest.mark.usefixtures("use_local_plugins")

CASES = [
    # (fixture, levels, the source's format as GDAL or MapProxy reads it)
    ("tpk_v1/states_filled.tpk", "0-4", "v1-package"),
    ("esri_tpkx_sample/Usa.tpkx", "2-5", "gdal"),
    ("esri_compactcache_sample", "0-2", "gdal"),
    ("gwc/compactcacheV1", "5-6", "v1-folder"),
]


def _levels(spec: str) -> list[int]:
    lo, hi = (int(v) for v in spec.split("-"))
    return list(range(lo, hi + 1))


def _tiles(path: Path, levels: list[int]) -> dict[tuple[int, int, int], bytes]:
    with open_cache(path) as cache:
        return {(lv, r, c): data for lv, br, bc in cache.bundle_keys() if lv in levels
                for r, c, data in cache.bundle_tiles(lv, br, bc)}


def _mapproxy_v1(alllayers: Path, levels: list[int]) -> dict[tuple[int, int, int], bytes]:
    """Every tile of the V1 bundles under ``alllayers`` as MapProxy reads them."""
    from mapproxy.cache.compact import BundleV1
    from mapproxy.cache.tile import Tile

    out: dict[tuple[int, int, int], bytes] = {}
    for level in levels:
        for bundle in sorted((alllayers / f"L{level:02d}").glob("*.bundle")):
            brow, bcol = int(bundle.stem[1:5], 16), int(bundle.stem[6:10], 16)
            tiles = [Tile((bcol + c, brow + r, level)) for r in range(128) for c in range(128)]
            BundleV1(str(bundle.with_suffix("")), offset=(bcol, brow)).load_tiles(tiles)
            out.update({(level, t.coord[1], t.coord[0]): t.image_result.as_buffer().read()
                        for t in tiles if t.image_result is not None})
    return out


def _inside(ds, bounds: tuple[float, float, float, float]) -> bool:
    left, bottom, right, top = ds.bounds  # GDAL crops a package to its extent
    xmin, ymin, xmax, ymax = bounds
    return xmin >= left - 1 and xmax <= right + 1 and ymin >= bottom - 1 and ymax <= top + 1


def _gdal_agrees(path: Path, tiles: dict[tuple[int, int, int], bytes], scheme, at_least: int) -> int:
    """Decoded pixels of (up to 3 per level) tiles equal what GDAL's ESRIC driver shows there."""
    checked = 0
    with open_gdal(path) as ds:
        per_level: dict[int, int] = {}
        for (level, row, col), data in sorted(tiles.items()):
            if per_level.get(level, 0) >= 3 or not _inside(ds, scheme.tile_bounds(level, row, col)):
                continue
            ours = decode_rgba(data)[:ds.count]
            assert np.array_equal(read_tile(ds, scheme, level, row, col), ours), (path, level, row, col)
            per_level[level] = per_level.get(level, 0) + 1
            checked += 1
    assert checked >= at_least, f"GDAL compared only {checked} tile(s) of {path}"
    return checked


@pytest.mark.parametrize("name, levels, reader", CASES, ids=[c[0] for c in CASES])
def test_reexport_is_byte_identical(cli, fixtures, tmp_path, name, levels, reader):
    source = fixtures / name
    wanted = _levels(levels)
    expected = _tiles(source, wanted)
    assert expected and {key[0] for key in expected} == set(wanted)

    # someone else reads the source the same way
    if reader == "v1-folder":
        assert _mapproxy_v1(source / "_alllayers", wanted) == expected
    elif reader == "v1-package":
        with zipfile.ZipFile(source) as zf:
            zf.extractall(tmp_path / "unzipped", [n for n in zf.namelist() if "_alllayers" in n])
        assert _mapproxy_v1(tmp_path / "unzipped" / "v101" / "Layers" / "_alllayers", wanted) == expected
    else:
        with open_cache(source) as cache:
            _gdal_agrees(source, expected, cache.scheme, at_least=len(wanted))

    output = tmp_path / "out.tpkx"
    result = cli("run", "--service", str(source), "--levels", levels, "--exporter", "tpkx",
                 "--output", str(output), "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "completed" and report["tiles_failed"] == 0
    assert report["tiles_written"] == len(expected)
    assert report["service"] == str(source.absolute())

    got = _tiles(output, wanted)
    assert got.keys() == expected.keys()
    assert all(got[key] == expected[key] for key in expected)  # byte for byte
    with zipfile.ZipFile(output) as zf:  # a package ArcGIS accepts: every member stored
        assert all(info.compress_type == zipfile.ZIP_STORED for info in zf.infolist())
    with open_cache(output) as cache:
        assert cache.levels_with_tiles() == wanted
        # GDAL crops a package to its extent, so only tiles wholly inside it are compared
        _gdal_agrees(output, got, cache.scheme, at_least=3)


def test_a_subset_of_a_cache_by_level_and_area(cli, fixtures, tmp_path):
    """Level 6 only, inside a box: only the source tiles meeting the box are exported."""
    source = fixtures / "gwc" / "compactcacheV1"
    expected = _tiles(source, [6])
    with open_cache(source) as cache:
        scheme = cache.scheme
    box = (-11_000_000.0, 4_000_000.0, -9_000_000.0, 5_000_000.0)
    min_row, min_col, max_row, max_col = scheme.tile_range(6, box)
    inside = {k: v for k, v in expected.items()
              if min_row <= k[1] <= max_row and min_col <= k[2] <= max_col}
    assert 0 < len(inside) < len(expected)
    output = tmp_path / "box.tpkx"
    result = cli("run", "--service", str(source), "--levels", "6", "--aoi",
                 "bbox:" + ",".join(str(v) for v in box), "--exporter", "tpkx",
                 "--output", str(output), "--json")
    assert result.code == 0, result.stderr
    assert _tiles(output, [6]) == inside


def test_malformed_records_of_usa_tpkx_are_not_copied(cli, fixtures, tmp_path):
    """L00/L01 of Esri's sample are damaged: the job ends partial, naming them; none is written."""
    source = fixtures / "esri_tpkx_sample" / "Usa.tpkx"
    output = tmp_path / "usa.tpkx"
    result = cli("run", "--service", str(source), "--levels", "0-2", "--exporter", "tpkx",
                 "--output", str(output), "--json")
    assert result.code == 1
    report = json.loads(result.stdout)
    assert report["status"] == "partial" and report["tiles_failed"] == 2
    errors = " ".join(str(e) for e in report["errors"])
    assert "is not an image" in errors and "level 0 row 0 col 0" in errors
    assert not output.exists()

    accepted = tmp_path / "usa-with-gaps.tpkx"
    result = cli("run", "--service", str(source), "--levels", "0-2", "--exporter", "tpkx",
                 "--output", str(accepted), "--allow-partial", "--json")
    assert json.loads(result.stdout)["tiles_written"] == len(_tiles(source, [2])) == 4
    assert _tiles(accepted, [0, 1, 2]) == _tiles(source, [2])

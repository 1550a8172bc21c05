"""The mbtiles and gpkg exporters: GDAL and plain SQLite read every tile where it belongs; resume; dedupe."""
from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import pytest
import rasterio
from _gdal import colour_of, solid_png, tile_centre_rgba
from test_end_to_end import _run, all_tiles
from test_export_formats import _by_bundle, _nztm, _request, _tiles, _write

from cacheorch.errors import ExportError, FormatError
from cacheorch.formats.blank import is_blank_tile
from cacheorch.formats.cache import open_cache
from cacheorch.formats.confxml import read_conf_xml
from cacheorch.formats.png import encode_png
from cacheorch.plugins.export_gpkg import GpkgExporter
from cacheorch.plugins.export_mbtiles import MBTilesExporter
from cacheorch.tiling import web_mercator_scheme

LEVELS = [0, 1, 2, 3, 5]


def _export(exporter, request, tiles, **options):
    session = exporter(exporter.Options(**options)).open(request)
    _write(session, tiles)
    return session, session.commit()


def _db(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


# -- MBTiles ----------------------------------------------------------------------------------------

def test_mbtiles_gdal_shows_every_tile_in_tms_order(tmp_path) -> None:
    scheme = web_mercator_scheme(10)
    extent = (-2e6, 3e6, 4e6, 9e6)
    tiles = _inside(scheme, LEVELS, extent, 256)
    session, out = _export(MBTilesExporter, _request(tmp_path / "out.mbtiles", scheme, LEVELS,
                                                     extent=extent), tiles)
    db = _db(out)
    meta = dict(db.execute("SELECT name, value FROM metadata"))
    assert {k: meta[k] for k in ("format", "minzoom", "maxzoom", "type", "version")} == \
        {"format": "png", "minzoom": "0", "maxzoom": "5", "type": "baselayer", "version": "1.0"}
    from pyproj import Transformer

    lon_lat = Transformer.from_crs(3857, 4326, always_xy=True).transform_bounds(*extent)
    assert [float(v) for v in meta["bounds"].split(",")] == pytest.approx(lon_lat, abs=1e-6)
    assert meta["center"].endswith(",0") and meta["name"] == "Test service"
    # TMS: ArcGIS row r of zoom z is tile_row 2^z - 1 - r
    for (z, r, c), data in list(tiles.items())[::17]:
        row = db.execute("SELECT tile_data FROM tiles WHERE zoom_level=? AND tile_column=? AND "
                         "tile_row=?", (z, c, 2 ** z - 1 - r)).fetchone()
        assert row is not None and bytes(row[0]) == data
    assert "cacheorch_bundles" not in {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    db.close()
    with rasterio.open(out, driver="MBTiles") as ds:
        assert ds.crs.to_epsg() == 3857
        for key in tiles:
            if key[0] == 5:
                assert tile_centre_rgba(ds, scheme, *key)[:3] == colour_of(*key), key
    assert all_tiles(out) == tiles  # our reader, through open_cache
    assert not list(tmp_path.glob("*.partial"))


def test_mbtiles_stores_identical_tiles_once(tmp_path) -> None:
    scheme = web_mercator_scheme(10)
    water = solid_png((20, 60, 200), 64)
    tiles = {(4, r, c): water if (r + c) % 3 else solid_png(colour_of(4, r, c), 64)
             for r in range(16) for c in range(16)}
    session, out = _export(MBTilesExporter, _request(tmp_path / "o.mbtiles", scheme, [4]), tiles)
    db = _db(out)
    images = db.execute("SELECT count(*) FROM images").fetchone()[0]
    placed = db.execute("SELECT count(*) FROM map").fetchone()[0]
    distinct = len(set(tiles.values()))
    assert placed == len(tiles) and images == distinct
    assert session.duplicates == len(tiles) - distinct
    with rasterio.open(out, driver="MBTiles") as ds:  # GDAL reads shared tiles at every place
        for key in [(4, 0, 1), (4, 0, 2), (4, 7, 8), (4, 15, 15)]:
            assert tile_centre_rgba(ds, scheme, *key)[:3] == \
                ((20, 60, 200) if sum(key[1:]) % 3 else colour_of(*key))


@pytest.mark.parametrize("make,why", [
    (lambda: _nztm(), "Web Mercator"),
    (lambda: web_mercator_scheme(5, tile_size=512), "256×256"),
])
def test_mbtiles_refuses_other_grids_and_points_to_gpkg(tmp_path, make, why) -> None:
    scheme = make()
    with pytest.raises(ExportError, match=why) as err:
        MBTilesExporter().open(_request(tmp_path / "x.mbtiles", scheme, [0, 1]))
    assert "gpkg" in str(err.value)
    assert not (tmp_path / "x.mbtiles.partial").exists()


def test_mbtiles_resume_trusts_the_bookkeeping_table(tmp_path) -> None:
    scheme = web_mercator_scheme(10)
    request = _request(tmp_path / "r.mbtiles", scheme, [8])
    tiles = {(8, r, c): solid_png(colour_of(8, r, c), 16)
             for r, c in [(0, 0), (1, 130), (129, 3), (200, 200)]}
    groups = _by_bundle(tiles)
    keys = list(groups)
    session = MBTilesExporter().open(request)
    _write(session, groups[keys[0]])
    half = session.open_bundle(*keys[1])
    half.add(1, 130, b"\x89PNG stale bytes")  # written, then the process dies
    session._conn.execute("COMMIT")  # the worst case: the partial bundle's tile reached disk
    session._in_tx = False
    session._conn.close()

    again = MBTilesExporter().open(request)
    assert again.has_bundle(*keys[0]) and not again.has_bundle(*keys[1])
    for key in keys[1:]:
        _write(again, groups[key])
    out = again.commit()
    assert all_tiles(out) == tiles
    db = _db(out)
    assert db.execute("SELECT count(*) FROM images").fetchone()[0] == len(tiles)  # stale one gone


# -- GeoPackage -------------------------------------------------------------------------------------

def _gpkg_tile_colours(out: Path, scheme, tiles) -> list[tuple]:
    """Tiles whose centre colour, as GDAL shows it at their own zoom level, is wrong."""
    bad = []
    for level in sorted({k[0] for k in tiles}):
        with rasterio.open(out, driver="GPKG", ZOOM_LEVEL=str(level)) as ds:
            assert ds.res[0] == pytest.approx(scheme.lod(level).resolution)
            bad += [k for k in tiles if k[0] == level
                    and tile_centre_rgba(ds, scheme, *k)[:3] != colour_of(*k)]
    return bad


def _inside(scheme, levels, extent, size):
    out = {}
    for level in levels:
        r0, c0, r1, c1 = scheme.tile_range(level, extent)
        out.update({(level, r, c): solid_png(colour_of(level, r, c), size)
                    for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)})
    return out


def test_gpkg_keeps_a_non_mercator_grid_as_it_is(fixtures, tmp_path) -> None:
    """NZTM from a real conf.xml: 512-px tiles, scales that do not halve, origin far from the data."""
    scheme = read_conf_xml(fixtures / "gwc" / "arcgis_10.1_conf.xml")
    levels = list(scheme.levels[:3])
    extent = (1100000, 4800000, 2100000, 6100000)
    tiles = _inside(scheme, levels, extent, scheme.tile_cols)
    _, out = _export(GpkgExporter, _request(tmp_path / "nz.gpkg", scheme, levels, extent=extent),
                     tiles)
    db = _db(out)
    assert db.execute("PRAGMA application_id").fetchone()[0] == 0x47504B47
    assert db.execute("PRAGMA user_version").fetchone()[0] in (10300, 10400)
    table, data_type, srs_id, *box = db.execute(
        "SELECT table_name, data_type, srs_id, min_x, min_y, max_x, max_y FROM gpkg_contents").fetchone()
    assert (table, data_type, srs_id) == ("nz", "tiles", 2193) and box == list(extent)
    org, code, wkt = db.execute("SELECT organization, organization_coordsys_id, definition FROM "
                                "gpkg_spatial_ref_sys WHERE srs_id = 2193").fetchone()
    assert (org, code) == ("EPSG", 2193) and "New Zealand" in wkt.replace("_", " ")
    min_x, max_y = db.execute("SELECT min_x, max_y FROM gpkg_tile_matrix_set").fetchone()
    assert (min_x, max_y) == (scheme.origin_x, scheme.origin_y)  # tile (0, 0) is ArcGIS's
    matrices = db.execute("SELECT zoom_level, tile_width, pixel_x_size FROM gpkg_tile_matrix "
                          "ORDER BY zoom_level").fetchall()
    assert matrices == [(lv, 512, scheme.lod(lv).resolution) for lv in levels]
    assert db.execute("SELECT extension_name FROM gpkg_extensions").fetchall() == [("gpkg_zoom_other",)]
    stored = {(z, r, c): bytes(d) for z, c, r, d in db.execute(
        "SELECT zoom_level, tile_column, tile_row, tile_data FROM nz")}
    assert stored == tiles  # rows from the top, exactly ArcGIS's
    db.close()
    assert _gpkg_tile_colours(out, scheme, tiles) == []
    with open_cache(out) as cache:  # and back through our reader, in the same grid
        assert cache.scheme.spatial_reference.epsg == 2193
        assert cache.scheme.levels == tuple(levels)
        assert [lod.resolution for lod in cache.scheme.lods] == [scheme.lod(lv).resolution for lv in levels]
    assert all_tiles(out) == tiles


def test_gpkg_web_mercator_opens_in_gdal_at_every_level(tmp_path) -> None:
    scheme = web_mercator_scheme(10)
    tiles = _tiles(LEVELS, per_side=8)
    _, out = _export(GpkgExporter, _request(tmp_path / "wm.gpkg", scheme, LEVELS), tiles)
    with rasterio.open(out, driver="GPKG") as ds:
        assert ds.crs.to_epsg() == 3857
        assert ds.bounds.left == pytest.approx(scheme.origin_x)
        assert ds.bounds.top == pytest.approx(scheme.origin_y)
    assert _gpkg_tile_colours(out, scheme, tiles) == []
    assert all_tiles(out) == tiles


def test_gpkg_geographic_grid(tmp_path) -> None:
    """A 4326 scheme (origin -180, 90; degrees), as ArcGIS GCS caches have."""
    from cacheorch.tiling import LevelOfDetail, SpatialReference, TilingScheme, scale_of

    lods = tuple(LevelOfDetail(n, scale_of(r, 96, "esriDecimalDegrees"), r)
                 for n, r in enumerate((0.3515625, 0.17578125, 0.087890625)))
    scheme = TilingScheme(-180.0, 90.0, 256, 256, 96, SpatialReference(4326, 4326), lods,
                          units="esriDecimalDegrees", tile_end=(180.0, -90.0))
    extent = (5.9, 45.8, 10.5, 47.8)
    tiles = _inside(scheme, [0, 1, 2], extent, 256)
    _, out = _export(GpkgExporter, _request(tmp_path / "geo.gpkg", scheme, [0, 1, 2], extent=extent),
                     tiles)
    assert _gpkg_tile_colours(out, scheme, tiles) == []
    with open_cache(out) as cache:
        assert cache.scheme.units == "esriDecimalDegrees"
    assert all_tiles(out) == tiles


def test_sqlite_that_is_not_a_tile_store_is_one_clear_error(tmp_path) -> None:
    path = tmp_path / "other.sqlite"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(FormatError, match="neither MBTiles nor a GeoPackage"):
        open_cache(path)


# -- blank tiles --------------------------------------------------------------------------------------

def _pillow_png(mode: str, colour, size=64, spot=None) -> bytes:
    from PIL import Image

    img = Image.new(mode, (size, size), colour)
    if mode == "P":
        img.putpalette(bytes(v for i in range(16) for v in (i * 16, 255 - i * 16, i)))
    if spot is not None:
        img.putpixel((size // 2, size // 3), spot)
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=False)
    return buf.getvalue()


@pytest.mark.parametrize("mode,colour,spot", [
    ("RGBA", (0, 0, 0, 0), (0, 0, 0, 1)),
    ("RGB", (170, 211, 223), (170, 211, 224)),
    ("L", 200, 201),
    ("P", 3, 4),
    ("1", 1, 0),
    ("I;16", 300, 301),
])
def test_blank_detection_is_exact(mode, colour, spot) -> None:
    assert is_blank_tile(_pillow_png(mode, colour))
    assert not is_blank_tile(_pillow_png(mode, colour, spot=spot))


def test_blank_detection_handles_every_png_filter() -> None:
    import struct
    import zlib

    def png(rows: bytes, size=4) -> bytes:
        def chunk(tag, data):
            return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
        head = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(rows))
                + chunk(b"IEND", b""))

    c = bytes((90, 40, 7))
    half = bytes(v - v // 2 for v in c)
    z = bytes(3)
    solid = {0: (c * 4, c * 4), 1: (c + z * 3, c + z * 3), 2: (c * 4, z * 4),
             3: (c + half * 3, half + z * 3), 4: (c + z * 3, z * 4)}
    for kind, (first, other) in solid.items():
        rows = bytes([kind]) + first + b"".join(bytes([kind]) + other for _ in range(3))
        assert is_blank_tile(png(rows)), kind
        broken = bytearray(rows)
        broken[-1] ^= 1
        assert not is_blank_tile(png(bytes(broken))), kind
    assert not is_blank_tile(b"\xff\xd8\xff\xe0" + bytes(100))  # JPEG: never called blank
    assert is_blank_tile(encode_png(8, 8, bytes(8 * 8 * 4), channels=4))


def test_skip_blank_in_gpkg_and_mbtiles_counts(tmp_path) -> None:
    scheme = web_mercator_scheme(10)
    transparent = encode_png(64, 64, bytes(64 * 64 * 4), channels=4)
    striped = encode_png(4, 4, (b"\x00\x00\x00" * 2 + b"\xff\xff\xff" * 2) * 4)
    tiles = {(3, r, c): transparent if r < 2 else striped for r in range(8) for c in range(8)}
    for exporter, name in ((GpkgExporter, "b.gpkg"), (MBTilesExporter, "b.mbtiles")):
        session, out = _export(exporter, _request(tmp_path / name, scheme, [3]), tiles,
                               skip_blank=True)
        assert session.skipped_blank == 16
        assert set(all_tiles(out)) == {k for k in tiles if k[1] >= 2}
    assert session.duplicates == 47  # mbtiles: 48 striped tiles, stored once


# -- end to end -------------------------------------------------------------------------------------

@pytest.mark.parametrize("exporter,name,driver", [("mbtiles", "f.mbtiles", "MBTiles"),
                                                  ("gpkg", "f.gpkg", "GPKG")])
def test_run_exports_sqlite_end_to_end(cli, server, world, area_file, tmp_path, exporter, name,
                                       driver) -> None:
    output = tmp_path / name
    result = _run(cli, server.url, area_file, exporter, output)
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "completed" and report["output"] == str(output)
    want = {(lv, r, c) for lv, keys in world["expected"].items() for r, c in keys} - world["missing"]
    found = all_tiles(output)
    assert set(found) == want and all(found[k] == world["tiles"][k] for k in want)
    scheme = world["scheme"]
    with rasterio.open(output, driver=driver) as ds:
        finest = max(k[0] for k in want)
        for key in sorted(k for k in want if k[0] == finest)[::5]:
            assert tile_centre_rgba(ds, scheme, *key)[:3] == colour_of(*key), key
    listing = cli("scales", str(output), "--json")
    assert listing.code == 0, listing.stderr
    assert max(lv["level"] for lv in json.loads(listing.stdout)["levels"]) == 8


from test_end_to_end import area_file, server, world  # noqa: E402,F401


def test_the_job_summary_counts_blank_and_duplicate_tiles(cli, tmp_path) -> None:
    """85 identical striped tiles → 84 duplicates; all-solid tiles with skip_blank → all left out.
    Both reach --json, the human summary and the catalog's job messages."""
    from _tileserver import TileServer
    from test_end_to_end import service_json
    scheme = web_mercator_scheme(3)
    striped = encode_png(4, 4, bytes([0, 0, 0, 255, 255, 255] * 8))
    with TileServer(default_tile=striped, service=service_json(scheme)) as srv:
        report = json.loads(cli("run", "--service", srv.url, "--levels", "0-3", "--exporter",
                                "mbtiles", "--output", str(tmp_path / "a.mbtiles"), "--json").stdout)
        assert (report["tiles_written"], report["tiles_deduplicated"]) == (85, 84)
        assert report["tiles_skipped_blank"] == 0
        human = cli("run", "--service", srv.url, "--levels", "0-2", "--exporter", "mbtiles",
                    "--output", str(tmp_path / "b.mbtiles"))
        assert human.code == 0 and "20 duplicates stored once" in human.stdout, human.stdout
    with TileServer(default_tile=solid_png((9, 9, 9)), service=service_json(scheme)) as srv:
        report = json.loads(cli("run", "--service", srv.url, "--levels", "0-2", "--exporter",
                                "gpkg:skip_blank=true", "--output", str(tmp_path / "c.gpkg"),
                                "--json").stdout)
    assert report["tiles_skipped_blank"] == 21 and report["status"] == "completed"
    with _db(tmp_path / "c.gpkg") as db:
        (table,) = db.execute("SELECT table_name FROM gpkg_contents").fetchone()
        assert db.execute(f'SELECT count(*) FROM "{table}"').fetchone() == (0,)
    messages = sqlite3.connect(tmp_path / "catalog.sqlite").execute(
        "SELECT message FROM job_messages ORDER BY id").fetchall()
    assert ("0 blank tile(s) left out, 84 duplicate tile(s) stored once",) in messages
    assert ("21 blank tile(s) left out, 0 duplicate tile(s) stored once",) in messages
    shown = json.loads(cli("job", str(report["job_id"]), "--json").stdout)["messages"]
    assert [(m["source"], m["message"]) for m in shown] == [
        ("exporter", "21 blank tile(s) left out, 0 duplicate tile(s) stored once")]
    assert "exporter summary: 21 blank tile(s) left out" in cli("job", str(report["job_id"])).stdout

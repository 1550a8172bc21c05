"""Vector tile layers end to end: a loopback VectorTileServer → vtpk / vector MBTiles, read back by GDAL.

The server's tiles are encoded by mapbox-vector-tile and carry their own address, so a tile
written under the wrong row or column, dropped or re-encoded shows up when GDAL's MVT driver
decodes it from the package; the style's sprites and glyph ranges must be inside.
"""
from __future__ import annotations

import gzip
import io
import json
import sqlite3
import zipfile
from pathlib import Path

import pyogrio
import pytest

from _vectorserver import DEFAULT_TILES, FONT, RANGES, VectorTileServer
from cacheorch.formats.bundle import BundleReader, parse_bundle_name
from cacheorch.vector import is_vector_tile_layer, vector_tile_service_url

LEVELS = "0-3"


def gdal_features(data: bytes) -> dict[str, list[str]]:
    """Layer → the ``tile`` attribute of each feature, as GDAL's MVT driver decodes the tile."""
    raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    out = {}
    for name, _ in pyogrio.list_layers(io.BytesIO(raw)):
        table = pyogrio.raw.read(io.BytesIO(raw), layer=name, columns=["tile"])
        out[str(name)] = [str(v) for v in table[3][0]]
    return out


def vtpk_tiles(path: Path) -> dict[tuple[int, int, int], bytes]:
    """Every tile of a vtpk, read through each bundle's index (our reader of Compact V2)."""
    out = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.filename.endswith(".bundle"):
                level = int(info.filename.split("/")[-2][1:])
                brow, bcol = parse_bundle_name(info.filename.rsplit("/", 1)[1])
                reader = BundleReader(io.BytesIO(zf.read(info)), bundle_row=brow, bundle_col=bcol)
                for row, col, data in reader.tiles():
                    out[(level, row, col)] = data
    return out


@pytest.fixture
def server():
    with VectorTileServer() as srv:
        yield srv


def test_scales_reads_the_vector_scheme(cli, server):
    result = cli("scales", server.url, "--json")
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    text = json.dumps(data)
    assert "VectorTileServer" in text and "512" in text
    plan = cli("plan", "--service", server.url, "--levels", LEVELS, "--exporter", "vtpk", "--json")
    assert plan.code == 0, plan.stderr
    levels = json.loads(plan.stdout)["levels"]
    assert [lv["level"] for lv in levels] == [0, 1, 2, 3]
    assert levels[1]["resolution"] == pytest.approx(39135.758482)  # raster level 2's


@pytest.mark.parametrize("encoding", ["gzip", "http", "raw"])
def test_vtpk_holds_every_tile_as_served_with_style_sprites_glyphs(cli, server, tmp_path, encoding):
    server.encoding = encoding
    out = tmp_path / "streets.vtpk"
    result = cli("run", "--service", server.url, "--levels", LEVELS, "--exporter", "vtpk",
                 "--output", str(out))
    assert result.code == 0, result.stderr + result.stdout
    # the tilemap drove the fetch: only the tiles that exist were asked for
    assert server.tile_requests() == len(DEFAULT_TILES)
    tiles = vtpk_tiles(out)
    assert set(tiles) == set(DEFAULT_TILES)
    for key, data in tiles.items():
        assert data[:2] == b"\x1f\x8b", key  # bundles hold gzip
        assert gzip.decompress(data) == server.served(key), key
        features = gdal_features(data)
        assert set(features) == {"water", "roads", "places"}, key
        assert all(v == "/".join(map(str, key)) for vals in features.values() for v in vals), key
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
        style = json.loads(zf.read("p12/resources/styles/root.json"))
        index = json.loads(zf.read("p12/tilemap/root.json"))
        root = json.loads(zf.read("p12/root.json"))
        for suffix in (".json", ".png", "@2x.json", "@2x.png"):
            assert f"p12/resources/sprites/sprite{suffix}" in names
        for rng in RANGES:
            assert zf.read(f"p12/resources/fonts/{FONT}/{rng}.pbf") == \
                server.resources[f"fonts/{FONT}/{rng}.pbf"]
        assert {"esriinfo/iteminfo.xml", "esriinfo/item.pkinfo",
                "esriinfo/thumbnail/thumbnail.png", "p12/metadata.json"} <= names
    assert style["sprite"] == "../sprites/sprite"
    assert style["glyphs"] == "../fonts/{fontstack}/{range}.pbf"
    assert style["sources"]["esri"] == {"type": "vector", "url": "../../"}
    assert index == server.index
    assert (root["minLOD"], root["maxLOD"], root["maxzoom"]) == (0, 15, 3)  # the whole table
    assert root["resourceInfo"]["cacheInfo"]["storageInfo"]["packetSize"] == 128
    assert root["tileInfo"]["rows"] == 512
    verify = cli("verify", str(out))
    assert verify.code == 0, verify.stdout + verify.stderr
    assert "17 tiles" in verify.stdout


def test_vector_mbtiles_gdal_lists_layers_and_tiles_match(cli, server, tmp_path):
    out = tmp_path / "streets.mbtiles"
    result = cli("run", "--service", server.url, "--levels", LEVELS, "--exporter", "mbtiles",
                 "--output", str(out))
    assert result.code == 0, result.stderr + result.stdout
    layers = {str(name) for name, _ in pyogrio.list_layers(out)}
    assert layers == {"water", "roads", "places"}
    info = pyogrio.read_info(out, layer="places")
    assert info["crs"] == "EPSG:3857" and "label" in list(info["fields"])
    conn = sqlite3.connect(out)
    meta = dict(conn.execute("SELECT name, value FROM metadata"))
    assert meta["format"] == "pbf"
    ids = {layer["id"] for layer in json.loads(meta["json"])["vector_layers"]}
    assert ids == layers
    rows = conn.execute("SELECT zoom_level, tile_column, tile_row, tile_data FROM tiles").fetchall()
    assert len(rows) == len(DEFAULT_TILES)
    for zoom, col, tms, data in rows:
        key = (zoom, (1 << zoom) - 1 - tms, col)
        assert gzip.decompress(data) == server.served(key), key
        features = gdal_features(data)
        assert features["places"] == ["/".join(map(str, key))]
    conn.close()
    verify = cli("verify", str(out))
    assert verify.code == 0, verify.stdout + verify.stderr


def test_token_is_sent_for_json_tiles_and_resources(cli, tmp_path, monkeypatch):
    with VectorTileServer(token="s3cret") as srv:
        out = tmp_path / "t.vtpk"
        refused = cli("run", "--service", srv.url, "--levels", "0-1", "--exporter", "vtpk",
                      "--output", str(out))
        assert refused.code != 0 and "token" in (refused.stderr + refused.stdout).lower()
        monkeypatch.setenv("ARCGIS_TOKEN", "s3cret")
        result = cli("run", "--service", srv.url, "--levels", "0-1", "--exporter", "vtpk",
                     "--output", str(out))
        assert result.code == 0, result.stderr + result.stdout
        assert "s3cret" not in result.stdout + result.stderr
        assert len(vtpk_tiles(out)) == 5


@pytest.mark.parametrize("drop, named", [
    ("sprites/sprite@2x.png", "sprite@2x.png"),
    (f"fonts/{FONT}/256-511.pbf", "256-511"),
])
def test_missing_style_resource_is_named_and_nothing_is_written(cli, tmp_path, drop, named):
    with VectorTileServer(drop=[drop]) as srv:
        out = tmp_path / "s.vtpk"
        result = cli("run", "--service", srv.url, "--levels", LEVELS, "--exporter", "vtpk",
                     "--output", str(out))
        assert result.code != 0
        assert named in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert not out.exists()
        assert srv.tile_requests() == 0  # resources are checked before any tile is fetched


def test_undecodable_tile_and_tilemap_hole_are_named(cli, tmp_path):
    with VectorTileServer(bad_tiles=[(2, 1, 1)], tilemap_extra=[(3, 0, 0)]) as srv:
        out = tmp_path / "s.vtpk"
        result = cli("run", "--service", srv.url, "--levels", LEVELS, "--exporter", "vtpk",
                     "--output", str(out))
        assert result.code == 1
        assert not out.exists()  # a package with holes is never written
        job = cli("job", "1")
        text = job.stdout + job.stderr
        assert "not a vector tile" in text and "row 1 col 1" in text
        assert "tilemap lists this tile" in text and "row 0 col 0" in text


def test_verify_names_a_tile_that_does_not_decode_and_a_missing_glyph(cli, server, tmp_path):
    out = tmp_path / "s.vtpk"
    assert cli("run", "--service", server.url, "--levels", LEVELS, "--exporter", "vtpk",
               "--output", str(out)).code == 0
    broken = tmp_path / "broken.vtpk"
    with zipfile.ZipFile(out) as src, zipfile.ZipFile(broken, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == f"p12/resources/fonts/{FONT}/256-511.pbf":
                continue
            if info.filename == "p12/tile/L01/R0000C0000.bundle":
                reader = BundleReader(io.BytesIO(data))
                offset, size = reader.entry(1, 0)
                bad = gzip.compress(b"\x1a\x03abc")[:size].ljust(size, b"\0")
                data = data[:offset] + bad + data[offset + size:]
            dst.writestr(info, data)
    result = cli("verify", str(broken))
    assert result.code == 1
    assert "L01/R0000C0000.bundle: tile does not decode as a vector tile: row 1 col 0" in result.stdout
    assert "256-511.pbf" in result.stdout


def test_vector_layer_classification_for_maps():
    url = "https://basemaps.arcgis.com/arcgis/rest/services/World_Basemap_v2/VectorTileServer"
    assert vector_tile_service_url(url + "/resources/styles/root.json?f=json") == url
    assert is_vector_tile_layer({"layerType": "VectorTileLayer", "styleUrl": url + "/resources/styles"})
    assert not is_vector_tile_layer({"layerType": "VectorTileLayer",
                                     "styleUrl": "https://www.arcgis.com/sharing/rest/content/items/"
                                                 "abc/resources/styles/root.json"})
    assert not is_vector_tile_layer("https://host/arcgis/rest/services/Roads/MapServer")
    assert not is_vector_tile_layer({"layerType": "ArcGISTiledMapServiceLayer", "url": url})


def test_index_block_agrees_with_tile_lookups():
    """The bundle-wide presence grid (one subtree walk) equals per-tile lookups, 2s included."""
    import random

    from cacheorch.vector.quadtree import QuadIndex, build_index
    rng = random.Random(7)
    keys = {(0, 0, 0)}
    for _ in range(300):
        level = rng.randint(1, 10)
        keys.add((level, rng.randrange(1 << level), rng.randrange(1 << level)))
    data = build_index(keys)
    data["index"][3] = 2  # the SE quadrant kept elsewhere
    index = QuadIndex.parse(data)
    for level in (3, 8, 10):
        for top in range(0, 1 << level, 128 if level >= 7 else 1 << level):
            for left in range(0, 1 << level, 128 if level >= 7 else 1 << level):
                size = 128 if level >= 7 else 8
                grid = index.block(level, top, left, size)
                for r in range(min(size, 1 << level)):
                    for c in range(min(size, 1 << level)):
                        assert grid[r, c] == (index.has(level, top + r, left + c) is not False), \
                            (level, top + r, left + c)
    assert index.has(10, 1000, 1000) is None  # in the SE quadrant
    present = {k for k in keys if k[0] == 0 or k[1] < 1 << (k[0] - 1) or k[2] < 1 << (k[0] - 1)}
    assert all(index.has(*k) for k in present)


def test_rest_export_tiles_of_a_vector_layer_gives_the_servers_vtpk(cli, tmp_path):
    with VectorTileServer(export=True) as srv:
        plan = cli("plan", "--service", srv.url, "--levels", "0-2",
                   "--exporter", "rest-export-tiles")
        assert plan.code == 0, plan.stderr
        out = tmp_path / "exported.vtpk"
        result = cli("run", "--service", srv.url, "--levels", "0-2", "--exporter",
                     "rest-export-tiles", "--output", str(out), "--json")
        assert result.code == 0, result.stderr + result.stdout
        params = srv.export_params[0]
        assert params["exportBy"] == "levelId" and params["levels"] == "0-2"
        assert json.loads(params["exportExtent"])["spatialReference"]["wkid"] == 102100
        assert "rings" in json.loads(params["polygon"])
    report = json.loads(result.stdout)
    written = {lv["level"]: lv["tiles_written"] for lv in report["levels"]}
    assert written == {0: 1, 1: 4, 2: 8}
    assert set(vtpk_tiles(out)) == {k for k in DEFAULT_TILES if k[0] <= 2}
    assert cli("verify", str(out)).code == 0


def test_compact_v2_of_a_vector_layer_is_the_unpacked_tree(cli, server, tmp_path):
    out = tmp_path / "streets-cache"
    result = cli("run", "--service", server.url, "--levels", LEVELS, "--exporter", "compact-v2",
                 "--output", str(out))
    assert result.code == 0, result.stderr + result.stdout
    assert json.loads((out / "root.json").read_text())["tileInfo"]["format"] == "pbf"
    assert (out / "resources" / "sprites" / "sprite@2x.png").is_file()
    assert (out / "resources" / "fonts" / FONT / "256-511.pbf").is_file()
    assert json.loads((out / "tilemap" / "root.json").read_text()) == server.index
    assert not list(out.rglob(".cacheorch*")) and not list(out.rglob(".resources*"))
    tiles = {}
    for path in sorted((out / "tile").glob("L*/*.bundle")):
        with BundleReader(path) as reader:
            for row, col, data in reader.tiles():
                tiles[(int(path.parent.name[1:]), row, col)] = data
    assert set(tiles) == set(DEFAULT_TILES)
    assert all(gzip.decompress(d) == server.served(k) for k, d in tiles.items())
    verify = cli("verify", str(out))
    assert verify.code == 0, verify.stdout + verify.stderr


def test_exporters_that_cannot_hold_the_tiles_are_refused_at_plan_time(cli, server, tmp_path):
    for exporter in ("tpkx", "gpkg", "exploded"):
        result = cli("run", "--service", server.url, "--levels", "0-1", "--exporter", exporter,
                     "--output", str(tmp_path / f"x-{exporter}"))
        assert result.code == 2 and "vector tile layer" in result.stderr, result.stderr
        assert not (tmp_path / f"x-{exporter}").exists()
    assert server.tile_requests() == 0
    raster = cli("plan", "--service", "defaults", "--levels", "0-2", "--exporter", "vtpk")
    assert raster.code == 2 and "writes vector tile layers" in raster.stderr


def test_font_stacks_of_plain_lists_and_expressions():
    from cacheorch.vector.resources import font_stacks
    style = {"layers": [
        {"layout": {"text-field": "{a}", "text-font": ["Arial Bold"]}},
        {"layout": {"text-field": "{a}", "text-font": ["step", ["zoom"], ["literal", ["Arial Regular"]],
                                                       10, ["literal", ["Tahoma Regular"]]]}},
        {"layout": {"text-field": "{a}"}},                     # MapLibre's default stack
        {"layout": {"icon-image": "dot", "text-font": ["Unused Font"]}},  # no text drawn
    ]}
    assert font_stacks(style) == ("Arial Bold", "Arial Regular",
                                  "Open Sans Regular,Arial Unicode MS Regular", "Tahoma Regular")


def test_verify_names_tilemap_entries_without_tiles(cli, server, tmp_path):
    from cacheorch.vector.quadtree import build_index
    out = tmp_path / "s.vtpk"
    assert cli("run", "--service", server.url, "--levels", LEVELS, "--exporter", "vtpk",
               "--output", str(out)).code == 0
    assert cli("verify", str(out), "--job", "1").code == 0
    broken = tmp_path / "broken.vtpk"
    with zipfile.ZipFile(out) as src, zipfile.ZipFile(broken, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "p12/tilemap/root.json":
                data = json.dumps(build_index([*DEFAULT_TILES, (3, 0, 0)])).encode()
            dst.writestr(info, data)
    result = cli("verify", str(broken))
    assert result.code == 1
    assert "tilemap: lists tile 3/0/0 but no bundle holds it" in result.stdout


def test_glyph_ranges_are_probed_when_the_service_lists_no_resources(cli, tmp_path):
    with VectorTileServer(drop=["info/root.json"]) as srv:
        out = tmp_path / "s.vtpk"
        result = cli("run", "--service", srv.url, "--levels", "0-1", "--exporter", "vtpk",
                     "--output", str(out))
        assert result.code == 0, result.stderr
        probed = [p for p in srv.requests if "/fonts/" in p]
    assert len(probed) == 256  # every range of the Basic Multilingual Plane, once
    with zipfile.ZipFile(out) as zf:
        fonts = sorted(n for n in zf.namelist() if n.startswith("p12/resources/fonts/") and
                       n.endswith(".pbf"))
    assert fonts == [f"p12/resources/fonts/{FONT}/{rng}.pbf" for rng in RANGES]


def test_a_vtpk_is_a_source_converted_offline_to_mbtiles_and_subset(cli, server, tmp_path):
    out = tmp_path / "s.vtpk"
    assert cli("run", "--service", server.url, "--levels", LEVELS, "--exporter", "vtpk",
               "--output", str(out)).code == 0
    before = server.tile_requests()
    scales = cli("scales", str(out))
    assert scales.code == 0 and "VectorTileServer" in scales.stdout
    mbtiles = tmp_path / "s.mbtiles"
    assert cli("run", "--service", str(out), "--levels", LEVELS, "--exporter", "mbtiles",
               "--output", str(mbtiles)).code == 0
    assert {str(n) for n, _ in pyogrio.list_layers(mbtiles)} == {"water", "roads", "places"}
    sub = tmp_path / "sub.vtpk"
    result = cli("run", "--service", str(out), "--levels", "2-3", "--exporter", "vtpk",
                 "--output", str(sub))
    assert result.code == 0, result.stderr
    assert server.tile_requests() == before  # nothing asked of the server
    assert set(vtpk_tiles(sub)) == {k for k in DEFAULT_TILES if k[0] >= 2}
    with zipfile.ZipFile(out) as a, zipfile.ZipFile(sub) as b:
        for name in a.namelist():
            if "/resources/" in name and not name.endswith("/"):
                assert a.read(name) == b.read(name), name
    assert cli("verify", str(sub)).code == 0


_RES0_3978 = 135373.49015576235
#: A 512-px EPSG:3978 vector grid, as in QGIS's ESRI fixture (spec §1.2).
CANADA_TILE_INFO = {"rows": 512, "cols": 512, "dpi": 96, "format": "pbf",
                    "origin": {"x": -34655613.4787, "y": 38474944.6448},
                    "spatialReference": {"wkid": 3978, "latestWkid": 3978},
                    "lods": [{"level": z, "resolution": _RES0_3978 / 2 ** z,
                              "scale": _RES0_3978 / 2 ** z * 96 * 39.37} for z in range(0, 15)]}


def test_a_non_web_mercator_layer_goes_to_vtpk_and_is_refused_by_mbtiles(cli, tmp_path):
    """EPSG:3978 as in QGIS's ESRI fixture (spec §1.2): vtpk keeps any grid, MBTiles cannot."""
    with VectorTileServer(tile_info=CANADA_TILE_INFO) as srv:
        out = tmp_path / "canada.vtpk"
        result = cli("run", "--service", srv.url, "--levels", LEVELS, "--exporter", "vtpk",
                     "--output", str(out))
        assert result.code == 0, result.stderr + result.stdout
        refused = cli("run", "--service", srv.url, "--levels", LEVELS, "--exporter", "mbtiles",
                      "--output", str(tmp_path / "canada.mbtiles"))
    assert refused.code != 0 and "Web Mercator" in refused.stderr + refused.stdout
    assert not (tmp_path / "canada.mbtiles").exists()
    tiles = vtpk_tiles(out)
    assert tiles and all(gzip.decompress(d) == srv.served(k) for k, d in tiles.items())
    with zipfile.ZipFile(out) as zf:
        root = json.loads(zf.read("p12/root.json"))
    assert root["tileInfo"]["spatialReference"]["wkid"] == 3978
    assert root["tileInfo"]["origin"] == {"x": -34655613.4787, "y": 38474944.6448}
    assert cli("verify", str(out)).code == 0

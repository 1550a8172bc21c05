"""Vector tile layers of a map are exported (vtpk, or vector MBTiles for QGIS-bound maps) next to
its raster layers, against loopback services: tiles decoded and compared with what was served."""
from __future__ import annotations

import gzip
import json
import sqlite3
from pathlib import Path

import mapbox_vector_tile
import pytest

from _maps import LEVELS, MapServices, gdal_tiles_differ
from _vectorserver import DEFAULT_TILES, VectorTileServer
from test_maps import _qgis_opens, qgs_text
from test_vector import CANADA_TILE_INFO, gdal_features, vtpk_tiles

#: The vector tiles of levels 0-2 (the map's --levels): 1 + 4 + 8.
SERVED = {key for key in DEFAULT_TILES if key[0] in LEVELS}
PORTAL_STYLE = "http://127.0.0.1:9/sharing/rest/content/items/abc/resources/styles/root.json"


@pytest.fixture
def services():
    with MapServices() as svc, VectorTileServer() as vector:
        svc.vector = vector
        yield svc


def webmap(svc: MapServices) -> dict:
    """A raster basemap, a vector tile layer (by its style URL), a portal-item style, a feature
    layer; bottom first, as web maps store them."""
    return {
        "operationalLayers": [
            {"id": "Streets_1", "layerType": "VectorTileLayer", "title": "Streets (vector)",
             "styleUrl": svc.vector.url + "/resources/styles/root.json", "opacity": 0.9},
            {"id": "Style_2", "layerType": "VectorTileLayer", "title": "Portal style",
             "styleUrl": PORTAL_STYLE, "itemId": "abc"},
            {"id": "Parcels_3", "layerType": "ArcGISFeatureLayer", "title": "Parcels",
             "url": "http://127.0.0.1:9/arcgis/rest/services/P/FeatureServer/0"}],
        "baseMap": {"title": "Topo", "baseMapLayers": [
            {"id": "Topo_4", "layerType": "ArcGISTiledMapServiceLayer", "url": svc.url("Topo"),
             "title": "Topo"}]},
        "spatialReference": {"wkid": 102100}, "version": "2.11"}


def _map_file(tmp_path: Path, data: dict, name: str = "town.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _check_vector_tiles(tiles: dict[tuple[int, int, int], bytes], server: VectorTileServer) -> None:
    """Every served tile of the levels asked for is there, as served, and decodes (GDAL's MVT
    driver and mapbox-vector-tile) to features that name their own tile."""
    assert set(tiles) == SERVED
    for key, data in tiles.items():
        raw = gzip.decompress(data)
        assert raw == server.served(key), key
        name = "/".join(map(str, key))
        assert set(gdal_features(data)) == {"water", "roads", "places"}, key
        assert all(v == name for vals in gdal_features(data).values() for v in vals), key
        decoded = mapbox_vector_tile.decode(raw, default_options={"y_coord_down": True})
        assert decoded["places"]["features"][0]["properties"]["tile"] == name, key


def mbtiles_tiles(path: Path) -> dict[tuple[int, int, int], bytes]:
    """Every tile of an MBTiles by (level, row, col): its TMS rows turned to Esri's."""
    db = sqlite3.connect(path)
    rows = db.execute("SELECT zoom_level, tile_column, tile_row, tile_data FROM tiles").fetchall()
    db.close()
    return {(z, (1 << z) - 1 - tms, col): data for z, col, tms, data in rows}


def test_web_map_vector_tile_layer_goes_to_vtpk(cli, services, tmp_path) -> None:
    path = _map_file(tmp_path, webmap(services))
    res = cli("run", "--map", str(path), "--levels", "0-2", "-o", "out", "--json")
    assert res.code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["status"] == "completed"
    layers = {lyr["title"]: lyr for lyr in data["layers"]}
    assert [lyr["title"] for lyr in data["layers"]] == ["Parcels", "Portal style",
                                                        "Streets (vector)", "Topo"]
    assert "feature layer" in layers["Parcels"]["reason"]
    assert "portal item" in layers["Portal style"]["reason"]
    assert layers["Streets (vector)"]["status"] == "completed"
    folder = tmp_path / "out"
    manifest = json.loads((folder / "map.json").read_text())
    entries = {e["title"]: e for e in manifest["layers"]}
    vector, topo = entries["Streets (vector)"], entries["Topo"]
    assert vector["exporter"] == "vtpk" and vector["output"] == "Streets_vector.vtpk"
    assert vector["url"] == services.vector.url and vector["kind"] == "vector-tile"
    assert vector["opacity"] == 0.9 and vector["tiles_written"] == len(SERVED)
    assert [lv["level"] for lv in vector["levels"]] == list(LEVELS)
    assert topo["exporter"] == "tpkx" and topo["tiles_written"] == len(services.tiles["Topo"])
    assert entries["Portal style"]["status"] == "skipped" and "reason" in entries["Portal style"]
    assert gdal_tiles_differ(folder / topo["output"], services.tiles["Topo"]) == []
    _check_vector_tiles(vtpk_tiles(folder / vector["output"]), services.vector)
    res = cli("verify", "out")
    assert res.code == 0, res.stdout + res.stderr


def test_a_map_for_qgis_gets_vector_mbtiles(cli, services, tmp_path) -> None:
    path = _map_file(tmp_path, webmap(services))
    res = cli("plan", "--map", str(path), "--levels", "0-2", "--exporter", "gpkg")
    assert res.code == 0, res.stderr
    assert "Streets_vector.mbtiles (exporter mbtiles)" in res.stdout
    assert "Topo.gpkg (exporter gpkg)" in res.stdout
    res = cli("run", "--map", str(path), "--levels", "0-2", "--exporter", "gpkg", "-o", "q",
              "--json")
    assert res.code == 0, res.stderr
    entries = {e["title"]: e for e in json.loads((tmp_path / "q" / "map.json").read_text())[
        "layers"]}
    assert entries["Streets (vector)"]["exporter"] == "mbtiles"
    assert gdal_tiles_differ(tmp_path / "q" / "Topo.gpkg", services.tiles["Topo"]) == []
    _check_vector_tiles(mbtiles_tiles(tmp_path / "q" / "Streets_vector.mbtiles"), services.vector)


def test_a_grid_mbtiles_cannot_hold_goes_to_vtpk(cli, services, tmp_path) -> None:
    """A map for QGIS (gpkg) whose vector layer is not on the Web Mercator grid: its layer gets
    vtpk at plan time rather than an MBTiles job that would fail when it starts."""
    with VectorTileServer(tile_info=CANADA_TILE_INFO) as canada:
        path = _map_file(tmp_path, {"operationalLayers": [
            {"id": "C", "layerType": "VectorTileLayer", "url": canada.url, "title": "Canada"}]})
        res = cli("run", "--map", str(path), "--levels", "0-1", "--exporter", "gpkg", "-o", "c",
                  "--json")
    assert res.code == 0, res.stderr
    layer = json.loads(res.stdout)["layers"][0]
    assert layer["exporter"] == "vtpk" and layer["output"].endswith("Canada.vtpk")
    tiles = vtpk_tiles(tmp_path / "c" / "Canada.vtpk")
    assert tiles and all(gzip.decompress(d) == canada.served(k) for k, d in tiles.items())


def test_scales_pick_each_layers_own_level(cli, services, tmp_path) -> None:
    """One scale, two schemes: raster (256 px) level 2 is vector (512 px) level 1 (spec
    vector-tiles §1.2); a .mapx's CIMVectorTileLayer is read from its style URL."""
    from test_maps import mapx
    doc = mapx(services)
    vt = doc["layerDefinitions"][-1]
    vt["dataConnection"]["uRI"] = services.vector.url + "/resources/styles/root.json"
    path = _map_file(tmp_path, doc, "field.mapx")
    res = cli("plan", "--map", str(path), "--scales", "147914381.897889", "--json")
    assert res.code == 0, res.stderr
    layers = {lyr["title"]: lyr for lyr in json.loads(res.stdout)["layers"]}
    assert [lv["level"] for lv in layers["Topo"]["levels"]] == [2]
    assert [lv["level"] for lv in layers["World Topographic Map"]["levels"]] == [1]
    assert layers["World Topographic Map"]["exporter"] == "vtpk"
    assert layers["World Topographic Map"]["service"] == services.vector.url
    for title in ("Topo", "World Topographic Map"):
        assert layers[title]["levels"][0]["scale"] == pytest.approx(147914381.897889)
    # --levels are each layer's own numbers: level 1 is a different scale in each
    res = cli("plan", "--map", str(path), "--levels", "1", "--json")
    layers = {lyr["title"]: lyr for lyr in json.loads(res.stdout)["layers"]}
    assert layers["Topo"]["levels"][0]["scale"] == pytest.approx(
        2 * layers["World Topographic Map"]["levels"][0]["scale"])


VECTOR_TREE = """    <layer-tree-layer expanded="1" providerKey="vectortile" checked="Qt::Checked" id="streets_vt_0123456789" source="{src}" name="Streets VT">
      <customproperties/>
    </layer-tree-layer>
"""
VECTOR_LAYER = """    <maplayer type="vector-tile" hasScaleBasedVisibilityFlag="0" minScale="1e+08" maxScale="0">
      <id>streets_vt_0123456789</id>
      <datasource>{src}</datasource>
      <layername>Streets VT</layername>
      <srs><spatialrefsys><wkt>{wkt}</wkt><authid>EPSG:3857</authid></spatialrefsys></srs>
      <provider>vectortile</provider>
      <renderer type="basic"><styles/></renderer>
      <blendMode>0</blendMode>
      <layerOpacity>0.6</layerOpacity>
    </maplayer>
"""


def test_qgis_vector_tile_layer_reads_local_vector_mbtiles(cli, services, tmp_path) -> None:
    """A QGIS ``vectortile`` layer of an ArcGIS VectorTileServer (the datasource QGIS 3.22
    saves) is exported to vector MBTiles; the offline project reads it with
    ``type=mbtiles&url=./x.mbtiles``, and QGIS (when installed) finds the layer valid."""
    from pyproj import CRS
    wkt = CRS.from_epsg(3857).to_wkt().replace('"', "&quot;")
    src = f"type=xyz&amp;serviceType=arcgis&amp;url={services.vector.url}"
    text = qgs_text(services)
    text = text.replace("<customproperties/>\n", "<customproperties/>\n" +
                        VECTOR_TREE.format(src=src), 1)
    text = text.replace("  </projectlayers>", VECTOR_LAYER.format(src=src, wkt=wkt) +
                        "  </projectlayers>")
    path = tmp_path / "survey.qgs"
    path.write_text(text, encoding="utf-8")
    res = cli("run", "--map", str(path), "--levels", "0-2", "-o", "offline", "--json")
    assert res.code == 0, res.stderr
    layers = {lyr["title"]: lyr for lyr in json.loads(res.stdout)["layers"]}
    assert layers["Streets VT"]["status"] == "completed"
    assert layers["Streets VT"]["exporter"] == "mbtiles"
    assert layers["Roads"]["exporter"] == "gpkg"
    copy = tmp_path / "offline" / "survey-offline.qgs"
    edited = copy.read_text(encoding="utf-8")
    assert "<datasource>type=mbtiles&amp;url=./Streets_VT.mbtiles</datasource>" in edited
    assert 'providerKey="vectortile"' in edited and "<provider>vectortile</provider>" in edited
    assert services.vector.url not in edited.split("<projectlayers>")[1]
    _qgis_opens(copy, {"Streets VT", "Roads", "Topo XYZ", "OpenStreetMap"},
                {"Streets VT": "vectortile", "Roads": "gdal", "Topo XYZ": "gdal"})


def test_a_vector_layer_down_when_planned_is_started_by_resume(cli, services, tmp_path) -> None:
    path = _map_file(tmp_path, webmap(services))
    served, services.vector.service = services.vector.service, None  # answers `null`
    res = cli("run", "--map", str(path), "--levels", "0-2", "--exporter", "mbtiles", "-o", "out",
              "--json")
    assert res.code == 1, res.stderr
    layers = {lyr["title"]: lyr for lyr in json.loads(res.stdout)["layers"]}
    assert layers["Streets (vector)"]["status"] == "failed"
    assert layers["Topo"]["status"] == "completed"
    services.vector.service = served  # the server is back
    res = cli("resume", "m1", "--json")
    assert res.code == 0, res.stderr
    layers = {lyr["title"]: lyr for lyr in json.loads(res.stdout)["layers"]}
    assert layers["Streets (vector)"]["status"] == "completed"
    assert layers["Streets (vector)"]["exporter"] == "mbtiles"
    _check_vector_tiles(mbtiles_tiles(tmp_path / "out" / "Streets_vector.mbtiles"),
                        services.vector)

"""Whole maps offline: a web map file, a portal item, a .mapx, a .qgs and a .qgz, exported against
loopback services; every output read back tile-exact with GDAL; skipped layers with reasons."""
from __future__ import annotations

import json
import sqlite3
import zipfile
from pathlib import Path

import pytest

from _maps import LEVELS, MapServices, Portal, gdal_tiles_differ

ITEM = "0123456789abcdef0123456789abcdef"


def webmap(svc: MapServices) -> dict:
    """A web map shaped like real ones: basemap + reference, groups, and layers to skip."""
    return {
        "operationalLayers": [
            {"id": "Soils_1", "layerType": "ArcGISMapServiceLayer", "url": svc.url("Soils"),
             "title": "Soils", "visibility": False, "opacity": 1},
            {"id": "Roads_2", "layerType": "ArcGISTiledMapServiceLayer", "url": svc.url("Roads"),
             "title": "Roads / Streets", "visibility": True, "opacity": 0.8},
            {"id": "Group_3", "layerType": "GroupLayer", "title": "Reference", "visibility": False,
             "opacity": 0.5, "layers": [
                 {"id": "Parcels_4", "layerType": "ArcGISFeatureLayer",
                  "url": "http://127.0.0.1:9/arcgis/rest/services/P/FeatureServer/0",
                  "title": "Parcels"},
                 {"id": "Cached_5", "layerType": "ArcGISTiledMapServiceLayer",
                  "url": svc.url("Soils"), "title": "Soils tiles"}]}],
        "baseMap": {"title": "Topographic", "baseMapLayers": [
            {"id": "Topo_6", "layerType": "ArcGISTiledMapServiceLayer", "url": svc.url("Topo"),
             "visibility": True, "opacity": 1, "title": "Topo"},
            {"id": "VectorTile_7", "layerType": "VectorTileLayer",
             "styleUrl": "http://127.0.0.1:9/sharing/rest/content/items/x/resources/styles/"
                         "root.json", "title": "Streets (vector)"},
            {"id": "Hillshade_8", "layerType": "WebTiledLayer", "isReference": True,
             "templateUrl": svc.url("Hillshade") + "/tile/{level}/{row}/{col}",
             "title": "Hillshade"}]},
        "spatialReference": {"wkid": 102100, "latestWkid": 3857},
        "authoringApp": "WebMapViewer", "version": "2.11"}


@pytest.fixture
def services():
    with MapServices() as svc:
        yield svc


def _check_outputs(folder: Path, svc: MapServices, expect: dict[str, str]) -> dict:
    """map.json lists each exported layer's output; GDAL reads each back tile-exact."""
    manifest = json.loads((folder / "map.json").read_text())
    outputs = {e["title"]: e for e in manifest["layers"] if e["status"] == "completed"}
    assert set(outputs) == set(expect)
    for title, server in expect.items():
        path = folder / outputs[title]["output"]
        assert path.exists(), path
        assert gdal_tiles_differ(path, svc.tiles[server]) == [], title
        assert [lv["level"] for lv in outputs[title]["levels"]] == list(LEVELS)
        assert outputs[title]["tiles_written"] == len(svc.tiles[server])
    return manifest


def test_web_map_file_end_to_end(cli, services, tmp_path) -> None:
    path = tmp_path / "town.json"
    path.write_text(json.dumps(webmap(services)))
    res = cli("run", "--map", str(path), "--levels", "0-2", "--output", "out", "--json")
    assert res.code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["status"] == "completed"
    titles = [lyr["title"] for lyr in data["layers"]]
    # top first: reference basemap layer, operational layers (top first), basemap layers
    assert titles == ["Hillshade", "Soils tiles", "Parcels", "Roads / Streets", "Soils",
                      "Streets (vector)", "Topo"]
    by_title = {lyr["title"]: lyr for lyr in data["layers"]}
    assert by_title["Hillshade"]["role"] == "reference" and by_title["Topo"]["role"] == "basemap"
    assert by_title["Roads / Streets"]["role"] == "operational"
    # an exported layer is exactly run --json of one service, plus title, url and role
    roads = by_title["Roads / Streets"]
    for key in ("job_id", "status", "output", "levels", "errors", "tiles_written", "exporter"):
        assert key in roads
    assert roads["url"] == services.url("Roads") and roads["status"] == "completed"
    reasons = {t: by_title[t].get("reason", "") for t in by_title
               if by_title[t]["status"] == "skipped"}
    assert "dynamic map service" in reasons["Soils"]
    assert "feature layer" in reasons["Parcels"]
    assert "not cached" in reasons["Soils tiles"]
    assert "vector tile" in reasons["Streets (vector)"]
    manifest = _check_outputs(tmp_path / "out", services,
                              {"Hillshade": "Hillshade", "Roads / Streets": "Roads",
                               "Topo": "Topo"})
    entry = next(e for e in manifest["layers"] if e["title"] == "Roads / Streets")
    assert entry["output"] == "Roads_Streets.tpkx" and entry["opacity"] == 0.8
    soils = next(e for e in manifest["layers"] if e["title"] == "Soils tiles")
    assert soils["visibility"] is False and soils["opacity"] == 0.5 and soils["group"] == ["Reference"]
    # the catalog: one map job owning three layer jobs; jobs groups them; job mID lists layers
    res = cli("jobs", "--json")
    maps = json.loads(res.stdout)["maps"]
    assert len(maps) == 1 and len(maps[0]["jobs"]) == 3 and maps[0]["status"] == "completed"
    res = cli("jobs")
    assert res.code == 0 and "m1" in res.stdout and "(map: town)" in res.stdout
    res = cli("job", "m1")
    assert res.code == 0 and "Soils: skipped: a dynamic map service" in res.stdout
    res = cli("verify", "out")
    assert res.code == 0, res.stdout + res.stderr
    assert res.stdout.count(": ") >= 3


def test_plan_explains_each_layer(cli, services, tmp_path) -> None:
    path = tmp_path / "town.json"
    path.write_text(json.dumps(webmap(services)))
    res = cli("plan", "--map", str(path), "--levels", "1-2", "--json")
    assert res.code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["status"] == "planned" and data["map"]["exported"] == 3
    topo = next(lyr for lyr in data["layers"] if lyr["title"] == "Topo")
    assert [lv["level"] for lv in topo["levels"]] == [1, 2]
    assert topo["policies"] and "levels" in topo["policies"][0]
    assert not Path("town").exists()  # plan writes nothing
    res = cli("plan", "--map", str(path), "--levels", "1-2")
    assert res.code == 0
    assert "policy" in res.stdout and "skipped: a feature layer" in res.stdout
    assert "levels 0 dropped by levels 1-2" in res.stdout


def test_portal_item_with_token(cli, services, tmp_path, monkeypatch) -> None:
    info = {"id": ITEM, "title": "Town basemap", "type": "Web Map", "owner": "me"}
    with Portal({ITEM: (info, webmap(services))}, token="s3cret-token") as portal:
        url = f"{portal.root}/home/item.html?id={ITEM}"
        res = cli("plan", "--map", url, "--levels", "0")
        assert res.code == 2 and "token" in res.stderr and len(res.stderr.splitlines()) == 1
        monkeypatch.setenv("ARCGIS_TOKEN", "s3cret-token")
        for form in (f"{portal.root}/apps/mapviewer/index.html?webmap={ITEM}",
                     f"{portal.root}/home/webmap/viewer.html?webmap={ITEM}"):
            res = cli("plan", "--map", form, "--levels", "0", "--json")
            assert res.code == 0, res.stderr
            assert json.loads(res.stdout)["map"]["title"] == "Town basemap"
        res = cli("run", "--map", f"{portal.root}/sharing/rest/content/items/{ITEM}",
                  "--levels", "0-2", "-o", "portal-out", "--json")
        assert res.code == 0, res.stderr
        assert all(p.split("?")[0].endswith((ITEM, ITEM + "/data")) for p in portal.log)
    _check_outputs(tmp_path / "portal-out", services,
                   {"Hillshade": "Hillshade", "Roads / Streets": "Roads", "Topo": "Topo"})
    for where in (tmp_path / "portal-out" / "map.json", tmp_path / "catalog.sqlite"):
        assert b"s3cret-token" not in where.read_bytes()


def test_portal_item_that_is_not_a_web_map(cli) -> None:
    info = {"id": ITEM, "title": "Roads", "type": "Map Service"}
    with Portal({ITEM: (info, {})}) as portal:
        res = cli("plan", "--map", f"{portal.root}/home/item.html?id={ITEM}", "--levels", "0")
    assert res.code == 2 and "is a Map Service, not a web map" in res.stderr


def mapx(svc: MapServices) -> dict:
    """A Pro 3.x .mapx shaped like the real one in spec/maps.md §2.1."""
    def tiled(uri, name, url, role, visible=True, transparency=0):
        return {"type": "CIMTiledServiceLayer", "name": name, "uRI": uri, "layerType": role,
                "visibility": visible, "transparency": transparency,
                "serviceConnection": {"type": "CIMAGSServiceConnection", "objectName": name,
                                      "objectType": "MapServer", "url": url,
                                      "serverConnection": {"type": "CIMInternetServerConnection",
                                                           "anonymous": True, "url": url}}}
    return {
        "type": "CIMMapDocument", "version": "3.5.0", "build": 57366,
        "mapDefinition": {"type": "CIMMap", "name": "Field map", "uRI": "CIMPATH=map/map.json",
                          "layers": ["CIMPATH=g.json", "CIMPATH=topo.json", "CIMPATH=vt.json"]},
        "layerDefinitions": [
            {"type": "CIMGroupLayer", "name": "Overlays", "uRI": "CIMPATH=g.json",
             "layerType": "Operational", "visibility": True, "transparency": 50,
             "layers": ["CIMPATH=roads.json", "CIMPATH=feat.json"]},
            tiled("CIMPATH=roads.json", "Roads", svc.url("Roads"), "Operational"),
            {"type": "CIMFeatureLayer", "name": "Parcels", "uRI": "CIMPATH=feat.json",
             "layerType": "Operational", "visibility": True},
            tiled("CIMPATH=topo.json", "Topo", svc.url("Topo"), "BasemapBackground"),
            {"type": "CIMVectorTileLayer", "name": "World Topographic Map", "uRI": "CIMPATH=vt.json",
             "layerType": "BasemapBackground", "visibility": True,
             "dataConnection": {"type": "CIMVectorTileDataConnection",
                                "uRI": "https://cdn.arcgis.com/sharing/rest/content/items/x/"
                                       "resources/styles/root.json"}}]}


def test_mapx(cli, services, tmp_path) -> None:
    path = tmp_path / "field.mapx"
    path.write_text(json.dumps(mapx(services)))
    res = cli("run", "--map", str(path), "--levels", "0-2", "--exporter", "gpkg", "-o", "pro",
              "--json")
    assert res.code == 0, res.stderr
    data = json.loads(res.stdout)
    assert [lyr["title"] for lyr in data["layers"]] == ["Roads", "Parcels", "Topo",
                                                        "World Topographic Map"]
    assert data["layers"][2]["role"] == "basemap"
    manifest = _check_outputs(tmp_path / "pro", services, {"Roads": "Roads", "Topo": "Topo"})
    assert manifest["layers"][0]["opacity"] == 0.5 and manifest["layers"][0]["group"] == ["Overlays"]


def test_aprx_without_arcpy(cli, services, tmp_path) -> None:
    """A Pro 3.x .aprx is a zip of JSON CIM members (CIMPATH=x names member x)."""
    doc = mapx(services)
    path = tmp_path / "field.aprx"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("GISProject.json", json.dumps({"type": "CIMGISProject"}))
        z.writestr("map/map.json", json.dumps(doc["mapDefinition"]))
        for definition in doc["layerDefinitions"]:
            z.writestr(definition["uRI"].removeprefix("CIMPATH="), json.dumps(definition))
    res = cli("run", "--map", str(path), "--levels", "0-2", "-o", "aprx", "--json")
    assert res.code == 0, res.stderr
    assert [lyr["title"] for lyr in json.loads(res.stdout)["layers"]] == \
        ["Roads", "Parcels", "Topo", "World Topographic Map"]
    _check_outputs(tmp_path / "aprx", services, {"Roads": "Roads", "Topo": "Topo"})
    old = tmp_path / "old.aprx"
    with zipfile.ZipFile(old, "w") as z:
        z.writestr("GISProject.xml", "<GISProject/>")
        z.writestr("layers/layers.xml", "<CIMMap/>")
    res = cli("plan", "--map", str(old), "--levels", "0")
    assert res.code == 2 and "Pro 2.x" in res.stderr


QGS = """<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis projectname="Field survey" version="3.22.16-Białowieża">
  <homePath path=""/>
  <title>Field survey</title>
  <!-- kept as it is -->
  <projectCrs>
    <spatialrefsys><wkt>{wkt}</wkt><authid>EPSG:3857</authid></spatialrefsys>
  </projectCrs>
  <layer-tree-group>
    <customproperties/>
    <layer-tree-layer expanded="1" providerKey="arcgismapserver" checked="Qt::Checked" id="roads_ams_0123456789" source="{roads_src}" name="Roads">
      <customproperties/>
    </layer-tree-layer>
    <layer-tree-group name="Basemaps" checked="Qt::Checked" expanded="1">
      <layer-tree-layer expanded="1" providerKey="wms" checked="Qt::Unchecked" id="topo_xyz_0123456789" source="{topo_src}" name="Topo XYZ">
        <customproperties/>
      </layer-tree-layer>
      <layer-tree-layer expanded="1" providerKey="wms" checked="Qt::Checked" id="osm_xyz_0123456789" source="{osm_src}" name="OpenStreetMap">
        <customproperties/>
      </layer-tree-layer>
    </layer-tree-group>
  </layer-tree-group>
  <projectlayers>
{maplayers}
  </projectlayers>
  <properties>
    <SpatialRefSys><ProjectionsEnabled type="int">1</ProjectionsEnabled></SpatialRefSys>
  </properties>
</qgis>
"""


MAPLAYER = """    <maplayer type="raster" hasScaleBasedVisibilityFlag="0" minScale="1e+08" maxScale="0">
      <id>{id}</id>
      <datasource>{source}</datasource>
      <layername>{name}</layername>
      <srs><spatialrefsys><wkt>{wkt}</wkt><authid>EPSG:3857</authid></spatialrefsys></srs>
      <provider encoding="">{provider}</provider>
      <pipe>
        <rasterrenderer alphaBand="-1" type="singlebandcolordata" opacity="{opacity}" band="1" nodataColor="">
          <rasterTransparency/>
        </rasterrenderer>
      </pipe>
    </maplayer>"""


def qgs_text(svc: MapServices) -> str:
    from pyproj import CRS
    wkt = CRS.from_epsg(3857).to_wkt().replace('"', "&quot;")
    roads = f"crs='EPSG:3857' format='PNG32' layer='' url='{svc.url('Roads')}'"
    topo = ("type=xyz&amp;url=" + svc.url("Topo").replace(":", "%3A").replace("/", "%2F")
            + "/tile/%7Bz%7D/%7By%7D/%7Bx%7D&amp;zmax=2&amp;zmin=0")
    osm = "type=xyz&amp;url=https://tile.openstreetmap.org/%7Bz%7D/%7Bx%7D/%7By%7D.png&amp;zmax=19&amp;zmin=0"
    layers = "\n".join(MAPLAYER.format(id=i, source=src, name=name, wkt=wkt, provider=prov,
                                       opacity=op)
                        for i, src, name, prov, op in (
                            ("roads_ams_0123456789", roads, "Roads", "arcgismapserver", "0.75"),
                            ("topo_xyz_0123456789", topo, "Topo XYZ", "wms", "1"),
                            ("osm_xyz_0123456789", osm, "OpenStreetMap", "wms", "1")))
    return QGS.format(wkt=wkt, roads_src=roads, topo_src=topo, osm_src=osm, maplayers=layers)


@pytest.mark.parametrize("suffix", [".qgs", ".qgz"])
def test_qgis_project(cli, services, tmp_path, suffix) -> None:
    text = qgs_text(services)
    path = tmp_path / f"survey{suffix}"
    if suffix == ".qgs":
        path.write_text(text, encoding="utf-8")
    else:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("survey.qgs", text)
    res = cli("run", "--map", str(path), "--levels", "0-2", "-o", "offline", "--json")
    assert res.code == 0, res.stderr
    data = json.loads(res.stdout)
    assert [lyr["status"] for lyr in data["layers"]] == ["completed", "completed", "skipped"]
    assert "template is not an ArcGIS" in data["layers"][2]["reason"]
    folder = tmp_path / "offline"
    _check_outputs(folder, services, {"Roads": "Roads", "Topo XYZ": "Topo"})
    copy = folder / f"survey-offline{suffix}"
    assert copy.exists()
    if suffix == ".qgz":
        with zipfile.ZipFile(copy) as z:
            edited = z.read("survey-offline.qgs").decode()
    else:
        edited = copy.read_text(encoding="utf-8")
    assert "<datasource>./Roads.gpkg</datasource>" in edited
    assert "<datasource>./Topo_XYZ.gpkg</datasource>" in edited
    assert "tile.openstreetmap.org" in edited  # the skipped layer stays as it was
    assert "<!-- kept as it is -->" in edited
    # nothing but the exported layers' source, provider and renderer changed
    changed = [line for a, line in zip(text.splitlines(), edited.splitlines()) if a != line]
    assert len(text.splitlines()) == len(edited.splitlines())
    assert all(("gdal" in line or "datasource" in line or "multibandcolor" in line)
               for line in changed), changed
    assert 'opacity="0.75"' in edited
    _qgis_opens(copy, {"Roads", "Topo XYZ", "OpenStreetMap"})


def _qgis_opens(project: Path, names: set[str], local: dict[str, str] | None = None) -> None:
    """QGIS (Debian's python3-qgis, headless) opens the offline project and its local layers
    (``local``: name → provider) are valid with a valid CRS; without QGIS, GDAL opens every
    local GDAL datasource instead."""
    import shutil
    import subprocess
    script = r"""
import json, os, sys
os.environ["QT_QPA_PLATFORM"] = "offscreen"
from qgis.core import QgsApplication, QgsProject
app = QgsApplication([], False); app.initQgis()
p = QgsProject.instance(); ok = p.read(sys.argv[1])
out = {"read": ok, "layers": {}}
for node in p.layerTreeRoot().findLayers():
    lyr = node.layer()
    out["layers"][node.name()] = {"valid": bool(lyr and lyr.isValid()),
                                 "crs": bool(lyr and lyr.crs().isValid()),
                                 "provider": lyr.providerType() if lyr else None,
                                 "source": lyr.source() if lyr else None}
print(json.dumps(out)); sys.stdout.flush(); os._exit(0)
"""
    python = shutil.which("python3", path="/usr/bin")
    probe = subprocess.run([python, "-c", "import qgis.core"], capture_output=True) \
        if python else None
    if probe is None or probe.returncode != 0:
        import rasterio
        text = project.read_text() if project.suffix == ".qgs" else \
            zipfile.ZipFile(project).read(project.stem + ".qgs").decode()
        import re
        for source in re.findall(r"<datasource>(\./[^<]+)</datasource>", text):
            with rasterio.open(project.parent / source) as ds:
                assert ds.count >= 3
        pytest.skip("QGIS (python3-qgis) not installed: checked every local datasource with GDAL")
    res = subprocess.run([python, "-c", script, str(project)], capture_output=True, text=True,
                         timeout=120, env={"QT_QPA_PLATFORM": "offscreen", "HOME": "/tmp",
                                           "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["read"] and set(result["layers"]) == names
    for name, provider in (local or {"Roads": "gdal", "Topo XYZ": "gdal"}).items():
        layer = result["layers"][name]
        assert layer["valid"] and layer["crs"] and layer["provider"] == provider, (name, layer)
        assert str(project.parent) in layer["source"], layer


def test_map_without_cached_layers(cli, services, tmp_path) -> None:
    data = webmap(services)
    data["operationalLayers"] = data["operationalLayers"][:1]
    data["baseMap"]["baseMapLayers"] = data["baseMap"]["baseMapLayers"][1:2]
    path = tmp_path / "none.json"
    path.write_text(json.dumps(data))
    res = cli("run", "--map", str(path), "--levels", "0", "-o", "x")
    assert res.code == 2 and len(res.stderr.splitlines()) == 1
    assert "no cached tiled layer" in res.stderr and "Soils (a dynamic map service" in res.stderr
    assert not (tmp_path / "x").exists()
    # a tiled layer whose service turns out not to be cached is no cached tiled layer either
    data["operationalLayers"] = webmap(services)["operationalLayers"][2]["layers"][1:]
    path.write_text(json.dumps(data))
    res = cli("run", "--map", str(path), "--levels", "0", "-o", "x")
    assert res.code == 2 and "Soils tiles (a tiled layer whose service is not cached" in res.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("name, content, message", [
    ("bad.json", "{not json", "not valid JSON"),
    ("list.json", "[1, 2]", "not a web map"),
    ("bad.mapx", '{"type": "CIMLayerDocument"}', "not an ArcGIS Pro map document"),
    ("bad.qgs", "<qgis><projectlayers>", "not a QGIS project"),
    ("other.qgs", "<html/>", "not a QGIS project"),
    ("evil.qgs", '<!DOCTYPE qgis [<!ENTITY a "aaaa">]><qgis>&a;</qgis>', "declares XML entities"),
    ("empty.qgz", None, "holds no .qgs project"),
    ("broken.qgz", "not a zip", "not a readable .qgz"),
    ("missing.json", False, "no such file"),
    ("map.mxd", "x", "ArcMap document (.mxd) needs arcpy"),
    ("map.aprx", "PK", "not a readable ArcGIS Pro project"),
    ("map.txt", "x", "maps readable here: ArcGIS Pro 3.x project (.aprx), ArcGIS Pro map file (.mapx)"),
])
def test_bad_maps_exit_2_with_one_line(cli, tmp_path, name, content, message) -> None:
    path = tmp_path / name
    if content is None:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("readme.txt", "no project here")
    elif content is not False:
        path.write_text(content)
    res = cli("plan", "--map", str(path), "--levels", "0")
    assert res.code == 2, res
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert message in res.stderr


def test_a_layer_whose_server_fails_fails_alone_then_resumes(cli, tmp_path) -> None:
    with MapServices(down=("Roads",)) as services:
        path = tmp_path / "town.json"
        path.write_text(json.dumps(webmap(services)))
        res = cli("run", "--map", str(path), "--levels", "0-2", "-o", "out", "--json",
                  "--max-failure-rate", "1")
        assert res.code == 1, res.stderr
        data = json.loads(res.stdout)
        status = {lyr["title"]: lyr["status"] for lyr in data["layers"]}
        assert status["Topo"] == "completed" and status["Hillshade"] == "completed"
        assert status["Roads / Streets"] in ("partial", "failed") and data["status"] == "partial"
        manifest = json.loads((tmp_path / "out" / "map.json").read_text())
        assert manifest["status"] == "partial"
        services.servers["Roads"].fail_always.clear()  # the server recovers
        res = cli("resume", "m1", "--json")
        assert res.code == 0, res.stderr
        assert json.loads(res.stdout)["status"] == "completed"
    _check_outputs(tmp_path / "out", services,
                   {"Hillshade": "Hillshade", "Roads / Streets": "Roads", "Topo": "Topo"})
    res = cli("resume", "m1")
    assert res.code == 2 and "already completed" in res.stderr


def test_per_layer_overrides_in_the_config(cli, services, tmp_path) -> None:
    path = tmp_path / "town.json"
    path.write_text(json.dumps(webmap(services)))
    (tmp_path / "maps.ini").write_text(
        "[job:town]\n"
        f"map = {path.name}\n"
        "levels = 0-2\n"
        "output = town-out\n"
        "layer.Topo.levels = 0-1\n"
        "layer.Topo.exporter = mbtiles\n"
        "layer.Hillshade.skip = yes\n")
    res = cli("--config", str(tmp_path / "maps.ini"), "plan", "town", "--json")
    assert res.code == 0, res.stderr
    layers = {lyr["title"]: lyr for lyr in json.loads(res.stdout)["layers"]}
    assert [lv["level"] for lv in layers["Topo"]["levels"]] == [0, 1]
    assert layers["Topo"]["exporter"] == "mbtiles" and layers["Topo"]["output"].endswith(".mbtiles")
    assert layers["Hillshade"]["status"] == "skipped" and "skip" in layers["Hillshade"]["reason"]
    assert [lv["level"] for lv in layers["Roads / Streets"]["levels"]] == [0, 1, 2]
    (tmp_path / "bad.ini").write_text(f"[job:town]\nmap = {path.name}\nlevels = 0\n"
                                      "layer.Nope.levels = 1\n")
    res = cli("--config", str(tmp_path / "bad.ini"), "plan", "town")
    assert res.code == 2 and "no layer 'Nope'" in res.stderr


def test_catalog_links_layer_jobs_to_their_map(cli, services, tmp_path) -> None:
    path = tmp_path / "town.json"
    path.write_text(json.dumps(webmap(services)))
    assert cli("run", "--map", str(path), "--levels", "0", "-o", "o").code == 0
    db = sqlite3.connect(tmp_path / "catalog.sqlite")
    assert db.execute("SELECT count(*) FROM jobs WHERE map_id = 1").fetchone()[0] == 3
    assert db.execute("SELECT status FROM maps").fetchall() == [("completed",)]


def _two_layer_map(tmp_path: Path, *layers: tuple[str, str]) -> Path:
    """A web map file of tiled layers (title, url), bottom first."""
    data = {"operationalLayers": [{"id": title, "layerType": "ArcGISTiledMapServiceLayer",
                                   "url": url, "title": title} for title, url in layers],
            "baseMap": {"baseMapLayers": []}}
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    return path


def test_a_layer_the_token_cannot_read_is_skipped(cli, services, tmp_path) -> None:
    from _tileserver import TileServer
    refusing = {"error": {"code": 499, "message": "Token Required", "details": []}}
    with TileServer({}, name="Secret", service=refusing) as secret:
        path = _two_layer_map(tmp_path, ("Secret", secret.url), ("Topo", services.url("Topo")))
        res = cli("run", "--map", str(path), "--levels", "0", "-o", "o", "--json")
    assert res.code == 0, res.stderr
    secret_layer = json.loads(res.stdout)["layers"][1]
    assert secret_layer["status"] == "skipped"
    assert secret_layer["reason"].startswith("the token cannot read its service")
    res = cli("run", "--map", str(path), "--levels", "0", "-o", "o")
    assert res.code == 2 and "already exist" in res.stderr  # a second run refuses, writes nothing
    assert "map.json" in res.stderr


def test_file_safe_unique_names() -> None:
    from cacheorch.maps.plan import file_safe_names
    assert file_safe_names(["Roads / Streets", "roads_streets", "Über Karte", "..", "a" * 100]) == \
        ["Roads_Streets", "roads_streets-2", "Über_Karte", "layer", "a" * 80]


def test_a_layer_down_when_planned_is_started_by_resume(cli, services, tmp_path) -> None:
    from _maps import tiles_of
    from _tiles import mercator_service_json
    from _tileserver import TileServer
    with TileServer(tiles_of(7), name="Late", service=None) as late:
        path = _two_layer_map(tmp_path, ("Late", late.url), ("Topo", services.url("Topo")))
        res = cli("run", "--map", str(path), "--levels", "0-2", "-o", "out", "--json")
        assert res.code == 1, res.stderr
        layers = {lyr["title"]: lyr for lyr in json.loads(res.stdout)["layers"]}
        assert layers["Late"]["status"] == "failed" and "HTTP 404" in layers["Late"]["errors"][0]
        assert layers["Topo"]["status"] == "completed"
        late.service = mercator_service_json(max(LEVELS))  # the server is back
        res = cli("resume", "m1", "--json")
        assert res.code == 0, res.stderr
        assert [lyr["status"] for lyr in json.loads(res.stdout)["layers"]] == ["completed"] * 2
    services.tiles["Late"] = tiles_of(7)
    _check_outputs(tmp_path / "out", services, {"Late": "Late", "Topo": "Topo"})


def test_an_interrupted_map_resumes_the_layers_it_never_reached(cli, services, tmp_path,
                                                                  monkeypatch) -> None:
    import cacheorch.runner
    real = cacheorch.runner.run_job
    calls = []

    def interrupted(*args, **kw):
        calls.append(1)
        if len(calls) == 2:  # Ctrl-C while the second layer starts
            raise KeyboardInterrupt
        return real(*args, **kw)
    monkeypatch.setattr(cacheorch.runner, "run_job", interrupted)
    data = webmap(services)
    for layer in data["baseMap"]["baseMapLayers"]:  # all layers on one host: one after another
        layer.pop("templateUrl", None)
        layer.update(url=services.url("Topo"), layerType="ArcGISTiledMapServiceLayer")
    data["operationalLayers"][1]["url"] = services.url("Topo")
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    res = cli("run", "--map", str(path), "--levels", "0-1", "-o", "out")
    assert res.code == 1 and "interrupted" in res.stderr
    assert json.loads(cli("job", "m1", "--json").stdout)["status"] == "interrupted"
    monkeypatch.setattr(cacheorch.runner, "run_job", real)
    res = cli("resume", "m1", "--json")
    assert res.code == 0, res.stderr
    done = [lyr for lyr in json.loads(res.stdout)["layers"] if lyr["status"] == "completed"]
    assert len(done) == 4 and len({lyr["job_id"] for lyr in done}) == 4

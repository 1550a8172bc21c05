"""The ``rest`` source in full: ArcGIS Online hosted tile layers (``tileInfo.storageFormat``,
``minLOD``/``maxLOD``, ``TilesOnly,Tilemap``, ``tileServers``) parsed, shown and exported.

The hosted layer JSON below follows what ArcGIS Online answers for a hosted tile layer (the NYC
2020 orthophotos layer the spec describes): the storage mode inside ``tileInfo`` rather than in
``storageInfo``, a full 0-23 scheme of which only ``minLOD``..``maxLOD`` hold tiles, and several
tile hosts, one of them written protocol-relative.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from _gdal import colour_of, solid_png
from _tileserver import TileServer
from _tiles import mapproxy_tiles
from cacheorch.arcgis_json import service_from_json, tile_servers
from cacheorch.formats.bundle import BundleReader, parse_bundle_name
from cacheorch.tiling import web_mercator_scheme

HOSTED = "https://tiles.arcgis.com/tiles/yG5s3afENB5iO9fj/arcgis/rest/services/NYC_Orthos_2020/MapServer"
NAME = "NYC_Orthos_2020"


def hosted_json(min_lod: int = 10, max_lod: int = 20,
                servers: list[str] | None = None) -> dict[str, Any]:
    """An ArcGIS Online hosted tile layer's ``?f=json`` (shape of the 10.81 NYC layer)."""
    scheme = web_mercator_scheme(23, tile_format="JPEG")
    sr = {"wkid": 102100, "latestWkid": 3857}
    tile_info = scheme.to_json()
    tile_info.update(compressionQuality=75, storageFormat="esriMapCacheStorageModeCompactV2",
                     spatialReference=sr)
    extent = {"xmin": -8266124.9, "ymin": 4938583.4, "xmax": -8204866.2, "ymax": 4999842.1,
              "spatialReference": sr}
    return {
        "currentVersion": 10.81, "serviceDescription": "", "mapName": "Layers",
        "description": "", "copyrightText": "NYC Office of Technology and Innovation",
        "capabilities": "Map,TilesOnly,Tilemap",
        "layers": [{"id": 0, "name": NAME, "parentLayerId": -1, "defaultVisibility": True,
                    "subLayerIds": None, "minScale": 0, "maxScale": 0}],
        "tables": [], "spatialReference": sr, "singleFusedMapCache": True,
        "tileInfo": tile_info, "initialExtent": extent, "fullExtent": extent,
        "minScale": scheme.lod(min_lod).scale, "maxScale": scheme.lod(max_lod).scale,
        "minLOD": min_lod, "maxLOD": max_lod, "resampling": False, "units": "esriMeters",
        "supportedImageFormatTypes": "JPEG", "documentInfo": {"Title": "", "Author": ""},
        "exportTilesAllowed": True, "maxExportTilesCount": 100000,
        "serviceItemId": "5e1a2d0b9c7f4b7a9d1c0e2f3a4b5c6d",
        "tileServers": servers if servers is not None else [
            HOSTED, "//tiles1.arcgis.com/tiles/yG5s3afENB5iO9fj/arcgis/rest/services/"
                    f"{NAME}/MapServer"],
    }


def test_hosted_tile_layer_json() -> None:
    service = service_from_json(HOSTED, hosted_json())
    assert service.kind == "MapServer" and service.name == NAME
    assert service.storage_format == "esriMapCacheStorageModeCompactV2"
    assert service.capabilities == {"Map", "TilesOnly", "Tilemap"}
    assert service.scheme.levels == tuple(range(24))  # the scheme is kept whole
    assert service.scheme.tiled_levels == tuple(range(10, 21))
    assert service.scheme.tile_format == "JPEG" and service.scheme.compression_quality == 75
    assert service.tile_servers == (
        HOSTED, f"https://tiles1.arcgis.com/tiles/yG5s3afENB5iO9fj/arcgis/rest/services/{NAME}/MapServer")
    assert service.export_tiles_allowed and service.max_export_tiles_count == 100000


def test_storage_format_where_each_server_puts_it() -> None:
    base = hosted_json()
    server_111 = copy.deepcopy(base)
    del server_111["tileInfo"]["storageFormat"]
    server_111["storageInfo"] = {"storageFormat": "esriMapCacheStorageModeCompact", "packetSize": 128}
    assert service_from_json(HOSTED, server_111).storage_format == "esriMapCacheStorageModeCompact"
    old = copy.deepcopy(server_111)
    del old["storageInfo"]
    assert service_from_json(HOSTED, old).storage_format is None  # unknown: use /tile


def test_tile_servers_normalised() -> None:
    url = "https://h.example/arcgis/rest/services/S/MapServer"
    got = tile_servers(url, ["//a.example/arcgis/rest/services/S/MapServer/",
                             "https://b.example/arcgis/rest/services/S/MapServer?token=x",
                             "https://b.example/arcgis/rest/services/S/MapServer",
                             "", None, 7, "ftp://c.example/S"])
    assert got == ("https://a.example/arcgis/rest/services/S/MapServer",
                   "https://b.example/arcgis/rest/services/S/MapServer")
    assert tile_servers(url, None) == () and tile_servers(url, "not a list") == ()


@pytest.fixture
def hosted_pair():
    """Two loopback hosts serving one hosted layer (levels 2-4 of 0-23), listed in tileServers."""
    tiles = {(lv, r, c): solid_png(colour_of(lv, r, c)) for lv in range(2, 5)
             for r in range(2 ** lv) for c in range(2 ** lv)}
    with TileServer(tiles, name=NAME) as a, TileServer(tiles, name=NAME) as b:
        b_relative = "//" + b.url.split("://", 1)[1]  # protocol-relative, as hosts are listed
        doc = hosted_json(2, 4, servers=[a.url, b_relative])
        a.service = doc
        b.service = doc
        yield a, b, tiles


def test_scales_shows_storage_capabilities_and_tiled_levels(cli, hosted_pair) -> None:
    a, _, _ = hosted_pair
    result = cli("scales", a.url, "--json")
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["storage_format"] == "esriMapCacheStorageModeCompactV2"
    assert data["capabilities"] == ["Map", "Tilemap", "TilesOnly"]
    assert [lv["level"] for lv in data["levels"] if lv["tiled"]] == [2, 3, 4]
    assert all("completeness" not in lv for lv in data["levels"])  # REST does not know it
    text = cli("scales", a.url)
    assert "CompactV2" in text.stdout.splitlines()[0]


def test_export_of_a_hosted_layer_spreads_over_tile_servers(cli, hosted_pair, tmp_path: Path) -> None:
    a, b, tiles = hosted_pair
    output = tmp_path / "nyc"
    world = "bbox:-20037508,-20037508,20037508,20037508"
    refused = cli("run", "--service", a.url, "--levels", "0-6", "--aoi", f"0-6={world}",
                  "--exporter", "compact-v2", "--output", str(output))
    assert refused.code == 2 and "tiled levels 2-4" in refused.stderr  # minLOD..maxLOD honoured
    result = cli("run", "--service", a.url, "--levels", "2-4", "--aoi", f"2-4={world}",
                 "--exporter", "compact-v2", "--output", str(output), "--json")
    assert result.code == 0, result.stderr
    got: dict[tuple[int, int, int], bytes] = {}
    for path in output.rglob("*.bundle"):
        brow, bcol = parse_bundle_name(path.name)  # type: ignore[misc]
        with BundleReader(path, bundle_row=brow, bundle_col=bcol) as reader:
            got.update({(int(path.parent.name[1:]), r, c): d for r, c, d in reader.tiles()})
    assert got == tiles  # levels 2-4 only (minLOD..maxLOD), every tile, byte for byte
    assert mapproxy_tiles(output, tiles) == tiles  # and MapProxy's reader agrees
    for srv, parity in ((a, 0), (b, 1)):
        rows = {int(p.split("/")[-2]) for p in srv.requests if "/tile/" in p}
        assert rows and all(r % 2 == parity for r in rows), srv.url

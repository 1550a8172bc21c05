"""The ``rest`` scale source against a loopback server, and the service JSON parser behind it."""
from __future__ import annotations

import copy
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from cacheorch.arcgis_json import service_from_json, storage_format
from cacheorch.connection import Connection
from cacheorch.errors import AuthError, NotCachedError, SchemeError, ServiceError
from cacheorch.plugins.scales_rest import RestScaleSource, clean_location
from cacheorch.plugins.scales_rest import cacheorch_register_scale_sources as register
from cacheorch.tiling import web_mercator_scheme

TOKEN = "s3cret-T0KEN-value"
PATH = "/arcgis/rest/services/World_Street_Map/MapServer"

Reply = tuple[int, str, bytes]


class Server:
    """A loopback HTTP server answering from a function of the request; records every request."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.answer: Callable[[str, dict], Reply] = lambda path, query: (404, "text/plain", b"")
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                server.requests.append({"path": parts.path, "query": query,
                                        "headers": dict(self.headers)})
                status, ctype, body = server.answer(parts.path, query)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        # a client that gave up (the timeout test) breaks the pipe: not worth a traceback
        self.httpd.handle_error = lambda request, client_address: None
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def json(self, data: object, status: int = 200) -> None:
        body = json.dumps(data).encode()
        self.answer = lambda path, query: (status, "application/json; charset=utf-8", body)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


@pytest.fixture
def street_map(fixtures) -> dict:
    path = fixtures / "mapserver_json" / "World_Street_Map_MapServer_v10.01.json"
    return json.loads(path.read_text(encoding="utf-8"))


def read(url: str, connection: Connection | None = None):
    source = RestScaleSource(RestScaleSource.Options())
    return source.read(url, connection or Connection(timeout=5))


# -- reading a real service's JSON --------------------------------------------------------------

def test_reads_the_world_street_map_json(server, street_map):
    server.json(street_map)
    service = read(f"{server.base}{PATH}/?f=pjson")
    assert [r["path"] for r in server.requests] == [PATH]
    assert server.requests[0]["query"] == {"f": "json"}
    assert service.location == f"{server.base}{PATH}"
    assert service.kind == "MapServer"
    assert service.name == "World Street Map"  # mapName is the default "Layers": the title wins
    assert service.capabilities == frozenset({"Map"})
    assert service.copyright.startswith("Sources: ESRI, DeLorme")
    scheme = service.scheme
    assert scheme.name == "Layers"
    assert scheme.levels == tuple(range(18))
    assert (scheme.tile_cols, scheme.tile_rows, scheme.dpi) == (256, 256, 96)
    assert (scheme.tile_format, scheme.compression_quality) == ("JPEG", 90)
    assert (scheme.origin_x, scheme.origin_y) == (-20037508.342787, 20037508.342787)
    assert scheme.spatial_reference.is_web_mercator and scheme.spatial_reference.epsg == 3857
    assert scheme.lod(1).scale == 295828763.795777 and scheme.lod(1).resolution == 78271.5169639999
    assert scheme.lod(17).resolution == 1.19432856685505
    # the standard series computed from level 0 agrees with the captured one to 1e-9
    for ours, theirs in zip(web_mercator_scheme(17).lods, scheme.lods):
        assert ours.resolution == pytest.approx(theirs.resolution, rel=1e-9)
        assert ours.scale == pytest.approx(theirs.scale, rel=1e-9)
    assert scheme.full_extent.ymax == 19971868.8804086
    assert scheme.initial_extent is not None
    assert (scheme.min_lod, scheme.max_lod) == (None, None)
    assert service.tile_servers == () and service.export_tiles_allowed is False
    assert service.max_export_tiles_count is None
    assert storage_format(street_map) is None  # 10.01 says nothing about storage (spec §10.7)


def test_token_and_referer_are_sent_and_never_kept(server, street_map):
    server.json(street_map)
    service = read(f"{server.base}{PATH}?f=json&token=pasted",
                   Connection(token=TOKEN, referer="https://app.example/", timeout=5))
    req = server.requests[0]
    assert req["query"] == {"f": "json", "token": TOKEN}
    assert req["headers"]["Referer"] == "https://app.example/"
    assert TOKEN not in repr(service) and "pasted" not in service.location


def test_arcgis_token_from_the_environment(server, street_map, monkeypatch):
    monkeypatch.setenv("ARCGIS_TOKEN", TOKEN)
    monkeypatch.setenv("ARCGIS_REFERER", "https://env.example/")
    server.json(street_map)
    read(f"{server.base}{PATH}", Connection.from_env(timeout=5))
    assert server.requests[0]["query"]["token"] == TOKEN
    assert server.requests[0]["headers"]["Referer"] == "https://env.example/"
    read(f"{server.base}{PATH}", Connection.from_env(token="from-flag", timeout=5))  # --token wins
    assert server.requests[1]["query"]["token"] == "from-flag"


def test_no_token_no_referer_by_default(server, street_map):
    server.json(street_map)
    read(f"{server.base}{PATH}", Connection.from_env(timeout=5))
    assert "token" not in server.requests[0]["query"]
    assert "Referer" not in server.requests[0]["headers"]


def test_hosted_tile_layer_and_newer_fields(server, street_map):
    data = copy.deepcopy(street_map)
    data.update({"mapName": "NYC Orthos", "capabilities": "Map,TilesOnly,Tilemap",
                 "tileServers": ["https://tiles1.example/x/MapServer", ""],
                 "exportTilesAllowed": True, "maxExportTilesCount": 100000,
                 "minLOD": 2, "maxLOD": 15})
    data["tileInfo"] = dict(data["tileInfo"], format="PNG32", compressionQuality=0,
                            storageFormat="esriMapCacheStorageModeCompactV2",
                            spatialReference={"wkid": 102100, "latestWkid": 3857})
    server.json(data)
    service = read(f"{server.base}{PATH}")
    assert service.name == "NYC Orthos"
    assert service.capabilities == frozenset({"Map", "TilesOnly", "Tilemap"})
    assert service.tile_servers == ("https://tiles1.example/x/MapServer",)
    assert service.export_tiles_allowed and service.max_export_tiles_count == 100000
    assert service.scheme.tiled_levels == tuple(range(2, 16))
    assert (service.scheme.tile_format, service.scheme.compression_quality) == ("PNG32", 0)
    assert storage_format(data) == "esriMapCacheStorageModeCompactV2"
    assert storage_format({"storageInfo": {"storageFormat": "esriMapCacheStorageModeCompact",
                                           "packetSize": 128}}) == "esriMapCacheStorageModeCompact"


@pytest.mark.parametrize("sr", [{"wkid": 102100}, {"wkid": 102113}, {"wkid": 900913},
                                {"wkid": 3857}, {"wkid": 102100, "latestWkid": 3857}])
def test_web_mercator_wkid_variants(street_map, sr):
    data = copy.deepcopy(street_map)
    data["tileInfo"]["spatialReference"] = sr
    scheme = service_from_json("https://h/arcgis/rest/services/S/MapServer", data).scheme
    assert scheme.spatial_reference.is_web_mercator
    assert scheme.spatial_reference.crs_input() == "EPSG:3857"
    assert scheme.grid_bounds() == (-20037508.342787, -20037508.342787,
                                    20037508.342787, 20037508.342787)


def test_image_server_and_name_from_url(server, street_map):
    data = {k: v for k, v in street_map.items() if k not in ("mapName", "documentInfo")}
    data["name"] = "Elevation/Hillshade"
    server.json(data)
    service = read(f"{server.base}/arcgis/rest/services/Elevation/Hillshade/ImageServer")
    assert service.kind == "ImageServer"
    assert service.name == "Hillshade"
    assert service.scheme.levels == tuple(range(18))


def test_tile_info_without_its_own_spatial_reference_takes_the_services():
    data = {"spatialReference": {"wkid": 2193},
            "tileInfo": {"rows": 512, "cols": 512, "dpi": 96, "format": "PNG",
                         "origin": {"x": -4020900, "y": 19998100},
                         "lods": [{"level": 0, "resolution": 2116.670900008467, "scale": 8000000},
                                  {"level": 1, "resolution": 1058.3354500042335, "scale": 4000000}]}}
    scheme = service_from_json("https://h/rest/services/NZ/MapServer", data).scheme
    assert scheme.spatial_reference.epsg == 2193 and scheme.tile_cols == 512
    assert scheme.tile_end is None and scheme.levels == (0, 1)


# -- errors -------------------------------------------------------------------------------------

def assert_one_clean_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and TOKEN not in text and "pasted" not in text
    return text


@pytest.mark.parametrize("code, words", [(498, "invalid or expired token"), (499, "token required"),
                                         (403, "access denied")])
def test_arcgis_auth_errors_are_one_line_without_the_token(server, code, words):
    server.json({"error": {"code": code, "message": f"Invalid token {TOKEN}", "details": []}})
    with pytest.raises(AuthError) as err:
        read(f"{server.base}{PATH}?token=pasted", Connection(token=TOKEN, timeout=5))
    assert assert_one_clean_line(err) == f"{server.base}{PATH}: {words} (ArcGIS error {code})"


def test_other_arcgis_error_is_a_service_error(server):
    server.json({"error": {"code": 500, "message": f"Service not started {TOKEN}",
                           "details": ["World_Street_Map.MapServer"]}})
    with pytest.raises(ServiceError) as err:
        read(f"{server.base}{PATH}", Connection(token=TOKEN, timeout=5))
    assert not isinstance(err.value, AuthError)
    text = assert_one_clean_line(err)
    assert "ArcGIS error 500" in text and "Service not started" in text


def test_http_errors(server):
    server.answer = lambda p, q: (500, "text/html", b"<html>Internal Server Error</html>")
    with pytest.raises(ServiceError) as err:
        read(f"{server.base}{PATH}", Connection(token=TOKEN, timeout=5))
    assert "HTTP 500" in assert_one_clean_line(err)
    server.answer = lambda p, q: (403, "text/html", b"<html>Forbidden</html>")
    with pytest.raises(AuthError) as err:
        read(f"{server.base}{PATH}", Connection(token=TOKEN, timeout=5))
    assert "HTTP 403" in assert_one_clean_line(err)


def test_malformed_json_says_so(server):
    server.answer = lambda p, q: (200, "text/html", b"<html>login page</html>")
    with pytest.raises(ServiceError) as err:
        read(f"{server.base}{PATH}", Connection(token=TOKEN, timeout=5))
    assert f"{server.base}{PATH} did not answer JSON" in assert_one_clean_line(err)
    server.answer = lambda p, q: (200, "application/json", b'{"tileInfo": ')
    with pytest.raises(ServiceError, match="did not answer JSON"):
        read(f"{server.base}{PATH}")


def test_service_without_tile_info_is_not_cached(server, street_map):
    server.json({k: v for k, v in street_map.items() if k != "tileInfo"})
    with pytest.raises(NotCachedError) as err:
        read(f"{server.base}{PATH}/")
    assert str(err.value) == f"{server.base}{PATH} is not a cached map service (no tileInfo)"


def test_unreachable_host():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ServiceError) as err:
        read(f"http://127.0.0.1:{port}{PATH}?token=pasted", Connection(token=TOKEN, timeout=5))
    assert assert_one_clean_line(err).startswith(f"cannot reach http://127.0.0.1:{port}{PATH}")


def test_timeout_uses_the_connections(server, street_map):
    def slow(path, query):
        time.sleep(1.0)
        return 200, "application/json", json.dumps(street_map).encode()
    server.answer = slow
    started = time.perf_counter()
    with pytest.raises(ServiceError) as err:
        read(f"{server.base}{PATH}", Connection(token=TOKEN, timeout=0.2))
    assert time.perf_counter() - started < 0.9
    assert "no answer within 0.2 s" in assert_one_clean_line(err)


@pytest.mark.parametrize("tile_info, words", [
    ({"origin": {"x": 0, "y": 0}}, "no lods"),
    ({"origin": {"x": 0, "y": 0}, "lods": [{"level": 0, "resolution": "x", "scale": 1}]},
     "resolution"),
    ({"origin": {"x": "?", "y": 0}, "lods": [{"level": 0, "resolution": 1, "scale": 1}]},
     "origin.x"),
    ({"origin": {"x": 0, "y": 0}, "lods": [{"level": 0.5, "resolution": 1, "scale": 1}]},
     "whole number"),
])
def test_malformed_tile_info_is_a_scheme_error(tile_info, words):
    with pytest.raises(SchemeError, match=words):
        service_from_json("https://h/rest/services/S/MapServer",
                          {"tileInfo": dict(tile_info, spatialReference={"wkid": 3857})})


def test_accepts_and_clean_location():
    assert RestScaleSource.accepts("https://h/arcgis/rest/services/S/MapServer")
    assert RestScaleSource.accepts("HTTP://h/x/ImageServer")
    assert not RestScaleSource.accepts("defaults")
    assert not RestScaleSource.accepts("/data/cache/conf.xml")
    assert clean_location(" https://h/x/MapServer/?f=pjson ") == "https://h/x/MapServer"
    assert clean_location("https://h/x/MapServer?token=abc#frag") == "https://h/x/MapServer"
    assert register() == [RestScaleSource]

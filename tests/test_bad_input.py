"""Bad input: exit 2, one line on stderr, no traceback, no output left behind, the catalog intact.

Each case runs after a good job, so "nothing is lost" is checked against real earlier work.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from _gdal import solid_png
from _tileserver import TileServer
from cacheorch.tiling import web_mercator_scheme

SCHEME = web_mercator_scheme(4)


def _service(**extra: object) -> dict:
    sr = {"wkid": 102100, "latestWkid": 3857}
    return {"currentVersion": 10.81, "spatialReference": sr, "tileInfo": SCHEME.to_json(),
            "fullExtent": {"xmin": -2e7, "ymin": -2e7, "xmax": 2e7, "ymax": 2e7,
                           "spatialReference": sr}, **extra}


class _Raw(BaseHTTPRequestHandler):
    """Answers every request with a fixed body (for malformed service JSON)."""

    body = b"{not json"
    ctype = "application/json"

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", self.ctype)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def raw_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Raw)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/arcgis/rest/services/X/MapServer"
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def good(tmp_path: Path, cli):
    """A server, and a completed earlier job whose output must survive every bad call."""
    tiles = {(lv, r, c): solid_png((lv * 40, r * 10, c * 10)) for lv in range(5)
             for r in range(2 ** lv) for c in range(2 ** lv)}
    with TileServer(tiles, service=_service()) as srv:
        earlier = tmp_path / "earlier.tpkx"
        result = cli("run", "--service", srv.url, "--levels", "0-2", "--output", str(earlier))
        assert result.code == 0, result.stderr
        yield {"url": srv.url, "earlier": earlier, "earlier_bytes": earlier.read_bytes(),
               "jobs": json.loads(cli("jobs", "--json").stdout)["jobs"], "tmp": tmp_path}


def _assert_clean_failure(result, good, output: Path, needle: str, cli) -> None:
    assert result.code == 2, (result.code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cacheorch: error: ") and needle in lines[0], lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not output.exists() and not output.with_name(output.name + ".partial").exists()
    assert good["earlier"].read_bytes() == good["earlier_bytes"]
    assert json.loads(cli("jobs", "--json").stdout)["jobs"] == good["jobs"]


def test_uncached_service(good, cli) -> None:
    with TileServer({}, service={"currentVersion": 10.81, "mapName": "dynamic"}) as srv:
        out = good["tmp"] / "x.tpkx"
        result = cli("run", "--service", srv.url, "--levels", "0-2", "--output", str(out))
    _assert_clean_failure(result, good, out, "is not a cached map service (no tileInfo)", cli)


def test_unreachable_host(good, cli) -> None:
    out = good["tmp"] / "x.tpkx"
    url = f"http://127.0.0.1:{_closed_port()}/arcgis/rest/services/X/MapServer"
    result = cli("run", "--service", url, "--levels", "0-2", "--output", str(out))
    _assert_clean_failure(result, good, out, "cannot reach http://127.0.0.1:", cli)


def test_malformed_service_json(good, cli, raw_server) -> None:
    out = good["tmp"] / "x.tpkx"
    result = cli("run", "--service", raw_server, "--levels", "0-2", "--output", str(out))
    _assert_clean_failure(result, good, out, "did not answer JSON", cli)


def test_geojson_without_polygon(good, cli) -> None:
    area = good["tmp"] / "points.geojson"
    area.write_text(json.dumps({"type": "Feature", "properties": {},
                                "geometry": {"type": "Point", "coordinates": [7, 46]}}))
    out = good["tmp"] / "x.tpkx"
    result = cli("run", "--service", good["url"], "--levels", "0-4", "--aoi", f"3-4={area}",
                 "--output", str(out))
    _assert_clean_failure(result, good, out, "points.geojson has no polygon", cli)


def test_unknown_plugin_name(good, cli) -> None:
    out = good["tmp"] / "x.out"
    result = cli("run", "--service", good["url"], "--levels", "0-2", "--exporter", "mbtile",
                 "--output", str(out))
    _assert_clean_failure(result, good, out, "unknown exporter 'mbtile'; available: compact-v2, ", cli)
    result = cli("run", "--service", good["url"], "--policy", "max-tile:5", "--output", str(out))
    _assert_clean_failure(result, good, out, "unknown policy 'max-tile'; available:", cli)


def test_level_the_service_lacks(good, cli) -> None:
    out = good["tmp"] / "x.tpkx"
    result = cli("run", "--service", good["url"], "--levels", "3-9", "--output", str(out))
    _assert_clean_failure(result, good, out, "level 5 is not in the tiling scheme (levels 0-4)", cli)


def test_scale_matching_no_level(good, cli) -> None:
    out = good["tmp"] / "x.tpkx"
    result = cli("run", "--service", good["url"], "--scales", "100000", "--output", str(out))
    _assert_clean_failure(result, good, out, "scale 100000 matches no level; nearest: ", cli)
    assert "level 4 (36978595.47" in result.stderr


def test_existing_output_is_not_overwritten_without_mode(good, cli) -> None:
    result = cli("run", "--service", good["url"], "--levels", "0-1", "--output", str(good["earlier"]))
    assert result.code == 2 and "exists" in result.stderr
    assert good["earlier"].read_bytes() == good["earlier_bytes"]
    assert json.loads(cli("jobs", "--json").stdout)["jobs"] == good["jobs"]


def test_bad_flags_and_config_are_one_line(good, cli, tmp_path) -> None:
    result = cli("run", "--service", good["url"], "--levels", "0-2", "--workers", "many")
    assert result.code == 2 and len(result.stderr.strip().splitlines()) == 1
    result = cli("run", "--service", good["url"], "--levels", "2-0")
    assert result.code == 2 and "runs backwards" in result.stderr
    ini = tmp_path / "bad.ini"
    ini.write_text("[job:j]\nservice = x\nlevles = 1\n")
    result = cli("--config", str(ini), "run", "j")
    assert result.code == 2 and "bad.ini [job:j] levles: unknown key" in result.stderr
    result = cli("job", "999")
    assert result.code == 2 and "no job 999" in result.stderr


def test_the_console_script_prints_no_traceback(tmp_path: Path) -> None:
    """The installed entry point, in a fresh process, maps errors to one line too."""
    url = f"http://127.0.0.1:{_closed_port()}/arcgis/rest/services/X/MapServer"
    proc = subprocess.run([sys.executable, "-m", "cacheorch", "scales", url],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr

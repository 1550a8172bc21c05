"""The example plugin distribution, installed for real: listed, blockable, its own tests, and a job.

The example (examples/cacheorch-featureservice) is pip-installed once into a temporary --target
folder that only subprocesses see (PYTHONPATH), so the main venv is never changed; what runs is
the installed distribution with its entry point, exactly as an outside author's users get it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from _featureserver import FeatureServer, square
from _tiles import mapproxy_tiles

from cacheorch.formats.cache import open_cache
from cacheorch.tiling import WEB_MERCATOR_HALF, web_mercator_scheme

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "cacheorch-featureservice"
SCHEME = web_mercator_scheme(max_level=8)
KM = 1000.0
#: District 7: three squares (two of them touching, so the union has two parts); district 8: two
#: squares that must not be exported. Corners sit off every tile edge of levels 3-5.
DISTRICT_7 = [square(1_100 * KM, 1_300 * KM, 1_700 * KM), square(2_800 * KM, 1_300 * KM, 900 * KM),
              square(-7_300 * KM, -4_100 * KM, 600 * KM)]
DISTRICT_8 = [square(-12_400 * KM, 6_600 * KM, 2_000 * KM), square(9_100 * KM, -9_100 * KM, 700 * KM)]
FEATURES = [(g, {"DISTRICT": 7}) for g in DISTRICT_7] + [(g, {"DISTRICT": 8}) for g in DISTRICT_8]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example installed as a distribution into a temporary target (not the venv)."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-cache-dir", "--target", str(target), str(EXAMPLE)],
        capture_output=True, text=True, timeout=240, cwd=build,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "TMPDIR": str(build)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert (target / "cacheorch_featureservice" / "area.py").is_file()
    return target


def _env(site: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CACHEORCH_DISABLE_PLUGINS", "ARCGIS_TOKEN", "PYTHONPATH")}
    env.update({"PYTHONPATH": str(site), "CACHEORCH_CATALOG": str(tmp_path / "catalog.sqlite"),
                "CACHEORCH_CONFIG": str(tmp_path / "no-config.ini"), **extra})
    return env


def _cacheorch(site: Path, tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cacheorch", *args], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path, env=_env(site, tmp_path, **env))


def test_installed_plugin_is_listed_with_its_version(installed: Path, tmp_path: Path) -> None:
    result = _cacheorch(installed, tmp_path, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    row = next(r for r in data["plugins"] if r["name"] == "featureservice")
    assert row["distribution"] == "cacheorch-featureservice" and row["version"] == "0.1.0"
    assert row["provides"] == {"aoi_generators": ["featureservice"]}
    assert not row["builtin"]
    hooked = _cacheorch(installed, tmp_path, "plugins", "--json", "--hook",
                        "cacheorch_register_aoi_generators")
    assert "featureservice" in {r["name"] for r in json.loads(hooked.stdout)["plugins"]}


def test_config_key_blocks_the_installed_plugin_and_a_builtin(installed: Path,
                                                               tmp_path: Path) -> None:
    config = tmp_path / "blocked.ini"
    config.write_text("[cacheorch]\ndisable_plugins = featureservice, export_tpkx\n")
    result = _cacheorch(installed, tmp_path, "plugins", "--json", CACHEORCH_CONFIG=str(config))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert "featureservice" not in {r["name"] for r in data["plugins"]}
    assert "featureservice" not in {e["name"] for e in data["kinds"]["aoi_generators"]}
    assert "tpkx" not in {e["name"] for e in data["kinds"]["exporters"]}
    assert "compact-v2" in {e["name"] for e in data["kinds"]["exporters"]}


def test_the_examples_own_tests_pass_against_the_installed_distribution(installed: Path,
                                                                         tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
         str(EXAMPLE / "pyproject.toml"), "--rootdir", str(EXAMPLE), str(EXAMPLE / "tests")],
        capture_output=True, text=True, timeout=240, cwd=tmp_path, env=_env(installed, tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


def _tiles_meeting(polygons, levels) -> set[tuple[int, int, int]]:
    """Tiles whose square overlaps a polygon's interior, by plain grid arithmetic."""
    keys = set()
    for level in levels:
        span = 2 * WEB_MERCATOR_HALF / 2 ** level
        for poly in polygons:
            x0, y0, x1, y1 = poly.bounds
            for col in range(int((x0 + WEB_MERCATOR_HALF) // span),
                             int((x1 + WEB_MERCATOR_HALF) // span) + 1):
                for row in range(int((WEB_MERCATOR_HALF - y1) // span),
                                 int((WEB_MERCATOR_HALF - y0) // span) + 1):
                    keys.add((level, row, col))
    return keys


def _service_json() -> dict:
    sr = {"wkid": 102100, "latestWkid": 3857}
    extent = {"xmin": -WEB_MERCATOR_HALF, "ymin": -WEB_MERCATOR_HALF, "xmax": WEB_MERCATOR_HALF,
              "ymax": WEB_MERCATOR_HALF, "spatialReference": sr}
    return {"currentVersion": 11.1, "mapName": "Layers", "singleFusedMapCache": True,
            "capabilities": "Map", "spatialReference": sr, "units": "esriMeters",
            "tileInfo": SCHEME.to_json(), "fullExtent": extent, "initialExtent": extent}


@pytest.fixture
def server() -> Iterator[FeatureServer]:
    from cacheorch.testing import colour_of, solid_tile
    tiles = {(z, r, c): solid_tile(colour_of(z, r, c)) for z in range(3, 6)
             for r in range(2 ** z) for c in range(2 ** z)}
    with FeatureServer(FEATURES, max_record_count=2, tiles=tiles, service=_service_json(),
                       name="World") as srv:
        yield srv


def test_a_job_exports_only_the_tiles_meeting_the_features(installed: Path, tmp_path: Path,
                                                           server: FeatureServer) -> None:
    config = tmp_path / "cacheorch.ini"
    config.write_text(f"[aoi:district7]\ngenerator = featureservice\nurl = {server.layer_url}\n"
                      "where = DISTRICT = 7\n")
    output = tmp_path / "district7"
    result = _cacheorch(installed, tmp_path, "run", "--service", server.url, "--levels", "3-5",
                        "--aoi", "3-5=district7", "--exporter", "compact-v2", "--output",
                        str(output), "--json", CACHEORCH_CONFIG=str(config))
    assert result.returncode == 0, result.stderr
    # paged: 3 matching features, 2 per page, each page asked in the scheme's SR
    assert [q.get("resultOffset") for q in server.queries] == ["0", "2"]
    assert all(q["where"] == "DISTRICT = 7" and q["outSR"] == "102100" for q in server.queries)
    expected = _tiles_meeting(DISTRICT_7, range(3, 6))
    assert expected and not expected & _tiles_meeting(DISTRICT_8, range(3, 6))
    with open_cache(output) as cache:
        stored = set()
        for key in cache.bundle_keys():
            with cache.open_bundle(*key) as bundle:
                stored |= {(key[0], row, col) for row, col, _ in bundle.tiles()}
    assert stored == expected
    every = [(z, r, c) for z in range(3, 6) for r in range(2 ** z) for c in range(2 ** z)]
    assert set(mapproxy_tiles(output, every)) == expected  # MapProxy's reader finds the same
    fetched = {tuple(int(p) for p in path.rsplit("/", 3)[1:]) for path in server.requests
               if "/MapServer/tile/" in path}
    assert fetched == expected, "tiles outside the features were fetched"


def test_the_aoi_flag_form_and_a_clear_error(installed: Path, tmp_path: Path,
                                             server: FeatureServer) -> None:
    """``--aoi 3-5=featureservice:URL?where=…`` works without a config; no match is one line."""
    plan = _cacheorch(installed, tmp_path, "plan", "--service", server.url, "--levels", "3-5",
                      "--aoi", f"3-5=featureservice:{server.layer_url}?where=DISTRICT%3D7",
                      "--json")
    assert plan.returncode == 0, plan.stderr
    tiles = {lv["level"]: lv["tiles_planned"] for lv in json.loads(plan.stdout)["levels"]}
    expected = _tiles_meeting(DISTRICT_7, range(3, 6))
    assert tiles == {z: len([k for k in expected if k[0] == z]) for z in range(3, 6)}
    bad = _cacheorch(installed, tmp_path, "run", "--service", server.url, "--levels", "3-5",
                     "--aoi", f"3-5=featureservice:{server.layer_url}?where=DISTRICT=99",
                     "--output", str(tmp_path / "none.tpkx"))
    assert bad.returncode == 2
    assert "no feature matches" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "none.tpkx").exists()


def test_config_key_blocks_a_third_party_plugin(fake_distribution: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from cacheorch.pluginmanager import make_plugins
    assert "keep-odd" in make_plugins().policies
    config = tmp_path / "blocking.ini"
    config.write_text("[cacheorch]\ndisable_plugins = keepodd,\n  cacheorch.plugins.policy_snap\n")
    monkeypatch.setenv("CACHEORCH_CONFIG", str(config))
    plugins = make_plugins()
    assert "keep-odd" not in plugins.policies
    assert "snap" not in plugins.policies and "levels" in plugins.policies


@pytest.fixture
def featureservice(monkeypatch: pytest.MonkeyPatch):
    """The example's generator imported from its source folder (for in-process checks)."""
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    from cacheorch_featureservice.area import FeatureServiceArea
    yield FeatureServiceArea()
    for name in [m for m in sys.modules if m.startswith("cacheorch_featureservice")]:
        sys.modules.pop(name)


def test_layers_that_cannot_page_are_read_by_object_id_batches(featureservice) -> None:
    from cacheorch.connection import Connection
    from cacheorch.testing import web_mercator_service
    with FeatureServer(FEATURES, max_record_count=2, supports_pagination=False) as srv:
        geom = featureservice.area(f"{srv.layer_url}?where=DISTRICT=7", web_mercator_service(8),
                                   Connection())
    assert srv.queries[0]["returnIdsOnly"] == "true"
    assert [q.get("objectIds") for q in srv.queries[1:]] == ["1,2", "3"]
    assert "resultOffset" not in srv.queries[1]
    assert geom.area == pytest.approx(sum(g.area for g in DISTRICT_7) - 0, rel=1e-6)


def test_the_token_comes_from_the_connection_and_never_shows(featureservice) -> None:
    from cacheorch.connection import Connection
    from cacheorch.errors import AreaError
    from cacheorch.testing import web_mercator_service
    service = web_mercator_service(8)
    with FeatureServer(FEATURES, token="s3cret-T0KEN") as srv:
        featureservice.area(srv.layer_url, service, Connection(token="s3cret-T0KEN"))
        assert all(q["token"] == "s3cret-T0KEN" for q in srv.queries)
        with pytest.raises(AreaError, match="error 498: Invalid Token") as err:
            featureservice.area(srv.layer_url, service, Connection(token="wrong-T0KEN"))
        assert "wrong-T0KEN" not in str(err.value)
        with pytest.raises(AreaError, match="error 499"):
            featureservice.area(srv.layer_url, service, Connection())


def test_config_key_in_a_config_flag_file_blocks_a_plugin(fake_distribution: Path, tmp_path: Path,
                                                          cli) -> None:
    """`--config FILE` is read before the plugins load, so its disable_plugins applies too."""
    config = tmp_path / "other.ini"
    config.write_text("[cacheorch]\ndisable_plugins = keepodd\n")
    assert "keep-odd" in cli("plugins").stdout
    listed = cli("--config", str(config), "plugins")
    assert listed.code == 0 and "keep-odd" not in listed.stdout and "tpkx" in listed.stdout
    assert "keep-odd" not in cli(f"--config={config}", "plugins").stdout

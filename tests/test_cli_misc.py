"""`scales`, `plugins`, `db`, `--version` and the shipped example cacheorch.ini."""
from __future__ import annotations

import json
from pathlib import Path

from _tileserver import TileServer
from cacheorch.config import load_config
from cacheorch.jobspec import job_spec_from

ROOT = Path(__file__).resolve().parent.parent


def test_scales_of_a_rest_service(cli, fixtures: Path) -> None:
    service = json.loads((fixtures / "mapserver_json" / "World_Street_Map_MapServer_v10.01.json").read_text())
    with TileServer({}, name="World_Street_Map", service=service) as srv:
        result = cli("scales", srv.url, "--json")
        human = cli("scales", srv.url + "?f=pjson")
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [lv["level"] for lv in data["levels"]] == list(range(18))
    assert data["levels"][1]["scale"] == 295828763.795777
    assert data["levels"][17]["resolution"] == 1.19432856685505
    assert data["spatialReference"]["wkid"] == 102100 and data["tile_size"] == [256, 256]
    assert human.code == 0 and "591657527.591555" in human.stdout and "World_Street_Map" in human.stdout


def test_scales_defaults(cli) -> None:
    data = json.loads(cli("scales", "defaults", "--json").stdout)
    assert len(data["levels"]) == 24
    assert abs(data["levels"][23]["scale"] - 70.5310735) / 70.5310735 < 1e-6


def test_scales_from_a_config_service(cli, tmp_path: Path) -> None:
    ini = tmp_path / "c.ini"
    ini.write_text("[service:mine]\nurl = defaults\nsource = defaults\n"
                   "scales = 8000000;4000000;2000000\n")
    result = cli("--config", str(ini), "scales", "mine", "--json")
    assert result.code == 0, result.stderr
    assert [round(lv["scale"]) for lv in json.loads(result.stdout)["levels"]] == [8000000, 4000000, 2000000]


def test_plugins_lists_every_kind(cli) -> None:
    human = cli("plugins")
    assert human.code == 0
    for name in ("tpkx", "compact-v2", "rest", "defaults", "levels", "scale-range", "snap", "extent",
                 "bbox", "file"):
        assert name in human.stdout
    data = json.loads(cli("plugins", "--json").stdout)
    row = next(r for r in data["plugins"] if r["name"] == "cacheorch.plugins.export_tpkx")
    assert row["builtin"] and row["provides"] == {"exporters": ["tpkx"]}
    assert row["hooks"] == ["cacheorch_register_exporters"]
    only = json.loads(cli("plugins", "--json", "--hook", "cacheorch_register_policies").stdout)
    assert {r["name"] for r in only["plugins"]} == {
        "cacheorch.plugins.policy_levels", "cacheorch.plugins.policy_scale_range",
        "cacheorch.plugins.policy_snap", "cacheorch.plugins.policy_budget",
        "cacheorch.plugins.policy_service_limits", "cacheorch.plugins.policy_exclude"}


def test_db_upgrade_and_current(cli, tmp_path: Path) -> None:
    catalog = tmp_path / "fresh.sqlite"
    assert "empty" in cli("--catalog", str(catalog), "db", "current").stdout
    from cacheorch.catalog import head
    up = cli("--catalog", str(catalog), "db", "upgrade")
    assert up.code == 0 and f"→ {head()}" in up.stdout
    assert head() in cli("--catalog", str(catalog), "db", "current").stdout
    assert f"already at {head()}" in cli("--catalog", str(catalog), "db", "upgrade").stdout


def test_version(cli) -> None:
    from cacheorch import __version__
    assert cli("--version").stdout.strip() == f"cacheorch, version {__version__}"


def test_the_example_config_parses() -> None:
    config = load_config(ROOT / "cacheorch.ini")
    spec = job_spec_from(config, "streets-town", {})
    assert spec.service.endswith("/World_Street_Map/MapServer")
    assert [a.spec for a in spec.areas][0] == "extent"
    assert spec.exporter.name == "tpkx"
    country = job_spec_from(config, "country", {})
    assert [p.name for p in country.policies] == ["max-tiles", "exclude"]
    assert country.exporter.name == "gpkg" and country.exporter.options == {"skip_blank": "true"}
    assert (country.mode, country.workers, country.max_rps, country.max_failure_rate,
            country.failure_window, country.tilemap) == ("merge", 16, 200.0, 0.5, 200, None)
    assert country.areas[1].spec == f"layer:{ROOT / 'data' / 'parcels.gpkg'}#lots"
    assert config.areas["near-roads"]["spec"] == "500m:roads.geojson"

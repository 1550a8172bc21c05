"""Registries, option parsing and cacheorch.ini: strict, and every error names its place."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from cacheorch.config import load_config, parse_area_flag, parse_level_set
from cacheorch.errors import ConfigError, PluginConflictError, UnknownPluginError, UsageError
from cacheorch.jobspec import JobSpec, job_spec_from
from cacheorch.options import build_plugin, split_plugin_spec
from cacheorch.registry import Registry


class _A:
    name = "alpha"


class _B:
    name = "alpha"


def test_registry_rejects_duplicates_naming_both_plugins() -> None:
    reg: Registry[object] = Registry("exporter")
    reg.add(_A, "plugin-one")
    reg.add(_A, "plugin-one")  # the same class twice is harmless
    with pytest.raises(PluginConflictError, match="'alpha' from plugin 'plugin-two' clashes with 'plugin-one'"):
        reg.add(_B, "plugin-two")


def test_registry_unknown_name_lists_known() -> None:
    reg: Registry[object] = Registry("exporter")
    reg.add(_A, "p")
    with pytest.raises(UnknownPluginError, match=r"unknown exporter 'alhpa'; available: alpha"):
        reg.get("alhpa")


def test_split_plugin_spec_keeps_commas_in_values() -> None:
    assert split_plugin_spec("levels:0-5,8") == ("levels", {"": "0-5,8"})
    assert split_plugin_spec("x:a=1,b=2,3") == ("x", {"a": "1", "b": "2,3"})
    assert split_plugin_spec("tpkx") == ("tpkx", {})
    assert split_plugin_spec("max-tiles:max-tiles=10") == ("max-tiles", {"max_tiles": "10"})


@dataclass
class _Opts:
    count: int = 1
    ratio: float = 0.5
    flag: bool = False
    label: str = ""


class _Plugin:
    name = "p"
    Options = _Opts
    positional = "label"

    def __init__(self, options: _Opts) -> None:
        self.options = options


def test_build_plugin_converts_types_and_refuses_unknown_keys() -> None:
    plugin = build_plugin(_Plugin, {"count": "3", "ratio": "0.25", "flag": "yes", "": "hi"}, "here")
    assert plugin.options == _Opts(3, 0.25, True, "hi")
    with pytest.raises(ConfigError, match=r"here: unknown option 'colour' \(options: count, flag, label, ratio\)"):
        build_plugin(_Plugin, {"colour": "red"}, "here")
    with pytest.raises(ConfigError, match="here: count = 'many'"):
        build_plugin(_Plugin, {"count": "many"}, "here")


def test_level_sets_and_area_flags() -> None:
    assert parse_level_set("0-3,8", "x") == frozenset({0, 1, 2, 3, 8})
    with pytest.raises(ConfigError, match="runs backwards"):
        parse_level_set("5-2", "x")
    with pytest.raises(ConfigError, match="not a level list"):
        parse_level_set("a-b", "x")
    area = parse_area_flag("4-8=area.geojson", "--aoi")
    assert area.levels == frozenset(range(4, 9)) and area.spec == "area.geojson"
    assert parse_area_flag("0-11: extent", "x").spec == "extent"
    assert parse_area_flag("bbox:1,2,3,4@4326", "x").levels is None
    assert parse_area_flag("bbox:1,2,3,4@4326", "x").spec == "bbox:1,2,3,4@4326"


INI = """
[cacheorch]
catalog = cat.sqlite

[service:streets]
url = https://example.test/arcgis/rest/services/World_Street_Map/MapServer

[aoi:town]
generator = file
path = town.geojson

[job:streets-town]
service = streets
levels = 0-17
aoi = 0-11: extent
      12-17: town
exporter = tpkx
output = out/streets-town.tpkx
"""


def test_config_job_merges_with_flags(tmp_path: Path) -> None:
    ini = tmp_path / "cacheorch.ini"
    ini.write_text(INI)
    config = load_config(ini)
    assert config.catalog == str(tmp_path / "cat.sqlite")
    spec = job_spec_from(config, "streets-town", {})
    assert spec.service.endswith("World_Street_Map/MapServer")
    assert [a.spec for a in spec.areas] == ["extent", f"file:{tmp_path / 'town.geojson'}"]
    assert spec.output == str(tmp_path / "out/streets-town.tpkx")
    assert spec.policies[0].name == "levels" and spec.policies[0].options == {"": "0-17"}
    flagged = job_spec_from(config, "streets-town", {"levels": "0-3", "exporter": "compact-v2",
                                                     "aoi": ("bbox:0,0,1,1",)})
    assert flagged.policies[0].options == {"": "0-3"} and flagged.exporter.name == "compact-v2"
    assert [a.spec for a in flagged.areas] == ["bbox:0,0,1,1"]
    assert JobSpec.from_parameters(flagged.to_parameters()) == flagged


def test_config_errors_name_file_section_and_key(tmp_path: Path) -> None:
    ini = tmp_path / "bad.ini"
    ini.write_text("[job:x]\nservice = http://h/MapServer\nlevles = 0-3\n")
    with pytest.raises(ConfigError, match=r"bad.ini \[job:x\] levles: unknown key"):
        job_spec_from(load_config(ini), "x", {})
    ini.write_text("[job:x]\nservice = http://h/MapServer\nworkers = many\n")
    with pytest.raises(ConfigError, match=r"bad.ini \[job:x\] workers: not a whole number"):
        job_spec_from(load_config(ini), "x", {})
    ini.write_text("[jobs:x]\n")
    with pytest.raises(ConfigError, match=r"bad.ini \[jobs:x\]: unknown section"):
        load_config(ini)
    ini.write_text("no section header\n")
    with pytest.raises(ConfigError, match="bad.ini: "):
        load_config(ini)
    empty = tmp_path / "empty.ini"
    empty.write_text("")
    with pytest.raises(ConfigError, match=r"empty.ini: no \[job:nope\] section \(jobs: none\)"):
        job_spec_from(load_config(empty), "nope", {})


def test_job_needs_a_service() -> None:
    from cacheorch.config import Config
    with pytest.raises(UsageError, match="no service"):
        job_spec_from(Config(), None, {})


def test_aoi_sections_resolve_files_relative_to_the_config(tmp_path: Path) -> None:
    """A layer keeps its #LAYER@WKID, a buffer's inner file resolves, a buffer of `extent` stays."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "town.geojson").write_text("{}")
    ini = tmp_path / "conf" / "cacheorch.ini"
    ini.write_text("[aoi:lots]\ngenerator = layer\npath = data/parcels.gpkg#lots@2056\n"
                   "[aoi:near]\ngenerator = buffer\nspec = 500m:town.geojson\n"
                   "[aoi:wide]\ngenerator = buffer\nspec = 2tiles:extent\n"
                   "[job:j]\nservice = https://h/MapServer\nlevels = 0-3\naoi = lots\n near\n wide\n")
    spec = job_spec_from(load_config(ini), "j", {})
    folder = tmp_path / "conf"
    assert [a.spec for a in spec.areas] == [
        f"layer:{folder / 'data' / 'parcels.gpkg'}#lots@2056",
        f"buffer:500m:{folder / 'town.geojson'}",
        "buffer:2tiles:extent"]
    assert [a.label for a in spec.areas] == ["lots", "near", "wide"]

"""The plugin manager: built-ins are ordinary plugins, outside plugins come through entry points."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import click
import pytest

from cacheorch import hookimpl
from cacheorch.errors import PluginConflictError, PluginError, UnknownPluginError
from cacheorch.events import BundleDone, JobFinished, emit
from cacheorch.interfaces import Exporter, SelectionPolicy
from cacheorch.pluginmanager import DEFAULT_PLUGINS, make_plugins


def test_builtins_are_registered_by_dotted_name() -> None:
    plugins = make_plugins(load_entrypoints=False)
    names = {name for name, _ in plugins.pm.list_name_plugin()}
    assert set(DEFAULT_PLUGINS) <= names
    assert {"compact-v2", "tpkx", "tpk", "mbtiles", "gpkg", "exploded"} <= set(plugins.exporters.names())
    assert plugins.exporters.names() == sorted(plugins.exporters.names())
    assert {"levels", "scale-range", "snap"} <= set(plugins.policies.names())
    assert {"extent", "bbox", "file"} <= set(plugins.aoi_generators.names())
    assert {"rest", "defaults"} <= set(plugins.scale_sources.names())
    assert plugins.exporters.entry("tpkx").plugin == "cacheorch.plugins.export_tpkx"


class _KeepEven(SelectionPolicy):
    """Keep even levels only."""

    name = "keep-even"

    def select(self, scheme, levels):
        return [lod for lod in levels if lod.level % 2 == 0]


class _ExtraPolicies:
    @hookimpl
    def cacheorch_register_policies(self):
        return [_KeepEven]


def test_hook_cacheorch_register_policies() -> None:
    plugins = make_plugins(load_entrypoints=False, extra=[_ExtraPolicies()])
    assert plugins.policies.get("keep-even") is _KeepEven


def test_hook_cacheorch_register_exporters_rejects_a_clash() -> None:
    class Clash(Exporter):
        name = "tpkx"

        def open(self, request):
            raise NotImplementedError

    class P:
        @hookimpl
        def cacheorch_register_exporters(self):
            return [Clash]

    with pytest.raises(PluginConflictError, match="exporter 'tpkx' from plugin .* clashes with "
                                                  "'cacheorch.plugins.export_tpkx'"):
        make_plugins(load_entrypoints=False, extra=[P()])


def test_hook_cacheorch_register_exporters() -> None:
    plugins = make_plugins(load_entrypoints=False)
    names = ", ".join(plugins.exporters.names())
    assert "compact-v2" in names and "tpkx" in names
    with pytest.raises(UnknownPluginError, match=f"unknown exporter 'tpkz'; available: {names}$"):
        plugins.exporters.get("tpkz")


def test_hook_cacheorch_register_scale_sources() -> None:
    plugins = make_plugins(load_entrypoints=False)
    rest = plugins.scale_sources.get("rest")
    assert rest.accepts("https://h/arcgis/rest/services/x/MapServer")
    assert plugins.scale_sources.get("defaults").accepts("defaults")


def test_hook_cacheorch_register_tile_sources() -> None:
    plugins = make_plugins(load_entrypoints=False)
    assert plugins.tile_sources.get("rest").accepts("http://127.0.0.1:1/MapServer")


def test_hook_cacheorch_register_aoi_generators() -> None:
    plugins = make_plugins(load_entrypoints=False)
    assert plugins.aoi_generators.get("file").accepts("area.geojson")
    assert not plugins.aoi_generators.get("file").accepts("extent")


def test_a_registration_hook_returning_a_non_plugin_is_refused() -> None:
    class Bad:
        @hookimpl
        def cacheorch_register_policies(self):
            return [object]

    with pytest.raises(PluginError, match="expected a SelectionPolicy subclass"):
        make_plugins(load_entrypoints=False, extra=[Bad()])


def test_hook_cacheorch_track_event_swallows_observer_errors(caplog: pytest.LogCaptureFixture) -> None:
    seen = []

    class Observer:
        @hookimpl
        def cacheorch_track_event(self, event):
            seen.append(event.name)

    class Broken:
        @hookimpl
        def cacheorch_track_event(self, event):
            raise RuntimeError("observer bug")

    plugins = make_plugins(load_entrypoints=False, extra=[Observer(), Broken()])
    emit(plugins.pm, BundleDone(1, level=3))
    emit(plugins.pm, JobFinished(1, status="completed"))
    assert seen == ["bundle-done", "job-finished"]
    assert "failed on event bundle-done" in caplog.text


def test_hook_cacheorch_catalog_connect(tmp_path: Path) -> None:
    from cacheorch.cli import App

    class Functions:
        @hookimpl
        def cacheorch_catalog_connect(self, dbapi_connection: sqlite3.Connection) -> None:
            dbapi_connection.create_function("answer", 0, lambda: 42)

    app = App(catalog_override=str(tmp_path / "c.sqlite"),
              plugins_factory=lambda: make_plugins(load_entrypoints=False, extra=[Functions()]))
    with app.open_catalog() as catalog:
        from sqlalchemy import text
        with catalog.engine.connect() as conn:
            assert conn.execute(text("select answer()")).scalar() == 42


def test_hook_cacheorch_register_commands(capsys: pytest.CaptureFixture[str]) -> None:
    from cacheorch.cli import main

    class Command:
        @hookimpl
        def cacheorch_register_commands(self, cli: click.Group) -> None:
            @cli.command("hello")
            def hello() -> None:
                """Say hello."""
                click.echo("hello from a plugin")

    code = main(["hello"], plugins_factory=lambda: make_plugins(load_entrypoints=False,
                                                                 extra=[Command()]))
    assert code == 0 and "hello from a plugin" in capsys.readouterr().out


def test_entry_point_plugin_is_listed_with_its_version(fake_distribution: Path, cli) -> None:
    import json
    result = cli("plugins", "--json")
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    row = next(r for r in data["plugins"] if r["name"] == "keepodd")
    assert row["distribution"] == "cacheorch-keepodd" and row["version"] == "1.2.3"
    assert row["provides"] == {"policies": ["keep-odd"]}


def test_entry_point_plugin_can_be_blocked(fake_distribution: Path, monkeypatch) -> None:
    monkeypatch.setenv("CACHEORCH_DISABLE_PLUGINS", "keepodd")
    plugins = make_plugins()
    assert "keep-odd" not in plugins.policies

"""``plugins`` and ``scales``: what is installed, and what levels a service or cache has."""
from __future__ import annotations

import inspect
import json
from typing import Any

import click

from cacheorch.cli import App
from cacheorch.cli.network import network_options, network_settings
from cacheorch.connection import Connection
from cacheorch.jobplan import read_service
from cacheorch.jobspec import PluginSpec

__all__ = ["COMMANDS"]


def plugin_rows(app: App, hook: str | None = None) -> list[dict[str, Any]]:
    """One row per plugin: its name, distribution and version, hooks and the names it provides."""
    plugins = app.plugins
    pm = plugins.pm
    rows: list[dict[str, Any]] = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        if plugin is None:
            continue
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        if hook and hook not in hooks:
            continue
        provides: dict[str, list[str]] = {}
        for kind, registry in plugins.registries().items():
            names = [entry.name for entry in registry if entry.plugin == name]
            if names:
                provides[kind] = names
        dist = plugins.distribution_of(name)
        module = plugin.__name__ if inspect.ismodule(plugin) else type(plugin).__module__
        from cacheorch import __version__
        rows.append({
            "name": name, "module": module,
            "distribution": dist[0] if dist else "cacheorch",
            "version": dist[1] if dist else __version__,
            "builtin": name.startswith("cacheorch.plugins."),
            "hooks": hooks, "provides": provides,
        })
    return rows


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.option("--hook", help="Only plugins implementing this hook.")
@click.pass_obj
def plugins_command(app: App, as_json: bool, hook: str | None) -> None:
    """List registered plugins by kind, with their module and version."""
    rows = plugin_rows(app, hook)
    if as_json:
        kinds = {kind: [{"name": e.name, "plugin": e.plugin, "description": e.cls.describe()}
                        for e in registry]
                 for kind, registry in app.plugins.registries().items()}
        click.echo(json.dumps({"plugins": rows, "kinds": kinds}, indent=2))
        return
    for kind, registry in app.plugins.registries().items():
        click.echo(f"{kind.replace('_', ' ')}:")
        for entry in registry:
            click.echo(f"  {entry.name:<18} {entry.cls.describe()}  [{entry.plugin}]")
    external = [r for r in rows if not r["builtin"]]
    if external:
        click.echo("third-party plugins:")
        for row in external:
            click.echo(f"  {row['name']} {row['distribution']} {row['version']} ({row['module']})")


@click.command("scales")
@click.argument("source")
@click.option("--source", "source_name", help="Scale source plugin (default: detected).")
@click.option("--token", help="ArcGIS token (default: $ARCGIS_TOKEN). Never stored.")
@click.option("--referer", help="Referer header.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@network_options
@click.pass_obj
def scales_command(app: App, source: str, source_name: str | None, token: str | None,
                   referer: str | None, as_json: bool) -> None:
    """Print the levels of a service URL, cache folder, package, or "defaults"."""
    connection = Connection.from_env(token=token, referer=referer, network=network_settings(app))
    spec = PluginSpec(source_name, {}, "--source") if source_name else None
    if source in app.config.services and not source_name:
        from cacheorch.jobspec import _service_from_config
        source, options = _service_from_config(app.config, source, f"[service:{source}]")
        if options:
            name = options.pop("source", None)
            spec = PluginSpec(name, options, app.config.where(f"service:{source}")) if name else None
    try:
        service = read_service(app.plugins, source, spec, connection)
    finally:
        connection.close()
    scheme = service.scheme
    tiled = set(scheme.tiled_levels)
    statuses = bool(service.level_status)  # only sources that know completeness (a Status.gdb)
    if as_json:
        levels: list[dict[str, Any]] = []
        for lod in scheme.lods:
            row: dict[str, Any] = {"level": lod.level, "scale": lod.scale,
                                   "resolution": lod.resolution, "tiled": lod.level in tiled}
            if statuses:
                st = service.status_of(lod.level)
                row["completeness"] = None if st is None else {
                    "bundles": st.bundles, "done": st.done, "percent": st.percent}
            levels.append(row)
        click.echo(json.dumps({
            "location": service.location, "kind": service.kind, "name": service.name,
            "spatialReference": scheme.spatial_reference.to_json(),
            "tile_size": [scheme.tile_cols, scheme.tile_rows], "dpi": scheme.dpi,
            "origin": [scheme.origin_x, scheme.origin_y], "format": scheme.tile_format,
            "storage_format": service.storage_format,
            "capabilities": sorted(service.capabilities),
            "levels": levels,
        }, indent=2))
        return
    storage = f", {service.storage_format.removeprefix('esriMapCacheStorageMode')}" \
        if service.storage_format else ""
    click.echo(f"{service.location}: {service.kind} {service.name!r}, {scheme.spatial_reference}, "
               f"{scheme.tile_cols}×{scheme.tile_rows} px, {scheme.dpi} dpi, {scheme.tile_format}"
               f"{storage}")
    click.echo(f"{'level':>5}  {'scale':>18}  {'resolution':>20}"
               + ("  completeness" if statuses else ""))
    for lod in scheme.lods:
        note = "" if lod.level in tiled else "  (no tiles)"
        if statuses:
            st = service.status_of(lod.level)
            note = "  " + (st.describe() if st is not None else "no status") + \
                ("" if lod.level in tiled else " (no tiles)")
        click.echo(f"{lod.level:>5}  {lod.scale:>18.6f}  {lod.resolution:>20.12f}{note}")


COMMANDS = [plugins_command, scales_command]

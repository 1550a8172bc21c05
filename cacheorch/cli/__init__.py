"""The ``cacheorch`` command line: a click group, one module per command family, errors mapped at the edge.

Expected errors (:class:`~cacheorch.errors.CacheorchError`) become one line on stderr and the exit
code of the contract (2 bad input, 1 failed or partial job); ``--traceback`` shows the rest.
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cacheorch import __version__
from cacheorch.config import Config, load_config
from cacheorch.errors import CacheorchError

if TYPE_CHECKING:
    from cacheorch.catalog import Catalog
    from cacheorch.pluginmanager import Plugins

__all__ = ["main", "build_cli", "App"]

CATALOG_ENV = "CACHEORCH_CATALOG"


@dataclass
class App:
    """What every command needs, built lazily: config, plugins, catalog path."""

    config_path: str | None = None
    catalog_override: str | None = None
    verbosity: int = 0
    traceback: bool = False
    plugins_factory: Any = None
    _config: Config | None = field(default=None, repr=False)
    _plugins: Plugins | None = field(default=None, repr=False)

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config

    @property
    def plugins(self) -> Plugins:
        if self._plugins is None:
            from cacheorch.pluginmanager import get_plugins
            self._plugins = (self.plugins_factory or get_plugins)()
        return self._plugins

    @property
    def catalog_path(self) -> Path:
        chosen = self.catalog_override or os.environ.get(CATALOG_ENV) or self.config.catalog \
            or "cacheorch.sqlite"
        return Path(chosen)

    def open_catalog(self, redact: Any = None, read_only: bool = False) -> Catalog:
        """Open (and migrate) the catalog; ``redact`` removes the job's token from stored text;
        ``read_only``: the command only reads, so a catalog it cannot write is still opened."""
        from cacheorch.catalog import Catalog
        pm = self.plugins.pm

        def on_connect(dbapi_connection: Any) -> None:
            pm.hook.cacheorch_catalog_connect(dbapi_connection=dbapi_connection)

        return Catalog.open(self.catalog_path, on_connect=on_connect, redact=redact,
                            read_only=read_only)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="cacheorch")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="cacheorch.ini to read (default: $CACHEORCH_CONFIG, else ./cacheorch.ini).")
@click.option("--catalog", "catalog_path", type=click.Path(dir_okay=False),
              help="SQLite catalog (default: $CACHEORCH_CATALOG, [cacheorch] catalog, "
                   "./cacheorch.sqlite).")
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.option("--traceback", is_flag=True, help="Show the full traceback of an error.")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, catalog_path: str | None, verbose: int,
        quiet: bool, traceback: bool) -> None:
    """Export cached ArcGIS map services to offline tile caches and packages.

    Read a service's levels, pick levels by policy, give each range of levels its own area,
    and write a tpkx or compact cache; every job is recorded in a SQLite catalog.
    """
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="cacheorch: %(levelname)s: %(message)s", stream=sys.stderr)
    app: App = ctx.ensure_object(App)
    app.config_path, app.catalog_override = config_path, catalog_path
    app.verbosity, app.traceback = (-1 if quiet else verbose), traceback


def build_cli(plugins_factory: Any = None) -> click.Group:
    """The CLI with built-in commands and the plugins' ``cacheorch_register_commands`` additions."""
    from cacheorch.cli import db, info, jobs, serve
    for module in (info, jobs, db, serve):
        for command in module.COMMANDS:
            cli.add_command(command)
    from cacheorch.cli import verify
    for command in verify.COMMANDS:
        cli.add_command(command)
    from cacheorch.cli import workbench
    cli.add_command(*workbench.COMMANDS)
    return cli


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _option_value(args: list[str], name: str) -> str | None:
    """The value of a global option in ``args`` (``--config F`` or ``--config=F``), if given."""
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.partition("=")[2]
    return None


def main(argv: list[str] | None = None, plugins_factory: Any = None) -> int:
    """Entry point: run the CLI and map errors to the contract's exit codes; never a traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    show_tb = "--traceback" in args
    if plugins_factory is None:
        # Plugins load before click parses the options (they may add commands), so a
        # `disable_plugins` key in a --config file is found by looking ahead for that option.
        config_path = _option_value(args, "--config")
        if config_path:
            def plugins_factory() -> Plugins:
                from cacheorch.pluginmanager import get_plugins
                return get_plugins(config_path)
    app = App(plugins_factory=plugins_factory)
    try:
        group = build_cli(plugins_factory)
        try:
            app.plugins.pm.hook.cacheorch_register_commands(cli=group)
        except CacheorchError:
            pass  # plugin errors surface again, with their message, in the command that needs them
        group.main(args=args, prog_name="cacheorch", standalone_mode=False, obj=app)
        return 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("cacheorch: interrupted", err=True)
        return 1
    except click.ClickException as exc:
        click.echo(f"cacheorch: error: {_one_line(exc.format_message())} (see --help)", err=True)
        return 2
    except CacheorchError as exc:
        if show_tb:
            raise
        click.echo(f"cacheorch: error: {_one_line(str(exc))}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("cacheorch: interrupted", err=True)
        return 1
    except OSError as exc:
        if show_tb:
            raise
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        click.echo(f"cacheorch: error: {where}{exc.strerror or exc}", err=True)
        return 2
    except Exception as exc:  # a bug: still one line, with the way to see more
        if show_tb:
            raise
        click.echo(f"cacheorch: internal error: {type(exc).__name__}: {_one_line(str(exc))} "
                   "(run again with --traceback and report it)", err=True)
        return 1


def console_main() -> None:
    sys.exit(main())

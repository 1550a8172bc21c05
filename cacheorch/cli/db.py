"""``db upgrade`` and ``db current``: explicit control of catalog migrations (also run on open)."""
from __future__ import annotations

import click

from cacheorch.cli import App

__all__ = ["COMMANDS"]


@click.group("db")
def db_group() -> None:
    """Catalog migrations (they also run automatically whenever the catalog is opened)."""


@db_group.command("upgrade")
@click.pass_obj
def upgrade_command(app: App) -> None:
    """Migrate the catalog to the newest schema."""
    from cacheorch.catalog import upgrade
    before, after = upgrade(app.catalog_path)
    if before == after:
        click.echo(f"{app.catalog_path}: already at {after}")
    else:
        click.echo(f"{app.catalog_path}: {before or 'empty'} → {after}")


@db_group.command("current")
@click.pass_obj
def current_command(app: App) -> None:
    """Print the catalog's schema revision."""
    from cacheorch.catalog import current
    click.echo(f"{app.catalog_path}: {current(app.catalog_path) or 'empty (not migrated)'}")


COMMANDS = [db_group]

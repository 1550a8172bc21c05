"""``serve``: a cache or package as an ArcGIS REST tiled MapServer; ``demo``: an offline end-to-end run."""
from __future__ import annotations

import click

from cacheorch.cli import App

__all__ = ["COMMANDS"]


@click.command("serve")
@click.argument("cache", type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port (0: any free one).")
@click.option("--name", help="Service name in the URL (default: from the cache's name).")
@click.pass_obj
def serve_command(app: App, cache: str, host: str, port: int, name: str | None) -> None:
    """Serve CACHE (a compact-v2 folder or a .tpkx) as an ArcGIS REST tiled MapServer."""
    from cacheorch.serve import run_server
    run_server(cache, host, port, name, click.echo)


COMMANDS = [serve_command]

"""``workbench``: the local web application (pick levels and areas on a map, export, watch jobs)."""
from __future__ import annotations

import click

from cacheorch.cli import App

__all__ = ["COMMANDS"]


@click.command("workbench")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (anything but loopback lets other machines try the token).")
@click.option("--port", default=8765, show_default=True, type=int, help="Port (0: any free one).")
@click.option("--root", "roots", multiple=True, type=click.Path(file_okay=False),
              help="Folder the page may read sources from and write outputs to; repeatable "
                   "(default: the current folder and your home folder).")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in the web browser.")
@click.pass_obj
def workbench_command(app: App, host: str, port: int, roots: tuple[str, ...],
                      open_browser: bool) -> None:
    """A web page over the same engine and catalog: open a service, tick its scales, draw the area
    of each range of levels on its map, export, and watch every job in the catalog.

    The URL printed carries a per-session token that every API call needs; keep it to yourself.
    """
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        from cacheorch.errors import UsageError
        raise UsageError("the workbench needs starlette and uvicorn: pip install cacheorch") from None
    from cacheorch.workbench.server import WorkbenchServer
    server = WorkbenchServer(app, host, port, roots)
    click.echo(f"cacheorch workbench at {server.url}")
    click.echo(f"  catalog {app.catalog_path}; Ctrl-C stops it (running jobs stay resumable)")
    if open_browser:
        import webbrowser
        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:  # uvicorn stops gracefully, then passes Ctrl-C on
        pass
    click.echo("cacheorch workbench stopped")


COMMANDS = [workbench_command]

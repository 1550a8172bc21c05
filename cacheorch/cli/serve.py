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
    """Serve CACHE (compact V2/V1 or exploded folder, .tpkx, .tpk, MBTiles, GeoPackage) as an
    ArcGIS REST tiled MapServer, with XYZ /{z}/{x}/{y} for Web Mercator caches and a preview
    map at / ."""
    from cacheorch.serve import run_server
    run_server(cache, host, port, name, click.echo)



@click.command("demo")
@click.option("--dir", "directory", default="demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the demo cache, the outputs and the catalog.")
@click.pass_obj
def demo_command(app: App, directory: str) -> None:
    """Offline end to end: make a small cache, serve it on 127.0.0.1, export it with `run`.

    Levels 0-2 cover the whole extent and 3-5 a polygon; the outputs are a .tpkx and a
    compact-v2 folder. Every command is printed so it can be repeated by hand.
    """
    import shlex
    from pathlib import Path

    from cacheorch.cli import main
    from cacheorch.demo import make_demo_cache, write_demo_area
    from cacheorch.errors import CacheorchError
    from cacheorch.serve import CacheServer

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    cache = folder / "demo-cache"
    if not cache.exists():
        click.echo(f"making a demo cache (levels 0-5, 1,365 drawn tiles) in {cache}")
        make_demo_cache(cache)
    area = write_demo_area(folder / "demo-area.geojson")
    catalog = str(folder / "cacheorch.sqlite")
    with CacheServer(cache, service_name="demo") as server:
        # by hand the service is on port 8080 under the same name, so the printed commands work
        by_hand = server.url.replace(server.root_url, "http://127.0.0.1:8080")
        click.echo(f"serving it as an ArcGIS REST MapServer at {server.url}")
        click.echo(f"  (by hand: cacheorch serve {shlex.quote(str(cache))} --name demo --port 8080,\n"
                   f"   which serves {by_hand}, the --service of the commands below)")
        runs = [("tpkx", folder / "demo.tpkx"), ("compact-v2", folder / "demo-compact")]
        for exporter, output in runs:
            args = ["--catalog", catalog, "run", "--service", server.url, "--levels", "0-5",
                    "--aoi", "0-2=extent", "--aoi", f"3-5={area}", "--exporter", exporter,
                    "--output", str(output), "--mode", "overwrite"]
            click.echo(f"\n$ cacheorch {shlex.join(by_hand if a == server.url else a for a in args)}")
            code = main(args)
            if code != 0:
                raise CacheorchError(f"the demo export to {output} ended with exit code {code}")
    click.echo(f"\n$ cacheorch --catalog {shlex.quote(catalog)} jobs")
    main(["--catalog", catalog, "jobs"])
    click.echo(f"\nDone. Open {folder / 'demo.tpkx'} in ArcGIS Pro or QGIS/GDAL, or look at it with:\n"
               f"  cacheorch serve {shlex.quote(str(folder / 'demo.tpkx'))}")


COMMANDS = [serve_command, demo_command]

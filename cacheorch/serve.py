"""``cacheorch serve``: a local cache or package, served as an ArcGIS REST tiled MapServer.

Why a server at all: it lets ``run`` (and any ArcGIS client) read an offline cache through the same
``/tile/{level}/{row}/{col}`` path as a real service, so an export can be checked by exporting it
again, and a cache can be viewed in a web map without ArcGIS.

Besides the ArcGIS REST paths it answers, for any cache :func:`open_cache` reads:

* ``/tilemap/{level}/{row}/{col}/{width}/{height}`` (spec §2.3) for bundle caches (Compact V1
  and V2), answered from the bundle index alone, and listed as ``Tilemap`` in the capabilities;
* ``/{z}/{x}/{y}`` (XYZ, x = column, y = row) when the cache is on the standard Web Mercator
  grid, so web maps and QGIS's XYZ layers can show it;
* ``/`` (and ``/preview``): an HTML page with a small slippy map of the cache, its assets served
  from the package (``cacheorch/static``), no CDN: it works offline and in any spatial reference.

This module is the entry point (:class:`CacheServer`, :func:`run_server`); the parts live in
:mod:`cacheorch.serving`: the threaded server and its lifecycle (``httpd``), the service JSON
(``mapserver``), the preview page and XYZ zooms (``preview``), the route table (``table``), the
request handler (``handler``), and ``/export`` and ``/WMTS`` (``routes``). The names other code
imports from here are kept here.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cacheorch.errors import CacheorchError, FormatError, UsageError
from cacheorch.serving.handler import IDLE_TIMEOUT, MapServerHandler  # noqa: F401 - kept importable
from cacheorch.serving.handler import content_type as _content_type  # noqa: F401 - workbench, planhtml
from cacheorch.serving.httpd import ServerLifecycle
from cacheorch.serving.mapserver import (  # noqa: F401 - kept importable from here
    MAX_EXPORT_TILES,
    NAME_OK,
    SERVER_VERSION,
    SERVICES,
    default_service_name,
    service_json,
)
from cacheorch.serving.mapserver import error_body as _error_body  # noqa: F401 - kept importable
from cacheorch.serving.preview import STATIC_FILES, preview_page, xyz_zooms
from cacheorch.serving.table import RouteTable

if TYPE_CHECKING:
    from cacheorch.formats.cache import TileCache

__all__ = ["CacheServer", "run_server", "default_service_name", "SERVER_VERSION", "xyz_zooms",
           "preview_page", "STATIC_FILES"]


class CacheServer(ServerLifecycle):
    """Any cache :func:`open_cache` reads, served as ``/arcgis/rest/services/<name>/MapServer``
    (plus XYZ paths for Web Mercator caches and a preview page at ``/``).

    The socket is bound on construction (``port=0`` picks a free port), so :attr:`url` is known
    before serving starts. Entering the context starts serving in a background thread; leaving it
    stops the server and closes the cache.
    """

    def __init__(self, cache_path: str | Path, host: str = "127.0.0.1", port: int = 0,
                 service_name: str | None = None) -> None:
        path = Path(cache_path)
        if service_name is not None and not NAME_OK.match(service_name):
            raise UsageError(f"service name {service_name!r} may hold only letters, digits and _")
        self.name = service_name or default_service_name(path)
        self.cache_path = path
        self.cache = _open(path)
        try:
            tiled_levels = sorted({key[0] for key in self.cache.bundle_keys()})
            self.service = service_json(self.cache, self.name, tiled_levels, path.name)
            routes = RouteTable(self.cache, self.name, self.service, tiled_levels)
            self._listen(host, port, MapServerHandler, routes)
        except BaseException:
            self.cache.close()
            raise

    # -- addresses ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The MapServer URL, as ``run --service`` takes it."""
        return f"{self.root_url}{SERVICES}/{self.name}/MapServer"

    @property
    def tile_url_template(self) -> str:
        return f"{self.url}/tile/{{level}}/{{row}}/{{col}}"

    # -- lifecycle (start, serve_forever, stop, context: ServerLifecycle) -----------------------

    def _release(self) -> None:
        self.cache.close()

    def __repr__(self) -> str:
        return f"CacheServer({str(self.cache_path)!r}, url={self.url!r})"


def _open(path: Path) -> TileCache:
    """Open the cache, turning every way a path can be wrong into one line."""
    if not path.exists():
        raise FormatError(f"{path}: no such cache folder or package")
    from cacheorch.formats.cache import open_cache

    try:
        return open_cache(path)
    except CacheorchError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise FormatError(f"{path}: not a readable tile cache or package ({exc})") from None


def run_server(cache: str | Path, host: str = "127.0.0.1", port: int = 0, name: str | None = None,
               echo: Callable[[str], Any] = print) -> None:
    """The ``serve`` command: print where the service is, then serve until Ctrl-C."""
    from cacheorch.vector.reader import is_vector_output
    if is_vector_output(cache):  # .vtpk, pbf MBTiles: served as a VectorTileServer
        from cacheorch.vector.serve import run_vector_server
        return run_vector_server(cache, host, port, name, echo)
    server = CacheServer(cache, host=host, port=port, service_name=name)
    try:
        service = server.service
        echo(f"Serving {server.cache_path} (levels {service['minLOD']}-{service['maxLOD']}) at")
        echo(f"  {server.url}")
        echo(f"Preview in a browser: {server.root_url}/")
        if xyz_zooms(server.cache.scheme):
            echo(f"XYZ tiles: {server.root_url}/{{z}}/{{x}}/{{y}}")
        if server.cache.scheme.spatial_reference.epsg is not None:  # WMTS names its CRS by code
            echo(f"WMTS: {server.url}/WMTS/1.0.0/WMTSCapabilities.xml")
        echo(f"GDAL: WMS:{server.url}?f=json")
        if host not in ("127.0.0.1", "localhost", "::1"):
            echo(f"Note: listening on {host}, reachable from other machines.")
        server.serve_until_interrupted(echo)
    finally:
        server.stop()

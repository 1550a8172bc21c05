"""The ``vector-package`` scale and tile sources: a .vtpk, vector tile cache folder or pbf MBTiles
given as ``--service``.

So a vector output is also an input, as raster caches and packages are: ``run --service
streets.vtpk --exporter mbtiles`` converts it offline, and a subset of levels or areas can be
re-exported, tiles byte for byte, with the packaged style, sprites and glyphs carried along
(read from the package instead of a server).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

from cacheorch import hookimpl
from cacheorch.errors import FormatError
from cacheorch.formats.locate import local_path
from cacheorch.interfaces import ScaleSource, Service, TileFetcher, TileResult, TileSource
from cacheorch.tiling import TileKey
from cacheorch.vector.reader import VectorOutput, is_vector_output, open_vector

if TYPE_CHECKING:
    from cacheorch.connection import Connection

__all__ = ["VectorPackageScaleSource", "VectorPackageTileSource", "PackageFetcher"]


def _accepts(location: str) -> bool:
    path = local_path(location)
    return path is not None and is_vector_output(path)


class VectorPackageScaleSource(ScaleSource):
    """Levels of a local vector output (.vtpk, vector tile cache folder, pbf MBTiles)."""

    name = "vector-package"

    @classmethod
    def accepts(cls, location: str) -> bool:
        return _accepts(location)

    def read(self, location: str, connection: Connection) -> Service:
        path = local_path(location)
        if path is None or not is_vector_output(path):
            raise FormatError(f"{location}: not a vector tile package, cache folder or MBTiles")
        output = open_vector(path)
        try:
            service = output.service
        finally:
            output.close()
        base = str(Path(path).resolve())

        def fetch(url: str) -> bytes | None:
            """A resource URL resolved against the package (``…/resources/<rel>``)."""
            rel = unquote(url.split("/resources/", 1)[1]) if "/resources/" in url else ""
            rel = {"info": "info/root.json", "styles": "styles/root.json"}.get(rel, rel)
            package = open_vector(path)  # type: ignore[arg-type]
            try:
                return package.resource(rel) if rel else None
            finally:
                package.close()

        return replace(service, location=base, style_url=f"{base}/resources/styles/root.json",
                       tile_template=f"{base}/tile/{{z}}/{{y}}/{{x}}.pbf", fetch=fetch)


class PackageFetcher(TileFetcher):
    """Tiles read from the package, in order; absent ones are ``missing``."""

    def __init__(self, output: VectorOutput) -> None:
        self.output = output

    def fetch(self, keys: Iterable[TileKey]) -> Iterator[TileResult]:
        for key in keys:
            try:
                data = self.output.tile(key.level, key.row, key.col)
            except FormatError as exc:
                yield TileResult(key, "failed", error=str(exc))
                continue
            yield TileResult(key, "ok", data) if data else TileResult(key, "missing")

    def close(self) -> None:
        self.output.close()


class VectorPackageTileSource(TileSource):
    """Vector tiles read from a local .vtpk, vector tile cache folder or pbf MBTiles."""

    name = "vector-package"

    @classmethod
    def accepts(cls, location: str) -> bool:
        return _accepts(location)

    def open(self, service: Service, connection: Connection, workers: int) -> TileFetcher:
        return PackageFetcher(open_vector(service.location))


@hookimpl
def cacheorch_register_scale_sources() -> list[type[ScaleSource]]:
    return [VectorPackageScaleSource]


@hookimpl
def cacheorch_register_tile_sources() -> list[type[TileSource]]:
    return [VectorPackageTileSource]

"""Built-in map writer: the offline copy of a QGIS project (``<project>-offline.qgs`` / ``.qgz``)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cacheorch.hookspecs import hookimpl
from cacheorch.maps.interfaces import MapWriter
from cacheorch.maps.model import MapDocument
from cacheorch.maps.offline_qgis import (
    VECTOR_TILE_PROVIDER, local_datasource, vector_tile_datasource, write_offline_project,
)

__all__ = ["QgisOfflineWriter", "cacheorch_register_map_writers"]


class QgisOfflineWriter(MapWriter):
    """The QGIS project with each exported layer's datasource replaced by its local file (a
    vector tile layer's by its vector MBTiles, read by QGIS's vector tile provider)."""

    name = "qgis-offline"

    @classmethod
    def accepts(cls, document: MapDocument) -> bool:
        return document.format == "qgis" and document.path is not None

    def write(self, document: MapDocument, outputs: Mapping[int, Path], folder: Path) -> Path:
        assert document.path is not None
        sources, providers = {}, {}
        for i, path in outputs.items():
            layer_id = document.layers[i].ref.get("id")
            if not layer_id:
                continue
            if document.layers[i].kind == "vector-tile":
                sources[layer_id] = vector_tile_datasource(path, folder)
                providers[layer_id] = VECTOR_TILE_PROVIDER
            else:
                sources[layer_id] = local_datasource(path, folder)
        return write_offline_project(Path(document.path), sources, folder, providers)


@hookimpl
def cacheorch_register_map_writers() -> list[type[MapWriter]]:
    return [QgisOfflineWriter]

"""A stand-in ``arcpy`` module (NOT ArcGIS) for the arcpy exporters' tests and contract tests.

It records every call with its arguments and imitates only what the exporters rely on (a
cache-dataset folder per ExportMapServerCache call, a tile package from ExportTileCache built with
cacheorch's own tpkx writer, ``Result.getMessages`` / ``getOutput``, ``GetMessages(2)`` and
``ExecuteError``).
"""
from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

from shapely.geometry import Polygon, box
from shapely.ops import unary_union

from _tiles import all_tiles, write_tiles
from cacheorch.interfaces import ExportRequest, Service
from cacheorch.plugins.export_compact_v2 import CompactV2Session
from cacheorch.plugins.export_tpkx import TpkxSession
from cacheorch.tiling import TilingScheme

__all__ = ["StandInArcpy", "write_tpkx"]


def write_tpkx(path: Path, scheme: TilingScheme, tiles: dict[tuple[int, int, int], bytes],
               session_class: type = TpkxSession) -> Path:
    """A real package (or, with CompactV2Session, a cache folder) of ``tiles``."""
    levels = sorted({k[0] for k in tiles})
    narrowed = scheme.with_levels(levels)
    session = session_class(ExportRequest(
        output=path, service=Service(location=str(path), scheme=scheme, name=path.stem),
        scheme=narrowed, levels=tuple(narrowed.lod(lv) for lv in levels), mode="overwrite"))
    write_tiles(session, tiles)
    return session.commit()


class StandInArcpy(types.ModuleType):
    """A stand-in for arcpy (NOT ArcGIS): records calls, fakes just enough results."""

    def __init__(self, scheme: TilingScheme, tiles: dict[tuple[int, int, int], bytes]) -> None:
        super().__init__("arcpy")
        self.scheme, self.tiles = scheme, tiles
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.fail_with: str | None = None
        self.errors = ""
        stand_in = self

        class ExecuteError(Exception):
            pass

        class FeatureSet:
            def __init__(self, table: str) -> None:
                self.json = json.loads(table)

        class Result:
            def __init__(self, output: str, messages: str) -> None:
                self.output, self.messages = output, messages

            def getOutput(self, i: int) -> str:  # noqa: N802 (arcpy's naming)
                return self.output

            def getMessages(self, severity: int = 0) -> str:  # noqa: N802
                return self.messages

        self.ExecuteError, self.FeatureSet, self.Result = ExecuteError, FeatureSet, Result
        self.server = types.SimpleNamespace(ExportMapServerCache=self._export_map_server_cache)
        self.management = types.SimpleNamespace(ExportTileCache=self._export_tile_cache)
        self.GetMessages = lambda severity=0: stand_in.errors

    # -- helpers --------------------------------------------------------------------------------

    def _fail(self) -> None:
        if self.fail_with:
            self.errors = self.fail_with
            raise self.ExecuteError("Failed to execute (ExportMapServerCache).")

    def _selected(self, scales: str, area: Any) -> dict[tuple[int, int, int], bytes]:
        levels = {self.scheme.level_for_scale(float(s)).level for s in scales.split(";")}
        shape = None
        if area is not None:
            rings = [r for f in area.json["features"] for r in f["geometry"]["rings"]]
            shape = unary_union([Polygon(r) for r in rings])
        return {k: v for k, v in self.tiles.items() if k[0] in levels and (
            shape is None or box(*self.scheme.tile_bounds(*k)).intersection(shape).area > 0)}

    def _export_map_server_cache(self, *args: Any) -> Any:
        """Adds the selected tiles to a real Compact V2 cache dataset under the target folder."""
        self.calls.append(("ExportMapServerCache", args))
        self._fail()
        _, target, _, _, _, scales, _, area, _, mode = args
        held_file = Path(target) / "standin-held.json"
        held = {} if mode == "OVERWRITE" or not held_file.exists() else \
            json.loads(held_file.read_text())
        held.update({"/".join(map(str, k)): 1 for k in self._selected(scales, area)})
        held_file.write_text(json.dumps(held))
        dataset = Path(target) / "Export" / "Layers"
        keys = [tuple(int(p) for p in k.split("/")) for k in held]
        write_tpkx(dataset, self.scheme, {k: self.tiles[k] for k in keys}, CompactV2Session)
        return self.Result(str(dataset), "Start Time: now\nExporting...\nSucceeded at now")

    def _export_tile_cache(self, *args: Any) -> Any:
        """Reads the source cache (with cacheorch's reader) and packages the selected tiles."""
        self.calls.append(("ExportTileCache", args))
        self._fail()
        source, folder, name, kind, _, scales, area = args
        have = all_tiles(source)
        chosen = {k: v for k, v in self._selected(scales, area).items() if k in have}
        ext = ".tpkx" if kind == "TILE_PACKAGE_TPKX" else ".tpk"
        out = write_tpkx(Path(folder) / (name + ext), self.scheme, chosen)
        return self.Result(str(out), "Start Time: now\nSucceeded at now")

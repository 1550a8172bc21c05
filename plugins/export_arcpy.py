"""The ``export-map-server-cache`` and ``export-tile-cache`` exporters: ArcGIS's own tools (arcpy).

Sites with ArcGIS Pro or Server want the official tools, driven by cacheorch's policies instead
of a hard-coded scale list (spec §8):

- ``export-map-server-cache``: ``arcpy.server.ExportMapServerCache`` once per area tier (the
  tool takes one area of interest and one scale list per call) into one CACHE_DATASET folder,
  the first call with the chosen mode (MERGE by default) and the rest with MERGE; then, for a
  package output, ``arcpy.management.ExportTileCache`` packages that cache dataset
  (TILE_PACKAGE_TPKX for .tpkx, TILE_PACKAGE for .tpk).
- ``export-tile-cache``: ``arcpy.management.ExportTileCache`` on a *local* cache (the job's
  ``--service`` is a cache folder, conf.xml or package), once per tier into a package each;
  several packages are merged by cacheorch into one (.tpkx, or .tpk).

Scales are the selected levels' exact scale values from the tiling scheme (``repr`` of the
float, so nothing is rounded away), joined with ``;``; areas are ``arcpy.FeatureSet`` objects
made from Esri FeatureSet JSON in the scheme's spatial reference. Each tool's geoprocessing
messages go to the catalog.

arcpy is proprietary and is not installed where cacheorch is tested: the parameter mapping is
checked with a stand-in ``arcpy`` module that records calls (tests/test_arcpy_exporters.py), not
against ArcGIS itself. Where ``import arcpy`` fails, building either exporter raises UsageError
(exit 2) naming the exporters that do run here.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cacheorch import hookimpl
from cacheorch.connection import Connection
from cacheorch.delegate import Tier, area_tiers, export_request, merge_packages, place_output
from cacheorch.errors import ExportError, UsageError
from cacheorch.exporttiles import feature_set
from cacheorch.interfaces import DelegatedExporter, DelegateReport, Exporter, staging_path
from cacheorch.jobplan import JobPlan

__all__ = ["ExportMapServerCacheExporter", "ExportTileCacheExporter", "scales_param",
           "import_arcpy", "cacheorch_register_exporters"]

_PACKAGE_TYPES = {".tpkx": "TILE_PACKAGE_TPKX", ".tpk": "TILE_PACKAGE"}


def import_arcpy() -> Any | None:
    """The arcpy module, or None where it does not import (no ArcGIS Pro / Server Python)."""
    try:
        import arcpy  # type: ignore[import-not-found]
    except Exception:  # ImportError, or a licence/runtime failure while importing
        return None
    return arcpy


def scales_param(scales: list[float]) -> str:
    """``591657527.591555;295828763.795777``: the tool's Double list, each value exact."""
    return ";".join(repr(float(s)) for s in scales)


def _runnable_here() -> list[str]:
    """Names of the exporters usable on this machine, for the "arcpy is missing" line."""
    from cacheorch.pluginmanager import get_plugins
    names = []
    for entry in get_plugins().exporters:
        cls = entry.cls
        if isinstance(cls, type) and issubclass(cls, DelegatedExporter) and cls.unavailable():
            continue
        names.append(entry.name)
    return names


class _ArcpyExporter(DelegatedExporter):
    """What both arcpy exporters share: arcpy itself, scales, areas, messages."""

    extension = ".tpkx"

    @classmethod
    def unavailable(cls) -> str | None:
        return None if import_arcpy() is not None else "arcpy does not import here"

    def __init__(self, options: Any | None = None) -> None:
        super().__init__(options)
        arcpy = import_arcpy()
        if arcpy is None:
            raise UsageError(f"exporter {self.name} needs arcpy (ArcGIS Pro or ArcGIS Server "
                             f"Python), which does not import here; exporters that run here: "
                             f"{', '.join(_runnable_here())}")
        self.arcpy = arcpy
        output_type = str(getattr(self.options, "package", "tpkx")).lower().lstrip(".")
        if output_type not in ("tpkx", "tpk", "cache"):
            raise UsageError(f"{self.name}: package must be tpkx, tpk or cache, not "
                             f"{self.options.package!r}")
        self.extension = None if output_type == "cache" else "." + output_type  # type: ignore[misc]

    def _scales(self, plan: JobPlan, tier: Tier) -> str:
        scheme = plan.service.scheme
        return scales_param([scheme.lod(level).scale for level in tier.levels])

    def _area(self, plan: JobPlan, tier: Tier) -> Any:
        sr = plan.service.scheme.spatial_reference
        return self.arcpy.FeatureSet(json.dumps(feature_set(tier.area, sr)))

    def _messages(self, result: Any, report: DelegateReport) -> None:
        """Every geoprocessing message of a tool run, with its severity."""
        count = getattr(result, "messageCount", None)
        if isinstance(count, int) and hasattr(result, "getMessage"):
            kinds = {0: "info", 1: "warning", 2: "error"}
            for i in range(count):
                severity = result.getSeverity(i) if hasattr(result, "getSeverity") else 0
                report.message(str(result.getMessage(i)), kind=kinds.get(severity, "info"),
                               source="arcpy")
            return
        text = result.getMessages() if hasattr(result, "getMessages") else \
            self.arcpy.GetMessages()
        for line in str(text or "").splitlines():
            if line.strip():
                report.message(line.strip(), source="arcpy")

    def _run(self, tool: Any, what: str, report: DelegateReport, *args: Any) -> Any:
        """Call a tool; an arcpy failure becomes one ExportError line with ArcGIS's errors."""
        try:
            result = tool(*args)
        except Exception as exc:
            errors = ""
            try:
                errors = str(self.arcpy.GetMessages(2) or "")
            except Exception:
                pass
            for line in errors.splitlines():
                if line.strip():
                    report.message(line.strip(), kind="error", source="arcpy")
            said = "; ".join(line.strip() for line in errors.splitlines() if line.strip()) or \
                str(exc).strip().replace("\n", "; ")
            raise ExportError(f"{what} failed: {report_text(said)}") from None
        self._messages(result, report)
        return result

    def _output_path(self, result: Any, fallback: Path) -> Path:
        try:
            value = result.getOutput(0)
        except Exception:
            value = None
        return Path(str(value)) if value else fallback

    def _finish(self, plan: JobPlan, report: DelegateReport, built: Path) -> Path:
        if not built.exists():
            raise ExportError(f"ArcGIS reported success but {built} does not exist")
        if built.is_dir():
            if report.output.exists():
                if plan.spec.mode == "create":
                    raise ExportError(f"{report.output} already exists")
                shutil.rmtree(report.output)
            shutil.move(str(built), str(report.output))
            return report.output
        return place_output(built, report.output, plan.spec.mode)


def report_text(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass
class MapServerCacheOptions:
    """Options of ``export-map-server-cache`` (defaults as ArcGIS's own, spec §8.1)."""

    #: The service as ArcGIS knows it (a .ags connection path or URL); default: the job's URL.
    input_service: str = ""
    #: COPY_DATA or DO_NOT_COPY (ArcGIS's default: the server writes the folder itself).
    copy_data: str = "DO_NOT_COPY"
    #: COMPACT (ArcGIS's default), COMPACT_V2 or EXPLODED (for a cache-dataset output only).
    storage_format: str = "COMPACT"
    #: num_of_caching_service_instances; -1 = as many as the server has (Pro fixes it at -1).
    instances: int = -1
    #: MERGE (ArcGIS's default: blend into existing tiles) or OVERWRITE, for the first call.
    mode: str = "MERGE"
    #: The output: tpkx, tpk (a package made from the cache dataset) or cache (the folder).
    package: str = "tpkx"


class ExportMapServerCacheExporter(_ArcpyExporter):
    """ArcGIS's Export Map Server Cache tool, once per area tier, merged into one cache (arcpy)."""

    name = "export-map-server-cache"
    Options = MapServerCacheOptions

    def export(self, plan: JobPlan, connection: Connection, report: DelegateReport) -> Path:
        o = self.options
        copy = _choice(o.copy_data, ("COPY_DATA", "DO_NOT_COPY"), "copy_data")
        storage = _choice(o.storage_format, ("COMPACT", "COMPACT_V2", "EXPLODED"), "storage_format")
        mode = _choice(o.mode, ("MERGE", "OVERWRITE"), "mode")
        if self.extension is not None and storage == "EXPLODED":
            raise UsageError("export-map-server-cache: EXPLODED cannot be packaged; use "
                             "package=cache or another storage_format")
        staging = staging_path(report.output)
        target = staging / "cache"
        target.mkdir(parents=True, exist_ok=True)  # the tool wants the folder to exist
        service = o.input_service or plan.service.location
        tool = self.arcpy.server.ExportMapServerCache
        cache_path = target
        for i, tier in enumerate(area_tiers(plan)):
            result = self._run(
                tool, f"ExportMapServerCache (levels {','.join(map(str, tier.levels))})", report,
                service, str(target), "CACHE_DATASET", copy, storage, self._scales(plan, tier),
                o.instances, self._area(plan, tier), None, mode if i == 0 else "MERGE")
            cache_path = self._output_path(result, target)
            report.progress(tier.tiles)
        if self.extension is None:
            final = self._finish(plan, report, cache_path)
        else:
            package_storage = "COMPACT_V2" if self.extension == ".tpkx" else "COMPACT"
            all_levels = Tier(tuple(lv.lod.level for lv in plan.levels), None, "", plan.tiles)
            result = self._run(
                self.arcpy.management.ExportTileCache, "ExportTileCache (packaging)", report,
                str(cache_path), str(staging), report.output.stem,
                _PACKAGE_TYPES[self.extension], package_storage, self._scales(plan, all_levels),
                None)
            built = self._output_path(result, staging / (report.output.stem + self.extension))
            final = self._finish(plan, report, built)
        shutil.rmtree(staging, ignore_errors=True)
        return final


@dataclass
class TileCacheOptions:
    """Options of ``export-tile-cache`` (spec §8.2)."""

    #: The output: tpkx (TILE_PACKAGE_TPKX, CompactV2) or tpk (TILE_PACKAGE, Compact).
    package: str = "tpkx"


class ExportTileCacheExporter(_ArcpyExporter):
    """ArcGIS's Export Tile Cache tool on a local cache, once per area tier (arcpy)."""

    name = "export-tile-cache"
    Options = TileCacheOptions

    def export(self, plan: JobPlan, connection: Connection, report: DelegateReport) -> Path:
        if self.extension is None:
            raise UsageError("export-tile-cache writes packages: package must be tpkx or tpk")
        source = plan.service.location
        if source.lower().startswith(("http://", "https://")):
            raise UsageError(f"export-tile-cache exports a local cache (a folder, conf.xml or "
                             f"package), not {source}; use export-map-server-cache")
        tiers = area_tiers(plan)
        staging = staging_path(report.output)
        staging.mkdir(parents=True, exist_ok=True)
        storage = "COMPACT_V2" if self.extension == ".tpkx" else "COMPACT"
        pieces = []
        for i, tier in enumerate(tiers):
            name = f"piece-{i:03d}"
            result = self._run(
                self.arcpy.management.ExportTileCache,
                f"ExportTileCache (levels {','.join(map(str, tier.levels))})", report,
                source, str(staging), name, _PACKAGE_TYPES[self.extension], storage,
                self._scales(plan, tier), self._area(plan, tier))
            pieces.append(self._output_path(result, staging / (name + self.extension)))
            report.progress(tier.tiles)
        if len(pieces) == 1:
            final = self._finish(plan, report, pieces[0])
        else:
            final = merge_packages(pieces, export_request(plan, report.output))
        shutil.rmtree(staging, ignore_errors=True)
        return final


def _choice(value: str, allowed: tuple[str, ...], option: str) -> str:
    upper = str(value).strip().upper()
    if upper not in allowed:
        raise UsageError(f"{option} must be one of {', '.join(allowed)}, not {value!r}")
    return upper


@hookimpl
def cacheorch_register_exporters() -> list[type[Exporter]]:
    return [ExportMapServerCacheExporter, ExportTileCacheExporter]

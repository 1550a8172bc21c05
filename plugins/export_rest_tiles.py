"""The ``rest-export-tiles`` exporter: the server builds the package (ArcGIS ``exportTiles`` jobs).

Where a service allows it (``exportTilesAllowed``), the server exports its own tiles; ArcGIS
Online basemaps may only be taken that way. One job per area tier (levels sharing one area: the
operation takes one ``areaOfInterest``), each tier split to fit ``maxExportTilesCount``; the
packages are downloaded beside the output (``<output>.partial/``, so a resume reuses the ones
already fetched) and merged into one package (.tpkx, or .tpk for ``storage=Compact``). A single
package is kept as the server made it.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cacheorch import hookimpl
from cacheorch.connection import Connection
from cacheorch.delegate import Tier, area_tiers, export_request, merge_packages, place_output, \
    split_tier
from cacheorch.errors import ExportError, ServiceError, UsageError
from cacheorch.exporttiles import STORAGE_FORMATS, VECTOR, ExportTilesClient, Polling
from cacheorch.interfaces import DelegatedExporter, DelegateReport, Exporter, staging_path
from cacheorch.jobplan import JobPlan
from cacheorch.vector.service import is_vector_scheme

__all__ = ["RestExportTilesExporter", "DEFAULT_MAX_EXPORT_TILES", "cacheorch_register_exporters"]

#: The documented default of ``maxExportTilesCount`` (spec §1.1), for services that do not say.
DEFAULT_MAX_EXPORT_TILES = 100_000
_SHORT = {"compactv2": "esriMapCacheStorageModeCompactV2",
          "compact": "esriMapCacheStorageModeCompact"}


@dataclass
class RestExportTilesOptions:
    """Options of ``rest-export-tiles``."""

    #: CompactV2 (a .tpkx) or Compact (a .tpk).
    storage: str = "CompactV2"
    #: Tiles per job; 0 means the service's maxExportTilesCount (100000 when it does not say).
    max_tiles: int = 0
    #: Seconds before the first poll, the growth factor, and the longest wait between polls.
    poll: float = 1.0
    poll_factor: float = 1.5
    poll_max: float = 30.0
    #: Seconds one job may take before cacheorch cancels it.
    timeout: float = 6 * 3600.0


class RestExportTilesExporter(DelegatedExporter):
    """The server exports the package (ArcGIS exportTiles jobs), merged into one .tpkx or .tpk."""

    name = "rest-export-tiles"
    extension = ".tpkx"
    #: What a vector tile layer's export is (the default output's extension then).
    vector_extension = ".vtpk"
    Options = RestExportTilesOptions

    def __init__(self, options: Any | None = None) -> None:
        super().__init__(options)
        key = str(self.options.storage).strip()
        self.storage = _SHORT.get(key.lower(), key)
        if self.storage not in STORAGE_FORMATS:
            raise UsageError(f"rest-export-tiles: storage must be CompactV2 or Compact, "
                             f"not {self.options.storage!r}")
        self.extension = STORAGE_FORMATS[self.storage]  # type: ignore[misc]

    # -- planning -----------------------------------------------------------------------------

    def _check(self, plan: JobPlan) -> None:
        service = plan.service
        if not service.location.lower().startswith(("http://", "https://")):
            raise UsageError(f"rest-export-tiles needs an ArcGIS REST service URL, not "
                             f"{service.location}")
        if not service.export_tiles_allowed:
            raise UsageError(f"{service.location} does not allow exportTiles "
                             f"(exportTilesAllowed is false); use another exporter")

    def limit(self, plan: JobPlan) -> int:
        """Tiles one job may export: the option, else the service's limit, else the default."""
        return self.options.max_tiles or plan.service.max_export_tiles_count or \
            DEFAULT_MAX_EXPORT_TILES

    def pieces(self, plan: JobPlan) -> list[Tier]:
        """One job each: the area tiers, split where over :meth:`limit`."""
        limit = self.limit(plan)
        counts = {lv.lod.level: lv.tiles for lv in plan.levels}
        return [piece for tier in area_tiers(plan)
                for piece in split_tier(plan.service.scheme, tier, limit, counts)]

    def _client(self, plan: JobPlan, connection: Connection) -> ExportTilesClient:
        o = self.options
        polling = Polling(first=o.poll, factor=o.poll_factor, longest=o.poll_max,
                          deadline=o.timeout)
        return ExportTilesClient(plan.service.location, connection, polling)

    def estimate(self, plan: JobPlan, connection: Connection) -> dict[str, Any] | None:
        self._check(plan)
        if is_vector_scheme(plan.service.scheme):  # VectorTileServer documents no estimate
            return None
        client = self._client(plan, connection)
        sr = plan.service.scheme.spatial_reference
        tiles = size = 0
        known_tiles = known_size = True
        pieces = self.pieces(plan)
        for piece in pieces:
            try:
                answer = client.estimate(piece.levels, piece.area, sr, self.storage)
            except (ExportError, ServiceError) as exc:  # plan still shows cacheorch's count
                return {"tiles": None, "bytes": None, "jobs": len(pieces),
                        "limit": self.limit(plan), "error": str(exc)}
            known_tiles &= answer.tiles is not None
            known_size &= answer.bytes is not None
            tiles += answer.tiles or 0
            size += answer.bytes or 0
        return {"tiles": tiles if known_tiles else None, "bytes": size if known_size else None,
                "jobs": len(pieces), "limit": self.limit(plan)}

    # -- running ------------------------------------------------------------------------------

    def export(self, plan: JobPlan, connection: Connection, report: DelegateReport) -> Path:
        self._check(plan)
        pieces = self.pieces(plan)
        client = self._client(plan, connection)
        sr = plan.service.scheme.spatial_reference
        storage, extension = self.storage, self.extension
        if is_vector_scheme(plan.service.scheme):  # a vector tile layer exports a .vtpk
            storage, extension = VECTOR, self.vector_extension
            if len(pieces) > 1:
                raise ExportError(f"this vector export needs {len(pieces)} exportTiles jobs "
                                  f"(area tiers or maxExportTilesCount) and vtpk packages cannot "
                                  f"be merged yet; export one area tier at a time, or use "
                                  f"--exporter vtpk")
        staging = staging_path(report.output)
        staging.mkdir(parents=True, exist_ok=True)
        if len(pieces) > 1:
            report.message(f"{len(pieces)} export jobs: " + "; ".join(
                f"levels {','.join(map(str, p.levels))} ({p.tiles:,} tiles, {p.label})"
                for p in pieces), source="cacheorch")
        downloaded: list[Path] = []
        for i, piece in enumerate(pieces):
            dest = staging / f"piece-{i:03d}{extension}"
            if dest.is_file():  # a resume: this piece was fetched whole before
                report.message(f"reusing {dest.name} from an earlier run", source="cacheorch")
            else:
                client.export(piece.levels, piece.area, sr, storage, dest,
                              lambda text, kind: report.message(text, kind=kind))
            downloaded.append(dest)
            report.progress(piece.tiles)
        try:
            if len(downloaded) == 1:
                _check_package(downloaded[0])
                final = place_output(downloaded[0], report.output, plan.spec.mode)
            else:
                final = merge_packages(downloaded, export_request(plan, report.output))
        except OSError as exc:
            raise ExportError(f"cannot write {report.output}: {exc.strerror or exc}") from None
        shutil.rmtree(staging, ignore_errors=True)
        return final


def _check_package(path: Path) -> None:
    """Refuse a download that is not a package cacheorch (and so GDAL) can read."""
    from cacheorch.formats.cache import open_cache
    from cacheorch.errors import FormatError
    from cacheorch.vector.reader import is_vector_output, open_vector
    try:
        (open_vector if is_vector_output(path) else open_cache)(path).close()
    except FormatError as exc:
        raise ExportError(f"the server's package is not readable: {exc}") from None


@hookimpl
def cacheorch_register_exporters() -> list[type[Exporter]]:
    return [RestExportTilesExporter]

"""The ``service-limits`` policy: respect what the service says about its own levels and exports.

Levels outside ``minLOD..maxLOD`` hold no tiles (hosted tile layers and .tpkx list the whole
scheme but tile a range of it), and neither do levels outside the scales the service draws at
(``minScale``/``maxScale``; a cache folder's conf.properties), so they are dropped. ``maxExportTilesCount`` limits only the
server-side ``exportTiles`` operation, not fetching tiles one by one, so by default it becomes a
note in the plan; ``fit_export=true`` instead keeps, from the coarsest level, the levels whose
tiles fit that count (for a job meant to be handed to ``exportTiles`` later).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cacheorch import hookimpl
from cacheorch.interfaces import PolicyContext, SelectionPolicy
from cacheorch.plugins.policy_budget import fit_budget
from cacheorch.tiling import LevelOfDetail, TilingScheme

__all__ = ["ServiceLimitsPolicy"]


class ServiceLimitsPolicy(SelectionPolicy):
    """Drop levels outside the service's LOD and scale ranges; note (or fit) maxExportTilesCount."""

    name = "service-limits"

    @dataclass
    class Options:
        #: Keep only the coarsest levels whose tiles fit maxExportTilesCount (else just a note).
        fit_export: bool = False

    def __init__(self, options: object | None = None) -> None:
        super().__init__(options)
        self._reasons: dict[int, str] = {}

    def select(self, scheme: TilingScheme, levels: Sequence[LevelOfDetail],
               context: PolicyContext | None = None) -> list[LevelOfDetail]:
        lo, hi = scheme.min_lod, scheme.max_lod
        self._reasons = {}
        kept: list[LevelOfDetail] = []
        service = context.service if context is not None else None
        for lod in levels:
            not_drawn = service.draws_at(lod.scale) if service is not None else ""
            if lo is not None and lod.level < lo:
                self._reasons[lod.level] = f"below the service's minLOD {lo}"
            elif hi is not None and lod.level > hi:
                self._reasons[lod.level] = f"above the service's maxLOD {hi}"
            elif not_drawn:
                self._reasons[lod.level] = f"scale 1:{lod.scale:,.0f} is {not_drawn} (it draws " \
                                           "nothing there)"
            else:
                kept.append(lod)
        if context is None:
            return kept
        limit = context.service.max_export_tiles_count
        if not limit:
            return kept
        if self.options.fit_export:
            fits, reasons = fit_budget(kept, limit, "coarse", context.tiles,
                                       context.tiles_at_least, lambda n: f"{n:,.0f} tiles")
            self._reasons.update({level: f"maxExportTilesCount: {why}"
                                  for level, why in reasons.items()})
            return [lod for lod in kept if lod.level in fits]
        total = sum(context.tiles(lod.level) for lod in kept)  # the plan counts them anyway
        if total > limit:
            context.note(f"service-limits: {total:,} tiles exceed the service's maxExportTilesCount "
                         f"{limit:,}; that limits server-side exportTiles only (fit_export=true "
                         "keeps the levels that fit)")
        return kept

    def reason(self, level: int, kept: bool) -> str:
        return self._reasons.get(level, "")

    def explain(self) -> str:
        return "service-limits" + (" (fit maxExportTilesCount)" if self.options.fit_export else "")


@hookimpl
def cacheorch_register_policies() -> list[type[SelectionPolicy]]:
    return [ServiceLimitsPolicy]

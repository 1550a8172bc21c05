"""The ``scale-range`` policy: the levels that draw a range of scales, as ArcGIS Runtime picks them."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cacheorch import hookimpl
from cacheorch.errors import PolicyError
from cacheorch.interfaces import SelectionPolicy
from cacheorch.tiling import SCALE_TOLERANCE, LevelOfDetail, TilingScheme

__all__ = ["ScaleRangePolicy"]


def _at_least(a: float, b: float) -> bool:
    return a >= b * (1 - SCALE_TOLERANCE)


def _at_most(a: float, b: float) -> bool:
    return a <= b * (1 + SCALE_TOLERANCE)


class ScaleRangePolicy(SelectionPolicy):
    """Levels from min_scale (small scale) to max_scale (large scale); 0 means no limit.

    A bound falling between two levels takes the coarser level for the min and the finer for
    the max, so the whole range draws from real tiles (ArcGIS Runtime's
    createDefaultExportTileCacheParameters rule).
    """

    name = "scale-range"

    @dataclass
    class Options:
        min_scale: float = 0.0
        max_scale: float = 0.0

    def select(self, scheme: TilingScheme, levels: Sequence[LevelOfDetail]) -> list[LevelOfDetail]:
        lo, hi = self.options.min_scale, self.options.max_scale
        if lo < 0 or hi < 0:
            raise PolicyError("scale-range: scales must be positive (0 = no limit)")
        if lo and hi and hi > lo:
            raise PolicyError(f"scale-range: min_scale {lo:g} is a larger scale than max_scale "
                              f"{hi:g}; min_scale is the small scale (zoomed out), e.g. 2000000")
        ordered = sorted(levels, key=lambda lod: -lod.scale)  # coarse → fine
        if not ordered:
            return []
        first = 0
        if lo:
            coarser = [i for i, lod in enumerate(ordered) if _at_least(lod.scale, lo)]
            first = coarser[-1] if coarser else 0
        last = len(ordered) - 1
        if hi:
            finer = [i for i, lod in enumerate(ordered) if _at_most(lod.scale, hi)]
            last = finer[0] if finer else len(ordered) - 1
        keep = {lod.level for lod in ordered[first:last + 1]}
        return [lod for lod in levels if lod.level in keep]

    def explain(self) -> str:
        o = self.options
        return f"scale-range 1:{o.min_scale:,.0f} … 1:{o.max_scale:,.0f}"


@hookimpl
def cacheorch_register_policies() -> list[type[SelectionPolicy]]:
    return [ScaleRangePolicy]

"""The ``levels`` policy: keep the levels listed (``0-5,8``)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cacheorch import hookimpl
from cacheorch.config import parse_level_set
from cacheorch.errors import ConfigError, LevelError, PolicyError
from cacheorch.interfaces import SelectionPolicy
from cacheorch.tiling import LevelOfDetail, TilingScheme, format_levels

__all__ = ["LevelsPolicy"]


class LevelsPolicy(SelectionPolicy):
    """Keep the listed levels, e.g. levels:0-5,8 (or --levels 0-5,8)."""

    name = "levels"
    positional = "levels"

    @dataclass
    class Options:
        levels: str = ""

    def wanted(self) -> frozenset[int]:
        try:
            return parse_level_set(self.options.levels, "levels")
        except ConfigError as exc:
            raise PolicyError(str(exc)) from None

    def select(self, scheme: TilingScheme, levels: Sequence[LevelOfDetail]) -> list[LevelOfDetail]:
        wanted = self.wanted()
        for level in sorted(wanted):
            scheme.lod(level)  # a level the scheme lacks: LevelError naming the levels it has
        tiled = set(scheme.tiled_levels)
        untiled = sorted(wanted - tiled)
        if untiled:
            raise LevelError(f"level {untiled[0]} has no tiles in this service (tiled levels "
                             f"{format_levels(tiled)})")
        return [lod for lod in levels if lod.level in wanted]

    def explain(self) -> str:
        return f"levels {self.options.levels}"


@hookimpl
def cacheorch_register_policies() -> list[type[SelectionPolicy]]:
    return [LevelsPolicy]

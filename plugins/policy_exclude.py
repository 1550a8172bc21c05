"""The ``exclude`` policy: drop some levels (``exclude:12,14-15``) or scales from what is selected.

A level or scale the scheme lacks is an error, as in ``levels`` and ``snap``: excluding a mistyped
level silently would export the level the user meant to leave out.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cacheorch import hookimpl
from cacheorch.config import parse_level_set
from cacheorch.errors import ConfigError, LevelError, PolicyError
from cacheorch.interfaces import SelectionPolicy
from cacheorch.tiling import LevelOfDetail, TilingScheme

__all__ = ["ExcludePolicy"]


class ExcludePolicy(SelectionPolicy):
    """Drop the listed levels and/or scales, e.g. exclude:12,14-15 or exclude:scales=1128.497176."""

    name = "exclude"
    positional = "levels"

    @dataclass
    class Options:
        levels: str = ""
        #: ';'-separated scales, matched to levels within 1e-6 relative.
        scales: str = ""

    def unwanted(self, scheme: TilingScheme) -> set[int]:
        out: set[int] = set()
        if self.options.levels.strip():
            try:
                levels = parse_level_set(self.options.levels, "exclude")
            except ConfigError as exc:
                raise PolicyError(str(exc)) from None
            for level in sorted(levels):
                scheme.lod(level)  # LevelError naming the levels the scheme has
            out |= levels
        for part in self.options.scales.replace(",", ";").split(";"):
            if not part.strip():
                continue
            try:
                scale = float(part.strip().removeprefix("1:").replace("_", ""))
            except ValueError:
                raise PolicyError(f"exclude: {part.strip()!r} is not a scale") from None
            lod = scheme.level_for_scale(scale)
            if lod is None:
                nearest = sorted(sorted(scheme.lods, key=lambda l: abs(l.scale - scale))[:2])
                names = ", ".join(f"level {l.level} ({l.scale:.6f})" for l in nearest)
                raise LevelError(f"exclude: scale {scale:g} matches no level; nearest: {names}")
            out.add(lod.level)
        if not out:
            raise PolicyError("exclude: no levels or scales given (exclude:12,14-15 or "
                              "exclude:scales=S1;S2)")
        return out

    def select(self, scheme: TilingScheme, levels: Sequence[LevelOfDetail]) -> list[LevelOfDetail]:
        unwanted = self.unwanted(scheme)
        return [lod for lod in levels if lod.level not in unwanted]

    def reason(self, level: int, kept: bool) -> str:
        return "" if kept else "excluded"

    def explain(self) -> str:
        parts = [p for p in (self.options.levels, self.options.scales and
                             f"scales {self.options.scales}") if p]
        return "exclude " + " ".join(parts)


@hookimpl
def cacheorch_register_policies() -> list[type[SelectionPolicy]]:
    return [ExcludePolicy]

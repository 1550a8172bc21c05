"""The ``snap`` policy: wanted scales → the levels with those scales (relative tolerance 1e-6)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cacheorch import hookimpl
from cacheorch.errors import LevelError, PolicyError
from cacheorch.interfaces import SelectionPolicy
from cacheorch.tiling import LevelOfDetail, TilingScheme

__all__ = ["SnapPolicy"]


class SnapPolicy(SelectionPolicy):
    """Keep the levels whose scale equals one of the wanted scales (within 1e-6 relative).

    The same level is written with different precision in different files (295828763.795777 in
    REST, 295828763.79577702 in conf.xml), so exact equality would reject a correct scale; a
    scale matching no level is an error that names the nearest levels.
    """

    name = "snap"
    positional = "scales"

    @dataclass
    class Options:
        #: ';'-separated scales.
        scales: str = ""

    def wanted(self) -> list[float]:
        out = []
        for part in self.options.scales.replace(",", ";").split(";"):
            if not part.strip():
                continue
            try:
                out.append(float(part.strip().removeprefix("1:").replace("_", "")))
            except ValueError:
                raise PolicyError(f"snap: {part.strip()!r} is not a scale") from None
        if not out:
            raise PolicyError("snap: no scales given")
        return out

    def select(self, scheme: TilingScheme, levels: Sequence[LevelOfDetail]) -> list[LevelOfDetail]:
        keep: set[int] = set()
        for scale in self.wanted():
            lod = scheme.level_for_scale(scale)
            if lod is None:
                nearest = sorted(sorted(scheme.lods, key=lambda l: abs(l.scale - scale))[:2])
                names = ", ".join(f"level {l.level} ({l.scale:.6f})" for l in nearest)
                raise LevelError(f"scale {scale:g} matches no level; nearest: {names}")
            keep.add(lod.level)
        missing = keep - {lod.level for lod in levels}
        if missing:
            raise LevelError(f"level {min(missing)} (scale {scheme.lod(min(missing)).scale:.6f}) "
                             "was removed by an earlier policy or has no tiles")
        return [lod for lod in levels if lod.level in keep]

    def explain(self) -> str:
        return f"snap to scales {self.options.scales}"


@hookimpl
def cacheorch_register_policies() -> list[type[SelectionPolicy]]:
    return [SnapPolicy]

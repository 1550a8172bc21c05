"""The ``max-tiles`` and ``max-bytes`` policies: keep the levels whose planned tiles fit a budget.

Both walk the levels and keep each one whose tiles (or estimated bytes) still fit what is left of
the budget. ``prefer=fine`` (the default) walks from the finest level to the coarsest, so the
finest levels that fit are kept and a level too big for what is left is skipped while coarser,
smaller ones may still fit: ``max-tiles:100`` over a world in Web Mercator keeps levels 0-3 (85
tiles), and ``max-tiles:70`` keeps 0, 1 and 3 (69 tiles) rather than 0-2 (21). ``prefer=coarse``
walks from the coarsest level and stops at the first that does not fit, for a pyramid without gaps.

Counts come from the planner through the policy context (the same counts ``plan`` shows); a level
whose area alone needs more tiles than are left is dropped on that bound, without counting it, so a
budget over levels 0-23 of a country costs what counting the kept levels costs.

``max-bytes`` multiplies each level's count by the mean size of a few tiles fetched near its area
(``samples`` per level, through the job's tile source, so ``plan`` fetches those few tiles); a
level whose samples are all missing borrows the nearest sampled level's size. Reading the service's
``/tilemap`` instead of sampling is not done yet.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cacheorch import hookimpl
from cacheorch.errors import PolicyError
from cacheorch.interfaces import PolicyContext, SelectionPolicy
from cacheorch.tiling import LevelOfDetail, TilingScheme

__all__ = ["MaxTilesPolicy", "MaxBytesPolicy", "parse_count", "parse_bytes", "format_bytes",
           "fit_budget"]

_PREFER = ("fine", "coarse")
_COUNT = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?(?:e[0-9]+)?)\s*([kmg]?)\s*$", re.IGNORECASE)
_BYTES = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*([kmgt]?i?)b?\s*$", re.IGNORECASE)
_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
           "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_count(text: str, what: str) -> int:
    """``100000``, ``100_000``, ``1,000,000``, ``100k``, ``2M``, ``1e6`` → a whole number."""
    m = _COUNT.match(str(text).replace("_", "").replace(",", ""))
    if not m:
        raise PolicyError(f"{what}: {text!r} is not a tile count such as 100000 or 2M")
    value = float(m.group(1)) * _SUFFIX[m.group(2).lower()]
    if value < 1 or value != int(value):
        raise PolicyError(f"{what}: {text!r} must be a whole number of tiles, at least 1")
    return int(value)


def parse_bytes(text: str, what: str) -> int:
    """``500MB`` (10^6), ``1.5GiB`` (2^30), ``2g``, ``123456`` → bytes."""
    m = _BYTES.match(str(text).replace("_", "").replace(",", ""))
    if not m:
        raise PolicyError(f"{what}: {text!r} is not a size such as 500MB, 2GB or 1.5GiB")
    value = int(float(m.group(1)) * _SUFFIX[m.group(2).lower()])
    if value < 1:
        raise PolicyError(f"{what}: {text!r} must be at least one byte")
    return value


def format_bytes(n: float) -> str:
    """Decimal units, as storage is sold: ``12.3 MB``."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def _check_prefer(prefer: str, what: str) -> str:
    value = prefer.strip().lower()
    if value not in _PREFER:
        raise PolicyError(f"{what}: prefer={prefer!r}; expected fine or coarse")
    return value


def fit_budget(levels: Sequence[LevelOfDetail], budget: float, prefer: str,
               cost: Callable[[int], float], at_least: Callable[[int], float],
               show: Callable[[float], str]) -> tuple[set[int], dict[int, str]]:
    """The levels kept within ``budget`` and a reason per level.

    ``cost(level)`` is the exact cost; ``at_least(level)`` a cheap lower bound tried first, so a
    level far over what is left is dropped without computing its exact cost.
    """
    order = sorted(levels, key=lambda lod: lod.resolution)  # finest first
    if prefer == "coarse":
        order.reverse()
    kept: set[int] = set()
    reasons: dict[int, str] = {}
    used = 0.0
    stopped_at: int | None = None
    for lod in order:
        if stopped_at is not None:
            reasons[lod.level] = f"finer than level {stopped_at}, which did not fit"
            continue
        left = budget - used
        low = at_least(lod.level)
        if low > left:
            reasons[lod.level] = f"at least {show(low)}, more than the {show(left)} left of {show(budget)}"
        else:
            value = cost(lod.level)
            if value <= left:
                used += value
                kept.add(lod.level)
                reasons[lod.level] = f"{show(value)}, {show(used)} in all"
                continue
            reasons[lod.level] = (f"{show(value)} would make {show(used + value)}" if used else
                                  show(value)) + f", over {show(budget)}"
        if prefer == "coarse":
            stopped_at = lod.level
    return kept, reasons


def _need(context: PolicyContext | None, name: str) -> PolicyContext:
    if context is None:
        raise PolicyError(f"{name} needs each level's planned tiles; it runs inside plan or run "
                          "(select(scheme, levels, context))")
    return context


class _Budget(SelectionPolicy):
    """Shared by both budgets: the walk, and the reasons ``plan`` shows per level."""

    def __init__(self, options: object | None = None) -> None:
        super().__init__(options)
        self._reasons: dict[int, str] = {}

    def reason(self, level: int, kept: bool) -> str:
        return self._reasons.get(level, "")

    def _keep(self, levels: Sequence[LevelOfDetail], kept: set[int]) -> list[LevelOfDetail]:
        return [lod for lod in levels if lod.level in kept]


class MaxTilesPolicy(_Budget):
    """Keep the finest levels whose planned tiles fit N in all, e.g. max-tiles:100000."""

    name = "max-tiles"
    positional = "tiles"

    @dataclass
    class Options:
        #: The budget: 100000, 100k, 2M, 1e6.
        tiles: str = ""
        #: fine: the finest levels that fit (skipping those too big); coarse: from the coarsest
        #: level, stopping at the first that does not fit.
        prefer: str = "fine"

    def select(self, scheme: TilingScheme, levels: Sequence[LevelOfDetail],
               context: PolicyContext | None = None) -> list[LevelOfDetail]:
        budget = parse_count(self.options.tiles, self.name)
        prefer = _check_prefer(self.options.prefer, self.name)
        ctx = _need(context, self.name)
        kept, self._reasons = fit_budget(levels, budget, prefer, ctx.tiles, ctx.tiles_at_least,
                                         lambda n: f"{n:,.0f} tiles")
        return self._keep(levels, kept)

    def explain(self) -> str:
        return f"max-tiles {self.options.tiles} ({self.options.prefer} first)"


class MaxBytesPolicy(_Budget):
    """Keep the finest levels whose estimated bytes fit, e.g. max-bytes:500MB (tile sizes sampled)."""

    name = "max-bytes"
    positional = "bytes"

    @dataclass
    class Options:
        #: The budget: 500MB (10^6 bytes), 2GB, 1.5GiB (2^30), or a number of bytes.
        bytes: str = ""
        prefer: str = "fine"

    def select(self, scheme: TilingScheme, levels: Sequence[LevelOfDetail],
               context: PolicyContext | None = None) -> list[LevelOfDetail]:
        budget = parse_bytes(self.options.bytes, self.name)
        prefer = _check_prefer(self.options.prefer, self.name)
        ctx = _need(context, self.name)
        order = [lod.level for lod in sorted(scheme.lods, key=lambda lod: lod.level)]
        sizes: dict[int, float | None] = {}

        def sampled(level: int) -> float | None:
            if level not in sizes:
                sizes[level] = ctx.sample_bytes(level)
            return sizes[level]

        def size(level: int) -> float:
            own = sampled(level)
            if own is not None:
                return own
            at = order.index(level)  # borrow from the nearest level of this selection
            for step in range(1, len(order)):
                for other in (at - step, at + step):
                    if 0 <= other < len(order) and order[other] in candidates:
                        value = sampled(order[other])
                        if value is not None:
                            return value
            raise PolicyError(f"{self.name}: no sample tile could be fetched from "
                              f"{ctx.service.location} (all missing or failed); use max-tiles")

        candidates = {lod.level for lod in levels}
        kept, reasons = fit_budget(levels, budget, prefer,
                                   lambda level: ctx.tiles(level) * size(level),
                                   lambda level: ctx.tiles_at_least(level) * size(level),
                                   format_bytes)
        for level in kept:  # say what each estimate rests on
            per = sizes.get(level)
            reasons[level] += (f" ({ctx.tiles(level):,} tiles × {format_bytes(per)} sampled)"
                               if per is not None else " (tile size of a nearby level)")
        self._reasons = reasons
        return self._keep(levels, kept)

    def explain(self) -> str:
        return f"max-bytes {self.options.bytes} ({self.options.prefer} first)"


@hookimpl
def cacheorch_register_policies() -> list[type[SelectionPolicy]]:
    return [MaxTilesPolicy, MaxBytesPolicy]

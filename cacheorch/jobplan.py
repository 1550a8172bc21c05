"""Resolve a JobSpec into a plan: the service, the selected levels, each level's area and tile count.

Everything that can be wrong with the input is found here, before a catalog row or an output file
exists, so bad input leaves nothing behind.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cacheorch.config import AreaSpec
from cacheorch.connection import Connection
from cacheorch.errors import AreaError, ConfigError, UsageError
from cacheorch.interfaces import AOIGenerator, Exporter, PolicyContext, Service, TileFetcher, TileSource
from cacheorch.jobspec import JobSpec, PluginSpec
from cacheorch.options import build_plugin, split_plugin_spec
from cacheorch.planner import BundlePlan, count_level, plan_level
from cacheorch.tiling import LevelOfDetail, format_levels

if TYPE_CHECKING:
    from shapely.geometry.base import BaseGeometry

    from cacheorch.pluginmanager import Plugins

__all__ = ["LevelPlan", "JobPlan", "LevelDecision", "PlanContext", "read_service", "select_levels",
           "decide_levels", "resolve_areas", "make_plan"]

DEFAULT_AREA = "extent"


@dataclass(frozen=True)
class LevelPlan:
    """One selected level: its scale and resolution, the area it covers, and its tile count."""

    lod: LevelOfDetail
    area: BaseGeometry
    area_label: str
    tiles: int

    def to_json(self) -> dict[str, Any]:
        return {"level": self.lod.level, "scale": self.lod.scale, "resolution": self.lod.resolution,
                "area": self.area_label, "tiles_planned": self.tiles}


@dataclass(frozen=True)
class LevelDecision:
    """Why a level of the scheme is in the plan or not: each policy's verdict, in order.

    ``steps`` holds (policy name, what the policy said of itself, kept, reason); the last step
    of a dropped level is the policy that dropped it.
    """

    lod: LevelOfDetail
    kept: bool
    steps: tuple[tuple[str, str, bool, str], ...]

    @property
    def decided_by(self) -> str | None:
        """The policy that dropped the level (None when kept)."""
        return None if self.kept or not self.steps else self.steps[-1][0]

    def summary(self) -> str:
        """One line: ``kept by levels 0-8; max-tiles …`` or ``dropped by max-tiles …: reason``."""
        if not self.kept:
            _, label, _, reason = self.steps[-1]
            return f"dropped by {label}" + (f": {reason}" if reason else "")
        said = [label + (f": {reason}" if reason else "") for _, label, _, reason in self.steps]
        return "kept by " + "; ".join(said) if said else "kept"

    def to_json(self) -> dict[str, Any]:
        return {"level": self.lod.level, "scale": self.lod.scale, "kept": self.kept,
                "policy": self.decided_by, "reason": self.summary(),
                "steps": [{"policy": name, "explain": label, "kept": kept, "reason": reason}
                          for name, label, kept, reason in self.steps]}


@dataclass(frozen=True)
class JobPlan:
    """A resolved job, ready to run: everything but the catalog and the bytes."""

    spec: JobSpec
    service: Service
    levels: tuple[LevelPlan, ...]
    exporter: Exporter
    tile_source: TileSource | None
    policy_notes: tuple[str, ...] = ()
    #: Every level of the scheme and which policy kept or dropped it (for ``plan``).
    decisions: tuple[LevelDecision, ...] = ()

    @property
    def tiles(self) -> int:
        return sum(level.tiles for level in self.levels)

    def bundles(self) -> Iterator[BundlePlan]:
        """Every bundle with tiles to fetch, level by level, streamed."""
        for level in self.levels:
            yield from plan_level(self.service.scheme, level.lod.level, level.area)

    @property
    def extent(self) -> tuple[float, float, float, float] | None:
        from shapely.ops import unary_union
        areas = [lv.area for lv in self.levels if not lv.area.is_empty]
        if not areas:
            return None
        return tuple(unary_union(areas).bounds)  # type: ignore[return-value]


def _pick(registry: Any, spec: PluginSpec | None, location: str, kind: str) -> Any:
    if spec is not None:
        return build_plugin(registry.get(spec.name), spec.options, f"{spec.where} ({spec.name})")
    for entry in registry:
        if entry.cls.accepts(location):
            return entry.cls()
    from cacheorch.formats.locate import local_path
    path = local_path(location)
    if path is not None and not path.exists():  # a misspelt cache path, not an unknown kind
        raise UsageError(f"{location}: no such file or folder (nor a URL: http(s)://...)")
    raise UsageError(f"no {kind} recognises {location!r}; name one with --source "
                     f"({', '.join(registry.names())})")


def read_service(plugins: Plugins, location: str, source: PluginSpec | None,
                 connection: Connection) -> Service:
    """Read the service's tiling scheme with the named scale source or the first that accepts it."""
    scale_source = _pick(plugins.scale_sources, source, location, "scale source")
    return scale_source.read(location, connection)


def select_levels(plugins: Plugins, service: Service, policies: Sequence[PluginSpec],
                  context: PolicyContext | None = None) -> tuple[list[LevelOfDetail], list[str]]:
    """Apply the policies in order to the levels that hold tiles; return them and one note each."""
    levels, notes, _ = decide_levels(plugins, service, policies, context)
    return levels, notes


def decide_levels(plugins: Plugins, service: Service, policies: Sequence[PluginSpec],
                  context: PolicyContext | None = None
                  ) -> tuple[list[LevelOfDetail], list[str], list[LevelDecision]]:
    """:func:`select_levels`, also saying for every level of the scheme which policy kept or
    dropped it. ``context`` gives policies that ask for it tile counts and sizes."""
    if not policies:
        raise UsageError("no levels chosen: give --levels (e.g. 0-8), --scales or --policy")
    scheme = service.scheme
    tiled = set(service.tiled_levels)
    levels = [lod for lod in scheme.lods if lod.level in tiled]
    steps: dict[int, list[tuple[str, str, bool, str]]] = {lod.level: [] for lod in scheme.lods}
    for lod in scheme.lods:
        if lod.level not in tiled:
            steps[lod.level].append(("service", "the service", False,
                                     f"no tiles (levels with tiles: {format_levels(tiled)})"))
    notes: list[str] = []
    for spec in policies:
        policy = build_plugin(plugins.policies.get(spec.name), spec.options,
                              f"{spec.where} ({spec.name})")
        before = levels
        levels = policy.apply(scheme, levels, context)
        kept = {lod.level for lod in levels}
        label = policy.explain()
        for lod in before:
            steps[lod.level].append((policy.name, label, lod.level in kept,
                                     policy.reason(lod.level, lod.level in kept)))
        notes.append(f"{label} → levels {format_levels(lod.level for lod in levels)}")
    if context is not None:
        notes.extend(getattr(context, "notes", ()))
    if not levels:
        raise UsageError("the policies left no level to export")
    kept = {lod.level for lod in levels}
    decisions = [LevelDecision(lod, lod.level in kept, tuple(steps[lod.level])) for lod in scheme.lods]
    return levels, notes, decisions


def _generator_for(plugins: Plugins, spec: str) -> tuple[AOIGenerator, str]:
    """``bbox:…`` → (bbox generator, "…"); a bare path → (file generator, path).

    A named generator wins unless the whole spec is an existing path, so
    ``buffer:500m:town.geojson`` is a buffer while ``C:\\x.geojson`` stays a path.
    """
    name, _ = split_plugin_spec(spec)
    rest = spec.partition(":")[2]
    if name in plugins.aoi_generators and not os.path.exists(spec):
        return plugins.aoi_generators.get(name)(), rest
    for entry in plugins.aoi_generators:
        if entry.name != name and entry.cls.accepts(spec):
            return entry.cls(), spec
    if name in plugins.aoi_generators:
        return plugins.aoi_generators.get(name)(), rest
    raise AreaError(f"unknown area {spec!r}: give extent, bbox:xmin,ymin,xmax,ymax[@wkid], a GeoJSON "
                    f"file, or an [aoi:NAME] section (generators: "
                    f"{', '.join(plugins.aoi_generators.names())})")


class _Areas:
    """Each level's area, built when first asked for and shared by the levels naming one spec."""

    def __init__(self, plugins: Plugins, service: Service, areas: Sequence[AreaSpec],
                 connection: Connection) -> None:
        self.plugins, self.service, self.connection = plugins, service, connection
        self.by_level: dict[int, AreaSpec] = {}
        self.default = AreaSpec(None, DEFAULT_AREA, DEFAULT_AREA)
        for area in areas:
            if area.levels is None:
                self.default = area
                continue
            for level in area.levels:
                if level in self.by_level:
                    raise ConfigError(f"--aoi {area.label!r}: level {level} already has an area "
                                      f"({self.by_level[level].label!r})")
                self.by_level[level] = area
        self._built: dict[tuple[str, int | None], BaseGeometry] = {}
        self._generators: dict[str, tuple[AOIGenerator, str]] = {}

    def resolve(self, spec: str, lod: LevelOfDetail) -> BaseGeometry:
        """The area ``spec`` gives at ``lod`` (the resolver generators that wrap others use)."""
        if spec not in self._generators:
            self._generators[spec] = _generator_for(self.plugins, spec)
        generator, rest = self._generators[spec]
        key = (spec, lod.level if generator.varies_by_level(rest) else None)
        if key not in self._built:
            self._built[key] = generator.area_at(rest, self.service, self.connection, lod,
                                                 self.resolve)
        return self._built[key]

    def get(self, lod: LevelOfDetail) -> tuple[BaseGeometry, str]:
        area = self.by_level.get(lod.level, self.default)
        return self.resolve(area.spec, lod), area.label


def resolve_areas(plugins: Plugins, service: Service, levels: Sequence[LevelOfDetail],
                  areas: Sequence[AreaSpec], connection: Connection
                  ) -> dict[int, tuple[BaseGeometry, str]]:
    """Each selected level's area: the ``--aoi`` naming it, else the default area (full extent)."""
    resolver = _Areas(plugins, service, areas, connection)
    return {lod.level: resolver.get(lod) for lod in levels}


class PlanContext(PolicyContext):
    """The :class:`PolicyContext` of a job being planned: lazy, cached counts and samples.

    Samples are fetched through the job's tile source (opened on first use, a few requests in
    flight), so a policy estimating bytes works the same against REST, a local cache or a
    plugin's source; :meth:`close` releases it.
    """

    def __init__(self, plugins: Plugins, service: Service, areas: _Areas, connection: Connection,
                 tile_source: TileSource | None = None, samples: int | None = None) -> None:
        from cacheorch.sampling import DEFAULT_SAMPLES
        self.plugins, self._service, self.areas, self.connection = plugins, service, areas, connection
        self.tile_source = tile_source
        self.samples = samples or DEFAULT_SAMPLES
        self.notes: list[str] = []
        self._counts: dict[int, int] = {}
        self._sizes: dict[int, float | None] = {}
        self._fetcher: TileFetcher | None = None

    @property
    def service(self) -> Service:
        return self._service

    def area(self, level: int) -> tuple[BaseGeometry, str]:
        return self.areas.get(self._service.scheme.lod(level))

    def tiles(self, level: int) -> int:
        if level not in self._counts:
            self._counts[level] = count_level(self._service.scheme, level, self.area(level)[0])
        return self._counts[level]

    def tiles_at_least(self, level: int) -> int:
        if level in self._counts:
            return self._counts[level]
        import shapely
        scheme = self._service.scheme
        area = self.area(level)[0]
        grid = scheme.grid_bounds()
        if grid is not None and not area.is_empty:
            x0, y0, x1, y1 = area.bounds
            if x0 < grid[0] or y0 < grid[1] or x1 > grid[2] or y1 > grid[3]:
                area = shapely.intersection(area, shapely.box(*grid))
        span_x, span_y = scheme.tile_span(level)
        # the tiles meeting an area cover it, so they number at least its area over a tile's
        return max(int(area.area / (span_x * span_y) * (1 - 1e-9)), 0)

    def sample_bytes(self, level: int) -> float | None:
        if level not in self._sizes:
            from cacheorch.sampling import mean_size, sample_keys
            keys = sample_keys(self._service.scheme, level, self.area(level)[0], self.samples)
            if not keys:
                self._sizes[level] = None
                return None
            if self._fetcher is None:
                source = self.tile_source or _pick(self.plugins.tile_sources, None,
                                                   self._service.location, "tile source")
                self._fetcher = source.open(self._service, self.connection, self.samples)
            self._sizes[level], _, _ = mean_size(self._fetcher, keys)
        return self._sizes[level]

    def note(self, text: str) -> None:
        self.notes.append(text)

    def close(self) -> None:
        if self._fetcher is not None:
            self._fetcher.close()
            self._fetcher = None


def _warn_unselected_areas(areas: Sequence[AreaSpec], selected: set[int]) -> None:
    """An ``--aoi`` tier naming levels the job does not export is most likely a typo: say so."""
    import logging
    for area in areas:
        outside = sorted(set(area.levels or ()) - selected)
        if outside:
            logging.getLogger("cacheorch").warning(
                "--aoi %s=%s: level(s) %s are not among the levels exported (%s); its area is not "
                "used there", area.level_text, area.label, format_levels(outside),
                format_levels(selected) if selected else "none")


def make_plan(plugins: Plugins, spec: JobSpec, connection: Connection,
              service: Service | None = None, *, fetching: bool = True) -> JobPlan:
    """Resolve every plugin and count every level's tiles; raises on any bad input.

    :param fetching: whether tiles will be fetched (``run``); ``plan`` needs no tile source
        (unless a policy samples tile sizes: then it fetches those few tiles).
    """
    exporter = build_plugin(plugins.exporters.get(spec.exporter.name), spec.exporter.options,
                            f"{spec.exporter.where} ({spec.exporter.name})")
    if service is None:
        service = read_service(plugins, spec.service, spec.source, connection)
    from cacheorch.vector.service import check_exporter
    check_exporter(service, exporter)  # vector tiles only into formats that hold them
    tile_source = _pick(plugins.tile_sources, None, service.location, "tile source") \
        if fetching else None
    areas = _Areas(plugins, service, spec.areas, connection)
    context = PlanContext(plugins, service, areas, connection, tile_source)
    try:
        lods, notes, decisions = decide_levels(plugins, service, spec.policies, context)
        levels = []
        for lod in lods:
            area, label = areas.get(lod)
            levels.append(LevelPlan(lod, area, label, context.tiles(lod.level)))
    finally:
        context.close()
    _warn_unselected_areas(spec.areas, {lod.level for lod in lods})
    return JobPlan(spec, service, tuple(levels), exporter, tile_source, tuple(notes),
                   tuple(decisions))

"""Resolve a JobSpec into a plan: the service, the selected levels, each level's area and tile count.

Everything that can be wrong with the input is found here, before a catalog row or an output file
exists, so bad input leaves nothing behind.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cacheorch.config import AreaSpec
from cacheorch.connection import Connection
from cacheorch.errors import AreaError, ConfigError, UsageError
from cacheorch.interfaces import AOIGenerator, Exporter, Service, TileSource
from cacheorch.jobspec import JobSpec, PluginSpec
from cacheorch.options import build_plugin, split_plugin_spec
from cacheorch.planner import BundlePlan, count_level, plan_level
from cacheorch.tiling import LevelOfDetail, format_levels

if TYPE_CHECKING:
    from shapely.geometry.base import BaseGeometry

    from cacheorch.pluginmanager import Plugins

__all__ = ["LevelPlan", "JobPlan", "read_service", "select_levels", "resolve_areas", "make_plan"]

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
class JobPlan:
    """A resolved job, ready to run: everything but the catalog and the bytes."""

    spec: JobSpec
    service: Service
    levels: tuple[LevelPlan, ...]
    exporter: Exporter
    tile_source: TileSource | None
    policy_notes: tuple[str, ...] = ()

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
    raise UsageError(f"no {kind} recognises {location!r}; name one with --source "
                     f"({', '.join(registry.names())})")


def read_service(plugins: Plugins, location: str, source: PluginSpec | None,
                 connection: Connection) -> Service:
    """Read the service's tiling scheme with the named scale source or the first that accepts it."""
    scale_source = _pick(plugins.scale_sources, source, location, "scale source")
    return scale_source.read(location, connection)


def select_levels(plugins: Plugins, service: Service, policies: Sequence[PluginSpec]
                  ) -> tuple[list[LevelOfDetail], list[str]]:
    """Apply the policies in order to the levels that hold tiles; return them and one note each."""
    if not policies:
        raise UsageError("no levels chosen: give --levels (e.g. 0-8), --scales or --policy")
    scheme = service.scheme
    levels = [scheme.lod(level) for level in scheme.tiled_levels]
    notes: list[str] = []
    for spec in policies:
        policy = build_plugin(plugins.policies.get(spec.name), spec.options,
                              f"{spec.where} ({spec.name})")
        levels = policy.select(scheme, levels)
        notes.append(f"{policy.explain()} → levels {format_levels(lod.level for lod in levels)}")
    if not levels:
        raise UsageError("the policies left no level to export")
    return levels, notes


def _generator_for(plugins: Plugins, spec: str) -> tuple[AOIGenerator, str]:
    """``bbox:…`` → (bbox generator, "…"); a bare path → (file generator, path)."""
    name, _ = split_plugin_spec(spec)
    rest = spec.partition(":")[2]
    for entry in plugins.aoi_generators:  # a file path wins, so "C:\\x.geojson" is a path
        if entry.name != name and entry.cls.accepts(spec):
            return entry.cls(), spec
    if name in plugins.aoi_generators:
        return plugins.aoi_generators.get(name)(), rest
    raise AreaError(f"unknown area {spec!r}: give extent, bbox:xmin,ymin,xmax,ymax[@wkid], a GeoJSON "
                    f"file, or an [aoi:NAME] section (generators: "
                    f"{', '.join(plugins.aoi_generators.names())})")


def resolve_areas(plugins: Plugins, service: Service, levels: Sequence[LevelOfDetail],
                  areas: Sequence[AreaSpec], connection: Connection
                  ) -> dict[int, tuple[BaseGeometry, str]]:
    """Each selected level's area: the ``--aoi`` naming it, else the default area (full extent)."""
    by_level: dict[int, AreaSpec] = {}
    default = AreaSpec(None, DEFAULT_AREA, DEFAULT_AREA)
    for area in areas:
        if area.levels is None:
            default = area
            continue
        for level in area.levels:
            if level in by_level:
                raise ConfigError(f"--aoi {area.label!r}: level {level} already has an area "
                                  f"({by_level[level].label!r})")
            by_level[level] = area
    built: dict[str, BaseGeometry] = {}
    out: dict[int, tuple[BaseGeometry, str]] = {}
    for lod in levels:
        area = by_level.get(lod.level, default)
        if area.spec not in built:
            generator, rest = _generator_for(plugins, area.spec)
            built[area.spec] = generator.area(rest, service, connection)
        out[lod.level] = (built[area.spec], area.label)
    return out


def make_plan(plugins: Plugins, spec: JobSpec, connection: Connection,
              service: Service | None = None, *, fetching: bool = True) -> JobPlan:
    """Resolve every plugin and count every level's tiles; raises on any bad input.

    :param fetching: whether tiles will be fetched (``run``); ``plan`` needs no tile source.
    """
    exporter = build_plugin(plugins.exporters.get(spec.exporter.name), spec.exporter.options,
                            f"{spec.exporter.where} ({spec.exporter.name})")
    if service is None:
        service = read_service(plugins, spec.service, spec.source, connection)
    tile_source = _pick(plugins.tile_sources, None, service.location, "tile source") \
        if fetching else None
    lods, notes = select_levels(plugins, service, spec.policies)
    areas = resolve_areas(plugins, service, lods, spec.areas, connection)
    levels = []
    for lod in lods:
        area, label = areas[lod.level]
        levels.append(LevelPlan(lod, area, label, count_level(service.scheme, lod.level, area)))
    return JobPlan(spec, service, tuple(levels), exporter, tile_source, tuple(notes))

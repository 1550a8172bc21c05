"""What is on screen, as the CLI would have it: ticked levels and each tier's area → ``run`` flags.

The page sends a *selection* (JSON): the source, the ticked levels, and tiers (a range of levels
with one area each). :func:`flags_of` turns it into the flags ``cacheorch run`` takes, and
everything else (the plan, the export, the command line, the ``[job:NAME]`` section) is made from
those flags by the CLI's own :func:`~cacheorch.jobspec.job_spec_from` and ``make_plan``, so the
workbench cannot plan differently from the command line.
"""
from __future__ import annotations

import shlex
import time
from typing import TYPE_CHECKING, Any

from cacheorch.errors import AreaError, UsageError
from cacheorch.jobplan import JobPlan, make_plan
from cacheorch.jobspec import JobSpec, job_spec_from
from cacheorch.tiling import format_levels

if TYPE_CHECKING:
    from cacheorch.cli import App
    from cacheorch.workbench.sources import OpenSource

__all__ = ["flags_of", "spec_of", "plan_of", "counts", "grid", "command_of", "area_wkt"]

#: Tiles drawn at most for "show a tier's tiles as a grid".
MAX_GRID_TILES = 2500
_AREA_KINDS = ("extent", "geojson")


def _levels(value: Any, where: str) -> set[int]:
    if value is None:
        return set()
    if isinstance(value, str):
        from cacheorch.config import parse_level_set
        return set(parse_level_set(value, where)) if value.strip() else set()
    try:
        return {int(v) for v in value}
    except (TypeError, ValueError):
        raise UsageError(f"{where}: give levels as a list of numbers or text such as 0-5,8") from None


def area_wkt(geometry: Any, source: OpenSource, where: str) -> str:
    """A GeoJSON geometry in the scheme's spatial reference → WKT, rounded to a tenth of the
    finest resolution (drawn coordinates carry no more)."""
    import math

    import shapely
    from shapely.geometry import shape
    try:
        geom = shape(geometry)
    except Exception as exc:  # shapely says what is wrong with the geometry
        raise AreaError(f"{where}: not a GeoJSON geometry ({exc})") from None
    if geom.is_empty or geom.geom_type not in ("Polygon", "MultiPolygon"):
        raise AreaError(f"{where}: draw a polygon or a rectangle (got {geom.geom_type})")
    finest = min(lod.resolution for lod in source.service.scheme.lods)
    digits = max(0, min(12, -math.floor(math.log10(finest / 10))))
    return shapely.to_wkt(geom, rounding_precision=digits, trim=True)


def _area_spec(tier: dict[str, Any], source: OpenSource, where: str) -> str:
    area = tier.get("area") or {"kind": "extent"}
    kind = area.get("kind", "extent")
    if kind not in _AREA_KINDS:
        raise UsageError(f"{where}: area kind {kind!r} is not one of {', '.join(_AREA_KINDS)}")
    spec = "extent" if kind == "extent" else "wkt:" + area_wkt(area.get("geometry"), source, where)
    buffer = str(tier.get("buffer") or "").strip()
    if buffer and buffer not in ("0", "0m"):
        spec = f"buffer:{buffer}:{spec}"
    return spec


def flags_of(selection: dict[str, Any], source: OpenSource) -> dict[str, Any]:
    """The ``run`` flags for a selection (keys as :func:`job_spec_from` takes them)."""
    ticked = _levels(selection.get("levels"), "levels")
    if not ticked:
        raise UsageError("no levels ticked: tick at least one level of the scales table")
    areas: list[str] = []
    claimed: set[int] = set()  # a later tier wins the levels it shares with an earlier one
    tiers = list(enumerate(selection.get("tiers") or ()))
    for i, tier in reversed(tiers):
        where = f"tier {i + 1}"
        levels = _levels(tier.get("levels"), where) & ticked - claimed
        claimed |= levels
        if levels:
            areas.insert(0, f"{format_levels(levels)}={_area_spec(tier, source, where)}")
    flags: dict[str, Any] = {"service": source.location, "levels": format_levels(ticked),
                             "aoi": areas, "referer": source.credentials.referer}
    if source.source is not None:
        flags["source"] = source.source.name
    for key in ("exporter", "output", "mode"):
        value = str(selection.get(key) or "").strip()
        if value:
            flags[key] = value
    return flags


def spec_of(app: App, selection: dict[str, Any], source: OpenSource) -> JobSpec:
    spec = job_spec_from(app.config, None, flags_of(selection, source))
    name = str(selection.get("name") or "").strip()
    if name:
        from dataclasses import replace
        spec = replace(spec, name=name)
    return spec


def plan_of(app: App, spec: JobSpec, source: OpenSource, *, fetching: bool) -> JobPlan:
    """``make_plan`` on the opened service (not read again)."""
    return make_plan(app.plugins, spec, source.connection, source.service, fetching=fetching)


def counts(app: App, selection: dict[str, Any], source: OpenSource, *,
           estimate: bool = False) -> dict[str, Any]:
    """Planned tiles per ticked level (and estimated bytes when asked), and how long it took."""
    started = time.perf_counter()
    plan = plan_of(app, spec_of(app, selection, source), source, fetching=False)
    elapsed = (time.perf_counter() - started) * 1000
    levels = []
    for lv in plan.levels:
        row: dict[str, Any] = {"level": lv.lod.level, "tiles": lv.tiles, "area": lv.area_label}
        if estimate:
            size = source.mean_size(app.plugins, lv.lod.level, lv.area) if lv.tiles else None
            row["bytes"] = None if size is None else round(size * lv.tiles)
        levels.append(row)
    return {"levels": levels, "tiles": plan.tiles, "planner_ms": round(elapsed, 1),
            "policies": list(plan.policy_notes), "buffered": _buffered(plan, selection, source)}


def _buffered(plan: JobPlan, selection: dict[str, Any], source: OpenSource) -> list[dict[str, Any]]:
    """The buffered tiers' areas as the planner built them (at the tier's first level), for the map."""
    from shapely.geometry import mapping
    by_label = {}
    for lv in plan.levels:
        by_label.setdefault(lv.area_label, lv)
    out = []
    for i, tier in enumerate(selection.get("tiers") or ()):
        if not str(tier.get("buffer") or "").strip():
            continue
        lv = by_label.get(_area_spec(tier, source, f"tier {i + 1}"))
        if lv is not None and not lv.area.is_empty:
            out.append({"tier": i, "level": lv.lod.level,
                        "geometry": mapping(lv.area.simplify(lv.lod.resolution))})
    return out


def grid(app: App, selection: dict[str, Any], source: OpenSource, level: int) -> dict[str, Any]:
    """The tiles of ``level`` in its tier's area as GeoJSON boxes (at most MAX_GRID_TILES)."""
    from cacheorch.planner import plan_level
    selection = dict(selection, levels=[level])
    plan = plan_of(app, spec_of(app, selection, source), source, fetching=False)
    lv = plan.levels[0]
    if lv.tiles > MAX_GRID_TILES:
        raise UsageError(f"level {level} has {lv.tiles:,} tiles in this area: pick a coarser level "
                         f"to draw (at most {MAX_GRID_TILES:,})")
    scheme = source.service.scheme
    features = []
    for bundle in plan_level(scheme, level, lv.area):
        for key in bundle.keys():
            x0, y0, x1, y1 = scheme.tile_bounds(level, key.row, key.col)
            features.append({"type": "Feature", "properties": {"row": key.row, "col": key.col},
                             "geometry": {"type": "Polygon", "coordinates": [
                                 [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}})
    return {"type": "FeatureCollection", "level": level, "tiles": len(features),
            "features": features}


def command_of(flags: dict[str, Any], name: str | None = None) -> dict[str, str]:
    """The ``cacheorch run`` command line and the ``[job:NAME]`` section for ``flags`` (a map's
    flags have ``map`` instead of ``service``)."""
    what = "map" if flags.get("map") else "service"
    args = ["cacheorch", "run", f"--{what}", flags[what]]
    if flags.get("source"):
        args += ["--source", flags["source"]]
    args += ["--levels", flags["levels"]]
    for area in flags.get("aoi") or ():
        args += ["--aoi", area]
    for key in ("exporter", "output", "mode", "referer"):
        if flags.get(key):
            args += [f"--{key}", flags[key]]
    section = [f"[job:{name or 'workbench'}]", f"{what} = {flags[what]}"]
    if flags.get("source"):
        section.append(f"source = {flags['source']}")
    section.append(f"levels = {flags['levels']}")
    areas = list(flags.get("aoi") or ())
    if areas:
        section.append("aoi = " + "\n    ".join(areas))
    for key in ("exporter", "output", "mode", "referer"):
        if flags.get(key):
            section.append(f"{key} = {flags[key]}")
    return {"command": shlex.join(args), "ini": "\n".join(section) + "\n",
            "note": "credentials are not included: set ARCGIS_TOKEN, or ARCGIS_USERNAME and "
                    "ARCGIS_PASSWORD, in the environment of the scheduled job"}

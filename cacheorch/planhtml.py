"""``plan --html``: the plan as a page — each level range's area on a map and the tile counts.

Why a picture: an area per level range (the whole extent at small scales, a district at large
ones) is easy to get wrong and hard to see in a table of numbers. The page draws the areas as SVG
in the scheme's own spatial reference (they are already projected there, so no map library or
basemap is needed), with the service extent and, on request, the tile grid of a chosen level.

Self-contained on purpose: inline CSS, SVG and a few lines of script, no external asset, so the
file can be mailed, attached to a ticket, or opened on a laptop in the field with no network.
"""
from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from shapely.geometry import box as shapely_box
from shapely.geometry.base import BaseGeometry

if TYPE_CHECKING:
    from cacheorch.connection import Connection
    from cacheorch.jobplan import JobPlan, LevelPlan
    from cacheorch.pluginmanager import Plugins
    from cacheorch.tiling import TilingScheme

__all__ = ["LevelRange", "level_ranges", "plan_html", "write_plan_html", "Basemap", "fetch_basemap"]

#: Fill colours of successive level ranges (colour-blind-safe Okabe–Ito palette).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
#: Width of the SVG's coordinate system; heights follow the drawn extent's aspect ratio.
_VIEW_W = 1000.0


@dataclass(frozen=True)
class LevelRange:
    """Consecutive levels that share one area (``--aoi 0-9=extent --aoi 10-15=town``)."""

    first: int
    last: int
    label: str
    area: BaseGeometry
    tiles: int
    colour: str

    @property
    def name(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


def level_ranges(levels: Sequence[LevelPlan]) -> list[LevelRange]:
    """Group consecutive planned levels whose area is the same (same label and geometry)."""
    groups: list[list[LevelPlan]] = []
    for lv in sorted(levels, key=lambda lv: lv.lod.level):
        last = groups[-1][-1] if groups else None
        if last is not None and last.area_label == lv.area_label \
                and last.lod.level + 1 == lv.lod.level and last.area.equals(lv.area):
            groups[-1].append(lv)
        else:
            groups.append([lv])
    return [LevelRange(g[0].lod.level, g[-1].lod.level, g[0].area_label, g[0].area,
                       sum(lv.tiles for lv in g), PALETTE[i % len(PALETTE)])
            for i, g in enumerate(groups)]


class _Frame:
    """Map units → SVG units: x to the right, y down, the drawn extent fitted to the view."""

    def __init__(self, bounds: tuple[float, float, float, float]) -> None:
        xmin, ymin, xmax, ymax = bounds
        w, h = max(xmax - xmin, 1e-9), max(ymax - ymin, 1e-9)
        pad = 0.03 * max(w, h)
        self.xmin, self.ymax = xmin - pad, ymax + pad
        self.scale = _VIEW_W / (w + 2 * pad)
        self.height = (h + 2 * pad) * self.scale

    def view_bounds(self) -> tuple[float, float, float, float]:
        """The map extent the whole view shows (padding included)."""
        return (self.xmin, self.ymax - self.height / self.scale, self.xmin + _VIEW_W / self.scale, self.ymax)

    def point(self, x: float, y: float) -> str:
        return f"{(x - self.xmin) * self.scale:.2f},{(self.ymax - y) * self.scale:.2f}"

    def rect(self, bounds: Sequence[float]) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = bounds
        return ((x0 - self.xmin) * self.scale, (self.ymax - y1) * self.scale,
                (x1 - x0) * self.scale, (y1 - y0) * self.scale)


def _rings(geometry: BaseGeometry) -> Iterable[Sequence[tuple[float, ...]]]:
    if geometry.is_empty:
        return
    kind = geometry.geom_type
    if kind == "Polygon":
        yield geometry.exterior.coords
        for ring in geometry.interiors:
            yield ring.coords
    elif kind in ("MultiPolygon", "GeometryCollection"):
        for part in geometry.geoms:
            yield from _rings(part)


def _path(geometry: BaseGeometry, frame: _Frame) -> str:
    """An SVG path of the polygons (holes by even-odd), simplified to a tenth of an SVG unit."""
    simple = geometry.simplify(0.1 / frame.scale, preserve_topology=True)
    parts = []
    for ring in _rings(simple):
        coords = list(ring)
        if len(coords) >= 3:
            parts.append("M" + " L".join(frame.point(c[0], c[1]) for c in coords) + " Z")
    return " ".join(parts)


def _bounds_union(boxes: Iterable[Sequence[float] | None]) -> tuple[float, float, float, float] | None:
    found = [b for b in boxes if b is not None and all(math.isfinite(v) for v in b)]
    if not found:
        return None
    return (min(b[0] for b in found), min(b[1] for b in found), max(b[2] for b in found),
            max(b[3] for b in found))


def _clip(box: Sequence[float] | None, grid: Sequence[float] | None) -> tuple[float, ...] | None:
    """A world service's extent runs far past its grid (spec §1.1): draw what the grid holds."""
    if box is None or grid is None:
        return None if box is None else tuple(box)
    clipped = (max(box[0], grid[0]), max(box[1], grid[1]), min(box[2], grid[2]), min(box[3], grid[3]))
    return clipped if clipped[0] < clipped[2] and clipped[1] < clipped[3] else tuple(box)


#: An area narrower than this share of the overview gets a detail map of its own.
_DETAIL_BELOW = 0.1


def _small_ranges(ranges: Sequence[LevelRange], drawn: Sequence[float]) -> list[LevelRange]:
    width = max(drawn[2] - drawn[0], drawn[3] - drawn[1])
    return [r for r in ranges if not r.area.is_empty and max(
        r.area.bounds[2] - r.area.bounds[0], r.area.bounds[3] - r.area.bounds[1]) < _DETAIL_BELOW * width]


def _detail_svg(ranges: Sequence[LevelRange], drawn: Sequence[float], scheme: TilingScheme,
                basemap: Basemap | None) -> list[str]:
    """A second map fitted to the small areas (a town on a world service is a speck otherwise),
    with every range's area clipped to that view; nothing when all areas are large."""
    small = _small_ranges(ranges, drawn)
    box = _bounds_union(r.area.bounds for r in small)
    if box is None:
        return []
    frame = _Frame(box)
    view = shapely_box(*frame.view_bounds())
    out = [f'<p class="detail-title">Detail: levels {_e(", ".join(r.name for r in small))}</p>',
           f'<svg id="detail" viewBox="0 0 {_VIEW_W:.0f} {frame.height:.2f}" role="img" '
           'aria-label="The small areas, enlarged">',
           f'<rect x="0" y="0" width="{_VIEW_W:.0f}" height="{frame.height:.2f}" fill="#f7f7f4"/>',
           *_tiles_svg(basemap.detail if basemap else [], frame)]
    for r in ranges:
        d = _path(r.area.intersection(view), frame)
        if d:
            out.append(f'<path class="area" d="{d}" fill="{r.colour}" stroke="{r.colour}">'
                       f'<title>levels {_e(r.name)}: {_e(r.label)}, {r.tiles:,} tiles</title></path>')
    out.extend(_furniture(frame, scheme))
    out.append("</svg>")
    return out


#: Tiles fetched for one map at most, and the width in pixels a map's tiles should reach.
_MAX_BASEMAP_TILES = 36
_BASEMAP_PIXELS = 512

Placed = tuple[tuple[float, float, float, float], str, bytes]


@dataclass(frozen=True)
class Basemap:
    """The service's own tiles under each map: (tile bounds, content type, bytes)."""

    overview: list[Placed]
    detail: list[Placed]


def _basemap_keys(scheme: TilingScheme, box: Sequence[float]) -> list[tuple[int, int, int]]:
    """The tiles over ``box`` at the coarsest level whose tiles span it with ~512 pixels, within
    the tile budget (else the finest level that fits it)."""
    width = max(box[2] - box[0], box[3] - box[1])
    best: list[tuple[int, int, int]] = []
    for level in scheme.tiled_levels:
        found = scheme.tile_range(level, tuple(box))  # type: ignore[arg-type]
        if found is None:
            continue
        r0, c0, r1, c1 = found
        if (r1 - r0 + 1) * (c1 - c0 + 1) > _MAX_BASEMAP_TILES:
            break
        best = [(level, r, c) for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)]
        if width / scheme.lod(level).resolution >= _BASEMAP_PIXELS:
            break
    return best


def fetch_basemap(plugins: Plugins, plan: JobPlan, connection: Connection) -> Basemap:
    """Fetch, once while planning, the service's tiles at small levels for the page's maps."""
    from cacheorch.jobplan import _pick
    from cacheorch.tiling import TileKey
    scheme = plan.service.scheme
    _, drawn = _extents(plan)
    boxes = {"overview": drawn}
    detail = _bounds_union(r.area.bounds for r in _small_ranges(level_ranges(plan.levels), drawn))
    if detail is not None:
        boxes["detail"] = _Frame(detail).view_bounds()
    keys = {name: _basemap_keys(scheme, box) for name, box in boxes.items()}
    wanted = {k for ks in keys.values() for k in ks}
    got: dict[tuple[int, int, int], bytes] = {}
    if wanted:
        from cacheorch.errors import CacheorchError
        try:
            source = plan.tile_source or _pick(plugins.tile_sources, None, plan.service.location,
                                               "tile source")
            with source.open(plan.service, connection, 4) as fetcher:
                for result in fetcher.fetch(TileKey(*k) for k in sorted(wanted)):
                    if result.status == "ok" and result.data:
                        got[(result.key.level, result.key.row, result.key.col)] = result.data
        except (CacheorchError, OSError) as exc:  # a picture without tiles beats no plan
            import logging
            logging.getLogger("cacheorch").warning("plan --html: no tiles beneath the areas (%s)", exc)
    from cacheorch.serve import _content_type

    def placed(ks: list[tuple[int, int, int]]) -> list[Placed]:
        return [(scheme.tile_bounds(*k), _content_type(got[k]).decode(), got[k]) for k in ks if k in got]

    return Basemap(placed(keys["overview"]), placed(keys.get("detail", [])))


def _tiles_svg(tiles: Sequence[Placed], frame: _Frame) -> list[str]:
    import base64
    out = []
    for bounds, content_type, data in tiles:
        x, y, w, h = frame.rect(bounds)
        out.append(f'<image class="tile" x="{x:.3f}" y="{y:.3f}" width="{w:.3f}" height="{h:.3f}" '
                   f'preserveAspectRatio="none" href="data:{content_type};base64,'
                   f'{base64.b64encode(data).decode()}"/>')
    return out


def _nice(value: float) -> float:
    """The largest 1, 2 or 5 × 10^n not above ``value``."""
    power = 10 ** math.floor(math.log10(value))
    return max(step * power for step in (1, 2, 5) if step * power <= value)


def _furniture(frame: _Frame, scheme: TilingScheme) -> list[str]:
    """Coordinate ticks along the bottom and left edges, and a scale bar (metres at the middle)."""
    xmax = frame.xmin + _VIEW_W / frame.scale
    ymin = frame.ymax - frame.height / frame.scale
    step = _nice((xmax - frame.xmin) / 4)
    geographic = scheme.units == "esriDecimalDegrees"

    def label(v: float) -> str:
        return f"{v:g}°" if geographic else f"{v:,.0f}" if step >= 1 else f"{v:g}"
    out = ['<g class="ticks">']
    v = math.ceil(frame.xmin / step) * step
    while v < xmax:
        x = (v - frame.xmin) * frame.scale
        if x > _VIEW_W - 140:  # no room for the label
            break
        out.append(f'<line x1="{x:.1f}" y1="{frame.height:.1f}" x2="{x:.1f}" y2="{frame.height - 8:.1f}"/>'
                   f'<text x="{x + 3:.1f}" y="{frame.height - 10:.1f}">{label(v)}</text>')
        v += step
    v = math.ceil(ymin / step) * step
    while v < frame.ymax:
        y = (frame.ymax - v) * frame.scale
        if y < 30:
            break
        out.append(f'<line x1="0" y1="{y:.1f}" x2="8" y2="{y:.1f}"/>'
                   f'<text x="10" y="{y - 3:.1f}">{label(v)}</text>')
        v += step
    out.append("</g>")
    # metres per map unit at the middle of the view (degrees shrink with latitude)
    per_unit = scheme.meters_per_unit
    if geographic:
        per_unit *= math.cos(math.radians(max(-89.0, min(89.0, (ymin + frame.ymax) / 2))))
    elif scheme.spatial_reference.is_web_mercator:
        lat = math.atan(math.sinh((ymin + frame.ymax) / 2 / 6378137.0))
        per_unit *= math.cos(lat)
    metres = _nice(_VIEW_W / 4 / frame.scale * per_unit)
    length = metres / per_unit * frame.scale
    text = f"{metres / 1000:,g} km" if metres >= 1000 else f"{metres:g} m"
    x0, y0 = _VIEW_W - length - 24, frame.height - 44
    out.append(f'<g class="scalebar"><rect x="{x0:.1f}" y="{y0:.1f}" width="{length:.1f}" height="6" '
               f'fill="#222"/><rect x="{x0 + length / 2:.1f}" y="{y0:.1f}" width="{length / 2:.1f}" '
               f'height="6" fill="#fff"/><text x="{x0:.1f}" y="{y0 - 5:.1f}" class="ticks" '
               f'style="font-size:22px;stroke:#fff;stroke-width:3px;paint-order:stroke">{text}</text></g>')
    return out


def _e(value: object) -> str:
    return html.escape(str(value))


def _extents(plan: JobPlan) -> tuple[tuple[float, ...] | None, tuple[float, float, float, float]]:
    """(the service's extent as drawn, the extent the overview map shows)."""
    scheme = plan.service.scheme
    grid = scheme.grid_bounds()
    full = plan.service.full_extent
    service_box = _clip(full.bounds if full is not None else None, grid)
    area_boxes = [r.area.bounds for r in level_ranges(plan.levels) if not r.area.is_empty]
    drawn = _bounds_union([*area_boxes, service_box]) or grid or (0.0, 0.0, 1.0, 1.0)
    return service_box, drawn


def plan_html(plan: JobPlan, basemap: Basemap | None = None) -> str:
    """The whole page as a string; ``basemap``: the service's tiles to draw beneath the areas."""
    scheme = plan.service.scheme
    ranges = level_ranges(plan.levels)
    service_box, drawn = _extents(plan)
    frame = _Frame(drawn)
    svg = [f'<svg id="map" viewBox="0 0 {_VIEW_W:.0f} {frame.height:.2f}" '
           'role="img" aria-label="Areas per level range">',
           f'<rect x="0" y="0" width="{_VIEW_W:.0f}" height="{frame.height:.2f}" fill="#f7f7f4"/>',
           *_tiles_svg(basemap.overview if basemap else [], frame)]
    if service_box is not None:
        x, y, w, h = frame.rect(service_box)
        svg.append(f'<rect class="extent" x="{x:.2f}" y="{y:.2f}" width="{w:.2f}" height="{h:.2f}">'
                   '<title>service full extent</title></rect>')
    for r in ranges:  # coarse levels first: their (usually larger) areas end up underneath
        d = _path(r.area, frame)
        if d:
            svg.append(f'<path class="area" d="{d}" fill="{r.colour}" stroke="{r.colour}">'
                       f'<title>levels {_e(r.name)}: {_e(r.label)}, {r.tiles:,} tiles</title></path>')
    svg.append('<g id="grid"></g>')
    svg.extend(_furniture(frame, scheme))
    svg.append('</svg>')
    svg.extend(_detail_svg(ranges, drawn, scheme, basemap))

    rows = []
    colour_of = {lv: r.colour for r in ranges for lv in range(r.first, r.last + 1)}
    for lv in sorted(plan.levels, key=lambda lv: lv.lod.level):
        level = lv.lod.level
        rows.append(f'<tr><td><span class="swatch" style="background:{colour_of[level]}"></span></td>'
                    f'<td class="n">{level}</td><td class="n">1:{lv.lod.scale:,.0f}</td>'
                    f'<td class="n">{lv.lod.resolution:.6g}</td><td class="n">{lv.tiles:,}</td>'
                    f'<td>{_e(lv.area_label)}</td></tr>')
    legend = "".join(f'<li><span class="swatch" style="background:{r.colour}"></span>levels '
                     f'{_e(r.name)}: {_e(r.label)} ({r.tiles:,} tiles)</li>' for r in ranges)
    grid_data = {"origin": [scheme.origin_x, scheme.origin_y], "tile": [scheme.tile_cols, scheme.tile_rows],
                 "levels": {str(lv.lod.level): lv.lod.resolution for lv in plan.levels},
                 "frame": [frame.xmin, frame.ymax, frame.scale, _VIEW_W, frame.height]}
    options = "".join(f'<option value="{lv.lod.level}">level {lv.lod.level}</option>'
                      for lv in sorted(plan.levels, key=lambda lv: lv.lod.level))
    sr = scheme.spatial_reference
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = f"Plan: {plan.service.name or plan.service.location}"
    return _PAGE.format(
        title=_e(title), service=_e(plan.service.location), sr=_e(sr), made=_e(made),
        exporter=_e(plan.spec.exporter.name), output=_e(plan.spec.output or "(default name)"),
        total=f"{plan.tiles:,}", nlevels=len(plan.levels), svg="\n".join(svg), legend=legend,
        rows="\n".join(rows), options=options,
        grid=json.dumps(grid_data).replace("<", "\\u003c"),
        tile=f"{scheme.tile_cols}×{scheme.tile_rows} px")


def write_plan_html(plan: JobPlan, path: str | os.PathLike[str], basemap: Basemap | None = None) -> None:
    """Write the page (UTF-8), through a temporary name so a reader never sees half a file."""
    target = os.fspath(path)
    tmp = f"{target}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(plan_html(plan, basemap))
    os.replace(tmp, target)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 16px; color: #222; }}
h1 {{ font-size: 18px; margin: 0 0 4px; }}
.meta {{ color: #555; margin: 0 0 12px; }}
.wrap {{ display: flex; gap: 20px; align-items: flex-start; flex-wrap: wrap; }}
#map, #detail {{ display: block; flex: 0 0 auto; width: 560px; max-width: 100%; border: 1px solid #bbb;
  background: #f7f7f4; }}
.detail-title {{ margin: 10px 0 4px; color: #555; }}
.extent {{ fill: none; stroke: #555; stroke-width: 1.5; stroke-dasharray: 6 4; }}
.ticks text {{ font-size: 22px; fill: #222; stroke: #fff; stroke-width: 3px; paint-order: stroke; }}
.ticks line, .scalebar rect {{ stroke: #222; stroke-width: 1; }}
.area {{ fill-opacity: 0.45; stroke-width: 1.2; fill-rule: evenodd; }}
#grid line {{ stroke: #333; stroke-width: 0.5; stroke-opacity: 0.5; }}
table {{ border-collapse: collapse; }}
th, td {{ padding: 2px 8px; border-bottom: 1px solid #ddd; text-align: left; }}
td.n, th.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
tfoot td {{ font-weight: bold; border-top: 2px solid #999; }}
.swatch {{ display: inline-block; width: 12px; height: 12px; border-radius: 2px;
           vertical-align: middle; margin-right: 4px; opacity: 0.8; }}
ul.legend {{ list-style: none; padding: 0; margin: 8px 0; }}
</style></head>
<body>
<h1>{title}</h1>
<p class="meta">{service} · {sr} · {tile} · {exporter} → {output} · planned {made}</p>
<div class="wrap">
<div>
{svg}
<ul class="legend">{legend}
<li><span class="swatch" style="border:1px dashed #555"></span>service full extent</li></ul>
<label>Tile grid: <select id="grid-level"><option value="">none</option>{options}</select></label>
<span id="grid-note"></span>
</div>
<table>
<thead><tr><th></th><th class="n">level</th><th class="n">scale</th><th class="n">resolution</th>
<th class="n">tiles</th><th>area</th></tr></thead>
<tbody>
{rows}
</tbody>
<tfoot><tr><td></td><td colspan="3">total, {nlevels} level(s)</td><td class="n">{total}</td><td></td></tr></tfoot>
</table>
</div>
<script>
(function () {{
  "use strict";
  var g = {grid};
  var layer = document.getElementById("grid"), note = document.getElementById("grid-note");
  var NS = layer.namespaceURI, MAX = 150;
  function line(x1, y1, x2, y2) {{
    var l = document.createElementNS(NS, "line");
    l.setAttribute("x1", x1); l.setAttribute("y1", y1);
    l.setAttribute("x2", x2); l.setAttribute("y2", y2);
    layer.appendChild(l);
  }}
  document.getElementById("grid-level").addEventListener("change", function (event) {{
    layer.textContent = ""; note.textContent = "";
    var res = g.levels[event.target.value];
    if (!res) {{ return; }}
    var xmin = g.frame[0], ymax = g.frame[1], k = g.frame[2], w = g.frame[3], h = g.frame[4];
    var sx = g.tile[0] * res, sy = g.tile[1] * res;
    var c0 = Math.floor((xmin - g.origin[0]) / sx), c1 = Math.ceil((xmin + w / k - g.origin[0]) / sx);
    var r0 = Math.floor((g.origin[1] - ymax) / sy), r1 = Math.ceil((g.origin[1] - (ymax - h / k)) / sy);
    if (c1 - c0 > MAX || r1 - r0 > MAX) {{ note.textContent = " too many tiles to draw at this level"; return; }}
    for (var c = c0; c <= c1; c++) {{ var x = (g.origin[0] + c * sx - xmin) * k; line(x, 0, x, h); }}
    for (var r = r0; r <= r1; r++) {{ var y = (ymax - (g.origin[1] - r * sy)) * k; line(0, y, w, y); }}
  }});
}})();
</script>
</body></html>
"""

"""The tiling scheme (origin, tile size, dpi, spatial reference, levels) and its grid maths.

Resolution is authoritative: ArcGIS treats scale and dpi as advisory, and the same level is written
with different precision in different files, so every grid computation uses ``resolution``.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from cacheorch.errors import LevelError, SchemeError

__all__ = [
    "INCHES_PER_METRE", "BUNDLE_SIZE", "WEB_MERCATOR_WKIDS", "LevelOfDetail", "SpatialReference",
    "Envelope", "TilingScheme", "TileKey", "meters_per_unit", "scale_of", "web_mercator_scheme",
]

#: ArcGIS relates scale to resolution with the US-survey inch (39.37 per metre), not 1/0.0254.
INCHES_PER_METRE = 39.37
#: Metres per degree on the 6,370,997 m sphere ArcGIS uses to give degree caches a scale.
METRES_PER_DEGREE = math.pi / 180.0 * 6370997.0
#: US survey foot in metres.
METRES_PER_US_FOOT = 1200.0 / 3937.0
#: Tiles per bundle side (compact caches, and the unit of work everywhere in cacheorch).
BUNDLE_SIZE = 128
#: wkids that all mean the Web Mercator grid.
WEB_MERCATOR_WKIDS = frozenset({102100, 102113, 900913, 3857, 3785})
#: Half the Web Mercator world as ArcGIS writes it (truncated; the exact value differs by 2.2 mm).
WEB_MERCATOR_HALF = 20037508.342787

_UNIT_METRES = {
    "esriMeters": 1.0,
    "esriFeet": METRES_PER_US_FOOT,
    "esriDecimalDegrees": METRES_PER_DEGREE,
}

#: Relative tolerance when matching a scale against a level's scale.
SCALE_TOLERANCE = 1e-6
#: Tile sizes (pixels a side) a scheme may have: ArcGIS makes 128-1024 (and 2048/4096 supertiles);
#: GDAL's readers and GeoPackage take these too. Outside them a scheme is hostile or broken.
MIN_TILE_PIXELS, MAX_TILE_PIXELS = 16, 4096
#: Level IDs are 0-99: every cache names its level folders L00-L99, and no scale range needs more.
MAX_LEVEL_ID = 99
#: Tiles a side a level's grid may have over the scheme's world: Web Mercator level 31, far past
#: any real cache, and rows × cols still fits in 64 bits for the planner's arithmetic.
MAX_GRID_SIDE = 2 ** 31


def meters_per_unit(units: str) -> float:
    """Metres in one map unit, for the unit names ArcGIS uses (``esriMeters``, ``esriFeet``...)."""
    try:
        return _UNIT_METRES[units]
    except KeyError:
        raise SchemeError(f"unsupported map units {units!r}; known: {', '.join(_UNIT_METRES)}") from None


def scale_of(resolution: float, dpi: float = 96, units: str = "esriMeters") -> float:
    """The scale ArcGIS gives a resolution: ``resolution × metres per unit × dpi × 39.37``."""
    return resolution * meters_per_unit(units) * dpi * INCHES_PER_METRE


@dataclass(frozen=True, order=True)
class LevelOfDetail:
    """One level of a tiling scheme: its ID (used in URLs and folder names), scale and resolution."""

    level: int
    scale: float
    resolution: float

    def to_json(self) -> dict[str, Any]:
        return {"level": self.level, "resolution": self.resolution, "scale": self.scale}


def _wkid(value: Any, what: str) -> int | None:
    """A wkid from JSON: a whole positive number (or its string), else SchemeError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise SchemeError(f"spatialReference.{what} is {value!r:.40}, not a number")
    try:
        number = float(value)
    except ValueError:
        raise SchemeError(f"spatialReference.{what} is {value!r:.40}, not a number") from None
    if not (math.isfinite(number) and number == int(number) and 0 < number < 2**31):
        raise SchemeError(f"spatialReference.{what} is {value!r:.40}, not a wkid")
    return int(number)


@dataclass(frozen=True)
class SpatialReference:
    """An ArcGIS spatial reference: a wkid (and the latest wkid), or a WKT string."""

    wkid: int | None = None
    latest_wkid: int | None = None
    wkt: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> SpatialReference:
        """From ``{"wkid": ..., "latestWkid": ..., "wkt": ...}``; SchemeError when malformed."""
        data = data or {}
        if not isinstance(data, dict):
            raise SchemeError(f"spatialReference is {type(data).__name__}, not an object")
        wkid = _wkid(data.get("wkid"), "wkid")
        latest = _wkid(data.get("latestWkid"), "latestWkid")
        wkt = data.get("wkt")
        return cls(wkid=wkid, latest_wkid=latest, wkt=wkt if isinstance(wkt, str) and wkt else None)

    @property
    def is_known(self) -> bool:
        """Whether it says anything (a wkid or a WKT): planning areas needs one."""
        return self.wkid is not None or self.latest_wkid is not None or bool(self.wkt)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.wkid is not None:
            out["wkid"] = self.wkid
        if self.latest_wkid is not None:
            out["latestWkid"] = self.latest_wkid
        if self.wkt and self.wkid is None:
            out["wkt"] = self.wkt
        return out

    @property
    def is_web_mercator(self) -> bool:
        return bool({self.wkid, self.latest_wkid} & WEB_MERCATOR_WKIDS)

    @property
    def epsg(self) -> int | None:
        """The EPSG code to project with: Esri's Web Mercator wkids become 3857."""
        if self.is_web_mercator:
            return 3857
        for code in (self.latest_wkid, self.wkid):
            if code is not None and code < 100000:
                return code
        return self.latest_wkid or self.wkid

    def crs_input(self) -> str:
        """A string pyproj.CRS accepts: ``EPSG:n``, ``ESRI:n`` for Esri-authority wkids, or the WKT."""
        code = self.epsg
        if code is not None:
            return f"EPSG:{code}" if code < 100000 else f"ESRI:{code}"
        if self.wkt:
            return self.wkt
        raise SchemeError("the spatial reference has neither a wkid nor a WKT")

    def __str__(self) -> str:
        if self.wkid is not None:
            return f"wkid {self.wkid}" + (f" (latest {self.latest_wkid})" if self.latest_wkid else "")
        return "custom WKT"


@dataclass(frozen=True)
class Envelope:
    """An axis-aligned extent in a spatial reference (ArcGIS ``Envelope`` JSON)."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float
    spatial_reference: SpatialReference | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Envelope | None:
        """From Esri JSON; None when it is absent or not four finite numbers (an empty extent)."""
        if not data or not isinstance(data, dict):
            return None
        try:
            bounds = [float(data[k]) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (KeyError, TypeError, ValueError):
            return None
        if not all(math.isfinite(b) for b in bounds):
            return None
        sr = data.get("spatialReference")
        return cls(*bounds, SpatialReference.from_json(sr) if sr else None)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"xmin": self.xmin, "ymin": self.ymin, "xmax": self.xmax, "ymax": self.ymax}
        if self.spatial_reference is not None:
            out["spatialReference"] = self.spatial_reference.to_json()
        return out

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return (self.xmin, self.ymin, self.xmax, self.ymax)


@dataclass(frozen=True, order=True)
class TileKey:
    """The address of one tile: ArcGIS (level, row, col), row 0 at the top."""

    level: int
    row: int
    col: int

    @property
    def bundle(self) -> tuple[int, int]:
        """Top-left (row, col) of the 128×128 bundle holding this tile."""
        return (self.row // BUNDLE_SIZE * BUNDLE_SIZE, self.col // BUNDLE_SIZE * BUNDLE_SIZE)


@dataclass(frozen=True)
class TilingScheme:
    """Where tiles are: the grid origin (top-left), tile size in pixels, and the levels of detail.

    ``tile_end`` is the grid's bottom-right corner when it is known (conf.xml ``TileEnd``, or the
    symmetric Web Mercator world); without it the grid is unbounded to the right and down.
    ``min_lod``/``max_lod`` say which levels hold tiles when a source says so (tpkx, hosted tiles).
    """

    origin_x: float
    origin_y: float
    tile_cols: int
    tile_rows: int
    dpi: int
    spatial_reference: SpatialReference
    lods: tuple[LevelOfDetail, ...]
    tile_format: str = "PNG"
    compression_quality: int = 0
    units: str = "esriMeters"
    tile_end: tuple[float, float] | None = None
    full_extent: Envelope | None = None
    initial_extent: Envelope | None = None
    min_lod: int | None = None
    max_lod: int | None = None
    name: str = "Layers"
    _by_level: dict[int, LevelOfDetail] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Checked before anything plans on it: a NaN origin or a zero resolution from a hostile
        # service would otherwise surface as a MemoryError or an endless loop far from here.
        if not (math.isfinite(self.origin_x) and math.isfinite(self.origin_y)):
            raise SchemeError(f"the tiling origin ({self.origin_x}, {self.origin_y}) is not a "
                              "finite point")
        if not (MIN_TILE_PIXELS <= self.tile_cols <= MAX_TILE_PIXELS
                and MIN_TILE_PIXELS <= self.tile_rows <= MAX_TILE_PIXELS):
            raise SchemeError(f"tile size {self.tile_cols}×{self.tile_rows} pixels; tiles are "
                              f"{MIN_TILE_PIXELS} to {MAX_TILE_PIXELS} pixels a side")
        if not 0 < self.dpi <= 10000:
            raise SchemeError(f"dpi {self.dpi}; it must be between 1 and 10000")
        if not self.lods:
            raise SchemeError("the tiling scheme lists no levels of detail")
        if len(self.lods) > MAX_LEVEL_ID + 1:
            raise SchemeError(f"{len(self.lods)} levels of detail; a scheme has at most "
                              f"{MAX_LEVEL_ID + 1}")
        by_level: dict[int, LevelOfDetail] = {}
        for lod in self.lods:
            if lod.level in by_level:
                raise SchemeError(f"level {lod.level} is listed twice")
            if not 0 <= lod.level <= MAX_LEVEL_ID:
                raise SchemeError(f"level {lod.level}; level IDs are 0 to {MAX_LEVEL_ID}")
            if not (lod.resolution > 0 and math.isfinite(lod.resolution)):
                raise SchemeError(f"level {lod.level} has resolution {lod.resolution}; it must be "
                                  "a positive finite number")
            if not math.isfinite(lod.scale) or lod.scale < 0:
                raise SchemeError(f"level {lod.level} has scale {lod.scale}; it must be a finite "
                                  "number, not negative")
            by_level[lod.level] = lod
        ordered = tuple(sorted(self.lods, key=lambda lod: lod.level))
        object.__setattr__(self, "lods", ordered)
        object.__setattr__(self, "_by_level", by_level)
        if self.tile_end is None and self.spatial_reference.is_web_mercator \
                and self.origin_x < 0 < self.origin_y:
            object.__setattr__(self, "tile_end", (-self.origin_x, -self.origin_y))
        self._check_grid_sizes()

    def _check_grid_sizes(self) -> None:
        """Every level's grid, over the world the origin (and grid end) span, is at most
        :data:`MAX_GRID_SIDE` tiles a side: a resolution of 1e-12 is finite and positive, yet
        planning on it would ask for petabytes."""
        if self.tile_end is not None and not all(math.isfinite(v) for v in self.tile_end):
            raise SchemeError(f"the grid end {self.tile_end} is not a finite point")
        # the world: the origin, the grid's end and the extents (an area may reach any of them)
        reach = [abs(self.origin_x), abs(self.origin_y), 1.0, *(abs(v) for v in self.tile_end or ())]
        for extent in (self.full_extent, self.initial_extent):
            if extent is not None:
                reach += [abs(v) for v in extent.bounds]
        world = 2.0 * max(reach)
        pixels = min(self.tile_cols, self.tile_rows)
        for lod in self.lods:
            side = world / (lod.resolution * pixels)
            if side > MAX_GRID_SIDE:
                raise SchemeError(f"level {lod.level} has resolution {lod.resolution:g}: over "
                                  f"the scheme's origin and extents (±{world / 2:.3g} map units) "
                                  f"its grid would be {side:.3g} tiles a side (at most "
                                  f"{MAX_GRID_SIDE:,})")

    # -- levels -------------------------------------------------------------------------------

    @property
    def levels(self) -> tuple[int, ...]:
        return tuple(lod.level for lod in self.lods)

    def lod(self, level: int) -> LevelOfDetail:
        """The level of detail with this ID; an error lists the levels the scheme has."""
        try:
            return self._by_level[level]
        except KeyError:
            raise LevelError(f"level {level} is not in the tiling scheme (levels "
                             f"{_ranges(self.levels)})") from None

    @property
    def tiled_levels(self) -> tuple[int, ...]:
        """The levels that hold tiles: all of them unless the source gave minLOD/maxLOD."""
        lo = self.min_lod if self.min_lod is not None else -math.inf
        hi = self.max_lod if self.max_lod is not None else math.inf
        return tuple(level for level in self.levels if lo <= level <= hi)

    # -- grid maths ---------------------------------------------------------------------------

    def tile_span(self, level: int) -> tuple[float, float]:
        """Width and height of one tile of ``level`` in map units."""
        res = self.lod(level).resolution
        return (self.tile_cols * res, self.tile_rows * res)

    def tile_of_point(self, level: int, x: float, y: float) -> tuple[int, int]:
        """(row, col) of the tile holding a point; a point on an edge belongs to the next tile."""
        span_x, span_y = self.tile_span(level)
        return (math.floor((self.origin_y - y) / span_y), math.floor((x - self.origin_x) / span_x))

    def tile_bounds(self, level: int, row: int, col: int) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of a tile."""
        span_x, span_y = self.tile_span(level)
        return (self.origin_x + col * span_x, self.origin_y - (row + 1) * span_y,
                self.origin_x + (col + 1) * span_x, self.origin_y - row * span_y)

    def grid_size(self, level: int) -> tuple[int, int] | None:
        """(rows, cols) of the grid at ``level`` when its end is known, else None."""
        if self.tile_end is None:
            return None
        span_x, span_y = self.tile_span(level)
        cols = math.ceil((self.tile_end[0] - self.origin_x) / span_x - 1e-9)
        rows = math.ceil((self.origin_y - self.tile_end[1]) / span_y - 1e-9)
        return (max(rows, 1), max(cols, 1))

    def grid_bounds(self) -> tuple[float, float, float, float] | None:
        """The grid's extent (xmin, ymin, xmax, ymax) when its end is known."""
        if self.tile_end is None:
            return None
        return (self.origin_x, self.tile_end[1], self.tile_end[0], self.origin_y)

    def tile_range(self, level: int, bounds: tuple[float, float, float, float]
                   ) -> tuple[int, int, int, int] | None:
        """(min_row, min_col, max_row, max_col) of the tiles meeting the interior of ``bounds``.

        Edges lying on a tile boundary (within 1e-9 of a tile) do not pull in the next tile.
        Clamped to the grid; None when nothing is left.
        """
        xmin, ymin, xmax, ymax = bounds
        span_x, span_y = self.tile_span(level)
        eps = 1e-9
        min_col = math.floor((xmin - self.origin_x) / span_x + eps)
        max_col = math.ceil((xmax - self.origin_x) / span_x - eps) - 1
        min_row = math.floor((self.origin_y - ymax) / span_y + eps)
        max_row = math.ceil((self.origin_y - ymin) / span_y - eps) - 1
        min_col, min_row = max(min_col, 0), max(min_row, 0)
        size = self.grid_size(level)
        if size is not None:
            max_row, max_col = min(max_row, size[0] - 1), min(max_col, size[1] - 1)
        if min_col > max_col or min_row > max_row:
            return None
        return (min_row, min_col, max_row, max_col)

    @staticmethod
    def bundle_of(row: int, col: int) -> tuple[int, int]:
        """Top-left (row, col) of the bundle holding a tile."""
        return (row // BUNDLE_SIZE * BUNDLE_SIZE, col // BUNDLE_SIZE * BUNDLE_SIZE)

    # -- scale ----------------------------------------------------------------------------------

    @property
    def meters_per_unit(self) -> float:
        return meters_per_unit(self.units)

    def scale_of(self, resolution: float) -> float:
        return scale_of(resolution, self.dpi, self.units)

    def level_for_scale(self, scale: float, tolerance: float = SCALE_TOLERANCE) -> LevelOfDetail | None:
        """The level whose scale equals ``scale`` within a relative tolerance, if any."""
        for lod in self.lods:
            if abs(lod.scale - scale) <= tolerance * max(abs(lod.scale), abs(scale)):
                return lod
        return None

    # -- identity -------------------------------------------------------------------------------

    def with_levels(self, levels: Iterable[int]) -> TilingScheme:
        """The same grid keeping only some levels (for writing outputs that hold a subset)."""
        wanted = set(levels)
        return replace(self, lods=tuple(lod for lod in self.lods if lod.level in wanted),
                       _by_level={})

    def to_json(self) -> dict[str, Any]:
        """ArcGIS REST ``tileInfo`` shape."""
        return {
            "rows": self.tile_rows, "cols": self.tile_cols, "dpi": self.dpi,
            "format": self.tile_format, "compressionQuality": self.compression_quality,
            "origin": {"x": self.origin_x, "y": self.origin_y},
            "spatialReference": self.spatial_reference.to_json(),
            "lods": [lod.to_json() for lod in self.lods],
        }

    def fingerprint(self) -> str:
        """A short hash of the grid (origin, tile size, SR, resolutions), to recognise a service."""
        grid = {
            "origin": [round(self.origin_x, 6), round(self.origin_y, 6)],
            "size": [self.tile_cols, self.tile_rows],
            "sr": self.spatial_reference.epsg or self.spatial_reference.wkt,
            "res": [[lod.level, float(f"{lod.resolution:.10g}")] for lod in self.lods],
        }
        return hashlib.sha256(json.dumps(grid, sort_keys=True).encode()).hexdigest()[:16]


def _ranges(levels: Iterable[int]) -> str:
    """``0-5,8`` for levels 0,1,2,3,4,5,8."""
    out: list[str] = []
    run: list[int] = []
    for level in sorted(levels):
        if run and level == run[-1] + 1:
            run.append(level)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [level]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out) or "none"


format_levels = _ranges


def iter_level_ranges(levels: Iterable[int]) -> Iterator[tuple[int, int]]:
    """Consecutive runs of levels as (first, last) pairs."""
    for part in _ranges(levels).split(","):
        if part == "none":
            return
        first, _, last = part.partition("-")
        yield int(first), int(last or first)


def web_mercator_scheme(max_level: int = 23, tile_size: int = 256, dpi: int = 96,
                        tile_format: str = "PNG") -> TilingScheme:
    """The standard ArcGIS Online / Bing / Google Web Mercator scheme, levels computed from level 0.

    Level 0 spans the world (2 × 20037508.342787 m) in one tile; each level halves the resolution.
    """
    res0 = 2 * WEB_MERCATOR_HALF / tile_size
    lods = tuple(
        LevelOfDetail(level, scale_of(res0 / 2 ** level, dpi), res0 / 2 ** level)
        for level in range(max_level + 1)
    )
    return TilingScheme(
        origin_x=-WEB_MERCATOR_HALF, origin_y=WEB_MERCATOR_HALF, tile_cols=tile_size,
        tile_rows=tile_size, dpi=dpi, spatial_reference=SpatialReference(102100, 3857), lods=lods,
        tile_format=tile_format,
        full_extent=Envelope(-WEB_MERCATOR_HALF, -WEB_MERCATOR_HALF, WEB_MERCATOR_HALF,
                             WEB_MERCATOR_HALF, SpatialReference(102100, 3857)),
    )

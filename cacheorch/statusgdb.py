"""A server cache's Status.gdb: which levels were cached and how complete each one is.

ArcGIS Server keeps a file geodatabase, ``Status.gdb``, in a service's cache folder
(``arcgiscache/<service>/Status.gdb``, beside the ``<map name>/`` folder that holds conf.xml), and
``ManageMapServerCacheStatus`` (REPORT_BUNDLE_STATUS) writes one for a chosen area. Its main
content is a polygon feature class ``TaskStatus`` with one feature per bundle footprint. Esri
publishes no schema, so this module assumes as little as it can and says what it assumed:

- **Layer**: ``TaskStatus`` in any letter case; else the only layer that has a level or scale
  field.
- **Fields** are found by name, ignoring case, underscores and spaces; the first name of each
  list below that the layer has wins, then any field whose name contains the key word:

  ============ ============================================================= ============
  role         names tried                                                   key word
  ============ ============================================================= ============
  level        LevelID, Level, LOD, LODID, LevelOfDetail, CacheLevel, Zoom   ``level``
  scale        Scale, MapScale, CacheScale, LevelScale, ScaleDenominator     ``scale``
  percent      PercentComplete, PercentCompleted, Percent, PctComplete,      ``percent``
               Pct, Completion, Progress
  tiles done   TilesDone, CompletedTiles, TilesCompleted, BuiltTiles, ...    --
  tiles total  TotalTiles, TileCount, NumTiles, ExpectedTiles, Tiles         --
  done flag    Complete, Completed, IsComplete, Done, Cached, Built          --
  status       Status, TaskStatus, BundleStatus, CacheStatus, State          ``status``
  ============ ============================================================= ============

- **Level**: a scale that matches a conf.xml level (within 1 %, as scales are stored rounded)
  names the level; without a scale field the level field must hold conf.xml ``LevelID`` values.
  When both exist and the scales match, the scales win: they mean the same in any numbering.
- **Completion of a row**, from the first kind of field present: a percent (0-100, or 0-1 when
  every value is at most 1); tiles done / total; a done flag; a status that is a word
  (``Completed``, ``Done``, ``Built``, ``Cached``, ``Succeeded``... are done; anything else is
  not) or a number (only 0/1: a flag; values up to 100 beyond 3: a percent; other codes:
  unknown). A bundle is *done* at 100 %.
- **Levels**: those with at least one row. The scheme is conf.xml's, whole; ``min_lod`` /
  ``max_lod`` bound the levels that have rows.

Reading goes through pyogrio (GDAL's OpenFileGDB driver, no Esri SDK), an optional dependency.
Only the attribute columns are read, never the geometries, and they are counted with numpy, so a
status of millions of bundles reads in seconds.
"""
from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cacheorch.errors import FormatError, SchemeError, ServiceError
from cacheorch.formats.confxml import ConfInfo, read_conf_cdi, read_conf_xml_info
from cacheorch.formats.locate import CacheLocation, find_ci, locate_cache
from cacheorch.interfaces import LevelStatus, Service
from cacheorch.tiling import Envelope, TilingScheme

__all__ = ["NEEDS_PYOGRIO", "StatusFields", "StatusReport", "is_status_gdb", "read_status",
           "cache_of_status", "status_service", "SCALE_TOLERANCE"]

log = logging.getLogger(__name__)

NEEDS_PYOGRIO = "reading Status.gdb needs pyogrio (pip install 'cacheorch[gdal]')"
#: Relative difference under which a stored scale is taken for a conf.xml level's scale.
SCALE_TOLERANCE = 0.01

_LAYER = "taskstatus"
_LEVEL = ("levelid", "level", "lod", "lodid", "levelofdetail", "cachelevel", "zoomlevel", "zoom")
_SCALE = ("scale", "mapscale", "cachescale", "levelscale", "scaledenominator", "lodscale")
_PERCENT = ("percentcomplete", "percentcompleted", "percent", "pctcomplete", "pct", "completion",
            "progress", "percentdone")
_TILES_DONE = ("tilesdone", "completedtiles", "tilescompleted", "builttiles", "tilesbuilt",
               "donetiles", "cachedtiles", "numtilescompleted")
_TILES_TOTAL = ("totaltiles", "tilecount", "numtiles", "expectedtiles", "tilestotal", "tiles")
_FLAG = ("complete", "completed", "iscomplete", "done", "isdone", "cached", "built", "finished")
_STATUS = ("status", "taskstatus", "bundlestatus", "cachestatus", "tilestatus", "state")
_DONE_WORDS = frozenset({"complete", "completed", "done", "built", "cached", "finished",
                         "succeeded", "success", "successful", "ok", "true", "yes", "y", "full",
                         "esrijobsucceeded", "exists"})


def _norm(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def _pick(fields: Sequence[str], names: Iterable[str], word: str | None = None,
          taken: Iterable[str | None] = ()) -> str | None:
    """The field named like one of ``names`` (in that order), else one containing ``word``."""
    used = {t for t in taken if t}
    by_norm: dict[str, str] = {}
    for f in fields:
        by_norm.setdefault(_norm(f), f)
    for name in names:
        found = by_norm.get(name)
        if found is not None and found not in used:
            return found
    if word:
        for f in fields:
            if word in _norm(f) and f not in used:
                return f
    return None


@dataclass(frozen=True)
class StatusFields:
    """Which fields of which layer were read, and for what (None: not found)."""

    layer: str
    level: str | None = None
    scale: str | None = None
    percent: str | None = None
    tiles_done: str | None = None
    tiles_total: str | None = None
    flag: str | None = None
    status: str | None = None

    @classmethod
    def find(cls, layer: str, fields: Sequence[str]) -> StatusFields:
        level = _pick(fields, _LEVEL, "level")
        scale = _pick(fields, _SCALE, "scale", [level])
        percent = _pick(fields, _PERCENT, "percent", [level, scale])
        done = _pick(fields, _TILES_DONE, None, [level, scale, percent])
        total = _pick(fields, _TILES_TOTAL, None, [level, scale, percent, done])
        flag = _pick(fields, _FLAG, None, [level, scale, percent, done, total])
        status = _pick(fields, _STATUS, "status", [level, scale, percent, done, total, flag])
        if not (done and total):
            done = total = None
        return cls(layer, level, scale, percent, done, total, flag, status)

    @property
    def completion(self) -> str | None:
        """The field(s) completion is read from, as the docstring's order decides."""
        if self.percent:
            return self.percent
        if self.tiles_done and self.tiles_total:
            return f"{self.tiles_done}/{self.tiles_total}"
        return self.flag or self.status

    def columns(self) -> list[str]:
        names = [self.level, self.scale, self.percent, self.tiles_done, self.tiles_total,
                 self.flag, self.status]
        return list(dict.fromkeys(n for n in names if n))


@dataclass(frozen=True)
class StatusReport:
    """What a Status.gdb says: completeness per level, and what was read to say it."""

    path: Path
    fields: StatusFields
    levels: tuple[LevelStatus, ...]
    #: Bounds of the status features (the cached area), in the layer's spatial reference.
    bounds: tuple[float, float, float, float] | None = None
    #: Status values that were not understood, at most a few (for a note to the user).
    unknown_values: tuple[str, ...] = ()


def is_status_gdb(location: str) -> bool:
    """Whether ``location`` is a local path to a file geodatabase (a ``.gdb`` folder)."""
    if "://" in location:
        return False
    return location.strip().rstrip("/\\").lower().endswith(".gdb")


def _pyogrio() -> Any:
    try:
        import pyogrio
        import pyogrio.raw
    except ImportError:
        raise ServiceError(NEEDS_PYOGRIO) from None
    return pyogrio


def _layer(pyogrio: Any, path: Path, wanted: str | None) -> tuple[str, list[str]]:
    """The status layer's name and its fields."""
    try:
        layers = [str(row[0]) for row in pyogrio.list_layers(str(path))]
    except Exception as exc:  # pyogrio's DataSourceError and GDAL's own
        raise FormatError(f"{path}: not a readable file geodatabase "
                          f"({_one_line(exc)})") from None
    if wanted:
        name = next((n for n in layers if n.lower() == wanted.lower()), None)
        if name is None:
            raise FormatError(f"{path}: no layer {wanted!r} (layers: {', '.join(layers) or 'none'})")
        return name, _fields(pyogrio, path, name)
    name = next((n for n in layers if n.lower() == _LAYER), None)
    if name is not None:
        return name, _fields(pyogrio, path, name)
    candidates = []
    for n in layers:
        fields = _fields(pyogrio, path, n)
        found = StatusFields.find(n, fields)
        if found.level or found.scale:
            candidates.append((n, fields))
    if len(candidates) == 1:
        log.info("%s: no TaskStatus layer; reading %s", path, candidates[0][0])
        return candidates[0]
    listed = ", ".join(layers) or "none"
    raise FormatError(f"{path}: no TaskStatus layer, and not one layer with a level or scale field "
                      f"to use instead (layers: {listed}); name it with layer=")


def _fields(pyogrio: Any, path: Path, layer: str) -> list[str]:
    try:
        info = pyogrio.read_info(str(path), layer=layer)
    except Exception as exc:
        raise FormatError(f"{path}: cannot read layer {layer} ({_one_line(exc)})") from None
    return [str(f) for f in info["fields"]]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _as_float(values: Any) -> Any:
    """A float array (NaN where empty or not a number) from a column of any type."""
    import numpy as np
    arr = np.asarray(values)
    if arr.dtype.kind in "fiub":
        return arr.astype("float64")
    out = np.full(len(arr), np.nan)
    for i, v in enumerate(arr):
        try:
            out[i] = float(str(v).strip().rstrip("%")) if v is not None else np.nan
        except ValueError:
            pass
    return out


def _percent_fraction(values: Any) -> Any:
    """0-100 (or 0-1 when nothing exceeds 1 and something is fractional) → 0-1."""
    import numpy as np
    v = _as_float(values)
    finite = v[np.isfinite(v)]
    fractional = finite.size and finite.max() <= 1.0 and bool(np.any(finite != np.round(finite)))
    return np.clip(v if fractional else v / 100.0, 0.0, 1.0)


def _completion(fields: StatusFields, data: dict[str, Any], n: int
                ) -> tuple[Any, tuple[str, ...]]:
    """Per row: completion 0-1, NaN when unknown; and status values not understood."""
    import numpy as np
    if fields.percent:
        return _percent_fraction(data[fields.percent]), ()
    if fields.tiles_done and fields.tiles_total:
        done, total = _as_float(data[fields.tiles_done]), _as_float(data[fields.tiles_total])
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.where(total > 0, done / total, np.where(total == 0, 1.0, np.nan))
        return np.clip(frac, 0.0, 1.0), ()
    column = fields.flag or fields.status
    if column is None:
        return np.full(n, np.nan), ()
    values = np.asarray(data[column])
    if values.dtype.kind in "fiub":
        v = values.astype("float64")
        distinct = set(np.unique(v[np.isfinite(v)]).tolist())
        if distinct <= {0.0, 1.0}:
            return np.where(np.isfinite(v), (v != 0).astype("float64"), np.nan), ()
        if max(distinct) <= 100 and any(d > 3 for d in distinct):
            return _percent_fraction(v), ()
        shown = tuple(f"{d:g}" for d in sorted(distinct))[:5]
        return np.full(n, np.nan), shown
    # words: map each distinct value once (millions of rows share a handful of values)
    text = np.array(["" if x is None else str(x) for x in values], dtype=object)
    distinct_words, inverse = np.unique(text, return_inverse=True)
    mapped = np.empty(len(distinct_words))
    unknown: list[str] = []
    for i, word in enumerate(distinct_words):
        key = _norm(word)
        number = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", word)
        if number:
            mapped[i] = min(1.0, float(number.group(1)) / 100.0)
        elif key in _DONE_WORDS:
            mapped[i] = 1.0
        else:
            mapped[i] = 0.0
            if key and not any(key.startswith(p) for p in ("not", "in", "partial", "pending",
                                                           "fail", "error", "missing", "empty",
                                                           "waiting", "new", "none", "no",
                                                           "false", "running", "start")):
                unknown.append(word)
    return mapped[inverse.reshape(-1)], tuple(unknown[:5])


def _levels_of(fields: StatusFields, data: dict[str, Any], scheme: TilingScheme,
               where: Path) -> Any:
    """The conf.xml level of each row (see the module docstring for the rule)."""
    import numpy as np
    levels = np.array(scheme.levels, dtype="float64")
    scales = np.array([scheme.lod(int(lv)).scale for lv in levels])
    if fields.scale:
        stored = _as_float(data[fields.scale])
        distinct = np.unique(stored[np.isfinite(stored)])
        mapping: dict[float, int] = {}
        unmatched: list[float] = []
        for s in distinct.tolist():
            rel = np.abs(scales - s) / scales
            i = int(np.argmin(rel))
            if rel[i] <= SCALE_TOLERANCE:
                mapping[s] = int(levels[i])
            else:
                unmatched.append(s)
        if not unmatched:
            out = np.full(len(stored), -1, dtype="int64")
            for s, lv in mapping.items():
                out[stored == s] = lv
            return out
        if not fields.level:
            shown = ", ".join(f"1:{s:,.0f}" for s in unmatched[:3])
            raise SchemeError(f"{where}: scale {shown} in {fields.scale} matches no level of "
                              "conf.xml")
        log.info("%s: %s does not match conf.xml's scales; using %s", where, fields.scale,
                 fields.level)
    assert fields.level is not None
    stored = _as_float(data[fields.level])
    distinct = np.unique(stored[np.isfinite(stored)])
    known = set(scheme.levels)
    stray = [v for v in distinct.tolist() if v != int(v) or int(v) not in known]
    if stray:
        shown = ", ".join(f"{v:g}" for v in stray[:5])
        raise SchemeError(f"{where}: level {shown} in {fields.level} is not in conf.xml "
                          f"(levels {scheme.levels[0]}-{scheme.levels[-1]})")
    return np.where(np.isfinite(stored), stored, -1).astype("int64")


def read_status(path: str | os.PathLike[str], scheme: TilingScheme, *,
                layer: str | None = None) -> StatusReport:
    """Read a Status.gdb's completeness per level of ``scheme`` (conf.xml's)."""
    import numpy as np
    pyogrio = _pyogrio()
    gdb = Path(os.path.abspath(os.fspath(path)))
    if not gdb.is_dir():
        raise FormatError(f"{gdb}: no such file geodatabase (a .gdb folder)")
    name, names = _layer(pyogrio, gdb, layer)
    fields = StatusFields.find(name, names)
    if fields.level is None and fields.scale is None:
        raise SchemeError(f"{gdb}: layer {name} has no level or scale field (fields: "
                          f"{', '.join(names) or 'none'})")
    columns = fields.columns()
    try:
        result = pyogrio.raw.read(str(gdb), layer=name, columns=columns, read_geometry=False)
        info = pyogrio.read_info(str(gdb), layer=name, force_total_bounds=True)
    except Exception as exc:
        raise FormatError(f"{gdb}: cannot read layer {name} ({_one_line(exc)})") from None
    meta, field_data = result[0], result[-1]
    data = dict(zip([str(f) for f in meta["fields"]], field_data))
    n = len(field_data[0]) if len(field_data) else 0
    row_levels = _levels_of(fields, data, scheme, gdb) if n else np.zeros(0, dtype="int64")
    frac, unknown = _completion(fields, data, n) if n else (np.zeros(0), ())
    known = fields.completion is not None
    out = []
    for level in sorted(set(row_levels.tolist()) - {-1}):
        rows = row_levels == level
        part = frac[rows]
        count = int(rows.sum())
        if not known:
            out.append(LevelStatus(level, count))
            continue
        done = int(np.sum(part >= 1.0 - 1e-9))
        finite = part[np.isfinite(part)]
        percent = float(finite.mean() * 100.0) if finite.size == count else 100.0 * done / count
        out.append(LevelStatus(level, count, done, round(percent, 3)))
    bounds = info.get("total_bounds")
    box = tuple(float(b) for b in bounds) if bounds is not None and len(bounds) == 4 else None
    if box is not None and not all(math.isfinite(b) for b in box):
        box = None
    if unknown:
        log.warning("%s: status values not understood, counted as not done: %s", gdb,
                    ", ".join(unknown))
    return StatusReport(gdb, fields, tuple(out), box, unknown)  # type: ignore[arg-type]


def cache_of_status(path: str | os.PathLike[str], conf: str | os.PathLike[str] | None = None
                    ) -> CacheLocation:
    """The cache a Status.gdb describes: ``conf`` if given, else the conf.xml beside it.

    Beside means the Status.gdb's folder or, as ArcGIS Server lays it out, the map-name folder
    below it (``arcgiscache/<service>/{Status.gdb, Layers/conf.xml}``).
    """
    gdb = Path(os.path.abspath(os.fspath(path)))
    if conf:
        return locate_cache(conf)
    parent = gdb.parent
    try:
        loc = locate_cache(parent)
    except FormatError:
        raise FormatError(f"{gdb}: no conf.xml beside it (in {parent} or the folders below); "
                          "name the cache with --source status-gdb:conf=PATH") from None
    if loc.descriptor is None or loc.descriptor.name.lower() != "conf.xml":
        raise FormatError(f"{gdb}: the cache beside it has no conf.xml ({loc.path}); "
                          "name one with --source status-gdb:conf=PATH")
    return loc


def status_service(path: str | os.PathLike[str], *, conf: str | os.PathLike[str] | None = None,
                   layer: str | None = None) -> Service:
    """The :class:`Service` of the cache a Status.gdb describes, with its completeness.

    ``location`` is the cache folder, so a job's tiles come from the cache itself.
    """
    gdb = Path(os.path.abspath(os.fspath(path)))
    if not gdb.is_dir():
        raise FormatError(f"{gdb}: no such file geodatabase (a .gdb folder)")
    loc = cache_of_status(gdb, conf)
    if loc.descriptor is None:
        raise FormatError(f"{loc.path}: a package; a Status.gdb describes a cache folder")
    info: ConfInfo = read_conf_xml_info(loc.descriptor)
    report = read_status(gdb, info.scheme, layer=layer)
    scheme = info.scheme
    cdi = find_ci(loc.path, "conf.cdi")
    extent: Envelope | None = read_conf_cdi(cdi) if cdi is not None and cdi.is_file() else None
    if extent is None and report.bounds is not None:
        extent = Envelope(*report.bounds, spatial_reference=scheme.spatial_reference)
    elif extent is not None and extent.spatial_reference is None:
        extent = replace(extent, spatial_reference=scheme.spatial_reference)
    levels = [s.level for s in report.levels]
    if levels:
        scheme = replace(scheme, min_lod=levels[0], max_lod=levels[-1], _by_level={})
    if extent is not None:
        scheme = replace(scheme, full_extent=extent, _by_level={})
    if not levels:
        log.warning("%s: the status lists no bundles; every level of conf.xml is offered", gdb)
    return Service(location=str(loc.path), scheme=scheme, kind="cache", name=loc.name,
                   description=f"status from {gdb} ({report.fields.layer}: level "
                               f"{report.fields.scale or report.fields.level}, completion "
                               f"{report.fields.completion or 'unknown'})",
                   storage_format=info.storage_format, level_status=report.levels)

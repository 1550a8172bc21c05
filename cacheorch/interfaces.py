"""The plugin kinds: small base classes whose docstrings are the contract a plugin author follows.

Every kind is a class with a ``name`` and an ``Options`` dataclass; a registration hook returns the
class, and the core builds it from a config section or a ``NAME:key=value,...`` flag.
"""
from __future__ import annotations

import abc
import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from cacheorch.tiling import Envelope, LevelOfDetail, TileKey, TilingScheme

if TYPE_CHECKING:
    from shapely.geometry.base import BaseGeometry

    from cacheorch.connection import Connection
    from cacheorch.jobplan import JobPlan

__all__ = [
    "Plugin", "NoOptions", "Service", "LevelStatus", "ScaleSource", "PolicyContext",
    "SelectionPolicy", "AOIGenerator",
    "AreaResolver", "TileResult",
    "TileFetcher", "TileSource", "BundleSink", "ExportSession", "Exporter", "ExportRequest",
    "staging_path", "DelegateReport", "DelegatedExporter",
]


@dataclass
class NoOptions:
    """Options of a plugin that takes none."""


class Plugin:
    """Base of every plugin kind: a ``name`` and typed ``Options`` parsed from strings.

    The core parses a config section or a ``NAME:key=value`` flag into ``Options`` (int, float,
    bool and str fields are converted; unknown keys are refused, naming the key), then calls
    ``cls(options)``.
    """

    #: The name users type (``--exporter tpkx``); unique within the kind.
    name: ClassVar[str]
    #: A dataclass of the plugin's options, with defaults.
    Options: ClassVar[type] = NoOptions
    #: The option a bare value sets (``levels:0-5`` means ``levels:levels=0-5``), if any.
    positional: ClassVar[str | None] = None

    def __init__(self, options: Any | None = None) -> None:
        self.options = options if options is not None else self.Options()

    @classmethod
    def describe(cls) -> str:
        """First line of the class docstring, for ``cacheorch plugins``."""
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    @classmethod
    def option_fields(cls) -> Sequence[dataclasses.Field[Any]]:
        return dataclasses.fields(cls.Options) if dataclasses.is_dataclass(cls.Options) else ()


@dataclass(frozen=True)
class Service:
    """What a scale source learned about a service, cache or package.

    ``location`` is the URL or path as the user gave it (without any token); ``kind`` is
    ``MapServer``, ``ImageServer``, ``cache`` or ``defaults``.
    """

    location: str
    scheme: TilingScheme
    kind: str = "MapServer"
    name: str = ""
    capabilities: frozenset[str] = frozenset()
    tile_servers: tuple[str, ...] = ()
    export_tiles_allowed: bool = False
    max_export_tiles_count: int | None = None
    description: str = ""
    copyright: str = ""
    #: ``esriMapCacheStorageMode…`` when the source says how tiles are stored (None: unknown).
    storage_format: str | None = None
    #: How complete each level is, for sources that know (a server cache's Status.gdb).
    level_status: tuple[LevelStatus, ...] = ()
    #: The scales the service draws at (REST ``minScale``/``maxScale``, a cache folder's
    #: conf.properties), None where unlimited or not said; levels beyond them hold no tiles.
    min_scale: float | None = None
    max_scale: float | None = None
    #: REST ``singleFusedMapCache``: False means ``/tile`` serves nothing (None: not said).
    single_fused_cache: bool | None = None
    #: Exactly the levels a local cache holds tiles at, when known (None: the scheme's
    #: ``tiled_levels``, i.e. ``minLOD..maxLOD``).
    levels_with_tiles: frozenset[int] | None = None

    @property
    def tiled_levels(self) -> tuple[int, ...]:
        """The levels that hold tiles: the scheme's range, less the levels a cache lacks."""
        levels = self.scheme.tiled_levels
        if self.levels_with_tiles is None:
            return levels
        return tuple(level for level in levels if level in self.levels_with_tiles)

    def draws_at(self, scale: float) -> str:
        """Why the service draws nothing at ``scale`` ("" when it does): outside minScale /
        maxScale (compared within 1e-6, as levels are matched to scales)."""
        if self.min_scale and scale > self.min_scale * (1 + 1e-6):
            return f"coarser than the service's minScale 1:{self.min_scale:,.0f}"
        if self.max_scale and scale < self.max_scale * (1 - 1e-6):
            return f"finer than the service's maxScale 1:{self.max_scale:,.0f}"
        return ""

    @property
    def full_extent(self) -> Envelope | None:
        return self.scheme.full_extent

    def status_of(self, level: int) -> LevelStatus | None:
        """The completeness of ``level``, when the source reported it."""
        return next((s for s in self.level_status if s.level == level), None)


@dataclass(frozen=True)
class LevelStatus:
    """How complete one level of a cache is: bundles done out of bundles recorded.

    ``done`` is None when the status rows say nothing readable about completion; ``percent``
    is the mean completion the rows give (or ``done / bundles`` when they only say yes or no).
    """

    level: int
    bundles: int
    done: int | None = None
    percent: float | None = None

    def describe(self) -> str:
        """``12/40 bundles (30%)``: one cell for ``scales``."""
        if self.done is None:
            return f"{self.bundles} bundles, completion unknown"
        pct = f" ({self.percent:.0f}%)" if self.percent is not None else ""
        return f"{self.done}/{self.bundles} bundles{pct}"


class ScaleSource(Plugin, abc.ABC):
    """Answers "what levels does this thing have?" with a :class:`Service` and its tiling scheme.

    Example::

        class MySource(ScaleSource):
            name = "my-source"
            def accepts(cls, location): return location.startswith("my://")
            def read(self, location, connection): ...

        @hookimpl
        def cacheorch_register_scale_sources():
            return [MySource]
    """

    @classmethod
    def accepts(cls, location: str) -> bool:
        """Whether this source recognises ``location`` when the user names no source."""
        return False

    @abc.abstractmethod
    def read(self, location: str, connection: Connection) -> Service:
        """Read the service; raise a :class:`~cacheorch.errors.CacheorchError` with one clear line."""


class PolicyContext(abc.ABC):
    """What a policy may ask about the job beyond the scheme: tile counts and tile sizes.

    Counts depend on each level's area, which is resolved after the levels are known; the context
    resolves a level's area and counts its tiles only when a policy asks, and remembers the answer,
    so a policy that never asks costs nothing and the plan reuses every count.
    """

    @property
    @abc.abstractmethod
    def service(self) -> Service:
        """The service being exported (its limits: ``max_export_tiles_count``...)."""

    @abc.abstractmethod
    def tiles(self, level: int) -> int:
        """The planned tile count of ``level`` over its area (what ``plan`` would show)."""

    def tiles_at_least(self, level: int) -> int:
        """A lower bound of :meth:`tiles`, cheap when the exact count is not (the area over one
        tile's area), so a budget can drop a level far too big without counting it."""
        return self.tiles(level)

    @abc.abstractmethod
    def sample_bytes(self, level: int) -> float | None:
        """Mean size in bytes of a few tiles fetched near the level's area through the job's tile
        source; None when none could be fetched (all missing or failed)."""

    def note(self, text: str) -> None:
        """Add one line to the plan's notes (a limit that matters later, an assumption made)."""


class SelectionPolicy(Plugin, abc.ABC):
    """Narrows the selected levels. Policies run in the order given, each seeing the last's output.

    A policy that needs tile counts or tile sizes declares a third parameter,
    ``select(self, scheme, levels, context: PolicyContext | None = None)``; two-parameter
    policies keep working (:meth:`apply` looks at the signature). A policy that cannot apply
    raises :class:`~cacheorch.errors.PolicyError` or :class:`~cacheorch.errors.LevelError`
    naming what is wrong.
    """

    @abc.abstractmethod
    def select(self, scheme: TilingScheme, levels: Sequence[LevelOfDetail]) -> list[LevelOfDetail]:
        """Return the levels to keep, a subset of ``levels`` in scheme order."""

    def explain(self) -> str:
        """One line for ``plan``: what this policy keeps."""
        return self.name

    def reason(self, level: int, kept: bool) -> str:
        """Why ``level`` was kept or dropped, for ``plan`` (after :meth:`select`); "" says no more
        than :meth:`explain`."""
        return ""

    def apply(self, scheme: TilingScheme, levels: Sequence[LevelOfDetail],
              context: PolicyContext | None = None) -> list[LevelOfDetail]:
        """Run :meth:`select`, passing ``context`` only to policies whose ``select`` takes it."""
        if context is not None and _takes_context(type(self)):
            return self.select(scheme, levels, context)  # type: ignore[call-arg]
        return self.select(scheme, levels)


@functools.lru_cache(maxsize=None)
def _takes_context(cls: type) -> bool:
    params = list(inspect.signature(cls.select).parameters.values())[1:]  # past self
    return any(p.kind is p.VAR_POSITIONAL for p in params) or \
        len([p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]) >= 3


class AOIGenerator(Plugin, abc.ABC):
    """Makes the area of interest for a range of levels, as a shapely geometry in the scheme's SR.

    ``spec`` is what follows ``NAME:`` in ``--aoi LEVELS=NAME:spec`` (or a config key). The result
    must be polygonal (Polygon or MultiPolygon) and already projected into the scheme's spatial
    reference; raise :class:`~cacheorch.errors.AreaError` for anything else.
    """

    @classmethod
    def accepts(cls, spec: str) -> bool:
        """Whether a bare ``--aoi`` value (no ``NAME:``) is for this generator (e.g. a file path)."""
        return False

    @abc.abstractmethod
    def area(self, spec: str, service: Service, connection: Connection) -> BaseGeometry:
        """The area, in ``service.scheme``'s spatial reference."""

    def varies_by_level(self, spec: str) -> bool:
        """Whether :meth:`area_at` may differ between levels (a buffer in tiles of each level);
        when False the core builds the area once and shares it between the levels naming it."""
        return False

    def area_at(self, spec: str, service: Service, connection: Connection, lod: LevelOfDetail,
                resolve: AreaResolver) -> BaseGeometry:
        """The area for one level. ``resolve(spec, lod)`` builds any other area spec the way
        ``--aoi`` does, for generators that wrap another (``buffer:…:town.geojson``).

        The default is :meth:`area`, the same for every level.
        """
        return self.area(spec, service, connection)


#: ``resolve(spec, lod)``: the area an ``--aoi`` spec gives for one level (projected, checked).
AreaResolver = Callable[[str, LevelOfDetail], "BaseGeometry"]


@dataclass(frozen=True)
class TileResult:
    """The outcome of fetching one tile.

    ``status`` is ``ok`` (``data`` holds the bytes exactly as sent), ``missing`` (the source says
    there is no tile: 404, blank-tile) or ``failed`` (``error`` says why; never written).
    """

    key: TileKey
    status: Literal["ok", "missing", "failed"]
    data: bytes | None = None
    error: str | None = None


class TileFetcher(abc.ABC):
    """An open connection to a tile source; fetches many tiles concurrently."""

    @abc.abstractmethod
    def fetch(self, keys: Iterable[TileKey]) -> Iterator[TileResult]:
        """Yield one result per key, in any order, as they complete.

        ``keys`` is consumed lazily with a bounded number in flight, so a caller may pass a
        stream of millions of keys without holding them.
        """

    def close(self) -> None:
        """Release connections."""

    def __enter__(self) -> TileFetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TileSource(Plugin, abc.ABC):
    """Gives tile bytes for (level, row, col): the REST ``/tile`` endpoint, or a local cache."""

    @classmethod
    def accepts(cls, location: str) -> bool:
        return False

    @abc.abstractmethod
    def open(self, service: Service, connection: Connection, workers: int) -> TileFetcher:
        """Open a fetcher with ``workers`` requests in flight at most."""


class BundleSink(abc.ABC):
    """Receives the tiles of one bundle and makes them durable on :meth:`close`."""

    @abc.abstractmethod
    def add(self, row: int, col: int, data: bytes) -> None:
        """Store one tile's bytes exactly as given (absolute row and column)."""

    @abc.abstractmethod
    def close(self) -> int:
        """Finish the bundle (index, header), fsync it and move it into place; return its bytes."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Drop the bundle; nothing of it remains under its final name."""


@dataclass(frozen=True)
class ExportRequest:
    """What an exporter is asked to write."""

    output: Path
    service: Service
    #: The scheme, already narrowed to the selected levels.
    scheme: TilingScheme
    levels: tuple[LevelOfDetail, ...]
    #: Union of the areas, in the scheme SR, for the output's extent metadata (may be None).
    extent: tuple[float, float, float, float] | None = None
    mode: Literal["create", "overwrite"] = "create"
    title: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class ExportSession(abc.ABC):
    """An output being written. It lives in a staging place beside the output until :meth:`commit`.

    A session can be reopened on the same staging place (``resume``): bundles already closed there
    are kept and reported by :meth:`has_bundle`.
    """

    @abc.abstractmethod
    def has_bundle(self, level: int, bundle_row: int, bundle_col: int) -> bool:
        """Whether a finished bundle is already staged (for resume)."""

    @abc.abstractmethod
    def open_bundle(self, level: int, bundle_row: int, bundle_col: int) -> BundleSink:
        """Start writing one bundle (top-left tile row and column, multiples of 128)."""

    @abc.abstractmethod
    def commit(self) -> Path:
        """Write metadata, assemble the output under a temporary name, rename it into place."""

    @abc.abstractmethod
    def discard(self) -> None:
        """Remove the staging place (after a commit, or when the job is abandoned)."""


class Exporter(Plugin, abc.ABC):
    """Writes tiles into an output format, bundle by bundle."""

    #: The output's file extension (``.tpkx``), or None for a folder output.
    extension: ClassVar[str | None] = None

    @abc.abstractmethod
    def open(self, request: ExportRequest) -> ExportSession:
        """Open (or reopen, for resume) the staging place for ``request.output``.

        Raise :class:`~cacheorch.errors.OutputExistsError` when the output exists and
        ``request.mode`` is ``create``.
        """


class DelegateReport(abc.ABC):
    """What a :class:`DelegatedExporter` tells the job while it runs: the output it must write,
    messages (server job messages, geoprocessing messages) and progress in planned tiles.

    Messages go into the catalog (``job_messages``), to ``cacheorch_track_event`` observers as a
    ``JobMessage`` event, and to the log; progress moves the progress bar.
    """

    #: Where the finished output must end up (the exporter stages beside it, as every exporter).
    output: Path
    #: The catalog id of the job being run.
    job_id: int

    @abc.abstractmethod
    def message(self, text: str, *, kind: str = "info", source: str = "server") -> None:
        """Record one message; ``kind`` is info, warning or error (or the server's own type),
        ``source`` says who said it (``server``, ``arcpy``, ``cacheorch``)."""

    @abc.abstractmethod
    def progress(self, tiles: int) -> None:
        """``tiles`` more of the planned tiles are done (exported and downloaded)."""


class DelegatedExporter(Exporter):
    """An exporter that does the whole job itself: ArcGIS builds the tiles, cacheorch fetches none.

    The runner hands it the plan instead of opening a session; the catalog still records the job,
    its levels (planned counts from cacheorch's planner, written counts read back from the
    output) and its status. Subclasses implement :meth:`export`, and may check at plan time that
    they can run here (:meth:`unavailable`) and ask the server for its own estimate
    (:meth:`estimate`).
    """

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this exporter cannot run on this machine (arcpy missing...), or None."""
        return None

    def open(self, request: ExportRequest) -> ExportSession:
        from cacheorch.errors import ExportError
        raise ExportError(f"exporter {self.name} runs the whole export itself; it has no "
                          f"bundle session")

    def estimate(self, plan: JobPlan, connection: Connection) -> dict[str, Any] | None:
        """The server's own estimate (``{"tiles": n, "bytes": n}``) for ``plan``, or None when
        there is none; ``plan`` shows it beside cacheorch's count."""
        return None

    @abc.abstractmethod
    def export(self, plan: JobPlan, connection: Connection, report: DelegateReport) -> Path:
        """Run the whole export of ``plan`` into ``report.output``; return the output's path.

        Raise :class:`~cacheorch.errors.ExportError` with one clear line (including what the
        server or tool said) when it fails; leave nothing under ``report.output`` then.
        """


def staging_path(output: Path) -> Path:
    """Where an output is staged until committed: ``<output>.partial`` beside it.

    Every exporter stages there, so the runner can tell an interrupted job's leftovers from a
    finished output, and ``resume`` can reopen them.
    """
    return output.with_name(output.name + ".partial")

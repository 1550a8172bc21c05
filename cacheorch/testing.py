"""Contract tests for cacheorch plugins: subclass one base per plugin kind and pytest runs the checks.

Why: the core relies on more than the abstract methods say (a name users can type, options that
parse from strings, one-line errors instead of tracebacks, lazy key streams, outputs that appear
only on commit). Writing those checks once, here, lets every plugin, built-in or third-party,
be held to the same contract, the way MapProxy has one test base per cache backend.

Usage (in your plugin's ``tests/test_contract.py``)::

    import pytest
    from cacheorch.testing import AreaContract
    from my_plugin import MyArea

    class TestMyArea(AreaContract):
        plugin = MyArea
        bad_specs = ("", "nonsense")

        @pytest.fixture
        def spec(self) -> str:
            return "district=7"

The bases are named ``...Contract`` (not ``Test...``), so pytest collects only your subclass.
Fixtures (``spec``, ``service``, ``location``, ``connection``...) are pytest fixtures you override
with a method of the same name; class attributes set constants. Each base's docstring lists what
it needs. pytest is required (``pip install pytest``); GDAL read-back needs rasterio and is
skipped without it.
"""
from __future__ import annotations

import dataclasses
import gc
import itertools
import re
import typing
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from cacheorch import hookimpl
from cacheorch.connection import Connection
from cacheorch.errors import CacheorchError, ConfigError, OutputExistsError
from cacheorch.interfaces import (
    AOIGenerator, Exporter, ExportRequest, ExportSession, Plugin, PolicyContext, ScaleSource,
    SelectionPolicy, Service, TileFetcher, TileSource, staging_path,
)
from cacheorch.maps.interfaces import MapReader, MapWriter
from cacheorch.tiling import LevelOfDetail, TileKey, TilingScheme, web_mercator_scheme

__all__ = [
    "PluginContract", "ScaleSourceContract", "PolicyContract", "AreaContract",
    "TileSourceContract", "ExporterContract", "DelegatedExporterContract", "StaticPolicyContext", "solid_tile", "colour_of",
    "read_tiles_gdal", "read_tiles_cache", "web_mercator_service", "MapReaderContract",
    "MapWriterContract",
]

#: A name users type on the command line: lowercase letters, digits and inner dashes.
NAME_PATTERN = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")

Tiles = dict[tuple[int, int, int], bytes]


# -- helpers an author may use in their own tests ----------------------------------------------

def colour_of(level: int, row: int, col: int) -> tuple[int, int, int]:
    """A colour unique to (level, row, col) within small grids, so a misplaced tile shows."""
    h = zlib.crc32(f"{level}/{row}/{col}".encode())
    return (h & 0xFF, (h >> 8) & 0xFF, (h >> 16) & 0xFF)


def solid_tile(rgb: tuple[int, int, int], size: int = 256) -> bytes:
    """A one-colour PNG tile: tiny, and any image reader can check its colour."""
    from cacheorch.formats.png import encode_png
    return encode_png(size, size, bytes(rgb) * (size * size), level=1)


def web_mercator_service(max_level: int = 10, location: str = "contract://web-mercator",
                         **kw: Any) -> Service:
    """A :class:`Service` on the standard Web Mercator scheme (levels 0..max_level)."""
    return Service(location=location, scheme=web_mercator_scheme(max_level=max_level),
                   kind=kw.pop("kind", "defaults"), name=kw.pop("name", "Contract"), **kw)


class StaticPolicyContext(PolicyContext):
    """A :class:`PolicyContext` with fixed answers: ``tiles`` = 4**level, ``sample_bytes`` = 10 kB.

    Policies that ask for counts or sizes can be tested without a planner or a server.
    """

    def __init__(self, service: Service, tiles: Mapping[int, int] | None = None,
                 sample_bytes: float | None = 10_000.0) -> None:
        self._service = service
        self._tiles = dict(tiles or {})
        self._bytes = sample_bytes
        self.notes: list[str] = []

    @property
    def service(self) -> Service:
        return self._service

    def tiles(self, level: int) -> int:
        return self._tiles.get(level, 4 ** level)

    def sample_bytes(self, level: int) -> float | None:
        return self._bytes

    def note(self, text: str) -> None:
        self.notes.append(text)


def read_tiles_cache(output: Path, keys: Sequence[tuple[int, int, int]]
                     ) -> dict[tuple[int, int, int], bytes | None]:
    """The stored bytes of ``keys`` (None: absent), read with :func:`cacheorch.formats.cache.open_cache`."""
    from cacheorch.formats.cache import open_cache
    with open_cache(output) as cache:
        return {key: cache.get_tile(*key) for key in keys}


def _gdal_path(output: Path, driver: str) -> str:
    if driver == "ESRIC" and output.is_dir():
        from cacheorch.formats.locate import find_ci
        conf = find_ci(output, "conf.xml")
        if conf is None:
            raise AssertionError(f"no conf.xml in {output}")
        return str(conf)
    return str(output)


def read_tiles_gdal(output: Path, scheme: TilingScheme, keys: Sequence[tuple[int, int, int]],
                    driver: str = "ESRIC") -> dict[tuple[int, int, int], tuple[int, ...]]:
    """The RGBA colour GDAL shows at the centre of each tile, opening ``output`` with ``driver``.

    An independent reader is the point: a writer and a reader from the same hands can agree on
    the same mistake. rasterio is imported here, not at module import, and the calling test is
    skipped when it is absent. The window comes from the tile's map bounds and the dataset's
    geotransform, read decimated to the tile size so GDAL uses the overview that is the level.
    """
    rasterio = pytest.importorskip("rasterio")
    from rasterio.enums import Resampling

    colours: dict[tuple[int, int, int], tuple[int, ...]] = {}
    with rasterio.open(_gdal_path(Path(output), driver), driver=driver) as ds:
        for level, row, col in keys:
            window = ds.window(*scheme.tile_bounds(level, row, col))
            pixels = ds.read(window=window, out_shape=(ds.count, scheme.tile_rows, scheme.tile_cols),
                             resampling=Resampling.nearest, boundless=False)
            centre = pixels[:, scheme.tile_rows // 2, scheme.tile_cols // 2]
            rgba = tuple(int(v) for v in centre)
            if len(rgba) == 3:
                rgba = (*rgba, 255)
            colours[(level, row, col)] = rgba
    return colours


# -- the contracts -------------------------------------------------------------------------------

class _Provider:
    """A pluggy plugin object that registers one class through the hook of its kind."""

    def __init__(self, hook: str, cls: type) -> None:
        self.hook, self.cls = hook, cls
        setattr(self, hook, hookimpl(lambda: [cls]))


_UNKNOWN_OPTION = "no_such_option_for_contract"


def _option_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    return str(value)


class PluginContract:
    """Checks every plugin kind shares: naming, options parsing, registration.

    Set ``plugin`` to the class under test; ``options`` (strings, as in a config section) is
    what the other checks build it with.
    """

    #: The plugin class under test.
    plugin: ClassVar[type[Plugin]]
    #: Option strings to build the plugin with (``{"levels": "0-3"}``), as a config section gives.
    options: ClassVar[Mapping[str, str]] = {}
    #: The base class of this kind and the registration hook that returns it (set by each base).
    kind_base: ClassVar[type[Plugin]] = Plugin
    kind_hook: ClassVar[str] = ""
    kind_registry: ClassVar[str] = ""

    @pytest.fixture
    def connection(self) -> Iterator[Connection]:
        """A plain connection (no token) for the kinds that read or fetch; closed afterwards."""
        conn = Connection()
        yield conn
        conn.close()

    def build(self, options: Mapping[str, str] | None = None) -> Any:
        """The plugin built from strings exactly as a ``NAME:key=value`` flag would build it."""
        from cacheorch.options import build_plugin
        raw = dict(self.options if options is None else options)
        return build_plugin(self.plugin, raw, f"contract test ({self.plugin.name})")

    # naming ------------------------------------------------------------------------------------
    def test_is_a_plugin_of_its_kind(self) -> None:
        assert isinstance(self.plugin, type) and issubclass(self.plugin, self.kind_base), \
            f"{self.plugin!r} must subclass {self.kind_base.__name__}"
        assert not getattr(self.plugin, "__abstractmethods__", None), \
            f"{self.plugin.__name__} leaves abstract methods: {sorted(self.plugin.__abstractmethods__)}"

    def test_name_is_a_lowercase_token(self) -> None:
        name = getattr(self.plugin, "name", None)
        assert isinstance(name, str) and NAME_PATTERN.fullmatch(name), \
            f"name {name!r} must be a non-empty lowercase token (letters, digits, inner dashes)"

    def test_describe_is_one_nonempty_line(self) -> None:
        text = self.plugin.describe()
        assert isinstance(text, str) and text.strip(), \
            f"{self.plugin.__name__} needs a docstring: its first line is what `cacheorch plugins` shows"
        assert "\n" not in text

    def test_name_is_unique_in_the_registry(self) -> None:
        """Registered beside every built-in and installed plugin, it clashes with none."""
        from cacheorch.pluginmanager import make_plugins
        plugins = make_plugins(load_entrypoints=True, extra=[_Provider(self.kind_hook, self.plugin)])
        registry = getattr(plugins, self.kind_registry)
        assert registry.get(self.plugin.name) is self.plugin

    # options -----------------------------------------------------------------------------------
    def test_every_option_has_a_default(self) -> None:
        options_cls = self.plugin.Options
        for f in self.plugin.option_fields():
            assert f.default is not dataclasses.MISSING or \
                f.default_factory is not dataclasses.MISSING, \
                f"option {f.name!r} of {self.plugin.name} has no default"
        self.plugin(options_cls())  # builds with no options at all

    def test_every_option_is_settable_from_a_string(self) -> None:
        hints = typing.get_type_hints(self.plugin.Options) if self.plugin.option_fields() else {}
        for f in self.plugin.option_fields():
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            kind = hints.get(f.name)
            plain = {str, int, float, bool}
            args = set(typing.get_args(kind)) - {type(None)}
            assert kind in plain or (args and args <= plain), \
                f"option {f.name!r} is {kind!r}; options must be str, int, float, bool (or None of those)"
            built = self.build({**self.options, f.name: _option_text(default)})
            assert getattr(built.options, f.name) == default, \
                f"option {f.name!r} = {_option_text(default)!r} did not parse back to {default!r}"

    def test_given_options_parse(self) -> None:
        built = self.build()
        assert isinstance(built, self.plugin)
        for key in self.options:
            assert hasattr(built.options, key or self.plugin.positional or "")

    def test_unknown_option_is_refused_naming_it(self) -> None:
        with pytest.raises(ConfigError) as err:
            self.build({**self.options, _UNKNOWN_OPTION: "1"})
        assert _UNKNOWN_OPTION in str(err.value) and "\n" not in str(err.value)

    def test_positional_option_exists(self) -> None:
        positional = self.plugin.positional
        if positional is None:
            return
        assert positional in {f.name for f in self.plugin.option_fields()}, \
            f"positional = {positional!r} is not an option field"


def _assert_clean_error(excinfo: pytest.ExceptionInfo[BaseException], what: str) -> None:
    exc = excinfo.value
    assert isinstance(exc, CacheorchError), \
        f"{what} raised {type(exc).__name__}: {exc}; raise a cacheorch.errors.CacheorchError subclass"
    text = str(exc)
    assert text.strip() and "\n" not in text.strip(), f"{what}: the message must be one line: {text!r}"
    assert "Traceback" not in text


class ScaleSourceContract(PluginContract):
    """A scale source reads a location into a :class:`Service` with a usable tiling scheme.

    Override the fixture ``location`` (a URL or path the source reads; start a loopback server
    or write files in it). Set ``bad_locations`` to inputs that must fail with one clear
    :class:`~cacheorch.errors.CacheorchError` line, and ``accepts_location = False`` when the
    source is only used when named (``--source NAME``).
    """

    kind_base = ScaleSource
    kind_hook = "cacheorch_register_scale_sources"
    kind_registry = "scale_sources"
    #: Whether ``accepts(location)`` must be true (auto-detection without ``--source``).
    accepts_location: ClassVar[bool] = True
    #: Locations that must raise a CacheorchError from ``read``.
    bad_locations: ClassVar[Sequence[str]] = ()

    @pytest.fixture
    def location(self) -> str:
        raise NotImplementedError("override the `location` fixture with something this source reads")

    def test_read_gives_a_service_with_levels(self, location: str, connection: Connection) -> None:
        service = self.build().read(location, connection)
        assert isinstance(service, Service)
        scheme = service.scheme
        assert isinstance(scheme, TilingScheme) and scheme.lods, "the scheme has no levels"
        levels = [lod.level for lod in scheme.lods]
        assert levels == sorted(levels) and len(set(levels)) == len(levels)
        resolutions = [lod.resolution for lod in scheme.lods]
        assert all(a > b for a, b in zip(resolutions, resolutions[1:])), \
            "resolution must shrink as the level grows"
        assert scheme.tile_cols > 0 and scheme.tile_rows > 0
        assert "token=" not in service.location.lower(), "the location must not carry a token"

    def test_accepts_its_location(self, location: str) -> None:
        if not self.accepts_location:
            pytest.skip("this source is used only when named")
        assert self.plugin.accepts(location)

    def test_accepts_answers_garbage_with_false(self) -> None:
        for junk in ("", "::", "\x00"):
            assert self.plugin.accepts(junk) in (False, True)

    def test_bad_locations_raise_one_clean_line(self, connection: Connection) -> None:
        if not self.bad_locations:
            pytest.skip("no bad_locations given")
        for bad in self.bad_locations:
            with pytest.raises(Exception) as err:
                self.build().read(bad, connection)
            _assert_clean_error(err, f"read({bad!r})")


class PolicyContract(PluginContract):
    """A policy narrows levels: the result is a subset of what it was given, in scheme order.

    Set ``options`` (strings) to a configuration that keeps at least one level of the
    ``service`` fixture's scheme (default: Web Mercator 0-10, whose context gives 4**level tiles
    and 10 kB per tile); ``bad_options`` to configurations that must fail with a
    :class:`~cacheorch.errors.CacheorchError` (when built or when selecting).
    """

    kind_base = SelectionPolicy
    kind_hook = "cacheorch_register_policies"
    kind_registry = "policies"
    bad_options: ClassVar[Sequence[Mapping[str, str]]] = ()

    @pytest.fixture
    def service(self) -> Service:
        return web_mercator_service(10)

    @pytest.fixture
    def context(self, service: Service) -> PolicyContext:
        return StaticPolicyContext(service)

    def _select(self, service: Service, levels: Sequence[LevelOfDetail],
                context: PolicyContext, options: Mapping[str, str] | None = None
                ) -> list[LevelOfDetail]:
        return self.build(options).apply(service.scheme, levels, context)

    def test_keeps_a_subset_in_scheme_order(self, service: Service, context: PolicyContext) -> None:
        levels = list(service.scheme.lods)
        kept = self._select(service, levels, context)
        assert isinstance(kept, list) and kept, "the sample options must keep at least one level"
        assert all(lod in levels for lod in kept), "a policy may only drop levels"
        assert [lod.level for lod in kept] == sorted({lod.level for lod in kept}), \
            "levels must stay in scheme order, each once"

    def test_never_adds_levels_it_was_not_given(self, service: Service,
                                                context: PolicyContext) -> None:
        everything = list(service.scheme.lods)
        kept = self._select(service, everything, context)
        # hand it only what it kept, without the first of those: it must not bring any back
        fewer = [lod for lod in everything if lod in kept][1:]
        try:
            again = self._select(service, fewer, context)
        except CacheorchError:
            return  # refusing a level list that lacks what was asked for is allowed
        assert all(lod in fewer for lod in again)

    def test_explain_and_reason_are_text(self, service: Service, context: PolicyContext) -> None:
        policy = self.build()
        kept = {lod.level for lod in policy.apply(service.scheme, list(service.scheme.lods), context)}
        assert isinstance(policy.explain(), str) and policy.explain().strip()
        for lod in service.scheme.lods:
            assert isinstance(policy.reason(lod.level, lod.level in kept), str)

    def test_bad_options_raise_one_clean_line(self, service: Service,
                                              context: PolicyContext) -> None:
        if not self.bad_options:
            pytest.skip("no bad_options given")
        for bad in self.bad_options:
            with pytest.raises(Exception) as err:
                self._select(service, list(service.scheme.lods), context, bad)
            _assert_clean_error(err, f"{self.plugin.name} with {dict(bad)}")


class AreaContract(PluginContract):
    """An area generator turns a spec into polygons in the scheme's SR, inside the grid.

    Override the fixture ``spec`` (what follows ``NAME:`` in ``--aoi LEVELS=NAME:spec``) and,
    when the generator needs a particular service (a server it queries, a spatial reference),
    ``service`` (default: Web Mercator levels 0-10). Set ``bad_specs`` to specs that must fail
    with one clear :class:`~cacheorch.errors.CacheorchError` line (an AreaError, ideally).
    """

    kind_base = AOIGenerator
    kind_hook = "cacheorch_register_aoi_generators"
    kind_registry = "aoi_generators"
    bad_specs: ClassVar[Sequence[str]] = ()
    #: The level used for per-level checks (``area_at``, tile counts).
    level: ClassVar[int] = 5

    @pytest.fixture
    def service(self) -> Service:
        return web_mercator_service(10)

    @pytest.fixture
    def spec(self) -> str:
        raise NotImplementedError("override the `spec` fixture with a spec this generator reads")

    def _resolver(self, service: Service, connection: Connection) -> Any:
        from cacheorch.jobplan import _Areas
        from cacheorch.pluginmanager import make_plugins
        plugins = make_plugins(load_entrypoints=False,
                               extra=[_Provider(self.kind_hook, self.plugin)])
        return _Areas(plugins, service, (), connection)

    def area(self, spec: str, service: Service, connection: Connection) -> Any:
        """The area at ``level`` as a job builds it (``area_at`` with the job's resolver)."""
        resolver = self._resolver(service, connection)
        return self.build().area_at(spec, service, connection, service.scheme.lod(self.level),
                                    resolver.resolve)

    def test_area_is_polygonal_in_the_scheme_inside_the_grid(
            self, spec: str, service: Service, connection: Connection) -> None:
        from shapely.geometry import MultiPolygon, Polygon
        geom = self.area(spec, service, connection)
        assert isinstance(geom, (Polygon, MultiPolygon)), \
            f"the area is a {type(geom).__name__}; return a Polygon or MultiPolygon"
        assert geom.is_valid and not geom.is_empty and geom.area > 0
        grid = service.scheme.grid_bounds()
        if grid is not None:
            x0, y0, x1, y1 = geom.bounds
            span = max(grid[2] - grid[0], grid[3] - grid[1]) * 1e-9
            assert grid[0] - span <= x0 and y0 >= grid[1] - span and \
                x1 <= grid[2] + span and y1 <= grid[3] + span, \
                f"area bounds {geom.bounds} leave the grid {grid}: clip with cacheorch.areas.finish_area"

    def test_area_meets_tiles_of_the_grid(self, spec: str, service: Service,
                                          connection: Connection) -> None:
        from cacheorch.planner import count_level
        geom = self.area(spec, service, connection)
        assert count_level(service.scheme, self.level, geom) > 0

    def test_area_agrees_with_area_at(self, spec: str, service: Service,
                                      connection: Connection) -> None:
        """Without levels, ``area`` gives what every level gets, or refuses in one clean line."""
        generator = self.build()
        at = self.area(spec, service, connection)
        if generator.varies_by_level(spec):
            other = service.scheme.lod(self.level - 1)
            resolver = self._resolver(service, connection)
            assert generator.area_at(spec, service, connection, other, resolver.resolve).area > 0
            return
        try:
            whole = generator.area(spec, service, connection)
        except Exception:  # a generator that wraps others needs the job's levels
            with pytest.raises(Exception) as err:
                generator.area(spec, service, connection)
            _assert_clean_error(err, f"area({spec!r})")
            return
        assert at.symmetric_difference(whole).area <= whole.area * 1e-9

    def test_spec_survives_the_aoi_flag(self, spec: str) -> None:
        """``--aoi 3-5=NAME:spec`` reaches this generator with ``spec`` unchanged."""
        from cacheorch.config import parse_area_flag
        from cacheorch.jobplan import _generator_for
        from cacheorch.pluginmanager import make_plugins
        flag = parse_area_flag(f"3-5={self.plugin.name}:{spec}", "--aoi")
        assert flag.levels == frozenset({3, 4, 5})
        plugins = make_plugins(load_entrypoints=False, extra=[_Provider(self.kind_hook, self.plugin)])
        generator, rest = _generator_for(plugins, flag.spec)
        assert isinstance(generator, self.plugin) and rest == spec

    def test_bad_specs_raise_one_clean_line(self, service: Service,
                                            connection: Connection) -> None:
        if not self.bad_specs:
            pytest.skip("no bad_specs given")
        for bad in self.bad_specs:
            with pytest.raises(Exception) as err:
                self.area(bad, service, connection)
            _assert_clean_error(err, f"{self.plugin.name}:{bad}")


class TileSourceContract(PluginContract):
    """A tile source fetches bytes per key, lazily, with a bounded number in flight.

    Override the fixtures ``service`` (a :class:`Service` the source can serve: a loopback
    server's URL, a local cache path), ``present_keys`` (tiles that exist there) and
    ``absent_keys`` (tiles that do not). ``max_ahead`` bounds how many keys the fetcher may take
    beyond the results handed out (default: twice ``workers``: those in flight, plus those
    finished together and not yet handed out).
    """

    kind_base = TileSource
    kind_hook = "cacheorch_register_tile_sources"
    kind_registry = "tile_sources"
    workers: ClassVar[int] = 2
    #: Keys a fetcher may read ahead of the results taken; None means ``2 * workers``.
    max_ahead: ClassVar[int | None] = None
    accepts_location: ClassVar[bool] = True

    @pytest.fixture
    def service(self) -> Service:
        raise NotImplementedError("override the `service` fixture with a service this source serves")

    @pytest.fixture
    def present_keys(self) -> Sequence[TileKey]:
        raise NotImplementedError("override `present_keys` with tiles the service has")

    @pytest.fixture
    def absent_keys(self) -> Sequence[TileKey]:
        return ()

    def _open(self, service: Service, connection: Connection) -> TileFetcher:
        fetcher = self.build().open(service, connection, self.workers)
        assert isinstance(fetcher, TileFetcher)
        return fetcher

    def test_accepts_its_location(self, service: Service) -> None:
        if not self.accepts_location:
            pytest.skip("this source is used only when named")
        assert self.plugin.accepts(service.location)

    def test_one_result_per_key(self, service: Service, connection: Connection,
                                present_keys: Sequence[TileKey],
                                absent_keys: Sequence[TileKey]) -> None:
        keys = list(present_keys) + list(absent_keys)
        with self._open(service, connection) as fetcher:
            results = list(fetcher.fetch(iter(keys)))
        assert sorted(r.key for r in results) == sorted(keys), "one result per key, none extra"
        by_key = {r.key: r for r in results}
        for key in present_keys:
            assert by_key[key].status == "ok" and by_key[key].data, f"{key}: {by_key[key]}"
        for key in absent_keys:
            assert by_key[key].status == "missing", f"{key} should be missing: {by_key[key]}"
            assert by_key[key].data is None

    def test_keys_are_consumed_lazily(self, service: Service, connection: Connection,
                                      present_keys: Sequence[TileKey]) -> None:
        """Fed an endless stream, the fetcher reads only a bounded window ahead of its results."""
        taken = 0

        def stream() -> Iterator[TileKey]:
            nonlocal taken
            for key in itertools.cycle(present_keys):
                taken += 1
                yield key

        want = 5
        bound = self.max_ahead if self.max_ahead is not None else 2 * self.workers
        with self._open(service, connection) as fetcher:
            results = fetcher.fetch(stream())
            for got, _ in enumerate(results, start=1):
                assert taken <= got + bound, \
                    f"{taken} keys taken for {got} results: the fetcher reads too far ahead"
                if got == want:
                    break
            close = getattr(results, "close", None)
            if close is not None:
                close()
        assert taken <= want + bound

    def test_close_twice_is_harmless(self, service: Service, connection: Connection) -> None:
        fetcher = self._open(service, connection)
        fetcher.close()
        fetcher.close()


class ExporterContract(PluginContract):
    """An exporter writes bundles into a staging place and publishes the output on commit only.

    Defaults write solid tiles on Web Mercator levels 0-2 (one bundle per level, one tile left
    out). Set ``gdal_driver`` to the GDAL driver that reads the output (``ESRIC``, ``MBTiles``,
    ``GPKG``) so the round trip is read back by GDAL too (skipped without rasterio); tile bytes
    are compared through :meth:`read_tiles`, which uses
    :func:`cacheorch.formats.cache.open_cache` unless overridden.
    """

    kind_base = Exporter
    kind_hook = "cacheorch_register_exporters"
    kind_registry = "exporters"
    #: GDAL driver that opens the output, or None when GDAL has none for it.
    gdal_driver: ClassVar[str | None] = None
    #: Levels written by the round trip (each gets its own bundles).
    levels: ClassVar[Sequence[int]] = (0, 1, 2)
    #: A position left without a tile (it must read back as absent).
    hole: ClassVar[tuple[int, int, int]] = (2, 3, 3)

    @pytest.fixture
    def scheme(self) -> TilingScheme:
        return web_mercator_scheme(max_level=max(self.levels) + 2)

    def read_tiles(self, output: Path, keys: Sequence[tuple[int, int, int]]
                   ) -> dict[tuple[int, int, int], bytes | None]:
        """The stored bytes of each key (None: absent). Override for formats open_cache cannot read."""
        return read_tiles_cache(output, keys)

    # -- helpers -----------------------------------------------------------------------------
    def output_for(self, folder: Path, stem: str = "out") -> Path:
        return folder / (stem + (self.plugin.extension or ""))

    def request(self, output: Path, scheme: TilingScheme, mode: str = "create") -> ExportRequest:
        levels = sorted(self.levels)
        service = Service(location="contract://exporter", scheme=scheme, name="Contract")
        return ExportRequest(output=output, service=service, scheme=scheme.with_levels(levels),
                             levels=tuple(scheme.lod(n) for n in levels),
                             mode=mode, title="Contract")  # type: ignore[arg-type]

    def tiles(self, scheme: TilingScheme) -> Tiles:
        size = scheme.tile_cols
        return {(level, row, col): solid_tile(colour_of(level, row, col), size)
                for level in self.levels for row in range(min(2 ** level, 4))
                for col in range(min(2 ** level, 4)) if (level, row, col) != self.hole}

    @staticmethod
    def by_bundle(tiles: Tiles) -> dict[tuple[int, int, int], Tiles]:
        grouped: dict[tuple[int, int, int], Tiles] = {}
        for (level, row, col), data in sorted(tiles.items()):
            grouped.setdefault((level, row // 128 * 128, col // 128 * 128), {})[(level, row, col)] = data
        return grouped

    def write(self, session: ExportSession, tiles: Tiles) -> None:
        for (level, brow, bcol), members in self.by_bundle(tiles).items():
            sink = session.open_bundle(level, brow, bcol)
            for (_, row, col), data in members.items():
                sink.add(row, col, data)
            sink.close()

    # -- checks -------------------------------------------------------------------------------
    def test_round_trip(self, tmp_path: Path, scheme: TilingScheme) -> None:
        tiles = self.tiles(scheme)
        output = self.output_for(tmp_path)
        session = self.build().open(self.request(output, scheme))
        assert isinstance(session, ExportSession)
        self.write(session, tiles)
        final = session.commit()
        session.discard()
        assert Path(final) == output and output.exists()
        assert not staging_path(output).exists(), "the staging place must go after commit+discard"
        stored = self.read_tiles(output, [*tiles, self.hole])
        for key, data in tiles.items():
            assert stored[key] == data, f"tile {key} did not read back byte for byte"
        assert stored[self.hole] is None
        if self.gdal_driver:
            colours = read_tiles_gdal(output, scheme, [*tiles, self.hole], self.gdal_driver)
            for key in tiles:
                assert colours[key] == (*colour_of(*key), 255), f"GDAL shows {key} wrong"
            assert colours[self.hole][3] == 0, "GDAL shows a tile where none was written"

    def test_output_absent_until_commit(self, tmp_path: Path, scheme: TilingScheme) -> None:
        output = self.output_for(tmp_path)
        session = self.build().open(self.request(output, scheme))
        self.write(session, self.tiles(scheme))
        assert not output.exists(), "the output appeared before commit"
        session.commit()
        assert output.exists()
        session.discard()

    def test_create_mode_refuses_an_existing_output(self, tmp_path: Path,
                                                    scheme: TilingScheme) -> None:
        output = self.output_for(tmp_path)
        session = self.build().open(self.request(output, scheme))
        self.write(session, self.tiles(scheme))
        session.commit()
        session.discard()
        before = sorted(p.name for p in tmp_path.iterdir())
        with pytest.raises(OutputExistsError):
            self.build().open(self.request(output, scheme, mode="create"))
        assert sorted(p.name for p in tmp_path.iterdir()) == before, "a refused open left files"

    def test_overwrite_mode_replaces_the_output(self, tmp_path: Path, scheme: TilingScheme) -> None:
        output = self.output_for(tmp_path)
        tiles = self.tiles(scheme)
        for _ in range(2):
            session = self.build().open(self.request(output, scheme, mode="overwrite"))
            self.write(session, tiles)
            session.commit()
            session.discard()
        first = next(iter(tiles))
        assert self.read_tiles(output, [first])[first] == tiles[first]

    def test_resume_keeps_closed_bundles(self, tmp_path: Path, scheme: TilingScheme) -> None:
        """A session reopened on the same staging place reports (and keeps) its closed bundles."""
        output = self.output_for(tmp_path)
        tiles = self.tiles(scheme)
        bundles = self.by_bundle(tiles)
        first, *rest = bundles
        session = self.build().open(self.request(output, scheme))
        self.write(session, bundles[first])
        assert session.has_bundle(*first)
        del session  # killed: no commit, no discard; collect it so its files are released
        gc.collect()  # as a killed process would release them
        again = self.build().open(self.request(output, scheme))
        assert again.has_bundle(*first), "a reopened session forgot a closed bundle"
        assert not any(again.has_bundle(*key) for key in rest)
        for key in rest:
            self.write(again, bundles[key])
        again.commit()
        again.discard()
        stored = self.read_tiles(output, list(tiles))
        assert all(stored[key] == data for key, data in tiles.items())

    def test_aborted_bundle_is_not_kept(self, tmp_path: Path, scheme: TilingScheme) -> None:
        output = self.output_for(tmp_path)
        session = self.build().open(self.request(output, scheme))
        level = self.levels[0]
        sink = session.open_bundle(level, 0, 0)
        sink.add(0, 0, solid_tile((1, 2, 3), scheme.tile_cols))
        sink.abort()
        assert not session.has_bundle(level, 0, 0)
        session.discard()
        assert not output.exists() and not staging_path(output).exists()

    def test_extension_names_the_output(self) -> None:
        ext = self.plugin.extension
        assert ext is None or (ext.startswith(".") and len(ext) > 1 and ext == ext.lower())


class DelegatedExporterContract(PluginContract):
    """An exporter that runs the whole export itself (a server job, arcpy): the checks that apply
    without running it. Checks that build the plugin are skipped where ``unavailable()`` says it
    cannot run (arcpy missing...). Set ``bad_options`` to option strings it must refuse."""

    kind_base = Exporter
    kind_hook = "cacheorch_register_exporters"
    kind_registry = "exporters"
    bad_options: ClassVar[Sequence[Mapping[str, str]]] = ()

    def build(self, options: Mapping[str, str] | None = None) -> Any:
        reason = self.plugin.unavailable()  # type: ignore[attr-defined]
        if reason:
            pytest.skip(f"{self.plugin.name} cannot run here: {reason}")
        return super().build(options)

    def test_every_option_has_a_default(self) -> None:
        for f in self.plugin.option_fields():
            assert f.default is not dataclasses.MISSING or \
                f.default_factory is not dataclasses.MISSING, \
                f"option {f.name!r} of {self.plugin.name} has no default"
        self.build({})

    def test_is_a_delegated_exporter(self) -> None:
        from cacheorch.interfaces import DelegatedExporter
        assert issubclass(self.plugin, DelegatedExporter)
        reason = self.plugin.unavailable()  # type: ignore[attr-defined]
        assert reason is None or (isinstance(reason, str) and reason.strip() and "\n" not in reason)

    def test_has_no_bundle_session(self, tmp_path: Path) -> None:
        exporter = self.build()
        scheme = web_mercator_scheme(max_level=3)
        folder = tmp_path / "delegated"
        folder.mkdir()
        request = ExportRequest(output=folder / "out", service=web_mercator_service(3),
                                scheme=scheme, levels=scheme.lods)
        with pytest.raises(Exception) as err:
            exporter.open(request)
        _assert_clean_error(err, f"{self.plugin.name}.open()")
        assert not any(folder.iterdir())

    def test_bad_options_raise_one_clean_line(self) -> None:
        if not self.bad_options:
            pytest.skip("no bad_options given")
        for bad in self.bad_options:
            with pytest.raises(Exception) as err:
                self.build(bad)
            _assert_clean_error(err, f"{self.plugin.name} with {dict(bad)}")


# -- maps ------------------------------------------------------------------------------------------

class _MapKindContract(PluginContract):
    """Registration of the map kinds, whose registries live in :mod:`cacheorch.maps.registry`."""

    def test_name_is_unique_in_the_registry(self) -> None:
        from cacheorch.maps import registry as maps_registry
        from cacheorch.pluginmanager import make_plugins
        plugins = make_plugins(load_entrypoints=True, extra=[_Provider(self.kind_hook, self.plugin)])
        registry = getattr(maps_registry, self.kind_registry)(plugins)
        assert registry.get(self.plugin.name) is self.plugin


class MapReaderContract(_MapKindContract):
    """A map reader reads a location into a :class:`~cacheorch.maps.model.MapDocument`.

    Override the fixture ``location`` (a file written in ``tmp_path``, or a loopback URL). Set
    ``bad_locations`` to inputs that must fail with one clear line.
    """

    kind_base = MapReader
    kind_hook = "cacheorch_register_map_readers"
    kind_registry = "map_readers"
    #: Locations ``read`` must refuse with a one-line CacheorchError.
    bad_locations: ClassVar[Sequence[str]] = ()

    @pytest.fixture
    def location(self) -> str:
        raise NotImplementedError("override the `location` fixture with a map this reader reads")

    def test_accepts_its_location(self, location: str) -> None:
        assert self.plugin.accepts(location)

    def test_accepts_answers_garbage_with_false(self) -> None:
        for garbage in ("", "not a map", "https://example.invalid/arcgis/rest/services"):
            assert self.plugin.accepts(garbage) is False

    def test_read_gives_layers_in_the_shared_vocabulary(self, location: str,
                                                        connection: Connection) -> None:
        from cacheorch.maps.model import KINDS, ROLES, MapDocument
        document = self.build().read(location, connection)
        assert isinstance(document, MapDocument) and document.title and document.layers
        for layer in document.layers:
            assert layer.title and layer.role in ROLES and layer.kind in KINDS, layer
            assert 0.0 <= layer.opacity <= 1.0 and isinstance(layer.visibility, bool), layer
            assert isinstance(layer.ref, dict), layer

    def test_bad_locations_raise_one_clean_line(self, connection: Connection) -> None:
        for bad in self.bad_locations:
            with pytest.raises(Exception) as excinfo:
                self.build().read(bad, connection)
            _assert_clean_error(excinfo, f"read({bad!r})")


class MapWriterContract(_MapKindContract):
    """A map writer writes an offline copy of a map into a folder.

    Override the fixtures ``document`` (a MapDocument it accepts) and ``outputs`` (layer index →
    an exported file, written in ``tmp_path``).
    """

    kind_base = MapWriter
    kind_hook = "cacheorch_register_map_writers"
    kind_registry = "map_writers"

    @pytest.fixture
    def document(self) -> Any:
        raise NotImplementedError("override the `document` fixture with a map this writer copies")

    @pytest.fixture
    def outputs(self) -> Mapping[int, Path]:
        raise NotImplementedError("override the `outputs` fixture")

    def test_accepts_its_document(self, document: Any) -> None:
        assert self.plugin.accepts(document)

    def test_writes_one_file_into_the_folder(self, document: Any, outputs: Mapping[int, Path],
                                             tmp_path: Path) -> None:
        folder = tmp_path / "offline-copy"
        folder.mkdir()
        written = self.build().write(document, outputs, folder)
        assert written.parent == folder and written.is_file()
        assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]

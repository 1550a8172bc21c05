"""Open a tile cache or package and read tiles from it: for ``serve``, the ``cache`` tile source, tests.

Every layout ArcGIS writes is read: Compact V2 and Compact V1 folders, exploded folders, .tpkx and
.tpk packages (see :mod:`cacheorch.formats.locate` for the paths that name them). Packages are
read in place: a stored bundle is a byte range of the package, so a tile is a few positioned reads
(index entry, tile bytes), never an extraction. Every read is an ``os.pread``, on a descriptor held
for the cache's lifetime (packages, which cannot change under us) or opened per bundle (folders,
whose files a running cache job may replace), so many threads may read at once.

Tile bytes come back exactly as stored. Whether they are an image is the caller's question: the
``cache`` tile source checks, while ``serve`` passes them on as ArcGIS would.
"""
from __future__ import annotations

import abc
import os
import re
import struct
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cacheorch.errors import FormatError
from cacheorch.formats.bundle import (
    HEADER_SIZE, INDEX_SIZE, bundle_name, decode_entry, index_from_bytes, index_slot, level_folder,
    parse_bundle_name, read_header,
)
from cacheorch.formats.bundle_v1 import BundleV1Reader, bundlx_name
from cacheorch.formats.confxml import (
    COMPACT_V1, COMPACT_V2, EXPLODED, read_conf_cdi, read_conf_cdi_bytes, read_conf_xml_bytes,
    read_conf_xml_info,
)
from cacheorch.formats.exploded import ExplodedBundle, ExplodedCache
from cacheorch.formats.locate import CacheLocation, find_ci, find_conf_xml, locate_cache
from cacheorch.formats.rootjson import read_root_json, root_json_storage
from cacheorch.jsonlimits import loads
from cacheorch.formats.tpk import Span, TilePackage
from cacheorch.tiling import BUNDLE_SIZE, Envelope, TilingScheme

if TYPE_CHECKING:
    from cacheorch.formats.sqlitetiles import SqliteBundle

__all__ = ["TileCache", "BundleView", "open_cache", "find_conf_xml", "STORAGE_LABELS"]

_BundleKey = tuple[int, int, int]
_LEVEL = re.compile(r"^[Ll](\d{1,3})$")
#: How storage formats are named to people.
STORAGE_LABELS = {COMPACT_V2: "Compact V2", COMPACT_V1: "Compact V1 (bundle + bundlx)",
                  EXPLODED: "exploded"}

if hasattr(os, "pread"):
    _pread = os.pread
else:  # Windows: no positioned read, so serialise seek + read
    _seek_lock = threading.Lock()

    def _pread(fd: int, size: int, offset: int) -> bytes:
        with _seek_lock:
            os.lseek(fd, offset, os.SEEK_SET)
            return os.read(fd, size)


# -- byte access ----------------------------------------------------------------------------------

class _Files:
    """Descriptors: one per shared file (package, inflated copy) for the cache's lifetime."""

    def __init__(self) -> None:
        self._shared: dict[Path, int] = {}
        self._lock = threading.Lock()
        self.closed = False

    def open(self, span: Span) -> tuple[int, int, Callable[[], None]]:
        """(descriptor, length, release) for a span; ``release`` closes a per-use descriptor."""
        if span.shared:
            with self._lock:
                if self.closed:
                    raise FormatError(f"{span.path}: the cache is closed")
                fd = self._shared.get(span.path)
                if fd is None:
                    fd = os.open(span.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
                    self._shared[span.path] = fd
            return fd, span.length, _nothing
        fd = os.open(span.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        length = span.length if span.length >= 0 else os.fstat(fd).st_size
        return fd, length, lambda: os.close(fd)

    def close(self) -> None:
        with self._lock:
            self.closed = True
            for fd in self._shared.values():
                os.close(fd)
            self._shared.clear()


def _nothing() -> None:
    return None


def _reader(fd: int, base: int, length: int, what: str) -> Callable[[int, int], bytes]:
    """A positioned-read function over ``length`` bytes at ``base``, checking every bound."""
    def read(offset: int, size: int) -> bytes:
        if offset < 0 or offset + size > length:
            raise FormatError(f"{what}: {size} bytes at {offset} lie past the end ({length} bytes)")
        data = _pread(fd, size, base + offset)
        if len(data) != size:
            raise FormatError(f"{what}: short read at {offset} ({len(data)} of {size} bytes)")
        return data
    return read


# -- one bundle -----------------------------------------------------------------------------------

class BundleView(abc.ABC):
    """One bundle (a 128×128 block of one level) open for many reads.

    Why: the tile source reads tiles bundle after bundle, so it opens each bundle once and
    validates its header once, instead of paying that per tile.
    """

    @abc.abstractmethod
    def get(self, row: int, col: int) -> bytes | None:
        """The tile's bytes, or None when the bundle has no such tile (absolute row and column)."""

    @abc.abstractmethod
    def tiles(self) -> Iterator[tuple[int, int, bytes]]:
        """(row, col, bytes) of every tile present, through the index."""

    def close(self) -> None:
        """Release the bundle's file."""

    def __enter__(self) -> BundleView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _V2View(BundleView):
    def __init__(self, read: Callable[[int, int], bytes], release: Callable[[], None],
                 key: _BundleKey, what: str) -> None:
        self._read = read
        self._release = release
        self.key = key
        self.what = what
        try:
            read_header(read(0, HEADER_SIZE), what)
        except BaseException:
            release()
            raise

    def get(self, row: int, col: int) -> bytes | None:
        raw = self._read(HEADER_SIZE + 8 * index_slot(row, col), 8)
        offset, size = decode_entry(struct.unpack("<Q", raw)[0])
        return self._read(offset, size) if size else None

    def tiles(self) -> Iterator[tuple[int, int, bytes]]:
        index = index_from_bytes(self._read(HEADER_SIZE, INDEX_SIZE), self.what)
        _, brow, bcol = self.key
        for slot, value in enumerate(index):
            offset, size = decode_entry(value)
            if size:
                yield (brow + slot // BUNDLE_SIZE, bcol + slot % BUNDLE_SIZE, self._read(offset, size))

    def close(self) -> None:
        self._release()
        self._release = _nothing


class _V1View(BundleView):
    def __init__(self, reader: BundleV1Reader, release: Callable[[], None]) -> None:
        self._reader = reader
        self._release = release

    def get(self, row: int, col: int) -> bytes | None:
        return self._reader.get(row, col)

    def tiles(self) -> Iterator[tuple[int, int, bytes]]:
        return self._reader.tiles()

    def close(self) -> None:
        self._release()
        self._release = _nothing


class _DelegateView(BundleView):
    """A bundle object of another module (exploded block, SQLite range) as a BundleView."""

    def __init__(self, bundle: ExplodedBundle | SqliteBundle) -> None:
        self._bundle = bundle

    def get(self, row: int, col: int) -> bytes | None:
        return self._bundle.get(row, col)

    def tiles(self) -> Iterator[tuple[int, int, bytes]]:
        return self._bundle.tiles()

    def close(self) -> None:
        self._bundle.close()


# -- layouts: where each storage format keeps its bundles -----------------------------------------

class _Layout(abc.ABC):
    storage_format: str

    @abc.abstractmethod
    def open_bundle(self, key: _BundleKey) -> BundleView | None: ...

    @abc.abstractmethod
    def bundle_keys(self) -> list[_BundleKey]: ...

    def get_tile(self, level: int, row: int, col: int) -> bytes | None:
        key = (level, row // BUNDLE_SIZE * BUNDLE_SIZE, col // BUNDLE_SIZE * BUNDLE_SIZE)
        view = self.open_bundle(key)
        if view is None:
            return None
        with view:
            return view.get(row, col)

    def levels(self) -> set[int]:
        """The levels holding at least one bundle."""
        return {key[0] for key in self.bundle_keys()}

    def locate(self, key: _BundleKey) -> tuple[Span, Span | None] | None:
        """(bundle span, bundlx span or None) of a Compact bundle; None for other layouts."""
        return None

    def close(self) -> None:
        """Release what the layout holds (the descriptors belong to the cache)."""


def _what(key: _BundleKey, suffix: str = "") -> str:
    return f"{level_folder(key[0])}/{bundle_name(key[1], key[2])}{suffix}"


class _CompactLayout(_Layout):
    """Compact V2 (``bundlx`` False) or V1 bundles, found by ``locate``: key → (bundle, bundlx)."""

    def __init__(self, files: _Files, storage_format: str,
                 locate: Callable[[_BundleKey], tuple[Span, Span | None] | None],
                 keys: Callable[[], list[_BundleKey]]) -> None:
        self.files = files
        self.storage_format = storage_format
        self._locate = locate
        self._keys = keys

    def locate(self, key: _BundleKey) -> tuple[Span, Span | None] | None:
        return self._locate(key)

    def open_bundle(self, key: _BundleKey) -> BundleView | None:
        found = self._locate(key)
        if found is None:
            return None
        bundle, bundlx = found
        try:
            fd, length, release = self.files.open(bundle)
        except FileNotFoundError:
            return None
        what = _what(key)
        read = _reader(fd, bundle.base, length, what)
        if self.storage_format == COMPACT_V2:
            return _V2View(read, release, key, what)
        try:
            return self._open_v1(key, read, length, bundlx, release)
        except BaseException:
            release()
            raise

    def _open_v1(self, key: _BundleKey, read: Callable[[int, int], bytes], length: int,
                 bundlx: Span | None, release: Callable[[], None]) -> BundleView:
        missing = f"{_what(key)}: no {bundlx_name(key[1], key[2])} beside it"
        if bundlx is None:
            raise FormatError(missing)
        try:
            xfd, xlength, xrelease = self.files.open(bundlx)
        except FileNotFoundError:
            raise FormatError(missing) from None
        try:
            reader = BundleV1Reader(read, length, _reader(xfd, bundlx.base, xlength, _what(key, "x")),
                                    xlength, bundle_row=key[1], bundle_col=key[2], name=_what(key))
        except BaseException:
            xrelease()
            raise

        def release_both() -> None:
            try:
                xrelease()
            finally:
                release()
        return _V1View(reader, release_both)

    def bundle_keys(self) -> list[_BundleKey]:
        return sorted(self._keys())


class _ExplodedLayout(_Layout):
    storage_format = EXPLODED

    def __init__(self, root: Path, tile_format: str) -> None:
        self.cache = ExplodedCache(root, tile_format)

    def open_bundle(self, key: _BundleKey) -> BundleView | None:
        bundle = self.cache.open_bundle(*key)
        return None if bundle is None else _DelegateView(bundle)

    def get_tile(self, level: int, row: int, col: int) -> bytes | None:
        return self.cache.get(level, row, col)  # direct opens: no folder listing per request

    def bundle_keys(self) -> list[_BundleKey]:
        return list(self.cache.bundle_keys())

    def levels(self) -> set[int]:
        return self.cache.levels_with_rows()


def _folder_layout(files: _Files, storage_format: str, bundles_root: Path, tile_format: str
                   ) -> _Layout:
    if storage_format == EXPLODED:
        return _ExplodedLayout(bundles_root, tile_format)
    v1 = storage_format == COMPACT_V1
    levels: dict[int, Path] = {}
    try:
        with os.scandir(bundles_root) as entries:
            for entry in entries:
                match = _LEVEL.match(entry.name)
                if match and entry.is_dir():
                    levels[int(match.group(1))] = Path(entry.path)
    except OSError:
        pass

    def locate(key: _BundleKey) -> tuple[Span, Span | None] | None:
        folder = levels.get(key[0])
        if folder is None:
            return None
        bundle = Span(folder / bundle_name(key[1], key[2]), 0, -1)
        return bundle, (Span(folder / bundlx_name(key[1], key[2]), 0, -1) if v1 else None)

    def keys() -> list[_BundleKey]:
        out: list[_BundleKey] = []
        for level, folder in levels.items():
            try:
                names = os.listdir(folder)
            except OSError:
                continue
            out.extend((level, *parsed) for parsed in map(parse_bundle_name, names) if parsed)
        return out

    return _CompactLayout(files, storage_format, locate, keys)


def _package_layout(files: _Files, package: TilePackage, storage_format: str, prefix: str,
                    allow_compressed: bool) -> _Layout:
    if storage_format == EXPLODED:
        raise FormatError(f"{package.path}: an exploded cache inside a package; packages hold "
                          "compact bundles")
    v1 = storage_format == COMPACT_V1
    members: dict[_BundleKey, tuple[zipfile.ZipInfo | None, zipfile.ZipInfo | None]] = {}
    for relative, info in package.files_under(prefix):
        parts = relative.split("/")
        if len(parts) != 2:
            continue
        match = _LEVEL.match(parts[0])
        name = parts[1]
        if not match:
            continue
        is_index = name.lower().endswith(".bundlx")
        parsed = parse_bundle_name(name[:-1] + "e" if is_index else name)
        if parsed is None:
            continue
        key = (int(match.group(1)), *parsed)
        bundle, bundlx = members.get(key, (None, None))
        members[key] = (bundle, info) if is_index else (info, bundlx)
    found = {key: pair for key, pair in members.items() if pair[0] is not None}
    if not allow_compressed:  # refuse now, so such a package fails when opened, not mid-job
        for pair in found.values():
            for info in pair:
                if info is not None and info.compress_type != zipfile.ZIP_STORED:
                    package.span(info, allow_compressed=False)  # raises the one-line error

    def locate(key: _BundleKey) -> tuple[Span, Span | None] | None:
        pair = found.get(key)
        if pair is None or pair[0] is None:
            return None
        bundle = package.span(pair[0], allow_compressed=allow_compressed)
        if not v1 or pair[1] is None:  # a missing bundlx is reported by the V1 view
            return bundle, None
        return bundle, package.span(pair[1], allow_compressed=allow_compressed)

    return _CompactLayout(files, storage_format, locate, lambda: list(found))


# -- the cache ------------------------------------------------------------------------------------

class TileCache:
    """A tile cache or package opened for reading (see :func:`open_cache`)."""

    def __init__(self, *, path: Path, scheme: TilingScheme, name: str, storage_format: str,
                 full_extent: Envelope | None, layout: _Layout, files: _Files,
                 package: TilePackage | None = None, kind: str = "folder",
                 description: str = "") -> None:
        self.path = path
        self.scheme = scheme
        self.name = name
        self.storage_format = storage_format
        self.full_extent = full_extent
        self.kind = kind
        self.description = description
        self._layout = layout
        self._files = files
        self._package = package
        self._lock = threading.Lock()

    @property
    def storage_label(self) -> str:
        return STORAGE_LABELS.get(self.storage_format, self.storage_format)

    # -- reading ------------------------------------------------------------------------------

    def get_tile(self, level: int, row: int, col: int) -> bytes | None:
        """The tile's bytes, or None when the cache has no such tile (or no such bundle)."""
        if row < 0 or col < 0:
            return None
        return self._layout.get_tile(level, row, col)

    def open_bundle(self, level: int, bundle_row: int, bundle_col: int) -> BundleView | None:
        """One bundle open for many reads, or None when the cache has no such bundle.

        A bundle that exists but is corrupt (bad header, missing bundlx) raises FormatError.
        """
        if bundle_row < 0 or bundle_col < 0:
            return None
        return self._layout.open_bundle((level, bundle_row, bundle_col))

    def bundle_spans(self, level: int, bundle_row: int, bundle_col: int
                     ) -> tuple[Span, Span | None] | None:
        """Where a Compact V1/V2 bundle's bytes lie: (bundle span, bundlx span or None).

        For ``verify``, which must read the raw bytes a client reads, found the same way (conf.xml
        or root.json, tileBundlesPath, package members). None when the cache has no such bundle
        or does not keep tiles in bundles (exploded, SQLite). A span may name a file that no
        longer exists (a folder cache being rewritten): opening it raises FileNotFoundError.
        """
        if bundle_row < 0 or bundle_col < 0:
            return None
        return self._layout.locate((level, bundle_row, bundle_col))

    def bundle_keys(self) -> Iterator[tuple[int, int, int]]:
        """(level, bundle_row, bundle_col) of every bundle (exploded: each block with a tile), sorted."""
        yield from sorted(self._layout.bundle_keys())

    def levels_with_tiles(self) -> list[int]:
        """The levels that hold bundles (exploded: row folders), from folder or member listings.

        Cheap on any cache size: no bundle is opened. A level listed by the scheme but absent
        here has no tile in this cache.
        """
        return sorted(self._layout.levels())

    def bundle_tiles(self, level: int, bundle_row: int, bundle_col: int
                     ) -> Iterator[tuple[int, int, bytes]]:
        """(row, col, bytes) of every tile in one bundle, through its index."""
        view = self.open_bundle(level, bundle_row, bundle_col)
        if view is None:
            return
        with view:
            yield from view.tiles()

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._layout.close()
            self._files.close()
            if self._package is not None:
                self._package.close()
                self._package = None

    def __enter__(self) -> TileCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"TileCache({str(self.path)!r}, name={self.name!r}, {self.storage_label}, "
                f"levels={self.scheme.tiled_levels})")


# -- opening --------------------------------------------------------------------------------------

def _check_storage(storage_format: str, packet_size: int, where: str) -> None:
    if storage_format not in STORAGE_LABELS:
        raise FormatError(f"{where}: unknown storage format {storage_format!r} (known: "
                          f"{', '.join(STORAGE_LABELS)})")
    if storage_format != EXPLODED and packet_size != BUNDLE_SIZE:
        raise FormatError(f"{where}: packet size {packet_size}; only {BUNDLE_SIZE} is supported")


def _with_extent(scheme: TilingScheme, extent: Envelope | None) -> TilingScheme:
    if extent is None:
        return scheme
    if extent.spatial_reference is None:
        extent = replace(extent, spatial_reference=scheme.spatial_reference)
    return replace(scheme, full_extent=extent, _by_level={})


def _bundles_path(data: dict[str, Any]) -> str:
    path = str(data.get("tileBundlesPath") or "./tile").replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    path = path.strip("/")
    if path.startswith("/") or ".." in path.split("/") or re.match(r"^[A-Za-z]:", path):
        raise FormatError(f"root.json: tileBundlesPath {data.get('tileBundlesPath')!r} leaves the cache")
    return path


def _load_root_json(raw: bytes, where: str) -> dict[str, Any]:
    try:
        data = loads(raw)
    except ValueError as exc:
        raise FormatError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise FormatError(f"{where}: not a JSON object")
    return data


def _scheme_of_root(data: dict[str, Any], where: str) -> tuple[TilingScheme, str]:
    storage, packet = root_json_storage(data)
    storage = storage or COMPACT_V2  # a root.json is the descriptor of a Compact V2 cache
    _check_storage(storage, packet, where)
    try:
        scheme = read_root_json(data)
    except FormatError as exc:
        raise FormatError(f"{where}: {str(exc).removeprefix('root.json: ')}") from None
    return scheme, storage


def _open_folder(loc: CacheLocation) -> TileCache:
    descriptor = loc.descriptor
    assert descriptor is not None
    where = str(descriptor)
    files = _Files()
    if descriptor.name.lower() == "root.json":
        try:
            raw = descriptor.read_bytes()
        except OSError as exc:
            raise FormatError(f"{where}: cannot read ({exc.strerror or exc})") from None
        data = _load_root_json(raw, where)
        scheme, storage = _scheme_of_root(data, where)
        root = loc.path / _bundles_path(data)
        layout = _folder_layout(files, storage, root, scheme.tile_format)
        return TileCache(path=loc.path, scheme=scheme, name=str(data.get("name") or loc.name),
                         storage_format=storage, full_extent=scheme.full_extent, layout=layout,
                         files=files, description=str(data.get("serviceDescription") or ""))
    info = read_conf_xml_info(descriptor)
    _check_storage(info.storage_format, info.packet_size, where)
    cdi = find_ci(loc.path, "conf.cdi")
    extent = read_conf_cdi(cdi) if cdi is not None and cdi.is_file() else None
    scheme = _with_extent(info.scheme, extent)
    bundles = find_ci(loc.path, "_alllayers") or loc.path / "_alllayers"
    layout = _folder_layout(files, info.storage_format, bundles, scheme.tile_format)
    return TileCache(path=loc.path, scheme=scheme, name=loc.name, storage_format=info.storage_format,
                     full_extent=scheme.full_extent, layout=layout, files=files)


def _open_package(loc: CacheLocation) -> TileCache:
    package = TilePackage(loc.path)
    try:
        return _open_package_members(loc, package)
    except BaseException:
        package.close()
        raise


def _open_package_members(loc: CacheLocation, package: TilePackage) -> TileCache:
    files = _Files()
    root_name = package.find_root_json()
    if root_name is not None:  # .tpkx: Esri's spec and every ArcGIS client want stored bundles
        where = package.display(root_name)
        data = _load_root_json(package.read(root_name), where)
        scheme, storage = _scheme_of_root(data, where)
        layout = _package_layout(files, package, storage, _bundles_path(data), allow_compressed=False)
        return TileCache(path=loc.path, scheme=scheme, name=str(data.get("name") or loc.name),
                         storage_format=storage, full_extent=scheme.full_extent, layout=layout,
                         files=files, package=package, kind="package",
                         description=str(data.get("serviceDescription") or ""))
    conf_name = package.find_conf_xml()
    if conf_name is None:
        if package.is_vector_package():
            raise FormatError(f"{loc.path}: a vector tile package (.vtpk); only raster tile "
                              "packages (.tpk, .tpkx) hold tiles cacheorch can read")
        raise FormatError(f"{loc.path}: no conf.xml or root.json in the package; not a tile package")
    where = package.display(conf_name)
    info = read_conf_xml_bytes(package.read(conf_name), where)
    _check_storage(info.storage_format, info.packet_size, where)
    folder = conf_name.rsplit("/", 1)[0] if "/" in conf_name else ""
    cdi_name = f"{folder}/conf.cdi" if folder else "conf.cdi"
    extent = None
    if package.info(cdi_name) is not None:
        extent = read_conf_cdi_bytes(package.read(cdi_name), package.display(cdi_name))
    scheme = _with_extent(info.scheme, extent)
    prefix = f"{folder}/_alllayers" if folder else "_alllayers"
    # A .tpk re-zipped with deflate is still a .tpk (tpkutils reads such files): inflate on use.
    layout = _package_layout(files, package, info.storage_format, prefix, allow_compressed=True)
    return TileCache(path=loc.path, scheme=scheme, name=loc.name, storage_format=info.storage_format,
                     full_extent=scheme.full_extent, layout=layout, files=files, package=package,
                     kind="package")


def open_cache(path: str | os.PathLike[str]) -> TileCache:
    """Open a cache folder (Compact V2, Compact V1 or exploded), a package (.tpkx, .tpk), an
    MBTiles or GeoPackage file, or the conf.xml / root.json of a cache; see :func:`~cacheorch.formats.locate.locate_cache` for the
    folders it finds on its own. Anything else raises FormatError with one line saying why.
    """
    from cacheorch.formats.sqlitecache import is_sqlite, open_sqlite_cache  # MBTiles, GeoPackage
    local = os.path.expanduser(os.fspath(path))
    if os.path.isfile(local) and is_sqlite(local):
        return open_sqlite_cache(Path(local))
    loc = locate_cache(path)
    if loc.kind == "package":
        return _open_package(loc)
    return _open_folder(loc)

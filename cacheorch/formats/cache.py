"""Open a Compact V2 cache folder or a .tpkx package and read tiles from it, for ``serve`` and tests.

Packages are read in place: bundles are STORED zip entries, so a tile is two positioned reads
(index entry, tile bytes) in the package file, never an extraction. Every read is an ``os.pread``
on a descriptor held for the cache's lifetime (packages) or opened per call (folders), so many
threads may read at once without sharing a file position.
"""
from __future__ import annotations

import json
import os
import struct
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cacheorch.errors import FormatError
from cacheorch.formats.bundle import (
    BundleReader,
    HEADER_SIZE, bundle_name, decode_entry, index_slot, level_folder, parse_bundle_name, read_header,
)
from cacheorch.formats.confxml import COMPACT_V1, COMPACT_V2, EXPLODED, read_conf_cdi, read_conf_xml_info
from cacheorch.formats.rootjson import read_root_json, root_json_storage
from cacheorch.tiling import BUNDLE_SIZE, Envelope, TilingScheme

__all__ = ["TileCache", "open_cache", "find_conf_xml"]

_LOCAL_HEADER = struct.Struct("<4s5H3I2H")  # zip local file header, 30 bytes
_BundleKey = tuple[int, int, int]


def find_conf_xml(folder: Path) -> Path | None:
    """conf.xml in ``folder`` whatever its case (``Conf.xml`` exists in the wild)."""
    try:
        for entry in folder.iterdir():
            if entry.name.lower() == "conf.xml" and entry.is_file():
                return entry
    except OSError:
        return None
    return None


def _find_ci(folder: Path, name: str) -> Path | None:
    try:
        for entry in folder.iterdir():
            if entry.name.lower() == name.lower():
                return entry
    except OSError:
        return None
    return None


if hasattr(os, "pread"):
    _pread = os.pread
else:  # Windows: no positioned read, so serialise seek + read
    _seek_lock = threading.Lock()

    def _pread(fd: int, size: int, offset: int) -> bytes:
        with _seek_lock:
            os.lseek(fd, offset, os.SEEK_SET)
            return os.read(fd, size)


@dataclass(frozen=True)
class _Range:
    """Where a bundle's bytes are: a file (folder cache) or a byte range of the package."""

    path: Path | None
    base: int
    length: int


class TileCache:
    """A tile cache or package opened for reading (see :func:`open_cache`)."""

    def __init__(self, *, path: Path, scheme: TilingScheme, name: str, storage_format: str,
                 full_extent: Envelope | None, bundles_root: Path | None = None,
                 package: Path | None = None, members: dict[_BundleKey, _Range] | None = None
                 ) -> None:
        self.path = path
        self.scheme = scheme
        self.name = name
        self.storage_format = storage_format
        self.full_extent = full_extent
        self._bundles_root = bundles_root
        self._members = members
        self._fd: int | None = None
        self._validated: set[_BundleKey] = set()
        self._lock = threading.Lock()
        self._level_dirs: dict[int, Path] = {}
        if package is not None:
            self._fd = os.open(package, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        elif bundles_root is not None:
            self._level_dirs = self._scan_level_dirs(bundles_root)

    @staticmethod
    def _scan_level_dirs(root: Path) -> dict[int, Path]:
        found: dict[int, Path] = {}
        try:
            entries = list(root.iterdir())
        except OSError:
            return found
        for entry in entries:
            name = entry.name
            if len(name) >= 3 and name[0] in "Ll" and name[1:].isdigit() and entry.is_dir():
                found[int(name[1:])] = entry
        return found

    # -- reading ------------------------------------------------------------------------------

    def _locate(self, key: _BundleKey) -> _Range | None:
        if self._members is not None:
            return self._members.get(key)
        level_dir = self._level_dirs.get(key[0])
        if level_dir is None:
            return None
        path = level_dir / bundle_name(key[1], key[2])
        return _Range(path, 0, -1)

    def _read(self, where: _Range, fd: int, offset: int, size: int, what: str) -> bytes:
        length = where.length
        if length >= 0 and offset + size > length:
            raise FormatError(f"{what}: {size} bytes at {offset} lie past the bundle's end ({length})")
        data = _pread(fd, size, where.base + offset)
        if len(data) != size:
            raise FormatError(f"{what}: short read at {offset} ({len(data)} of {size} bytes)")
        return data

    def get_tile(self, level: int, row: int, col: int) -> bytes | None:
        """The tile's bytes, or None when the cache has no such tile (or no such bundle)."""
        if row < 0 or col < 0:
            return None
        key = (level, row // BUNDLE_SIZE * BUNDLE_SIZE, col // BUNDLE_SIZE * BUNDLE_SIZE)
        where = self._locate(key)
        if where is None:
            return None
        what = f"{level_folder(level)}/{bundle_name(key[1], key[2])}"
        if where.path is not None:
            try:
                fd = os.open(where.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            except FileNotFoundError:
                return None
            try:
                return self._read_tile(key, where, fd, row, col, what)
            finally:
                os.close(fd)
        if self._fd is None:
            raise FormatError(f"{self.path}: the cache is closed")
        return self._read_tile(key, where, self._fd, row, col, what)

    def _read_tile(self, key: _BundleKey, where: _Range, fd: int, row: int, col: int, what: str
                   ) -> bytes | None:
        if key not in self._validated:
            read_header(self._read(where, fd, 0, HEADER_SIZE, what), what)
            if where.path is None:  # a file may be replaced; a package member cannot
                self._validated.add(key)
        raw = self._read(where, fd, HEADER_SIZE + 8 * index_slot(row, col), 8, what)
        offset, size = decode_entry(struct.unpack("<Q", raw)[0])
        if size == 0:
            return None
        return self._read(where, fd, offset, size, what)

    def bundle_keys(self) -> Iterator[tuple[int, int, int]]:
        """(level, bundle_row, bundle_col) of every bundle, sorted."""
        if self._members is not None:
            yield from sorted(self._members)
            return
        keys: list[_BundleKey] = []
        for level, folder in self._level_dirs.items():
            try:
                names = os.listdir(folder)
            except OSError:
                continue
            for name in names:
                parsed = parse_bundle_name(name)
                if parsed is not None:
                    keys.append((level, *parsed))
        yield from sorted(keys)

    def bundle_tiles(self, level: int, bundle_row: int, bundle_col: int
                     ) -> Iterator[tuple[int, int, bytes]]:
        """(row, col, bytes) of every tile in one bundle, through its index (one index read)."""
        where = self._locate((level, bundle_row, bundle_col))
        if where is None:
            return
        if where.path is not None:
            if not where.path.exists():
                return
            reader = BundleReader(where.path, bundle_row=bundle_row, bundle_col=bundle_col)
        else:
            handle = open(self.path, "rb")  # noqa: SIM115 - closed with the reader below
            reader = BundleReader(handle, bundle_row=bundle_row, bundle_col=bundle_col,
                                  base=where.base, length=where.length)
        with reader:
            yield from reader.tiles()
        if where.path is None:
            handle.close()

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> TileCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TileCache({str(self.path)!r}, name={self.name!r}, levels={self.scheme.tiled_levels})"


def _unsupported(storage_format: str, where: Path) -> FormatError:
    label = {COMPACT_V1: "Compact V1 (bundle + bundlx)", EXPLODED: "exploded"}.get(
        storage_format, storage_format or "unknown")
    return FormatError(f"{where}: {label} caches are not supported yet (Compact V2 only)")


def _open_folder_conf(conf: Path) -> TileCache:
    info = read_conf_xml_info(conf)
    if info.storage_format != COMPACT_V2:
        raise _unsupported(info.storage_format, conf)
    if info.packet_size != BUNDLE_SIZE:
        raise FormatError(f"{conf}: packet size {info.packet_size}; only {BUNDLE_SIZE} is supported")
    folder = conf.parent
    cdi = _find_ci(folder, "conf.cdi")
    extent = read_conf_cdi(cdi) if cdi is not None and cdi.is_file() else None
    if extent is not None and extent.spatial_reference is None:
        extent = replace(extent, spatial_reference=info.scheme.spatial_reference)
    scheme = replace(info.scheme, full_extent=extent, _by_level={}) if extent else info.scheme
    name = folder.name
    if name.lower() == "layers" and folder.parent.name:
        name = folder.parent.name
    bundles = _find_ci(folder, "_alllayers") or folder / "_alllayers"
    return TileCache(path=folder, scheme=scheme, name=name, storage_format=info.storage_format,
                     full_extent=extent, bundles_root=bundles)


def _check_root(data: dict[str, Any], where: Path) -> str:
    storage, packet = root_json_storage(data)
    if storage != COMPACT_V2:
        raise _unsupported(storage, where)
    if packet != BUNDLE_SIZE:
        raise FormatError(f"{where}: packet size {packet}; only {BUNDLE_SIZE} is supported")
    return storage


def _bundles_path(data: dict[str, Any]) -> str:
    path = str(data.get("tileBundlesPath") or "./tile").replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return path.strip("/")


def _open_folder_root(root_json: Path) -> TileCache:
    try:
        data = json.loads(root_json.read_bytes())
    except (OSError, ValueError) as exc:
        raise FormatError(f"{root_json}: not readable JSON ({exc})") from None
    storage = _check_root(data, root_json)
    scheme = read_root_json(data)
    return TileCache(path=root_json.parent, scheme=scheme, name=scheme.name,
                     storage_format=storage, full_extent=scheme.full_extent,
                     bundles_root=root_json.parent / _bundles_path(data))


def _member_data_offset(f: Any, info: zipfile.ZipInfo, where: Path) -> int:
    """Offset of a member's bytes: past the *local* header, whose extra field may differ."""
    f.seek(info.header_offset)
    raw = f.read(_LOCAL_HEADER.size)
    if len(raw) != _LOCAL_HEADER.size or raw[:4] != b"PK\x03\x04":
        raise FormatError(f"{where}: bad local header for {info.filename}")
    fields = _LOCAL_HEADER.unpack(raw)
    name_len, extra_len = fields[-2], fields[-1]
    return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len


def _open_package(path: Path) -> TileCache:
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise FormatError(f"{path}: not a readable zip package ({exc})") from None
    with zf, open(path, "rb") as raw:
        by_lower = {info.filename.lower(): info for info in zf.infolist()}
        root_info = by_lower.get("root.json")
        if root_info is None:
            if any(name.endswith("conf.xml") for name in by_lower):
                raise FormatError(f"{path}: a .tpk (Compact V1) package; not supported yet")
            raise FormatError(f"{path}: no root.json in the package; not a .tpkx")
        try:
            data = json.loads(zf.read(root_info))
        except ValueError as exc:
            raise FormatError(f"{path}: root.json is not valid JSON ({exc})") from None
        storage = _check_root(data, path)
        scheme = read_root_json(data)
        prefix = _bundles_path(data).lower() + "/"
        members: dict[_BundleKey, _Range] = {}
        for lower, info in by_lower.items():
            if not lower.startswith(prefix) or not lower.endswith(".bundle"):
                continue
            parts = info.filename[len(prefix):].split("/")
            if len(parts) != 2 or len(parts[0]) < 3 or parts[0][0] not in "Ll" \
                    or not parts[0][1:].isdigit():
                continue
            parsed = parse_bundle_name(parts[1])
            if parsed is None:
                continue
            if info.compress_type != zipfile.ZIP_STORED:
                raise FormatError(f"{path}: {info.filename} is compressed; tile packages must "
                                  f"store bundles uncompressed")
            if info.flag_bits & 0x1:
                raise FormatError(f"{path}: {info.filename} is encrypted")
            members[(int(parts[0][1:]), *parsed)] = _Range(
                None, _member_data_offset(raw, info, path), info.file_size)
    return TileCache(path=path, scheme=scheme, name=scheme.name, storage_format=storage,
                     full_extent=scheme.full_extent, package=path, members=members)


def open_cache(path: str | os.PathLike[str]) -> TileCache:
    """Open a Compact V2 cache folder (or its conf.xml / root.json) or a .tpkx package.

    Compact V1, exploded caches and .tpk packages raise FormatError ("not supported yet").
    """
    p = Path(path)
    if p.is_dir():
        conf = find_conf_xml(p)
        if conf is not None:
            return _open_folder_conf(conf)
        root = _find_ci(p, "root.json")
        if root is not None and root.is_file():
            return _open_folder_root(root)
        # An ArcGIS server cache folder holds the cache one level down (<service>/Layers/).
        subs = [d for d in sorted(p.iterdir()) if d.is_dir() and find_conf_xml(d) is not None]
        if len(subs) == 1:
            return _open_folder_conf(find_conf_xml(subs[0]))  # type: ignore[arg-type]
        raise FormatError(f"{p}: no conf.xml or root.json here; not a tile cache folder")
    if not p.exists():
        raise FormatError(f"{p}: no such file or folder")
    lower = p.name.lower()
    if lower == "conf.xml":
        return _open_folder_conf(p)
    if lower == "root.json":
        return _open_folder_root(p)
    if lower.endswith(".tpk"):
        raise FormatError(f"{p}: .tpk (Compact V1) packages are not supported yet")
    if zipfile.is_zipfile(p):
        return _open_package(p)
    raise FormatError(f"{p}: not a cache folder, conf.xml, root.json or .tpkx package")

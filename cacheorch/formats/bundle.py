"""Compact Cache V2 bundles: 128×128 tiles of one level in one file, found through an in-file index.

Layout (little-endian): a 64-byte header, a 16384-entry u64 index (row-major), then tile records,
each a u32 length prefix followed by the tile bytes. An index entry packs ``offset | size << 40``
where ``offset`` points *past* the prefix. ``size == 0`` means "no tile" whatever the offset says,
and the space between records is undefined (real bundles carry dead data), so readers always go
through the index and never walk the file.

The writer imitates real ArcGIS output rather than the prose specification (record count 0,
legacy field at 48 = 0, max tile size at least 131092, empty entries = 4), because that is what
ArcGIS Pro/Server write. One exception is the caller's choice: GDAL up to at least 3.10 refuses a
bundle of a *conf.xml* cache unless the record count is 16384 (it skips that check for .tpkx), so
folder caches are written with ``record_count=SPEC_RECORD_COUNT`` — the value of Esri's own
specification and sample cache, which ArcGIS reads as well.
"""
from __future__ import annotations

import os
import re
import struct
import threading
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cacheorch.errors import ExportError, FormatError
from cacheorch.tiling import BUNDLE_SIZE

__all__ = [
    "HEADER", "HEADER_SIZE", "INDEX_SIZE", "INDEX_ENTRIES", "FIRST_RECORD", "FIRST_TILE",
    "MAX_TILE_BYTES", "EMPTY_ENTRY", "ARCGIS_RECORD_COUNT", "SPEC_RECORD_COUNT", "BundleHeader",
    "bundle_name", "level_folder",
    "parse_bundle_name", "index_slot", "decode_entry", "read_header", "read_index", "index_from_bytes",
    "BundleWriter", "BundleReader",
]

#: The 64-byte header: version, record count, max tile size, offset byte count, slack space,
#: file size, user header offset, user header size, three legacy fields, index size.
HEADER = struct.Struct("<4I3Q6I")
HEADER_SIZE = HEADER.size  # 64
INDEX_ENTRIES = BUNDLE_SIZE * BUNDLE_SIZE  # 16384
INDEX_SIZE = INDEX_ENTRIES * 8  # 131072
#: Where the first tile record (its length prefix) starts in a fresh bundle.
FIRST_RECORD = HEADER_SIZE + INDEX_SIZE  # 131136
#: Where the first tile's bytes start: what ArcGIS puts in the first index entry.
FIRST_TILE = FIRST_RECORD + 4  # 131140
#: The size field of an index entry has 24 bits.
MAX_TILE_BYTES = (1 << 24) - 1
_OFFSET_MASK = (1 << 40) - 1
#: Record count ArcGIS Pro/Server write (packages and caches alike).
ARCGIS_RECORD_COUNT = 0
#: Record count of Esri's specification; GDAL <= 3.10 insists on it for conf.xml caches.
SPEC_RECORD_COUNT = INDEX_ENTRIES
#: ArcGIS writes empty slots as offset 4, size 0 (Esri's sample writer writes 0; both mean empty).
EMPTY_ENTRY = 4
#: ArcGIS never writes a max tile size below this (the user header size, 20 + 131072).
_ARCGIS_MIN_MAX_SIZE = 131092
_USER_HEADER_OFFSET = 40
_NAME = re.compile(r"^R([0-9a-fA-F]{4,})C([0-9a-fA-F]{4,})\.bundle$")


def bundle_name(bundle_row: int, bundle_col: int) -> str:
    """``R0080C0100.bundle``: lower-case hex of the top-left tile, at least 4 digits (grows past 0xFFFF)."""
    if bundle_row < 0 or bundle_col < 0:
        raise ValueError(f"bundle row/column must be non-negative, got {bundle_row}, {bundle_col}")
    return f"R{bundle_row:04x}C{bundle_col:04x}.bundle"


def level_folder(level: int) -> str:
    """``L05``: the level ID in (at least) two decimal digits, as ArcGIS and GDAL name it."""
    return f"L{level:02d}"


def parse_bundle_name(name: str) -> tuple[int, int] | None:
    """(bundle_row, bundle_col) from a file name like ``R0080C0100.bundle``, or None."""
    match = _NAME.match(name)
    if not match:
        return None
    return int(match.group(1), 16), int(match.group(2), 16)


def index_slot(row: int, col: int) -> int:
    """Position of a tile in the row-major bundle index (row and column may be absolute)."""
    return (row % BUNDLE_SIZE) * BUNDLE_SIZE + (col % BUNDLE_SIZE)


def decode_entry(entry: int) -> tuple[int, int]:
    """(offset of the tile bytes, size) from one index entry; size 0 means no tile."""
    return entry & _OFFSET_MASK, entry >> 40


@dataclass(frozen=True)
class BundleHeader:
    """The header fields readers care about (the rest are legacy values)."""

    version: int
    record_count: int
    max_tile_size: int
    offset_bytes: int
    file_size: int
    user_header_offset: int
    index_size: int


def read_header(data: bytes, where: str = "bundle") -> BundleHeader:
    """Parse and validate a bundle header the way GDAL does.

    Only version 3, 5 offset bytes, user header offset 40 and index size 131072 are checked: the
    record count and legacy fields differ between ArcGIS and Esri's own sample writer.
    """
    if len(data) < HEADER_SIZE:
        raise FormatError(f"{where}: only {len(data)} bytes, too short for a Compact V2 bundle header")
    (version, records, max_size, offset_bytes, _slack, file_size, user_offset,
     _user_size, _l1, _l2, _l3, _l4, index_size) = HEADER.unpack_from(data)
    if version != 3 or offset_bytes != 5 or user_offset != _USER_HEADER_OFFSET \
            or index_size != INDEX_SIZE:
        raise FormatError(f"{where}: not a Compact V2 bundle (version {version}, offset bytes "
                          f"{offset_bytes}, user header offset {user_offset}, index size {index_size})")
    return BundleHeader(version, records, max_size, offset_bytes, file_size, user_offset, index_size)


def read_index(f: BinaryIO, where: str | None = None) -> array:
    """Validate the header of a bundle open at ``f`` and return its 16384 index entries (u64)."""
    f.seek(0)
    name = where or str(getattr(f, "name", "bundle"))
    read_header(f.read(HEADER_SIZE), name)
    return index_from_bytes(f.read(INDEX_SIZE), name)


def index_from_bytes(raw: bytes, where: str) -> array:
    """The 16384 index entries (u64, host order) from the 131072 index bytes."""
    if len(raw) != INDEX_SIZE:
        raise FormatError(f"{where}: truncated index ({len(raw)} of {INDEX_SIZE} bytes)")
    index = array("Q")
    index.frombytes(raw)
    if struct.pack("=H", 1) != struct.pack("<H", 1):  # big-endian host
        index.byteswap()
    return index


_LENGTH = struct.Struct("<I")


#: Queued bytes and buffers (two per tile) that make :class:`BundleWriter` write them out.
_FLUSH_BYTES = 1 << 20
_FLUSH_BUFFERS = 512  # under IOV_MAX (1024 on Linux and macOS)


def _writev_all(fd: int, buffers: list[bytes]) -> None:
    """Write every buffer, in order, completely (``writev`` may write less than asked)."""
    if not hasattr(os, "writev"):
        for buf in buffers:
            view = memoryview(buf)
            while view:
                view = view[os.write(fd, view):]
        return
    total = sum(len(b) for b in buffers)
    done = os.writev(fd, buffers)
    if done == total:
        return
    rest = memoryview(b"".join(buffers))[done:]  # rare: a short write; finish plainly
    while rest:
        rest = rest[os.write(fd, rest):]


class _RecordWriter:
    """What both bundle writers (V2 here, V1 in :mod:`bundle_v1`) share: the file opened with a
    zeroed placeholder for header and index, length-prefixed records queued and written out with
    ``writev``, and :meth:`abort`, which deletes the partial files. Subclasses keep the index and
    write it in ``finish``.
    """

    def __init__(self, path: str | os.PathLike[str], bundle_row: int, bundle_col: int,
                 placeholder: int) -> None:
        if bundle_row % BUNDLE_SIZE or bundle_col % BUNDLE_SIZE or bundle_row < 0 or bundle_col < 0:
            raise ValueError(f"bundle origin ({bundle_row}, {bundle_col}) is not a non-negative "
                             f"multiple of {BUNDLE_SIZE}")
        self.path = Path(path)
        self.bundle_row = bundle_row
        self.bundle_col = bundle_col
        self._largest = 0
        self._count = 0
        #: Length prefixes and tiles not yet written (references, not copies).
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._file: BinaryIO | None = open(self.path, "wb")  # noqa: SIM115 - closed in finish/abort
        try:
            # Placeholder for header and index so tile records start where ArcGIS puts them.
            self._file.write(bytes(placeholder))
        except BaseException:
            self.abort()
            raise
        self._end = placeholder

    @property
    def tile_count(self) -> int:
        return self._count

    def _open_file(self) -> BinaryIO:
        if self._file is None:
            raise ExportError(f"{self.path.name}: bundle already finished or aborted")
        return self._file

    def _check_cell(self, row: int, col: int, data: bytes) -> int:
        """The tile's size, once its cell lies in this bundle and it is not empty."""
        self._open_file()
        if not (self.bundle_row <= row < self.bundle_row + BUNDLE_SIZE
                and self.bundle_col <= col < self.bundle_col + BUNDLE_SIZE):
            raise ExportError(f"tile row {row} col {col} is outside bundle {self.path.name} "
                              f"(rows {self.bundle_row}-{self.bundle_row + BUNDLE_SIZE - 1}, cols "
                              f"{self.bundle_col}-{self.bundle_col + BUNDLE_SIZE - 1})")
        size = len(data)
        if size == 0:
            raise ExportError(f"tile row {row} col {col} is empty; a bundle cannot store a 0-byte tile")
        return size

    def _append(self, data: bytes) -> int:
        """Queue one record (u32 length prefix, then the bytes); return where its prefix starts."""
        size = len(data)
        at = self._end
        pending = self._pending
        pending.append(_LENGTH.pack(size))
        pending.append(data)
        self._pending_bytes += size + 4
        if self._pending_bytes >= _FLUSH_BYTES or len(pending) >= _FLUSH_BUFFERS:
            self._flush_pending()
        self._end = at + 4 + size
        self._largest = max(self._largest, size)
        self._count += 1
        return at

    def _flush_pending(self) -> None:
        """Write the queued prefixes and tiles with as few system calls as the OS allows.

        One ``writev`` per megabyte rather than one per tile: each call returns to Python and
        must win the GIL back from the thread running the fetch loop, and those hand-overs, not
        the copying, were what made the writer thread the bottleneck of a job.
        """
        pending = self._pending
        if not pending:
            return
        f = self._open_file()
        try:
            f.flush()
            _writev_all(f.fileno(), pending)
        except OSError as exc:  # a full disk, an I/O error: say which file
            raise ExportError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        pending.clear()
        self._pending_bytes = 0

    def _partial_paths(self) -> tuple[Path, ...]:
        return (self.path,)

    def abort(self) -> None:
        """Close and delete the partial file(s)."""
        if self._file is not None:
            try:
                self._file.close()
            finally:
                self._file = None
        for path in self._partial_paths():
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> _RecordWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self.abort()
        elif self._file is not None:
            self.finish()

    def finish(self) -> int:
        raise NotImplementedError


class BundleWriter(_RecordWriter):
    """Writes one bundle incrementally: tile bytes go to disk as they arrive, only the index is kept.

    Memory stays flat (128 KiB of index, up to 1 MiB of tiles queued for one write) however large
    the bundle grows. The header and index are written
    last, by :meth:`finish`; until then the file is not a valid bundle, which is why exporters write
    it under a temporary name.
    """

    def __init__(self, path: str | os.PathLike[str], bundle_row: int, bundle_col: int, *,
                 record_count: int = ARCGIS_RECORD_COUNT) -> None:
        self.record_count = record_count
        self._index = array("Q", [EMPTY_ENTRY]) * INDEX_ENTRIES
        super().__init__(path, bundle_row, bundle_col, FIRST_RECORD)

    def add(self, row: int, col: int, data: bytes) -> None:
        """Append one tile (absolute row and column) exactly as given."""
        size = self._check_cell(row, col, data)
        if size > MAX_TILE_BYTES:
            raise ExportError(f"tile row {row} col {col} has {size} bytes; a Compact V2 bundle holds "
                              f"at most {MAX_TILE_BYTES} bytes per tile")
        slot = index_slot(row, col)
        if self._index[slot] >> 40:
            raise ExportError(f"tile row {row} col {col} was added twice to {self.path.name}")
        offset = self._end + 4
        if offset + size > _OFFSET_MASK:
            raise ExportError(f"{self.path.name}: bundle would exceed 1 TiB, the format's limit")
        self._append(data)
        self._index[slot] = offset | (size << 40)

    def finish(self) -> int:
        """Write header and index, flush and fsync; return the file size in bytes."""
        f = self._open_file()
        try:
            self._flush_pending()
            header = HEADER.pack(
                3,                                          # version
                self.record_count,                          # record count (ArcGIS writes 0)
                max(_ARCGIS_MIN_MAX_SIZE, self._largest),   # max tile size
                5,                                          # offset byte count
                0,                                          # slack space
                self._end,                                  # file size
                _USER_HEADER_OFFSET,                        # user header offset
                _ARCGIS_MIN_MAX_SIZE,                       # user header size (20 + index)
                3, 0, INDEX_ENTRIES, 5,                     # legacy fields as ArcGIS writes them
                INDEX_SIZE,                                 # index size
            )
            index = self._index
            if struct.pack("=H", 1) != struct.pack("<H", 1):
                index = array("Q", index)
                index.byteswap()
            f.seek(0)
            f.write(header)
            f.write(index.tobytes())
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            self.abort()
            raise
        f.close()
        self._file = None
        return self._end

    def __enter__(self) -> BundleWriter:
        return self


class BundleReader:
    """Reads tiles from one bundle through its index.

    ``source`` is a path or a seekable binary file. ``base``/``length`` select a byte range of the
    source that holds the bundle (a STORED entry inside a .tpkx), so packages are read in place.
    Reads are thread-safe: a path is read with ``os.pread``, a file object under a lock.
    ``bundle_row``/``bundle_col`` default to what the file name says (else 0), and only matter for
    the absolute rows and columns :meth:`tiles` yields.
    """

    def __init__(self, source: str | os.PathLike[str] | BinaryIO, *, bundle_row: int | None = None,
                 bundle_col: int | None = None, base: int = 0, length: int | None = None) -> None:
        self._fd: int | None = None
        self._lock = threading.Lock()
        if isinstance(source, (str, os.PathLike)):
            self.name = os.fspath(source)
            self._fd = os.open(self.name, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            self._pread: Callable[[int, int], bytes] = self._pread_fd
            total = os.fstat(self._fd).st_size
        else:
            self.name = str(getattr(source, "name", "bundle"))
            self._file = source
            self._pread = self._pread_file
            total = source.seek(0, os.SEEK_END)
        self._base = base
        self.length = (total - base) if length is None else length
        parsed = parse_bundle_name(os.path.basename(self.name)) or (0, 0)
        self.bundle_row = parsed[0] if bundle_row is None else bundle_row
        self.bundle_col = parsed[1] if bundle_col is None else bundle_col
        try:
            self.header = read_header(self._read(0, HEADER_SIZE), self.name)
            self.index = index_from_bytes(self._read(HEADER_SIZE, INDEX_SIZE), self.name)
        except BaseException:
            self.close()
            raise

    def _pread_fd(self, offset: int, size: int) -> bytes:
        assert self._fd is not None
        if hasattr(os, "pread"):
            return os.pread(self._fd, size, offset)
        with self._lock:  # Windows has no pread
            os.lseek(self._fd, offset, os.SEEK_SET)
            return os.read(self._fd, size)

    def _pread_file(self, offset: int, size: int) -> bytes:
        with self._lock:
            self._file.seek(offset)
            return self._file.read(size)

    def _read(self, offset: int, size: int) -> bytes:
        if offset + size > self.length:
            raise FormatError(f"{self.name}: a tile or index at {offset} (+{size} bytes) lies past the "
                              f"end of the bundle ({self.length} bytes)")
        data = self._pread(self._base + offset, size)
        if len(data) != size:
            raise FormatError(f"{self.name}: short read at {offset} ({len(data)} of {size} bytes)")
        return data

    def entry(self, row: int, col: int) -> tuple[int, int]:
        """(offset, size) of a tile's bytes; size 0 when the bundle has no such tile."""
        return decode_entry(self.index[index_slot(row, col)])

    def has(self, row: int, col: int) -> bool:
        return self.index[index_slot(row, col)] >> 40 != 0

    def get(self, row: int, col: int) -> bytes | None:
        """The tile's bytes, or None when the index says it is absent."""
        offset, size = self.entry(row, col)
        if size == 0:
            return None
        return self._read(offset, size)

    def tiles(self) -> Iterator[tuple[int, int, bytes]]:
        """(row, col, bytes) of every present tile, in index (row-major) order."""
        for slot, value in enumerate(self.index):
            offset, size = decode_entry(value)
            if size:
                yield (self.bundle_row + slot // BUNDLE_SIZE, self.bundle_col + slot % BUNDLE_SIZE,
                       self._read(offset, size))

    def positions(self) -> Iterator[tuple[int, int]]:
        """(row, col) of every present tile, without reading tile bytes."""
        for slot, value in enumerate(self.index):
            if value >> 40:
                yield (self.bundle_row + slot // BUNDLE_SIZE, self.bundle_col + slot % BUNDLE_SIZE)

    def __len__(self) -> int:
        return sum(1 for value in self.index if value >> 40)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> BundleReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

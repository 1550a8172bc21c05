"""Compact Cache V1 bundles (ArcGIS 10.0-10.2 caches, and every .tpk): a .bundle plus its .bundlx.

The tiles of 128×128 grid cells live in ``R<rrrr>C<cccc>.bundle``; where each one is lives in a
separate ``.bundlx``: a 16-byte header, 16384 five-byte little-endian offsets and a 16-byte footer
(81,952 bytes in all). Two things differ from Compact V2 and are easy to get wrong:

* the bundlx is **column-major** (slot = col % 128 × 128 + row % 128), the transpose of V2;
* an offset points **at** the tile's 4-byte length prefix, not past it.

An empty cell's offset points into the zero-filled size table that follows the 60-byte bundle
header (so its size reads 0); some writers use offset 0 instead. Both mean "no tile". As in V2,
bytes between records are undefined, so tiles are found through the index only.
"""
from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cacheorch.errors import ExportError, FormatError
from cacheorch.formats.bundle import _RecordWriter, parse_bundle_name
from cacheorch.tiling import BUNDLE_SIZE

__all__ = [
    "BUNDLX_SIZE", "BUNDLX_HEADER_SIZE", "V1_HEADER", "V1_HEADER_SIZE", "V1_FIRST_RECORD",
    "V1Header", "bundlx_name", "bundlx_slot", "read_v1_header", "parse_bundlx", "BundleV1Reader",
    "BUNDLX_HEADER", "BUNDLX_FOOTER", "BundleV1Writer",
]

_ENTRIES = BUNDLE_SIZE * BUNDLE_SIZE  # 16384
BUNDLX_HEADER_SIZE = 16
#: header + 16384 × 5-byte offsets + footer
BUNDLX_SIZE = BUNDLX_HEADER_SIZE + 5 * _ENTRIES + 16  # 81952
#: The 60-byte bundle header: version, max records, max tile size, offset bytes, then (as u64)
#: 4 × tile count, file size and user header offset, then five u32 (16 and the row/col range).
V1_HEADER = struct.Struct("<4I3Q5I")
V1_HEADER_SIZE = V1_HEADER.size  # 60
#: Where the first tile record (its size prefix) starts: past the header and the zero size table.
V1_FIRST_RECORD = V1_HEADER_SIZE + 4 * _ENTRIES  # 65596
_U32 = struct.Struct("<I")
#: The bundlx header and footer ArcGIS writes (every .tpk sample has exactly these bytes).
BUNDLX_HEADER = bytes.fromhex("03000000100000000040000005000000")
BUNDLX_FOOTER = bytes.fromhex("00000000100000001000000000000000")
#: A V1 record's size prefix is a u32 and its offset 5 bytes: the format's limits.
_MAX_TILE = 0xFFFFFFFF
_MAX_OFFSET = (1 << 40) - 1


def bundlx_name(bundle_row: int, bundle_col: int) -> str:
    """``R0080C0100.bundlx``: the index beside ``R0080C0100.bundle``."""
    return f"R{bundle_row:04x}C{bundle_col:04x}.bundlx"


def bundlx_slot(row: int, col: int) -> int:
    """Position of a tile in the column-major bundlx (row and column may be absolute)."""
    return (col % BUNDLE_SIZE) * BUNDLE_SIZE + (row % BUNDLE_SIZE)


@dataclass(frozen=True)
class V1Header:
    """The bundle header fields a reader can use (the row/col range is informative only)."""

    version: int
    max_tile_size: int
    tile_count: int
    file_size: int
    row_start: int
    col_start: int


def read_v1_header(data: bytes, where: str = "bundle") -> V1Header:
    """Parse a V1 bundle header; only the version (3) and offset width (5) are checked.

    Why so little: the other fields (tile count, file size) are bookkeeping that writers do not
    keep exact, and no reader (MapProxy, GeoWebCache, tpkutils) relies on them.
    """
    if len(data) < V1_HEADER_SIZE:
        raise FormatError(f"{where}: only {len(data)} bytes, too short for a Compact V1 bundle header")
    (version, _max_records, max_size, offset_bytes, count4, file_size, _user_offset,
     _legacy, row_start, _row_end, col_start, _col_end) = V1_HEADER.unpack_from(data)
    if version != 3 or offset_bytes != 5:
        raise FormatError(f"{where}: not a Compact V1 bundle (version {version}, offset bytes "
                          f"{offset_bytes})")
    return V1Header(version, max_size, count4 // 4, file_size, row_start, col_start)


def parse_bundlx(data: bytes, where: str = "bundlx") -> list[int]:
    """The 16384 absolute offsets of a bundlx, in its own (column-major) order."""
    if len(data) < BUNDLX_SIZE - 16:
        raise FormatError(f"{where}: {len(data)} bytes; a Compact V1 bundlx has {BUNDLX_SIZE}")
    body = data[BUNDLX_HEADER_SIZE:BUNDLX_HEADER_SIZE + 5 * _ENTRIES]
    # Widen each 5-byte entry to 8 bytes so one struct call decodes them all.
    wide = bytearray(8 * _ENTRIES)
    for byte in range(5):
        wide[byte::8] = body[byte::5]
    return list(struct.unpack(f"<{_ENTRIES}Q", wide))


#: (offset, size) → bytes: a positioned read of the bundle (or of the bundlx).
ReadAt = Callable[[int, int], bytes]


class BundleV1Reader:
    """Reads tiles from one V1 bundle through its bundlx.

    The reader is given two positioned-read functions rather than paths, so the same code reads
    loose files and members of a .tpk in place. The bundlx entry of a tile is read on demand
    (5 bytes) unless :meth:`load_index` was called, which reads all 16384 at once for a scan.
    """

    def __init__(self, read_bundle: ReadAt, bundle_length: int, read_bundlx: ReadAt,
                 bundlx_length: int, *, bundle_row: int = 0, bundle_col: int = 0,
                 name: str = "bundle") -> None:
        self._read_bundle = read_bundle
        self._read_bundlx = read_bundlx
        self.length = bundle_length
        self.name = name
        self.bundle_row = bundle_row
        self.bundle_col = bundle_col
        if bundlx_length < BUNDLX_SIZE - 16:
            raise FormatError(f"{name}x: {bundlx_length} bytes; a Compact V1 bundlx has {BUNDLX_SIZE}")
        if bundle_length < V1_HEADER_SIZE:
            raise FormatError(f"{name}: only {bundle_length} bytes, too short for a Compact V1 bundle")
        self.header = read_v1_header(self._read(0, V1_HEADER_SIZE), name)
        self._index: list[int] | None = None

    @classmethod
    def from_paths(cls, bundle: str | os.PathLike[str], bundlx: str | os.PathLike[str] | None = None
                   ) -> BundleV1Reader:
        """A reader of two loose files (the bundlx defaults to the bundle's sibling); reads them whole.

        For tests and tools: the cache reader uses positioned reads instead.
        """
        bundle_path = os.fspath(bundle)
        bundlx_path = os.fspath(bundlx) if bundlx is not None \
            else bundle_path[:-len(".bundle")] + ".bundlx"
        with open(bundle_path, "rb") as f:
            data = f.read()
        with open(bundlx_path, "rb") as f:
            index = f.read()
        origin = parse_bundle_name(os.path.basename(bundle_path)) or (0, 0)
        return cls(lambda o, n: data[o:o + n], len(data), lambda o, n: index[o:o + n], len(index),
                   bundle_row=origin[0], bundle_col=origin[1], name=bundle_path)

    def _read(self, offset: int, size: int) -> bytes:
        if offset < 0 or offset + size > self.length:
            raise FormatError(f"{self.name}: a tile record at {offset} (+{size} bytes) lies past the "
                              f"end of the bundle ({self.length} bytes)")
        data = self._read_bundle(offset, size)
        if len(data) != size:
            raise FormatError(f"{self.name}: short read at {offset} ({len(data)} of {size} bytes)")
        return data

    def load_index(self) -> list[int]:
        """Read the whole bundlx once (for scanning every tile)."""
        if self._index is None:
            self._index = parse_bundlx(self._read_bundlx(0, BUNDLX_SIZE), self.name + "x")
        return self._index

    def offset(self, row: int, col: int) -> int:
        """The bundlx offset of a tile (pointing at its size prefix); 0 may mean absent."""
        slot = bundlx_slot(row, col)
        if self._index is not None:
            return self._index[slot]
        raw = self._read_bundlx(BUNDLX_HEADER_SIZE + 5 * slot, 5)
        if len(raw) != 5:
            raise FormatError(f"{self.name}x: truncated index")
        return int.from_bytes(raw, "little")

    def _record(self, offset: int) -> bytes | None:
        if offset == 0:
            return None
        size = _U32.unpack(self._read(offset, 4))[0]
        if size == 0:
            return None
        return self._read(offset + 4, size)

    def get(self, row: int, col: int) -> bytes | None:
        """The tile's bytes, or None when the bundle has no such tile."""
        return self._record(self.offset(row, col))

    def tiles(self) -> Iterator[tuple[int, int, bytes]]:
        """(row, col, bytes) of every present tile, row by row (absolute rows and columns)."""
        index = self.load_index()
        for r in range(BUNDLE_SIZE):
            for c in range(BUNDLE_SIZE):
                data = self._record(index[c * BUNDLE_SIZE + r])
                if data is not None:
                    yield (self.bundle_row + r, self.bundle_col + c, data)


class BundleV1Writer(_RecordWriter):
    """Writes one V1 bundle and its bundlx incrementally, the way ArcGIS lays them out.

    Tile records are appended as they arrive (memory holds only the 16384 offsets); :meth:`finish`
    writes the header, fills the bundlx and fsyncs both. Empty cells point into the zeroed size
    table (``60 + 4 × slot``), as in ArcGIS-made bundles, so readers that follow the offset read 0.
    Until :meth:`finish` neither file is valid, which is why exporters write them under
    temporary names.
    """

    def __init__(self, bundle_path: str | os.PathLike[str], bundlx_path: str | os.PathLike[str],
                 bundle_row: int, bundle_col: int) -> None:
        self.bundlx_path = Path(bundlx_path)
        self._offsets: list[int] = [V1_HEADER_SIZE + 4 * slot for slot in range(_ENTRIES)]
        self._filled = bytearray(_ENTRIES)
        # header + zero size table, filled in finish
        super().__init__(bundle_path, bundle_row, bundle_col, V1_FIRST_RECORD)

    def add(self, row: int, col: int, data: bytes) -> None:
        """Append one tile (absolute row and column) exactly as given."""
        size = self._check_cell(row, col, data)
        if size > _MAX_TILE or self._end + 4 + size > _MAX_OFFSET:
            raise ExportError(f"{self.path.name}: tile row {row} col {col} ({size} bytes) exceeds "
                              "what a Compact V1 bundle can address")
        slot = bundlx_slot(row, col)
        if self._filled[slot]:
            raise ExportError(f"tile row {row} col {col} was added twice to {self.path.name}")
        self._offsets[slot] = self._append(data)  # V1: the offset points at the size prefix
        self._filled[slot] = 1

    def finish(self) -> int:
        """Write the header and the bundlx, flush and fsync both; return the bundle's size."""
        f = self._open_file()
        try:
            self._flush_pending()
            header = V1_HEADER.pack(3, _ENTRIES, self._largest, 5, 4 * self._count, self._end,
                                    40, 16, self.bundle_row, self.bundle_row + BUNDLE_SIZE - 1,
                                    self.bundle_col, self.bundle_col + BUNDLE_SIZE - 1)
            f.seek(0)
            f.write(header)
            f.flush()
            os.fsync(f.fileno())
            wide = struct.pack(f"<{_ENTRIES}Q", *self._offsets)
            body = bytearray(5 * _ENTRIES)
            for byte in range(5):  # keep the low five bytes of each u64
                body[byte::5] = wide[byte::8]
            with open(self.bundlx_path, "wb") as x:
                x.write(BUNDLX_HEADER + bytes(body) + BUNDLX_FOOTER)
                x.flush()
                os.fsync(x.fileno())
        except BaseException:
            self.abort()
            raise
        f.close()
        self._file = None
        return self._end + BUNDLX_SIZE

    def _partial_paths(self) -> tuple[Path, ...]:
        return (self.path, self.bundlx_path)

    def __enter__(self) -> BundleV1Writer:
        return self

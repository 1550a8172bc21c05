"""``cacheorch verify``: read every tile of an output through its index and say what is wrong with it.

Why a verifier of our own outputs: a cache is carried into the field and opened by clients we
cannot test (ArcGIS Runtime, Field Maps, old ArcMap apps, QGIS). A bundle whose header disagrees
with its size, an index entry past the end of a truncated copy, a length prefix that does not
match, or a package re-zipped with compression all fail there, far from a fix. ``verify`` reads
the output the way those clients do — through the index, never by walking the file — and lists
each defect on one line, ``LEVEL/bundle: what``.

Formats plug in through a small registry of *bundle checkers* keyed by the cache's storage
format (:func:`register_checker`): a checker reads one bundle's raw structure, reports structural
defects, and yields the tiles it could read; the checks every format shares (image magic, grid
bounds, levels against the scheme, counts against the catalog) are made once, here. A format
without a checker of its own (exploded, MBTiles, GeoPackage) is read through
:meth:`~cacheorch.formats.cache.TileCache.open_bundle`, so whatever :func:`open_cache` reads,
``verify`` checks.

Memory stays flat: bundles are read one at a time, tiles one at a time, and a defect that repeats
within a bundle is reported once with a count and its first example.
"""
from __future__ import annotations

import os
import sqlite3
import struct
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cacheorch.errors import CacheorchError, FormatError
from cacheorch.formats.bundle import (
    FIRST_TILE, HEADER, HEADER_SIZE, INDEX_ENTRIES, INDEX_SIZE, SPEC_RECORD_COUNT, bundle_name,
    decode_entry, index_from_bytes, level_folder,
)
from cacheorch.formats.bundle_v1 import (
    BUNDLX_FOOTER, BUNDLX_HEADER, BUNDLX_HEADER_SIZE, BUNDLX_SIZE, V1_FIRST_RECORD, V1_HEADER,
    V1_HEADER_SIZE, bundlx_name, parse_bundlx,
)
from cacheorch.formats.cache import _pread  # os.pread, or seek + read where there is none
from cacheorch.formats.confxml import COMPACT_V1, COMPACT_V2
from cacheorch.net.acceptor import image_kind, tile_defect
from cacheorch.tiling import BUNDLE_SIZE, TilingScheme

if TYPE_CHECKING:
    from cacheorch.formats.cache import TileCache
    from cacheorch.formats.tpk import Span

__all__ = ["Defect", "LevelTally", "VerifyReport", "BundleSink", "register_checker", "CHECKERS",
           "image_kind", "verify_output", "compare_with_job", "DefectsFound",
           "bundle_presence"]

_BundleKey = tuple[int, int, int]
_U32 = struct.Struct("<I")


# -- results --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Defect:
    """One thing wrong, and where: ``L05/R0080C0100.bundle``, ``L07``, ``package`` or ``catalog``."""

    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass
class LevelTally:
    """What was found at one level: tiles read through the index, their bytes, bundles."""

    tiles: int = 0
    bytes: int = 0
    bundles: int = 0


@dataclass
class VerifyReport:
    """The outcome of :func:`verify_output`: what was read and every defect found."""

    path: Path
    storage: str = ""
    levels: dict[int, LevelTally] = field(default_factory=dict)
    #: whether the format keeps tiles in bundles (Compact V1/V2): the summary counts them only then
    in_bundles: bool = True
    defects: list[Defect] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.defects

    @property
    def tiles(self) -> int:
        return sum(t.tiles for t in self.levels.values())

    @property
    def bundles(self) -> int:
        return sum(t.bundles for t in self.levels.values())

    def summary(self) -> str:
        levels = sorted(self.levels)
        span = f"levels {levels[0]}-{levels[-1]}" if levels else "no levels"
        verdict = "no defects" if self.ok else f"{len(self.defects)} defect(s)"
        bundles = f" in {self.bundles:,} bundles" if self.in_bundles else ""
        return (f"{self.path}: {self.storage or 'unknown format'}, {self.tiles:,} tiles{bundles}, "
                f"{span}: {verdict}")

    def to_json(self) -> dict[str, Any]:
        return {"output": str(self.path), "storage": self.storage, "ok": self.ok,
                "tiles": self.tiles, "bundles": self.bundles,
                "levels": [{"level": lv, "tiles": t.tiles, "bytes": t.bytes, "bundles": t.bundles}
                           for lv, t in sorted(self.levels.items())],
                "defects": [{"where": d.where, "what": d.what} for d in self.defects]}


class BundleSink:
    """Collects the defects of one bundle; a kind that repeats is one line with a count.

    Why grouped: a truncated bundle makes thousands of index entries point past its end, and a
    thousand identical lines hide the one other defect that matters.
    """

    def __init__(self, where: str) -> None:
        self.where = where
        self._kinds: dict[str, list[Any]] = {}

    def bundle(self, what: str) -> None:
        """A defect of the bundle as a whole (header, size, name)."""
        self._kinds.setdefault(what, [0, None])[0] += 1

    def tile(self, kind: str, row: int, col: int, detail: str = "") -> None:
        """A defect of one tile; ``kind`` groups it, ``detail`` is kept for the first one only."""
        entry = self._kinds.setdefault(kind, [0, None])
        entry[0] += 1
        if entry[1] is None:
            entry[1] = f"row {row} col {col}" + (f" ({detail})" if detail else "")

    def defects(self) -> list[Defect]:
        out = []
        for kind, (count, example) in self._kinds.items():
            if example is None:
                out.append(Defect(self.where, kind))
            else:
                more = f", and {count - 1} more tile(s)" if count > 1 else ""
                out.append(Defect(self.where, f"{kind}: {example}{more}"))
        return out


# -- whole tiles ----------------------------------------------------------------------------------

def _check_image(data: bytes, row: int, col: int, sink: BundleSink, tile_format: str | None) -> None:
    """The fetch path's own definition of a whole tile (cacheorch.net.acceptor), so that ``run``
    never stores what ``verify`` flags."""
    defect = tile_defect(data, tile_format)
    if defect is not None:
        sink.tile(defect.kind, row, col, defect.detail)


# -- raw byte access -----------------------------------------------------------------------------

class _Bytes:
    """Positioned reads of ``length`` bytes at ``base`` of a file: a loose bundle or a package member."""

    def __init__(self, path: Path, base: int, length: int) -> None:
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self.base = base
        self.length = os.fstat(self._fd).st_size - base if length < 0 else length

    def read(self, offset: int, size: int) -> bytes:
        """Bytes in range; the caller checks bounds first, so a short read means the file shrank."""
        data = _pread(self._fd, size, self.base + offset)
        if len(data) != size:
            raise FormatError(f"short read at {offset} ({len(data)} of {size} bytes): the file "
                              "changed while it was read")
        return data

    def close(self) -> None:
        os.close(self._fd)


def _spans(cache: TileCache, key: _BundleKey) -> tuple[Span, Span | None] | None:
    """(bundle span, bundlx span or None) exactly where :func:`open_cache` reads them."""
    return cache.bundle_spans(*key)


def bundle_presence(cache: TileCache, level: int, bundle_row: int, bundle_col: int
                    ) -> bytearray | None:
    """Which of a Compact V1/V2 bundle's 16384 cells hold a tile (row-major), from its index alone.

    For ``serve``'s ``/tilemap``: one 128 KiB index read answers for a whole bundle, where asking
    :meth:`TileCache.get_tile` cell by cell would read every tile's bytes. None when the cache
    does not keep tiles in bundles (exploded, SQLite); an empty bytearray-of-zeros when it has no
    such bundle. A bundle too damaged to say raises FormatError.
    """
    key = (level, bundle_row, bundle_col)
    if cache.storage_format not in (COMPACT_V1, COMPACT_V2):
        return None
    flags = bytearray(INDEX_ENTRIES)
    spans = _spans(cache, key)
    if spans is None:
        return flags
    where = _where(key, cache.storage_format)
    try:
        span = spans[0] if cache.storage_format == COMPACT_V2 else spans[1]
        if span is None:
            raise FormatError(f"{where}: no bundlx beside it")
        src = _Bytes(span.path, span.base, span.length)
    except FileNotFoundError:
        return flags
    try:
        if cache.storage_format == COMPACT_V2:
            if src.length < HEADER_SIZE + INDEX_SIZE:
                raise FormatError(f"{where}: truncated ({src.length} bytes)")
            index = index_from_bytes(src.read(HEADER_SIZE, INDEX_SIZE), where)
            return bytearray(1 if value >> 40 else 0 for value in index)
        if src.length < BUNDLX_SIZE - 16:
            raise FormatError(f"{where}x: {src.length} bytes; a bundlx has {BUNDLX_SIZE}")
        offsets = parse_bundlx(src.read(0, BUNDLX_SIZE - 16), f"{where}x")
        for slot, offset in enumerate(offsets):  # column-major: slot = col * 128 + row
            if offset >= V1_FIRST_RECORD:
                flags[(slot % BUNDLE_SIZE) * BUNDLE_SIZE + slot // BUNDLE_SIZE] = 1
        return flags
    finally:
        src.close()


# -- checkers -------------------------------------------------------------------------------------

#: A checker reads one bundle's structure, reports to the sink, and yields (row, col, bytes) of
#: each tile it could read. It returns None (not an iterator) when it cannot handle the bundle.
Checker = Callable[["TileCache", _BundleKey, BundleSink], "Iterator[tuple[int, int, bytes]] | None"]
#: Checkers by ``TileCache.storage_format``; formats not listed are read through ``open_bundle``.
CHECKERS: dict[str, Checker] = {}


def register_checker(storage_format: str) -> Callable[[Checker], Checker]:
    """Decorator: use ``func`` for the bundles of caches whose storage format is ``storage_format``."""
    def decorate(func: Checker) -> Checker:
        CHECKERS[storage_format] = func
        return func
    return decorate


@register_checker(COMPACT_V2)
def check_v2_bundle(cache: TileCache, key: _BundleKey, sink: BundleSink
                    ) -> Iterator[tuple[int, int, bytes]] | None:
    """Header fields, every index entry inside the file, the length prefix before each tile."""
    spans = _spans(cache, key)
    if spans is None:
        return None
    span = spans[0]
    src = _Bytes(span.path, span.base, span.length)
    return _v2_tiles(src, key, sink)


def _v2_tiles(src: _Bytes, key: _BundleKey, sink: BundleSink) -> Iterator[tuple[int, int, bytes]]:
    try:
        length = src.length
        if length < HEADER_SIZE + INDEX_SIZE:
            sink.bundle(f"truncated: {length} bytes, less than the {HEADER_SIZE + INDEX_SIZE} of "
                        "header and index")
            return
        (version, records, max_size, offset_bytes, _slack, file_size, user_offset, _user_size,
         _l1, _l2, _l3, _l4, index_size) = HEADER.unpack(src.read(0, HEADER_SIZE))
        if version != 3 or offset_bytes != 5 or index_size != INDEX_SIZE or user_offset != 40:
            sink.bundle(f"not a Compact V2 header (version {version}, offset bytes {offset_bytes}, "
                        f"user header offset {user_offset}, index size {index_size}; expected 3, 5, "
                        f"40, {INDEX_SIZE})")
            return
        if records not in (0, SPEC_RECORD_COUNT):
            sink.bundle(f"header record count {records}; ArcGIS writes 0, the specification "
                        f"{SPEC_RECORD_COUNT}")
        if file_size != length:
            sink.bundle(f"header file size {file_size} but the bundle has {length} bytes"
                        + (" (truncated)" if length < file_size else ""))
        index = index_from_bytes(src.read(HEADER_SIZE, INDEX_SIZE), sink.where)
        _, brow, bcol = key
        largest = 0
        for slot in range(INDEX_ENTRIES):
            offset, size = decode_entry(index[slot])
            if not size:
                continue
            row, col = brow + slot // BUNDLE_SIZE, bcol + slot % BUNDLE_SIZE
            if offset < FIRST_TILE:
                sink.tile("index entry points into the header or index", row, col,
                          f"offset {offset}")
                continue
            if offset + size > length:
                sink.tile("index entry points past the end of the file", row, col,
                          f"offset {offset} + {size} bytes > {length}")
                continue
            record = src.read(offset - 4, size + 4)
            prefix = _U32.unpack_from(record)[0]
            data = record[4:]
            if prefix != size:
                sink.tile("length prefix differs from the index size", row, col,
                          f"prefix {prefix}, index {size}")
            largest = max(largest, size)
            yield row, col, data
        if max_size < largest:
            sink.bundle(f"header max record size {max_size} is below the largest tile ({largest} bytes)")
    finally:
        src.close()


@register_checker(COMPACT_V1)
def check_v1_bundle(cache: TileCache, key: _BundleKey, sink: BundleSink
                    ) -> Iterator[tuple[int, int, bytes]] | None:
    """Bundle header (counts, size, row/col range), bundlx size/header/footer, every offset."""
    spans = _spans(cache, key)
    if spans is None:
        return None
    bundle, bundlx = spans
    if bundlx is None:
        sink.bundle(f"no {bundlx_name(key[1], key[2])} beside it: its tiles cannot be found")
        return iter(())
    try:
        xsrc = _Bytes(bundlx.path, bundlx.base, bundlx.length)
    except FileNotFoundError:
        sink.bundle(f"no {bundlx_name(key[1], key[2])} beside it: its tiles cannot be found")
        return iter(())
    return _v1_tiles(_Bytes(bundle.path, bundle.base, bundle.length), xsrc, key, sink)


def _v1_tiles(src: _Bytes, xsrc: _Bytes, key: _BundleKey, sink: BundleSink
              ) -> Iterator[tuple[int, int, bytes]]:
    try:
        xlen = xsrc.length
        if xlen != BUNDLX_SIZE:
            sink.bundle(f"bundlx has {xlen} bytes, not {BUNDLX_SIZE}")
            if xlen < BUNDLX_SIZE - 16:
                return
        raw = xsrc.read(0, min(xlen, BUNDLX_SIZE))
        if raw[:BUNDLX_HEADER_SIZE] != BUNDLX_HEADER:
            sink.bundle(f"bundlx header {raw[:16].hex()} is not {BUNDLX_HEADER.hex()}")
        if len(raw) == BUNDLX_SIZE and raw[-16:] != BUNDLX_FOOTER:
            sink.bundle(f"bundlx footer {raw[-16:].hex()} is not {BUNDLX_FOOTER.hex()}")
        length = src.length
        if length < V1_HEADER_SIZE:
            sink.bundle(f"truncated: {length} bytes, less than the {V1_HEADER_SIZE}-byte header")
            return
        (version, max_records, max_size, offset_bytes, count4, file_size, _user_offset, _legacy,
         row_start, row_end, col_start, col_end) = V1_HEADER.unpack(src.read(0, V1_HEADER_SIZE))
        if version != 3 or offset_bytes != 5:
            sink.bundle(f"not a Compact V1 header (version {version}, offset bytes {offset_bytes}; "
                        "expected 3, 5)")
            return
        if max_records != BUNDLE_SIZE * BUNDLE_SIZE:
            sink.bundle(f"header max record count {max_records}, not {BUNDLE_SIZE * BUNDLE_SIZE}")
        if file_size != length:
            sink.bundle(f"header file size {file_size} but the bundle has {length} bytes"
                        + (" (truncated)" if length < file_size else ""))
        _, brow, bcol = key
        if (row_start, row_end, col_start, col_end) != (brow, brow + 127, bcol, bcol + 127):
            sink.bundle(f"header row/col range {row_start}-{row_end}/{col_start}-{col_end} does not "
                        f"match the bundle name ({brow}-{brow + 127}/{bcol}-{bcol + 127})")
        offsets = parse_bundlx(raw, f"{sink.where}x")
        found = largest = 0
        for r in range(BUNDLE_SIZE):
            for c in range(BUNDLE_SIZE):
                offset = offsets[c * BUNDLE_SIZE + r]  # column-major
                if offset == 0:
                    continue
                row, col = brow + r, bcol + c
                if offset < V1_HEADER_SIZE:
                    sink.tile("bundlx offset points into the bundle header", row, col, f"offset {offset}")
                    continue
                if offset + 4 > length:
                    sink.tile("bundlx offset points past the end of the bundle", row, col,
                              f"offset {offset}, {length} bytes")
                    continue
                size = _U32.unpack(src.read(offset, 4))[0]
                if size == 0:
                    continue  # an empty cell points at a zero size (the table after the header)
                if offset < V1_FIRST_RECORD:
                    sink.tile("bundlx offset points into the size table at a non-zero size", row, col,
                              f"offset {offset}")
                    continue
                if offset + 4 + size > length:
                    sink.tile("tile record runs past the end of the bundle", row, col,
                              f"offset {offset} + 4 + {size} > {length}")
                    continue
                found += 1
                largest = max(largest, size)
                yield row, col, src.read(offset + 4, size)
        if count4 != 4 * found:
            sink.bundle(f"header tile count {count4 // 4} but the bundlx points at {found} tiles")
        if max_size < largest:
            sink.bundle(f"header max tile size {max_size} is below the largest tile ({largest} bytes)")
    finally:
        src.close()
        xsrc.close()


def _generic_tiles(cache: TileCache, key: _BundleKey, sink: BundleSink
                   ) -> Iterator[tuple[int, int, bytes]]:
    """Formats without a structural checker: every tile through the cache's own reader."""
    view = cache.open_bundle(*key)
    if view is None:
        return
    with view:
        yield from view.tiles()


# -- package and file-level checks ---------------------------------------------------------------

def _check_zip(path: Path, report: VerifyReport) -> None:
    """Members must be STORED: clients read bundles in place as byte ranges of the package."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return  # open_cache says why in one line
    compressed = [i for i in infos if not i.is_dir() and i.compress_type != zipfile.ZIP_STORED]
    if compressed:
        names = ", ".join(i.filename for i in compressed[:3])
        more = f" and {len(compressed) - 3} more" if len(compressed) > 3 else ""
        report.defects.append(Defect("package", f"{len(compressed)} member(s) compressed, which tile "
                                     f"packages must store uncompressed: {names}{more}"))


def _check_sqlite(path: Path, report: VerifyReport) -> None:
    """SQLite's own page-level check: a torn copy of an MBTiles or GeoPackage shows here first."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        report.defects.append(Defect("file", f"SQLite cannot check it: {exc}"))
        return
    problems = [r[0] for r in rows if r[0] != "ok"]
    if problems:
        report.defects.append(Defect("file", f"SQLite quick_check: {problems[0]}"
                                     + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")))


def _is_zip(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def _where(key: _BundleKey, storage: str) -> str:
    if storage in (COMPACT_V1, COMPACT_V2):
        return f"{level_folder(key[0])}/{bundle_name(key[1], key[2])}"
    return f"{level_folder(key[0])}/block R{key[1]:04x}C{key[2]:04x}"


def _check_levels(scheme: TilingScheme, found: list[int], report: VerifyReport) -> None:
    known = set(scheme.levels)
    for level in found:
        if level not in known:
            report.defects.append(Defect(level_folder(level), "level not in the tiling scheme "
                                         "(conf.xml/root.json lists "
                                         f"{scheme.levels[0]}-{scheme.levels[-1]})"))
        elif level not in scheme.tiled_levels:
            report.defects.append(Defect(level_folder(level), f"level outside minLOD-maxLOD "
                                         f"({scheme.min_lod}-{scheme.max_lod}) of the scheme"))


# -- the whole output ---------------------------------------------------------------------------

def verify_output(path: str | os.PathLike[str]) -> VerifyReport:
    """Read every tile of the output at ``path`` through its index; return what was found.

    Raises FormatError (exit 2) when ``path`` is not a cache at all; everything wrong *inside*
    a cache is a :class:`Defect` of the report instead.
    """
    from cacheorch.formats.cache import open_cache

    target = Path(os.path.expanduser(os.fspath(path)))
    if not target.exists():
        raise FormatError(f"{target}: no such file or folder")
    report = VerifyReport(target)
    if target.is_file() and _is_zip(target):
        _check_zip(target, report)
    elif target.is_file():
        from cacheorch.formats.sqlitetiles import is_sqlite
        if is_sqlite(target):
            _check_sqlite(target, report)
    from cacheorch.vector.reader import is_vector_output
    if is_vector_output(target):  # .vtpk, pbf MBTiles: tiles decoded, style and index checked
        from cacheorch.vector.verify import verify_vector
        return verify_vector(target, report)
    try:
        cache = open_cache(target)
    except CacheorchError as exc:
        if report.defects:  # a damaged package: its defects are the answer, not bad input
            report.defects.append(Defect("package", f"cannot be opened: {exc}"))
            return report
        raise
    with cache:
        report.storage = cache.storage_label
        report.in_bundles = cache.storage_format in (COMPACT_V1, COMPACT_V2)
        scheme = cache.scheme
        keys = list(cache.bundle_keys())
        _check_levels(scheme, sorted({k[0] for k in keys}), report)
        checker = CHECKERS.get(cache.storage_format)
        for key in keys:
            _verify_bundle(cache, scheme, key, checker, report)
    return report


def _verify_bundle(cache: TileCache, scheme: TilingScheme, key: _BundleKey,
                   checker: Checker | None, report: VerifyReport) -> None:
    level, brow, bcol = key
    sink = BundleSink(_where(key, cache.storage_format))
    tally = report.levels.setdefault(level, LevelTally())
    tally.bundles += 1
    grid = scheme.grid_size(level) if level in scheme.levels else None
    if brow % BUNDLE_SIZE or bcol % BUNDLE_SIZE:
        sink.bundle(f"bundle name is not on a {BUNDLE_SIZE}-tile boundary")
    if grid is not None and (brow >= grid[0] or bcol >= grid[1]):
        sink.bundle(f"bundle lies outside the grid of level {level} ({grid[0]} rows × {grid[1]} cols)")
    try:
        tiles = checker(cache, key, sink) if checker is not None else None
        if tiles is None:
            tiles = _generic_tiles(cache, key, sink)
        for row, col, data in tiles:
            tally.tiles += 1
            tally.bytes += len(data)
            if grid is not None and (row >= grid[0] or col >= grid[1]):
                sink.tile("tile outside the grid", row, col, f"{grid[0]} rows × {grid[1]} cols")
            _check_image(data, row, col, sink, scheme.tile_format)
    except CacheorchError as exc:
        sink.bundle(f"cannot be read: {exc}")
    except OSError as exc:
        sink.bundle(f"cannot be read: {exc.strerror or exc}")
    report.defects.extend(sink.defects())


class DefectsFound(CacheorchError):
    """The output has defects; the CLI prints them, then this one line, and exits 1."""

    exit_code = 1


def compare_with_job(report: VerifyReport, job: dict[str, Any]) -> None:
    """Add a defect for each level whose tile count differs from what the catalog recorded.

    A job that merged into an existing output may find more tiles than it wrote (the output held
    some already), so only fewer is a defect then; an exporter told to leave out blank tiles
    (``skip_blank``) stores fewer than it was given, so only more is a defect then.
    """
    params = job.get("parameters") or {}
    merge = str(params.get("mode") or "").lower() == "merge"
    options = (params.get("exporter") or {}).get("options") or {}
    skip_blank = str(options.get("skip_blank", "")).lower() in ("1", "true", "yes", "on")
    for lv in job.get("levels") or []:
        level = int(lv["level"])
        recorded = int(lv.get("tiles_written") or 0)
        found = report.levels.get(level, LevelTally()).tiles
        if found == recorded or (merge and found > recorded) or (skip_blank and found < recorded):
            continue
        report.defects.append(Defect(level_folder(level), f"the catalog records {recorded:,} tiles "
                                     f"written by job {job.get('id')}, the output holds {found:,}"))

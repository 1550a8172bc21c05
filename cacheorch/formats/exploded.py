"""Exploded caches: one file per tile, ``_alllayers/L<zz>/R<row:08x>/C<col:08x>.<ext>``.

Level folders are the level ID in two (or more) decimal digits; row folders and tile files carry
the row and column in eight lower-case hex digits. The extension follows the tile format (``jpg``
or ``png``), and a MIXED cache holds both, so a reader tries the likely extension first and the
others after. Placeholders such as ``missing.jpg`` or ``blank.png`` are not tiles and are ignored.

Two ways in, for two access patterns: :meth:`ExplodedCache.get` tries file names directly (random
access, as a tile server does), while :meth:`ExplodedCache.open_bundle` lists each row folder once
and then answers from the listing, which turns the many absent tiles of a sparse cache into
dictionary misses instead of failed ``open`` calls.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from cacheorch.tiling import BUNDLE_SIZE

__all__ = ["TILE_EXTENSIONS", "extensions_for", "row_folder", "tile_file", "tile_path",
           "level_dirs", "ExplodedCache", "ExplodedBundle"]

#: Every extension an exploded tile may have, in the order tried when the format says nothing.
TILE_EXTENSIONS = ("png", "jpg", "jpeg")
_ROW = re.compile(r"^R([0-9a-fA-F]{1,16})$")
_TILE = re.compile(r"^C([0-9a-fA-F]{1,16})\.(png|jpg|jpeg)$", re.IGNORECASE)
_LEVEL = re.compile(r"^[Ll](\d{1,3})$")


def extensions_for(tile_format: str) -> tuple[str, ...]:
    """File extensions to try for a conf.xml CacheTileFormat, most likely first."""
    fmt = (tile_format or "").upper()
    if fmt.startswith(("JPEG", "JPG")):
        return ("jpg", "jpeg", "png")
    if fmt == "MIXED":
        return ("jpg", "png", "jpeg")
    return TILE_EXTENSIONS


def row_folder(row: int) -> str:
    """``R0000012a``: the row in eight lower-case hex digits."""
    return f"R{row:08x}"


def tile_file(col: int, ext: str) -> str:
    """``C000001f3.png``: the column in eight lower-case hex digits."""
    return f"C{col:08x}.{ext}"


def tile_path(level: int, row: int, col: int, ext: str) -> str:
    """``L05/R0000000a/C00000004.jpg``: a tile's path relative to ``_alllayers``."""
    return f"L{level:02d}/{row_folder(row)}/{tile_file(col, ext)}"


def level_dirs(root: Path) -> dict[int, Path]:
    """Level folders under ``_alllayers`` (``L05``), by level ID."""
    found: dict[int, Path] = {}
    try:
        entries = list(os.scandir(root))
    except OSError:
        return found
    for entry in entries:
        match = _LEVEL.match(entry.name)
        if match and entry.is_dir():
            found[int(match.group(1))] = Path(entry.path)
    return found


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


class ExplodedBundle:
    """The tiles of one 128×128 block of an exploded cache, read through folder listings."""

    def __init__(self, level_dir: Path, bundle_row: int, bundle_col: int,
                 extensions: tuple[str, ...]) -> None:
        self.level_dir = level_dir
        self.bundle_row = bundle_row
        self.bundle_col = bundle_col
        self._rank = {ext: i for i, ext in enumerate(extensions)}
        self._rows: dict[int, dict[int, str]] | None = None

    def _listing(self) -> dict[int, dict[int, str]]:
        """row → {col → file path} for the rows and columns of this block (listed once)."""
        if self._rows is not None:
            return self._rows
        rows: dict[int, dict[int, str]] = {}
        lo_r, lo_c = self.bundle_row, self.bundle_col
        try:
            row_entries = list(os.scandir(self.level_dir))
        except OSError:
            row_entries = []
        for entry in row_entries:
            match = _ROW.match(entry.name)
            if not match:
                continue
            row = int(match.group(1), 16)
            if not lo_r <= row < lo_r + BUNDLE_SIZE:
                continue
            cols: dict[int, tuple[int, str]] = {}
            try:
                names = os.listdir(entry.path)
            except OSError:
                continue
            for name in names:
                tile = _TILE.match(name)
                if not tile:
                    continue
                col = int(tile.group(1), 16)
                if not lo_c <= col < lo_c + BUNDLE_SIZE:
                    continue
                rank = self._rank.get(tile.group(2).lower(), len(self._rank))
                if col not in cols or rank < cols[col][0]:
                    cols[col] = (rank, os.path.join(entry.path, name))
            if cols:
                rows[row] = {col: path for col, (_, path) in cols.items()}
        self._rows = rows
        return rows

    def get(self, row: int, col: int) -> bytes | None:
        path = self._listing().get(row, {}).get(col)
        return None if path is None else _read(path)

    def tiles(self) -> Iterator[tuple[int, int, bytes]]:
        """(row, col, bytes) of every tile file in the block, row by row."""
        rows = self._listing()
        for row in sorted(rows):
            for col in sorted(rows[row]):
                data = _read(rows[row][col])
                if data is not None:
                    yield (row, col, data)

    def close(self) -> None:
        self._rows = None


class ExplodedCache:
    """An exploded cache's ``_alllayers`` folder."""

    def __init__(self, root: Path, tile_format: str = "") -> None:
        self.root = Path(root)
        self.extensions = extensions_for(tile_format)
        self.levels = level_dirs(self.root)

    def get(self, level: int, row: int, col: int) -> bytes | None:
        """The tile's bytes, or None when no file exists for it (tries each extension)."""
        level_dir = self.levels.get(level)
        if level_dir is None or row < 0 or col < 0:
            return None
        base = os.path.join(level_dir, row_folder(row), f"C{col:08x}.")
        for ext in self.extensions:
            data = _read(base + ext)
            if data is not None:
                return data
        return None

    def open_bundle(self, level: int, bundle_row: int, bundle_col: int) -> ExplodedBundle | None:
        level_dir = self.levels.get(level)
        if level_dir is None:
            return None
        return ExplodedBundle(level_dir, bundle_row, bundle_col, self.extensions)

    def levels_with_rows(self) -> set[int]:
        """Levels whose folder holds at least one row folder (no tile file is listed)."""
        out: set[int] = set()
        for level, level_dir in self.levels.items():
            try:
                with os.scandir(level_dir) as entries:
                    if any(_ROW.match(entry.name) for entry in entries):
                        out.add(level)
            except OSError:
                continue
        return out

    def bundle_keys(self) -> Iterator[tuple[int, int, int]]:
        """(level, bundle_row, bundle_col) of every 128×128 block holding a tile file, sorted.

        This lists every row folder; on a large cache it takes a while, which is why only the
        callers that need the whole picture (``serve``'s level list, an extent fallback) use it.
        """
        keys: set[tuple[int, int, int]] = set()
        for level, level_dir in self.levels.items():
            try:
                rows = list(os.scandir(level_dir))
            except OSError:
                continue
            for entry in rows:
                match = _ROW.match(entry.name)
                if not match:
                    continue
                brow = int(match.group(1), 16) // BUNDLE_SIZE * BUNDLE_SIZE
                try:
                    names = os.listdir(entry.path)
                except OSError:
                    continue
                for name in names:
                    tile = _TILE.match(name)
                    if tile:
                        keys.add((level, brow, int(tile.group(1), 16) // BUNDLE_SIZE * BUNDLE_SIZE))
        yield from sorted(keys)

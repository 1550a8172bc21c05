"""Reading a vector tile output back: a .vtpk (in place, through bundle indexes), the same tree as a
vector tile cache folder, or a vector MBTiles.

One small interface for ``verify`` and ``serve``: the service JSON, tiles by (level, row, col) in
their stored (gzip) form, every tile in turn, and resources (style, sprites, glyphs) by their
path below ``resources/``. MBTiles has no resources; its tiles are addressed back from TMS rows.
"""
from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

from cacheorch.errors import CacheorchError, FormatError
from cacheorch.formats.bundle import BundleReader, bundle_name, level_folder, parse_bundle_name
from cacheorch.formats.mbtiles import tms_row
from cacheorch.formats.sqlitetiles import connect_readonly, is_sqlite
from cacheorch.formats.tpk import Span, TilePackage
from cacheorch.tiling import BUNDLE_SIZE
from cacheorch.vector.package import ROOT
from cacheorch.vector.service import (
    VectorService, is_vector_json, standard_vector_json, vector_service_from_json,
)

__all__ = ["VectorOutput", "VtpkReader", "VectorMBTilesReader", "open_vector", "is_vector_output",
           "vector_level_counts"]

Key = tuple[int, int, int]


class VectorOutput:
    """What ``verify`` and ``serve`` read from a vector output."""

    path: Path
    #: The service JSON (a vtpk's ``p12/root.json``; made up from the metadata for MBTiles).
    root: dict[str, Any]
    service: VectorService

    def tile(self, level: int, row: int, col: int) -> bytes | None:
        raise NotImplementedError

    def tiles(self) -> Iterator[tuple[Key, bytes]]:
        raise NotImplementedError

    def resource(self, rel: str) -> bytes | None:
        """A file below ``resources/`` (``styles/root.json``, ``sprites/sprite.png``...)."""
        return None

    def resources(self) -> list[str]:
        return []

    def index(self) -> dict[str, Any] | None:
        """The tile index JSON, when the output has one."""
        return None

    def close(self) -> None:
        pass


class _ZipFiles:
    """Members of a .vtpk below ``p12/``: small ones read whole, bundles as STORED spans."""

    def __init__(self, path: Path) -> None:
        self.package = TilePackage(path)
        self.where = f"{path}!{ROOT}/"
        if not self.package.is_vector_package():
            self.package.close()
            raise FormatError(f"{path}: not a vector tile package (no p12/root.json)")

    def read(self, rel: str) -> bytes | None:
        name = f"{ROOT}/{rel}"
        return self.package.read(name) if self.package.info(name) else None

    def names(self, folder: str) -> list[str]:
        return [rel for rel, _ in self.package.files_under(f"{ROOT}/{folder}")]

    def span(self, rel: str) -> Span | None:
        info = self.package.info(f"{ROOT}/{rel}")
        return self.package.span(info, allow_compressed=False) if info else None

    def close(self) -> None:
        self.package.close()


class _FolderFiles:
    """The same tree unpacked: a vector tile cache folder (``root.json``, ``tile/``...)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = f"{path}/"

    def read(self, rel: str) -> bytes | None:
        target = self.path / rel
        return target.read_bytes() if target.is_file() else None

    def names(self, folder: str) -> list[str]:
        base = self.path / folder
        return [p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()] \
            if base.is_dir() else []

    def span(self, rel: str) -> Span | None:
        target = self.path / rel
        return Span(target, 0, target.stat().st_size) if target.is_file() else None

    def close(self) -> None:
        pass


class VtpkReader(VectorOutput):
    """A .vtpk read in place (bundles through their STORED spans), or the same tree as a folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files = _FolderFiles(path) if path.is_dir() else _ZipFiles(path)
        raw = self.files.read("root.json")
        if raw is None:
            self.files.close()
            raise FormatError(f"{path}: not a vector tile cache (no root.json)")
        try:
            self.root = _json(raw, f"{self.files.where}root.json")
            self.service = vector_service_from_json(str(path), self.root)
        except CacheorchError as exc:
            self.files.close()
            said = str(exc).removeprefix(str(path)).lstrip(": ")
            raise FormatError(f"{path}: a vector tile package whose root.json is unusable "
                              f"({said})") from None
        self._readers: dict[str, BundleReader | None] = {}
        self._lock = threading.Lock()

    def bundle_members(self) -> list[tuple[int, int, int, str]]:
        """(level, bundle_row, bundle_col, name below the tree's root) of every bundle."""
        out = []
        for rel in self.files.names("tile"):
            parts = rel.split("/")
            parsed = parse_bundle_name(parts[-1]) if len(parts) == 2 else None
            if parsed and parts[0][:1] in "Ll" and parts[0][1:].isdigit():
                out.append((int(parts[0][1:]), parsed[0], parsed[1], f"tile/{rel}"))
        return sorted(out)

    def span(self, member: str) -> Span:
        """Where a bundle's bytes are (FormatError when it is compressed or absent)."""
        span = self.files.span(member)
        if span is None:
            raise FormatError(f"{self.files.where}{member}: no such bundle")
        return span

    def reader(self, member: str) -> BundleReader:
        """A reader of one bundle (FormatError when it is compressed or broken)."""
        span = self.span(member)
        brow, bcol = parse_bundle_name(member.rsplit("/", 1)[-1]) or (0, 0)
        return BundleReader(span.path, base=span.base, length=span.length, bundle_row=brow,
                            bundle_col=bcol)

    def tile(self, level: int, row: int, col: int) -> bytes | None:
        top, left = row - row % BUNDLE_SIZE, col - col % BUNDLE_SIZE
        member = f"tile/{level_folder(level)}/{bundle_name(top, left)}"
        with self._lock:
            if member not in self._readers:
                self._readers[member] = self.reader(member) \
                    if self.files.span(member) is not None else None
            reader = self._readers[member]
        return reader.get(row, col) if reader is not None else None

    def tiles(self) -> Iterator[tuple[Key, bytes]]:
        for level, _, _, member in self.bundle_members():
            reader = self.reader(member)
            try:
                for row, col, data in reader.tiles():
                    yield (level, row, col), data
            finally:
                reader.close()

    def resource(self, rel: str) -> bytes | None:
        return self.files.read(f"resources/{rel}")

    def resources(self) -> list[str]:
        return sorted(self.files.names("resources"))

    def index(self) -> dict[str, Any] | None:
        name = f"{self.root.get('tileMap') or 'tilemap'}/root.json"
        raw = self.files.read(name)
        return None if raw is None else _json(raw, f"{self.files.where}{name}")

    def close(self) -> None:
        for reader in self._readers.values():
            if reader is not None:
                reader.close()
        self.files.close()


class VectorMBTilesReader(VectorOutput):
    """A ``format=pbf`` MBTiles: the 512-px Web Mercator grid, zoom = level."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = connect_readonly(path)
        self._lock = threading.Lock()
        meta = dict(self.conn.execute("SELECT name, value FROM metadata"))
        self.metadata = meta
        zooms = [z for (z,) in self.conn.execute("SELECT DISTINCT zoom_level FROM tiles")]
        maxzoom = int(meta.get("maxzoom") or max(zooms, default=0))
        minzoom = int(meta.get("minzoom") or min(zooms, default=0))
        self.root = standard_vector_json(meta.get("name") or path.stem, minzoom, maxzoom)
        self.service = vector_service_from_json(str(path), self.root)

    def tile(self, level: int, row: int, col: int) -> bytes | None:
        with self._lock:
            found = self.conn.execute(
                "SELECT tile_data FROM tiles WHERE zoom_level = ? AND tile_column = ? AND "
                "tile_row = ?", (level, col, tms_row(level, row))).fetchone()
        return bytes(found[0]) if found else None

    def tiles(self) -> Iterator[tuple[Key, bytes]]:
        cur = self.conn.execute("SELECT zoom_level, tile_column, tile_row, tile_data FROM tiles "
                                "ORDER BY zoom_level, tile_row DESC, tile_column")
        for zoom, col, row, data in cur:
            yield (zoom, tms_row(zoom, row), col), bytes(data)

    def close(self) -> None:
        self.conn.close()


def _json(raw: bytes, where: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise FormatError(f"{where}: not JSON") from None


def is_vector_output(path: str | Path) -> bool:
    """Whether ``path`` is a .vtpk or an MBTiles of ``pbf`` tiles."""
    p = Path(path)
    if p.is_dir():  # a vector tile cache folder: root.json with pbf tiles
        try:
            return is_vector_json(json.loads((p / "root.json").read_bytes()))
        except (OSError, ValueError):
            return False
    if not p.is_file():
        return False
    if is_sqlite(p):
        try:
            with closing(connect_readonly(p)) as conn:
                row = conn.execute("SELECT value FROM metadata WHERE name = 'format'").fetchone()
        except (sqlite3.Error, FormatError):
            return False
        return bool(row) and str(row[0]).lower() == "pbf"
    try:
        package = TilePackage(p)
    except FormatError:
        return False
    try:
        return package.is_vector_package()
    finally:
        package.close()


def open_vector(path: str | Path) -> VectorOutput:
    """Open a .vtpk or vector MBTiles; FormatError naming what is wrong."""
    p = Path(path)
    if not p.exists():
        raise FormatError(f"{p}: no such file or folder")
    return VectorMBTilesReader(p) if is_sqlite(p) else VtpkReader(p)



def vector_level_counts(path: str | Path) -> dict[int, tuple[int, int]]:
    """Tiles and bytes per level of a vector output (what the catalog records of it)."""
    counts: dict[int, tuple[int, int]] = {}
    output = open_vector(path)
    try:
        for (level, _, _), data in output.tiles():
            tiles, size = counts.get(level, (0, 0))
            counts[level] = (tiles + 1, size + len(data))
    finally:
        output.close()
    return counts

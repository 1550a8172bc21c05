"""Tile packages (.tpk and .tpkx) opened for reading in place.

Both are zip files. A .tpkx holds ``root.json`` and ``tile/Lnn/*.bundle`` (Compact V2); a .tpk
holds ``v101/<map name>/conf.xml`` and ``_alllayers/Lnn/*.bundle`` + ``*.bundlx`` (Compact V1),
where ``<map name>`` is the data frame's name and may be anything, so conf.xml is found by search.

ArcGIS stores every member uncompressed, which is what makes a package readable in place: a
member's bytes are a byte range of the package, found through its *local* header (whose extra
field may differ from the central directory's). Re-zipped .tpk files with DEFLATE exist (tpkutils
keeps one as a fixture); their bundles are inflated on first use into a temporary folder that
lives as long as the package is open, so memory stays flat whatever the bundle size.

A deflated member is a promise of how big it will be, and a hostile package promises terabytes
in kilobytes. Before one is inflated, its declared size must fit what it could be (a bundlx is
81,952 bytes; a bundle at most 16,384 records of the largest tile its own header names, itself at
most the maximum tile size) and the temporary folder's free space; inflating never writes past the
declared size (zipfile stops there, and the CRC then says whether it was honest).

Member names are checked when the package opens: a name that is absolute or climbs with ``..``
makes the whole package refused, since nothing legitimate needs one.
"""
from __future__ import annotations

import os
import re
import shutil
import struct
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

from cacheorch.errors import FormatError

__all__ = ["Span", "TilePackage", "check_member_name", "member_data_offset", "MAX_METADATA_BYTES"]

_LOCAL_HEADER = struct.Struct("<4s5H3I2H")  # zip local file header, 30 bytes
_DRIVE = re.compile(r"^[A-Za-z]:")
#: Metadata members (conf.xml, root.json...) are read whole; anything larger is not metadata.
MAX_METADATA_BYTES = 64 * 1024 * 1024
#: Free space left in the temporary folder after inflating a member.
_DISK_MARGIN = 64 * 1024 * 1024


class Span(NamedTuple):
    """Where some bytes are: ``length`` bytes of the file ``path`` starting at ``base``.

    ``shared`` says the file cannot change while it is open (a package, an inflated copy), so
    one descriptor may serve every read; a loose cache file is opened per use instead.
    ``length`` is -1 when it is the file's size, learnt when it is opened.
    """

    path: Path
    base: int
    length: int
    shared: bool = False


def check_member_name(name: str, where: str) -> None:
    """Refuse a member whose name is absolute or climbs out of the package with ``..``."""
    unified = name.replace("\\", "/")
    if unified.startswith("/") or _DRIVE.match(unified) or ".." in unified.split("/"):
        raise FormatError(f"{where}: refusing the package: member {name!r} has an absolute path "
                          f"or '..'")


def member_data_offset(f: BinaryIO, info: zipfile.ZipInfo, where: str) -> int:
    """Offset of a member's bytes: past the *local* header, whose extra field may differ."""
    f.seek(info.header_offset)
    raw = f.read(_LOCAL_HEADER.size)
    if len(raw) != _LOCAL_HEADER.size or raw[:4] != b"PK\x03\x04":
        raise FormatError(f"{where}: bad local header for {info.filename}")
    fields = _LOCAL_HEADER.unpack(raw)
    name_len, extra_len = fields[-2], fields[-1]
    return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len


class TilePackage:
    """A zip tile package: its members by name, metadata reads, and spans of its bundles."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        where = str(self.path)
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (OSError, zipfile.BadZipFile, ValueError) as exc:
            raise FormatError(f"{where}: not a readable zip package ({exc})") from None
        try:
            self._raw = open(self.path, "rb")  # noqa: SIM115 - closed in close()
            self.size = os.fstat(self._raw.fileno()).st_size
            self.members: dict[str, zipfile.ZipInfo] = {}
            for info in self._zip.infolist():
                check_member_name(info.filename, where)
                if not info.is_dir():
                    self.members[info.filename.replace("\\", "/").lower()] = info
        except BaseException:
            self.close()
            raise
        self._lock = threading.Lock()
        self._tmp: Path | None = None
        self._inflated: dict[str, Span] = {}
        self._stored: dict[str, Span] = {}

    # -- finding the descriptor ---------------------------------------------------------------

    def _named(self, basename: str) -> list[str]:
        return sorted(name for name in self.members if name.rsplit("/", 1)[-1] == basename)

    def find_root_json(self) -> str | None:
        """``root.json`` at the top of the package (a .tpkx), or None.

        Only the top level counts: a vector tile package keeps its own root.json in ``p12/``,
        and reading that as a raster scheme would export nonsense.
        """
        return "root.json" if "root.json" in self.members else None

    def find_conf_xml(self) -> str | None:
        """The conf.xml of a .tpk: ``v101/<any name>/conf.xml`` (any letter case), else the only one."""
        found = self._named("conf.xml")
        in_v101 = [name for name in found if re.fullmatch(r"v101/[^/]+/conf\.xml", name)]
        candidates = in_v101 or found
        if len(candidates) > 1:
            shown = ", ".join(self.members[name].filename for name in candidates[:3])
            raise FormatError(f"{self.path}: several conf.xml in the package ({shown}); "
                              "cannot tell which cache to read")
        return candidates[0] if candidates else None

    def is_vector_package(self) -> bool:
        return "p12/root.json" in self.members

    # -- reading members ----------------------------------------------------------------------

    def info(self, name: str) -> zipfile.ZipInfo | None:
        return self.members.get(name.replace("\\", "/").lower())

    def display(self, name: str) -> str:
        """``package.tpk!v101/Layers/conf.xml``: how errors name a member."""
        info = self.info(name)
        return f"{self.path}!{info.filename if info else name}"

    def read(self, name: str) -> bytes:
        """The whole of a small member (conf.xml, conf.cdi, root.json)."""
        info = self.info(name)
        if info is None:
            raise FormatError(f"{self.path}: no {name} in the package")
        if info.file_size > MAX_METADATA_BYTES:
            raise FormatError(f"{self.display(name)}: {info.file_size} bytes; too large for metadata")
        try:
            with self._lock:
                return self._zip.read(info)
        except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError) as exc:
            raise FormatError(f"{self.display(name)}: cannot read ({exc})") from None

    def files_under(self, prefix: str) -> Iterator[tuple[str, zipfile.ZipInfo]]:
        """(name relative to ``prefix``, original case) of every file below a folder (any case)."""
        lower = prefix.replace("\\", "/").strip("/").lower()
        lower = lower + "/" if lower else ""
        for name, info in self.members.items():
            if name.startswith(lower):
                yield info.filename.replace("\\", "/")[len(lower):], info

    def span(self, info: zipfile.ZipInfo, *, allow_compressed: bool) -> Span:
        """Where a member's bytes can be read: in place when stored, else an inflated copy."""
        if info.flag_bits & 0x1:
            raise FormatError(f"{self.path}: {info.filename} is encrypted")
        if info.compress_type == zipfile.ZIP_STORED:
            span = self._stored.get(info.filename)
            if span is not None:
                return span
            with self._lock:
                offset = member_data_offset(self._raw, info, str(self.path))
            if offset + info.file_size > self.size:
                raise FormatError(f"{self.path}: {info.filename} runs past the end of the package "
                                  "(truncated download?)")
            span = self._stored[info.filename] = Span(self.path, offset, info.file_size, True)
            return span
        if not allow_compressed:
            raise FormatError(f"{self.path}: {info.filename} is compressed; tile packages must "
                              f"store bundles uncompressed")
        return self._inflate(info)

    def _inflate(self, info: zipfile.ZipInfo) -> Span:
        with self._lock:
            span = self._inflated.get(info.filename)
            if span is not None:
                return span
            self._check_inflatable(info)
            if self._tmp is None:
                self._tmp = Path(tempfile.mkdtemp(prefix="cacheorch-package-"))
            target = self._tmp / f"{len(self._inflated)}.bin"
            try:
                with self._zip.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError) as exc:
                target.unlink(missing_ok=True)
                raise FormatError(f"{self.display(info.filename)}: cannot inflate ({exc})") from None
            span = Span(target, 0, info.file_size, True)
            self._inflated[info.filename] = span
            return span

    def _check_inflatable(self, info: zipfile.ZipInfo) -> None:
        """Refuse, before a byte is written, a member bigger than it could be or than the disk."""
        from cacheorch.formats.bundle import HEADER_SIZE, INDEX_ENTRIES, INDEX_SIZE
        from cacheorch.formats.bundle_v1 import BUNDLX_SIZE, V1_FIRST_RECORD
        from cacheorch.net.acceptor import DEFAULT_MAX_TILE_SIZE

        where, declared = self.display(info.filename), info.file_size
        name = info.filename.lower()
        if name.endswith(".bundlx"):
            bound, what = BUNDLX_SIZE, "a bundlx has"
        elif name.endswith(".bundle"):
            try:
                with self._zip.open(info) as src:
                    head = src.read(64)
            except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError,
                    zlib.error) as exc:
                raise FormatError(f"{where}: cannot inflate ({exc})") from None
            if len(head) < 64:
                raise FormatError(f"{where}: {len(head)} bytes, too short for a bundle")
            largest = struct.unpack_from("<I", head, 8)[0]  # max record size, V1 and V2 alike
            if largest > DEFAULT_MAX_TILE_SIZE:
                raise FormatError(f"{where}: its header names a {largest:,}-byte tile, more than "
                                  f"the maximum tile size ({DEFAULT_MAX_TILE_SIZE:,}); refusing "
                                  "to inflate it")
            first = V1_FIRST_RECORD if self.info(info.filename[:-len("bundle")] + "bundlx") \
                else HEADER_SIZE + INDEX_SIZE
            bound = first + INDEX_ENTRIES * (4 + largest)
            what = f"16,384 tiles of at most {largest:,} bytes (its header's largest) take"
        else:
            bound, what = MAX_METADATA_BYTES, "metadata takes"
        if declared > bound:
            raise FormatError(f"{where}: deflated to {declared:,} bytes, more than {what} "
                              f"({bound:,}); refusing to inflate it")
        folder = self._tmp or Path(tempfile.gettempdir())
        free = shutil.disk_usage(folder).free
        if declared + _DISK_MARGIN > free:
            raise FormatError(f"{where}: inflating it needs {declared:,} bytes and {folder} has "
                              f"{free:,} free")

    def close(self) -> None:
        for closer in (getattr(self, "_raw", None), getattr(self, "_zip", None)):
            if closer is not None:
                closer.close()
        tmp = getattr(self, "_tmp", None)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> TilePackage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

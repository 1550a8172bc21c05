"""The tile acceptor: one definition of a *whole* tile, shared by ``run`` (the fetch path) and ``verify``.

Why one definition: a tool that says "completed" over a tile that ``verify`` then flags loses its
users' trust. A server that cuts a body short, closes a connection early (no Content-Length, so
nothing else can tell), or answers a 200 with an HTML page must never get its bytes stored; the
same test then reports a damaged tile already in a cache.

Why structural and cheap: the fetch engine's CPU per tile bounds a job on a small machine, so a
tile is not decoded. A PNG's chunk headers are walked from the signature to an ``IEND`` that ends
the data (a handful of jumps: the chunk lengths, not the pixels); a JPEG must start with SOI and end
with EOI; a WebP's RIFF length must match; a GIF must end with its trailer. Formats that are not
images (vector tiles, ``pbf``, often gzip-compressed as stored) and formats this module does not
know get the size check only, so that a new format is never refused for being new.

Every tile, whatever its format, must be at most ``max_size`` bytes (16 MiB unless configured):
the fetch engine stops reading a body past it and refuses a compressed body that inflates past it.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

__all__ = ["DEFAULT_MAX_TILE_SIZE", "TileDefect", "TileAcceptor", "image_kind", "tile_defect"]

#: Far above real tiles (a 512-px PNG32 is rarely above 1 MiB), low enough that a hostile server
#: cannot make a job hold gigabytes; ``--max-tile-size`` / ``max_tile_size`` change it.
DEFAULT_MAX_TILE_SIZE = 16 * 1024 * 1024

_PNG = b"\x89PNG\r\n\x1a\n"
_U32BE = struct.Struct(">I")
_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_JPEG = b"\xff\xd8\xff"
_GIFS = (b"GIF87a", b"GIF89a")
_TIFFS = (b"II*\x00", b"MM\x00*")
_LERCS = (b"CntZImage ", b"Lerc2 ")
#: Tile formats (tileInfo.format, upper case) whose tiles must be images (or LERC rasters).
_IMAGE_FORMATS = ("PNG", "JPG", "JPEG", "MIXED", "GIF", "BMP", "TIFF", "TIF", "WEBP", "LERC")

#: A PNG that lost its first 4 bytes; Esri's own Usa.tpkx sample has two (spec §10.3).
_MISSING_SIGNATURE = "not an image: a PNG missing the first 4 bytes of its signature"
_NOT_IMAGE = "not an image"
_PNG_CUT = "PNG does not end with its IEND chunk (truncated or trailing bytes)"
_PNG_BROKEN = "PNG chunk structure is broken"
_JPEG_CUT = "JPEG does not end with its EOI marker (truncated or trailing bytes)"
_GIF_CUT = "GIF does not end with its trailer (truncated or trailing bytes)"
_WEBP_CUT = "WebP size differs from its RIFF header (truncated or trailing bytes)"
_TOO_BIG = "tile larger than the maximum tile size"
_NOT_VECTOR = "not a vector tile"
_GZIP = b"\x1f\x8b"
#: A Mapbox Vector Tile starts with field 3 (layers), length-delimited.
_MVT_LAYER = 0x1A


class TileDefect(NamedTuple):
    """Why bytes are not a whole tile: ``kind`` is the same for every tile with this defect (so a
    report can group them), ``detail`` is this tile's particulars."""

    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} ({self.detail})" if self.detail else self.kind


def image_kind(data: bytes) -> str | None:
    """The image type a tile's bytes start with (png, jpeg, webp, gif, tiff, lerc), else None."""
    if data.startswith(_PNG):
        return "png"
    if data.startswith(_JPEG):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data.startswith(_GIFS):
        return "gif"
    if data.startswith(_TIFFS):
        return "tiff"
    if data.startswith(_LERCS):  # elevation caches (tileInfo.format LERC)
        return "lerc"
    return None


def _png_defect(data: bytes) -> TileDefect | None:
    """Walk the chunk headers from the signature to IEND, which must end the data."""
    n = len(data)
    if n < 8 + 25 + 12 or data[12:16] != b"IHDR":  # IHDR (13 bytes of data) comes first
        return TileDefect(_PNG_BROKEN if n >= 8 + 25 + 12 else _PNG_CUT,
                          f"{n} bytes, no IHDR chunk first")
    pos = 8
    end = n - 12
    length_at = _U32BE.unpack_from
    while pos < end:
        length = length_at(data, pos)[0]
        if length > 0x7FFFFFFF:
            return TileDefect(_PNG_BROKEN, f"chunk length {length} at byte {pos}")
        pos += 12 + length
    if pos != end or data[end:] != _IEND:
        return TileDefect(_PNG_CUT, f"{n} bytes")
    return None


def _structure(kind: str, data: bytes) -> TileDefect | None:
    if kind == "png":
        return _png_defect(data)
    if kind == "jpeg":
        return None if data[-2:] == b"\xff\xd9" and len(data) > 4 else \
            TileDefect(_JPEG_CUT, f"{len(data)} bytes ending {data[-2:].hex(' ')}")
    if kind == "webp":
        declared = int.from_bytes(data[4:8], "little") + 8
        return None if declared == len(data) else \
            TileDefect(_WEBP_CUT, f"{len(data)} bytes, the header says {declared}")
    if kind == "gif":
        return None if data[-1:] == b";" else TileDefect(_GIF_CUT, f"{len(data)} bytes")
    return None  # tiff, lerc: the magic is all a cheap check can say


def _pbf_defect(data: bytes) -> TileDefect | None:
    """A vector tile is gzip (as most servers store it), empty (a tile without features), or a
    protobuf starting with a layer; an HTML or JSON error page under HTTP 200 is none of these."""
    if not data or data[:2] == _GZIP or data[0] == _MVT_LAYER:
        return None
    return TileDefect(_NOT_VECTOR, f"{len(data)} bytes starting {data[:8].hex(' ')}")


def tile_defect(data: bytes, tile_format: str | None = None,
                max_size: int = DEFAULT_MAX_TILE_SIZE) -> TileDefect | None:
    """None when ``data`` is a whole tile of a service whose format is ``tile_format``, else why not.

    :param tile_format: the service's ``tileInfo.format`` (``PNG``, ``PNG32``, ``JPEG``, ``MIXED``,
        ``LERC``, ``pbf``...). None means an image is expected. An image is checked by what its
        bytes are, not by the format's name (a MIXED cache holds both, a JPEG service may send a
        PNG); a format that is not an image, or that this module does not know, is checked for
        size only.
    """
    return _defect(data, _format_kind(tile_format), max_size)


def _format_kind(tile_format: str | None) -> str:
    """``vector``, ``image`` (None: an image is expected) or ``other`` (size checked only)."""
    if tile_format is None or tile_format.upper().startswith(_IMAGE_FORMATS):
        return "image"
    return "vector" if tile_format.lower() in ("pbf", "mvt") else "other"


def _defect(data: bytes, format_kind: str, max_size: int) -> TileDefect | None:
    size = len(data)
    if size > max_size:
        return TileDefect(_TOO_BIG, f"{size} bytes, more than {max_size}")
    if format_kind == "vector":
        return _pbf_defect(data)
    kind = image_kind(data)
    if kind is not None:
        return _structure(kind, data)
    if format_kind == "other":
        return None
    if data.startswith(_PNG[4:]):
        return TileDefect(_MISSING_SIGNATURE, f"{size} bytes starting {data[:8].hex(' ')}")
    return TileDefect(_NOT_IMAGE, f"{size} bytes starting {data[:8].hex(' ')}")


class TileAcceptor:
    """:func:`tile_defect` bound to one service's format and size limit, for a hot loop.

    ``images_only`` says whether every accepted tile is an image: when it is not, a caller that
    can receive error documents (an ArcGIS JSON error under HTTP 200) must look for them itself.
    """

    __slots__ = ("tile_format", "max_size", "_kind", "images_only", "expected")

    def __init__(self, tile_format: str | None = None,
                 max_size: int = DEFAULT_MAX_TILE_SIZE) -> None:
        if max_size < 1:
            raise ValueError("the maximum tile size must be at least 1 byte")
        self.tile_format = tile_format
        self.max_size = max_size
        #: The format's kind, worked out once rather than per tile.
        self._kind = _format_kind(tile_format)
        self.images_only = self._kind == "image"
        #: What a tile of this service is, for "not ..." messages.
        self.expected = "a vector tile" if self._kind == "vector" else "an image"

    def wrong_kind(self, defect: TileDefect) -> bool:
        """Whether ``defect`` says the body is something else (an error page): not retried, as
        the same answer would come again; a cut or oversized tile is retried."""
        return defect.kind in (_NOT_IMAGE, _NOT_VECTOR)

    def defect(self, data: bytes) -> TileDefect | None:
        """None when ``data`` is a whole tile; else what is wrong with it."""
        return _defect(data, self._kind, self.max_size)

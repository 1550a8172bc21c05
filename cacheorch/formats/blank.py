"""Recognising blank tiles (one colour, e.g. fully transparent or open water) without an imaging library.

Only PNG is decoded: a PNG's pixel rows are deflated after a per-row filter, and for an image of
one colour every filter gives a predictable row (the colour, or the colour then zeros, ...). So
instead of undoing the filters pixel by pixel (Paeth and Average cannot be vectorised), the
filtered rows are compared, with numpy, against what each row's filter would give for a
one-colour image whose colour is the first pixel. The filters are invertible, so equal rows mean
an image of one colour. JPEG is never called blank: telling a flat JPEG from a nearly flat one
needs a DCT decoder, and an error either way is worse than keeping a tile.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

from cacheorch.formats.png import PNG_MAGIC

__all__ = ["is_blank_tile", "BlankCounter"]

_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
#: Above this many filtered bytes a tile is not decoded (a 2048² RGBA tile is 16 MiB).
_MAX_RAW = 1 << 24


def _png_parts(data: bytes) -> tuple[int, int, int, int, int, bytes] | None:
    """(width, height, bit depth, colour type, interlace, IDAT bytes), or None when malformed."""
    if not data.startswith(PNG_MAGIC):
        return None
    pos = len(PNG_MAGIC)
    header: tuple[int, ...] | None = None
    idat: list[bytes] = []
    while pos + 8 <= len(data):
        length, tag = struct.unpack_from(">I4s", data, pos)
        body = data[pos + 8:pos + 8 + length]
        if len(body) != length:
            return None
        if tag == b"IHDR" and length >= 13:
            header = struct.unpack_from(">IIBBBBB", body)
        elif tag == b"IDAT":
            idat.append(body)
        elif tag == b"IEND":
            break
        pos += 12 + length
    if header is None or not idat:
        return None
    width, height, depth, colour, _, _, interlace = header
    return width, height, depth, colour, interlace, b"".join(idat)


def _uniform_byte(value: int, depth: int) -> bool:
    """Whether a byte of packed sub-byte pixels holds one value repeated (4 × 2-bit ...)."""
    mask = (1 << depth) - 1
    first = value & mask
    return all((value >> shift) & mask == first for shift in range(0, 8, depth))


def is_blank_tile(data: bytes) -> bool:
    """Whether a tile is a PNG of a single colour (which includes fully transparent ones).

    False for anything else: JPEG, other formats, interlaced or malformed PNGs. The answer is
    never a guess: a False only costs a stored tile, a wrong True would lose one.
    """
    parts = _png_parts(data)
    if parts is None:
        return False
    width, height, depth, colour, interlace, compressed = parts
    channels = _CHANNELS.get(colour)
    if channels is None or interlace or depth not in (1, 2, 4, 8, 16) or width == 0 or height == 0:
        return False
    bits = channels * depth
    stride = (width * bits + 7) // 8
    if (stride + 1) * height > _MAX_RAW:
        return False
    try:
        raw = zlib.decompressobj().decompress(compressed, (stride + 1) * height + 1)
    except zlib.error:
        return False
    if len(raw) < (stride + 1) * height:
        return False
    rows = np.frombuffer(raw, dtype=np.uint8, count=(stride + 1) * height).reshape(height, stride + 1)
    kinds, body = rows[:, 0], rows[:, 1:]
    if (kinds > 4).any():
        return False
    bpp = max(1, bits // 8)
    colour_bytes = body[0, :bpp].astype(np.int16)  # every filter leaves row 0's first pixel raw
    if bits < 8:
        if not _uniform_byte(int(colour_bytes[0]), depth):
            return False
        colour_bytes = colour_bytes[:1]
    reps = stride // bpp
    if reps * bpp != stride:
        return False
    solid = np.tile(colour_bytes, reps).astype(np.uint8)
    first = np.zeros(stride, dtype=np.uint8)
    first[:bpp] = colour_bytes
    half = np.zeros(stride, dtype=np.uint8)  # Average filter: x - floor(a / 2) with a = x
    half[:] = np.tile((colour_bytes - colour_bytes // 2), reps)
    avg0 = half.copy()
    avg0[:bpp] = colour_bytes
    avg_n = np.zeros(stride, dtype=np.uint8)
    avg_n[:bpp] = (colour_bytes - colour_bytes // 2)
    zeros = np.zeros(stride, dtype=np.uint8)
    # expected[filter][0 for the first row, 1 for the others]
    expected = {0: (solid, solid), 1: (first, first), 2: (solid, zeros), 3: (avg0, avg_n),
                4: (first, zeros)}
    if not np.array_equal(body[0], expected[int(kinds[0])][0]):
        return False
    for kind in np.unique(kinds[1:]):
        if not (body[1:][kinds[1:] == kind] == expected[int(kind)][1]).all():
            return False
    return True


class BlankCounter:
    """Decides which tiles to skip for ``skip_blank`` and counts them; remembers blank bytes seen.

    Blank tiles of a service are usually byte-identical (the same water tile everywhere), so a
    set of the blank tiles already seen answers most of them without decoding.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.skipped = 0
        self._known: set[bytes] = set()

    def skip(self, data: bytes) -> bool:
        """True (and counted) when ``data`` should be left out of the output."""
        if not self.enabled:
            return False
        if data in self._known or is_blank_tile(data):
            if len(self._known) < 64:
                self._known.add(data)
            self.skipped += 1
            return True
        return False

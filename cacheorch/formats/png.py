"""A minimal PNG encoder, so cacheorch can draw thumbnails and demo tiles without an imaging library."""
from __future__ import annotations

import struct
import zlib

__all__ = ["PNG_MAGIC", "JPEG_MAGIC", "encode_png", "is_image"]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
_OTHER_MAGICS = (b"GIF87a", b"GIF89a", b"RIFF", b"II*\x00", b"MM\x00*")


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def encode_png(width: int, height: int, pixels: bytes, channels: int = 3, level: int = 6) -> bytes:
    """Encode 8-bit RGB (channels=3) or RGBA (channels=4) pixels, rows top to bottom, as PNG."""
    stride = width * channels
    if len(pixels) != stride * height:
        raise ValueError(f"expected {stride * height} bytes of pixels, got {len(pixels)}")
    color_type = {3: 2, 4: 6}[channels]
    raw = b"".join(b"\x00" + pixels[y * stride:(y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (PNG_MAGIC + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, level))
            + _chunk(b"IEND", b""))


def is_image(data: bytes) -> bool:
    """Whether bytes start like an image a tile service sends (PNG, JPEG; also GIF, WebP, TIFF).

    Servers under load answer 200 with an HTML error page; checking the magic keeps such a body
    out of a cache.
    """
    return data.startswith(PNG_MAGIC) or data.startswith(JPEG_MAGIC) or data.startswith(_OTHER_MAGICS)

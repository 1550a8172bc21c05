"""The tile acceptor alone: what a whole tile is, format by format (the fetch path and verify use it)."""
from __future__ import annotations

import gzip
import struct
import zlib

import pytest

from cacheorch.formats.png import encode_png
from cacheorch.net.acceptor import DEFAULT_MAX_TILE_SIZE, TileAcceptor, image_kind, tile_defect

PNG = encode_png(4, 4, bytes(range(48)))
#: A minimal baseline JPEG frame: SOI, an APP0 segment, EOI (structure is all the acceptor reads).
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\x11" * 50 + b"\xff\xd9"


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def test_whole_png_and_jpeg_pass() -> None:
    assert tile_defect(PNG) is None and tile_defect(PNG, "PNG32") is None
    assert tile_defect(JPEG, "JPEG") is None and tile_defect(JPEG, "MIXED") is None
    assert image_kind(PNG) == "png" and image_kind(JPEG) == "jpeg"


@pytest.mark.parametrize("cut", [1, 5, 12, 13, 20, len(PNG) - 9])
def test_truncated_png_is_refused_wherever_it_is_cut(cut: int) -> None:
    defect = tile_defect(PNG[:-cut])
    assert defect is not None and "PNG" in defect.kind


def test_png_with_trailing_bytes_or_a_lying_chunk_length() -> None:
    assert tile_defect(PNG + b"\x00\x00\x00\x00").kind.startswith("PNG does not end with its IEND")
    lying = bytearray(PNG)
    idat = lying.index(b"IDAT") - 4
    lying[idat:idat + 4] = struct.pack(">I", 0x7FFFFFF0)
    assert tile_defect(bytes(lying)) is not None
    # IEND alone at the right place is not enough: the chunks before it must lead there
    no_ihdr = PNG[:8] + _chunk(b"tEXt", b"x" * 13) + PNG[33:]
    assert tile_defect(no_ihdr) is not None
    # chunks that lead exactly to the end, but the last one is not IEND
    assert tile_defect(PNG[:-12] + _chunk(b"tEXt", b"")) is not None


def test_jpeg_without_eoi_is_refused() -> None:
    defect = tile_defect(JPEG[:-1], "JPEG")
    assert defect is not None and defect.kind.startswith("JPEG does not end with its EOI")
    assert tile_defect(JPEG + b"junk", "JPEG") is not None


def test_other_images_by_their_own_structure() -> None:
    webp = b"RIFF" + struct.pack("<I", 12) + b"WEBPVP8 " + b"\x00" * 4
    assert tile_defect(webp) is None and tile_defect(webp[:-1]) is not None
    gif = b"GIF89a" + b"\x00" * 20 + b";"
    assert tile_defect(gif) is None and tile_defect(gif[:-1]) is not None
    assert tile_defect(b"Lerc2 " + b"\x00" * 30, "LERC") is None


def test_not_an_image_names_what_it_starts_with() -> None:
    defect = tile_defect(b"<html>oops</html>", "PNG")
    assert defect is not None and defect.kind == "not an image" and "3c 68 74 6d" in defect.detail
    assert tile_defect(PNG[4:]).kind.startswith("not an image: a PNG missing the first 4 bytes")


def test_vector_and_unknown_formats_get_the_size_check_only() -> None:
    pbf = b"\x1a\x05hello"
    assert tile_defect(pbf, "pbf") is None
    assert tile_defect(gzip.compress(pbf), "PBF") is None  # gzip-compressed as served
    assert tile_defect(b"anything", "some-new-format") is None
    assert tile_defect(pbf, None) is not None  # no format told: an image is expected
    assert TileAcceptor("pbf").images_only is False and TileAcceptor("PNG8").images_only is True


def test_size_limit_applies_to_every_format() -> None:
    assert tile_defect(PNG, max_size=len(PNG)) is None
    too_big = tile_defect(PNG, max_size=len(PNG) - 1)
    assert too_big is not None and too_big.kind == "tile larger than the maximum tile size"
    assert tile_defect(b"\x1a" * 100, "pbf", max_size=99) is not None
    assert TileAcceptor().max_size == DEFAULT_MAX_TILE_SIZE == 16 * 1024 * 1024
    with pytest.raises(ValueError):
        TileAcceptor(max_size=0)


def test_a_vector_tile_is_gzip_empty_or_a_layer_and_an_error_page_is_none_of_these() -> None:
    layer = b"\x1a\x05\x0a\x03abc"  # Tile.layers (field 3), length 5
    for whole in (gzip.compress(layer), b"", layer):
        assert tile_defect(whole, "pbf") is None
    page = b"<html><body>Service unavailable</body></html>"
    defect = tile_defect(page, "pbf")
    assert defect is not None and defect.kind == "not a vector tile" and "3c 68 74 6d" in defect.detail
    acceptor = TileAcceptor("pbf")
    assert acceptor.defect(page) == defect and acceptor.wrong_kind(defect)
    assert acceptor.expected == "a vector tile" and not acceptor.images_only
    assert TileAcceptor("PNG32").expected == "an image" and TileAcceptor("PNG32").images_only

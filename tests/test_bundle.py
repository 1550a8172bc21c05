"""Compact V2 bundle writer and reader, checked against ArcGIS/Esri sample bytes and GDAL."""
from __future__ import annotations

import io
import os
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from _gdal import decode_rgba, solid_png

from cacheorch.errors import ExportError, FormatError
from cacheorch.formats.bundle import (
    EMPTY_ENTRY, FIRST_TILE, HEADER, INDEX_SIZE, MAX_TILE_BYTES, SPEC_RECORD_COUNT, BundleReader,
    BundleWriter, bundle_name, index_slot, level_folder, parse_bundle_name, read_index,
)
from cacheorch.formats.png import PNG_MAGIC



@pytest.fixture
def esri_cache(fixtures: Path) -> Path:
    return fixtures / "esri_compactcache_sample"


@pytest.fixture
def usa_tpkx(fixtures: Path) -> Path:
    return fixtures / "esri_tpkx_sample" / "Usa.tpkx"


# -- names ------------------------------------------------------------------------------------

def test_bundle_name_is_lower_hex_of_at_least_four_digits_and_grows():
    assert bundle_name(0, 0) == "R0000C0000.bundle"
    assert bundle_name(128, 256) == "R0080C0100.bundle"
    assert bundle_name(0xFF80, 0xAB00) == "Rff80Cab00.bundle"
    assert bundle_name(0x10000, 0x1FF80) == "R10000C1ff80.bundle"
    assert parse_bundle_name("R10000C1ff80.bundle") == (0x10000, 0x1FF80)
    assert parse_bundle_name("R0080C0100.bundlx") is None


def test_level_folder():
    assert [level_folder(n) for n in (0, 9, 10, 23)] == ["L00", "L09", "L10", "L23"]


# -- writer -----------------------------------------------------------------------------------

def _write(path: Path, tiles: dict[tuple[int, int], bytes], origin=(0, 0), **kw) -> int:
    writer = BundleWriter(path, *origin, **kw)
    for (row, col), data in tiles.items():
        writer.add(row, col, data)
    return writer.finish()


def test_header_is_arcgis_style(tmp_path):
    path = tmp_path / bundle_name(128, 256)
    size = _write(path, {(130, 300): b"abc", (128, 256): b"x" * 10}, origin=(128, 256))
    raw = path.read_bytes()
    assert size == len(raw)
    fields = HEADER.unpack_from(raw)
    # version, records, max size, offset bytes, slack, file size, user header offset,
    # user header size, legacy 3, legacy 0, 16384, 5, index size
    assert fields == (3, 0, 131092, 5, 0, len(raw), 40, 131092, 3, 0, 16384, 5, 131072)
    entries = struct.unpack_from("<16384Q", raw, 64)
    first = entries[index_slot(130, 300)]
    assert first & (2**40 - 1) == FIRST_TILE == 131140
    assert first >> 40 == 3
    # the length prefix sits just before the tile bytes
    assert struct.unpack_from("<I", raw, FIRST_TILE - 4)[0] == 3
    assert raw[FIRST_TILE:FIRST_TILE + 3] == b"abc"
    empty = [e for i, e in enumerate(entries) if i not in (index_slot(130, 300), index_slot(128, 256))]
    assert set(empty) == {EMPTY_ENTRY}


def test_max_tile_size_follows_the_largest_tile(tmp_path):
    path = tmp_path / "b.bundle"
    _write(path, {(0, 0): b"y" * 131235})
    assert HEADER.unpack_from(path.read_bytes())[2] == 131235


def test_record_count_can_follow_the_spec(tmp_path):
    path = tmp_path / "b.bundle"
    _write(path, {(0, 0): b"z"}, record_count=SPEC_RECORD_COUNT)
    assert HEADER.unpack_from(path.read_bytes())[1] == 16384


def test_round_trip_through_the_index(tmp_path):
    tiles = {(r, c): f"tile {r}/{c}".encode() * (r + 1) for r in (0, 5, 127) for c in (0, 64, 127)}
    path = tmp_path / bundle_name(256, 0)
    _write(path, {(256 + r, c): d for (r, c), d in tiles.items()}, origin=(256, 0))
    with BundleReader(path) as reader:
        assert (reader.bundle_row, reader.bundle_col) == (256, 0)
        assert len(reader) == len(tiles)
        for (r, c), data in tiles.items():
            assert reader.get(256 + r, c) == data
        assert reader.get(256 + 1, 1) is None
        assert {(r, c): d for r, c, d in reader.tiles()} == {(256 + r, c): d for (r, c), d in tiles.items()}


def test_errors(tmp_path):
    writer = BundleWriter(tmp_path / "b.bundle", 0, 0)
    writer.add(3, 4, b"a")
    with pytest.raises(ExportError, match="twice"):
        writer.add(3, 4, b"b")
    with pytest.raises(ExportError, match="outside"):
        writer.add(128, 0, b"c")
    with pytest.raises(ExportError, match="empty"):
        writer.add(0, 0, b"")
    with pytest.raises(ExportError, match="16777215"):
        writer.add(0, 1, bytes(MAX_TILE_BYTES + 1))
    writer.add(0, 1, bytes(MAX_TILE_BYTES))  # the largest a bundle can hold is fine
    writer.finish()
    with pytest.raises(ExportError):
        writer.add(1, 1, b"late")
    with pytest.raises(ValueError):
        BundleWriter(tmp_path / "c.bundle", 64, 0)


def test_abort_removes_the_file(tmp_path):
    path = tmp_path / "b.bundle"
    writer = BundleWriter(path, 0, 0)
    writer.add(0, 0, b"data")
    assert path.exists()
    writer.abort()
    assert not path.exists()
    with pytest.raises(RuntimeError), BundleWriter(path, 0, 0) as w:
        w.add(0, 0, b"x")
        raise RuntimeError("boom")
    assert not path.exists()


def test_memory_stays_flat_while_writing(tmp_path):
    """Tile bytes go straight to disk: 24 MB of tiles must not be held in memory."""
    chunk = bytes(range(256)) * 48  # 12 KiB
    tracemalloc.start()
    try:
        writer = BundleWriter(tmp_path / "big.bundle", 0, 0)
        for slot in range(2048):
            writer.add(slot // 128, slot % 128, chunk)
        writer.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (tmp_path / "big.bundle").stat().st_size > 2048 * len(chunk)
    assert peak < 2 * 1024 * 1024


# -- reader -----------------------------------------------------------------------------------

def test_size_zero_means_no_tile_whatever_the_offset(tmp_path):
    path = tmp_path / "b.bundle"
    _write(path, {(0, 0): b"real"})
    raw = bytearray(path.read_bytes())
    struct.pack_into("<Q", raw, 64 + 8 * 5, 999_999)  # offset set, size 0
    path.write_bytes(bytes(raw))
    with BundleReader(path) as reader:
        assert reader.get(0, 5) is None
        assert [(r, c) for r, c, _ in reader.tiles()] == [(0, 0)]


@pytest.mark.parametrize("offset,value", [(0, 2), (12, 4), (32, 41), (60, 65536)])
def test_reader_validates_the_header_like_gdal(tmp_path, offset, value):
    path = tmp_path / "b.bundle"
    _write(path, {(0, 0): b"x"})
    raw = bytearray(path.read_bytes())
    struct.pack_into("<I", raw, offset, value)
    path.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="not a Compact V2 bundle"):
        BundleReader(path)


def test_reader_rejects_truncated_files_and_tiles_past_the_end(tmp_path):
    path = tmp_path / "b.bundle"
    _write(path, {(0, 0): b"x" * 100})
    raw = path.read_bytes()
    (tmp_path / "short.bundle").write_bytes(raw[:1000])
    with pytest.raises(FormatError, match="truncated"):
        BundleReader(tmp_path / "short.bundle")
    (tmp_path / "cut.bundle").write_bytes(raw[:-10])
    with BundleReader(tmp_path / "cut.bundle") as reader, pytest.raises(FormatError, match="past the end"):
        reader.get(0, 0)


def test_reader_accepts_file_objects_and_byte_ranges(tmp_path):
    path = tmp_path / "b.bundle"
    _write(path, {(1, 2): b"hello"})
    raw = path.read_bytes()
    reader = BundleReader(io.BytesIO(raw), bundle_row=128, bundle_col=0)
    assert list(reader.tiles()) == [(129, 2, b"hello")]
    padded = tmp_path / "padded.bin"
    padded.write_bytes(b"JUNK" * 10 + raw + b"TRAILER")
    with BundleReader(padded, base=40, length=len(raw)) as ranged:
        assert ranged.get(1, 2) == b"hello"
    assert len(read_index(io.BytesIO(raw))) == INDEX_SIZE // 8


# -- real files ---------------------------------------------------------------------------------

def test_esri_sample_cache_headers_and_empty_entries(esri_cache):
    with BundleReader(esri_cache / "_alllayers" / "L01" / "R0000C0000.bundle") as reader:
        assert reader.header.record_count == 16384  # Esri's sample writer follows the spec
        assert sorted(reader.positions()) == [(r, c) for r in range(2) for c in range(2)]
        assert set(v for v in reader.index if v >> 40 == 0) == {0}  # empty entries are 0 here
        for _, _, data in reader.tiles():
            assert data[:3] == b"\xff\xd8\xff"


def test_dead_space_in_l02_is_skipped_through_the_index(esri_cache):
    l01 = (esri_cache / "_alllayers" / "L01" / "R0000C0000.bundle").read_bytes()
    l02_path = esri_cache / "_alllayers" / "L02" / "R0000C0000.bundle"
    raw = l02_path.read_bytes()
    assert raw[131136:len(l01)] == l01[131136:]  # the stale L01 data really is there
    with BundleReader(l02_path) as reader:
        offsets = sorted(offset for offset, size in map(lambda v: (v & (2**40 - 1), v >> 40),
                                                         reader.index) if size)
        assert len(offsets) == 16 and offsets[0] >= len(l01)
        for _, _, data in reader.tiles():
            assert data[:3] == b"\xff\xd8\xff" and data[-2:] == b"\xff\xd9"


def _usa_member(zf: zipfile.ZipFile, level: int) -> bytes:
    return zf.read(f"tile/L{level:02d}/R0000C0000.bundle")


def test_usa_tpkx_arcgis_header_and_malformed_low_levels(usa_tpkx):
    with zipfile.ZipFile(usa_tpkx) as zf:
        for level in range(6):
            reader = BundleReader(io.BytesIO(_usa_member(zf, level)))
            assert reader.header.record_count == 0
            assert set(v for v in reader.index if v >> 40 == 0) == {EMPTY_ENTRY}
            tiles = list(reader.tiles())
            assert tiles
            starts_png = [data.startswith(PNG_MAGIC) for _, _, data in tiles]
            if level <= 1:  # spec §10.3: the records start 4 bytes into the PNG
                assert not any(starts_png)
            else:
                assert all(starts_png)


def test_bundle_reader_agrees_with_gdal_on_esri_samples(esri_cache, usa_tpkx):
    """Our bytes, decoded by GDAL, equal what GDAL's own ESRIC reader shows for those tiles."""
    import rasterio

    # Folder cache: conf.xml lists LODs 0-19, so level L is overview 19 - L - 1.
    with rasterio.open(esri_cache / "conf.xml", driver="ESRIC", overview_level=19 - 2 - 1) as ds:
        with BundleReader(esri_cache / "_alllayers" / "L02" / "R0000C0000.bundle") as reader:
            for row, col, data in reader.tiles():
                ours = decode_rgba(data)[:3]
                theirs = ds.read(window=((row * 256, row * 256 + 256), (col * 256, col * 256 + 256)))
                assert np.array_equal(ours, theirs), (row, col)
    # Package: minLOD 0, maxLOD 5; good levels are 2-5 (level L is overview 5 - L - 1).
    with zipfile.ZipFile(usa_tpkx) as zf:
        for level in (2, 3, 5):
            opts = {"EXTENT_SOURCE": "TILING_SCHEME"}
            if level < 5:
                opts["overview_level"] = 5 - level - 1
            with rasterio.open(usa_tpkx, driver="ESRIC", **opts) as ds:
                reader = BundleReader(io.BytesIO(_usa_member(zf, level)))
                checked = 0
                for row, col, data in reader.tiles():
                    ours = decode_rgba(data)
                    theirs = ds.read(window=((row * 256, row * 256 + 256), (col * 256, col * 256 + 256)))
                    assert np.array_equal(ours, theirs), (level, row, col)
                    checked += 1
                assert checked


def test_written_bundle_is_read_by_gdal_like_ours(tmp_path):
    """A single-level folder cache around one of our bundles: GDAL shows our tile's colour."""
    import rasterio

    from cacheorch.formats.confxml import write_conf_xml
    from cacheorch.tiling import web_mercator_scheme

    scheme = web_mercator_scheme(max_level=1)
    (tmp_path / "_alllayers" / "L00").mkdir(parents=True)
    (tmp_path / "_alllayers" / "L01").mkdir(parents=True)
    _write(tmp_path / "_alllayers" / "L01" / "R0000C0000.bundle",
           {(1, 0): solid_png((10, 200, 30))}, record_count=SPEC_RECORD_COUNT)
    write_conf_xml(scheme, tmp_path / "conf.xml")
    with rasterio.open(tmp_path / "conf.xml", driver="ESRIC") as ds:
        pixels = ds.read(window=((256, 512), (0, 256)))
        assert pixels[:, 128, 128].tolist() == [10, 200, 30, 255]
        assert ds.read(window=((0, 256), (0, 256)))[:, 128, 128].tolist() == [0, 0, 0, 0]


def test_many_tiles_of_mixed_sizes_survive_the_batched_writes(tmp_path: Path) -> None:
    """Tiles are queued and written a megabyte (or 256 tiles) at a time: every one must land
    where the index says, across flushes, and a short write must be finished, not lost."""
    import cacheorch.formats.bundle as bundle_module
    rng = np.random.default_rng(7)
    tiles = {(r, c): rng.integers(0, 256, int(rng.integers(1, 30_000)), dtype=np.uint8).tobytes()
             for r in range(0, 128, 3) for c in range(0, 128, 2)}
    real_writev = os.writev
    calls = []

    def short_writev(fd, buffers):  # the kernel may write less than asked: half, here
        calls.append(len(buffers))
        joined = b"".join(buffers)
        return os.write(fd, joined[:max(1, len(joined) // 2)])

    path = tmp_path / "R0000C0000.bundle"
    try:
        os.writev = short_writev  # type: ignore[assignment]
        with BundleWriter(path, 0, 0) as writer:
            for (r, c), data in tiles.items():
                writer.add(r, c, data)
    finally:
        os.writev = real_writev  # type: ignore[assignment]
    assert len(calls) > 3 and max(calls) <= bundle_module._FLUSH_BUFFERS
    with BundleReader(path, bundle_row=0, bundle_col=0) as reader:
        assert {(r, c): d for r, c, d in reader.tiles()} == tiles


# -- offsets above 4 GiB (sparse files: the bytes in between are never written) ---------------

_FIVE_GIB = 5 << 30


def test_offsets_above_4_gib_are_written_and_read_through_40_bits(tmp_path):
    """Index entries hold 40-bit offsets: a tile 5 GiB into a bundle is found where it lies."""
    path = tmp_path / bundle_name(0, 0)
    writer = BundleWriter(path, 0, 0)
    writer.add(0, 0, b"first")
    writer._flush_pending()
    writer._file.seek(_FIVE_GIB)  # a hole: as if 5 GiB of tiles had been written
    writer._end = _FIVE_GIB
    writer.add(3, 7, b"far tile")
    writer.finish()
    assert path.stat().st_blocks * 512 < 1 << 24, "the test file should be sparse"
    with BundleReader(path) as reader:
        offset, size = reader.entry(3, 7)
        assert offset == _FIVE_GIB + 4 and offset > 1 << 32 and size == len(b"far tile")
        assert reader.get(3, 7) == b"far tile"
        assert reader.get(0, 0) == b"first"
        assert dict(((r, c), d) for r, c, d in reader.tiles()) == {(0, 0): b"first",
                                                                  (3, 7): b"far tile"}
        assert reader.header.file_size == _FIVE_GIB + 4 + len(b"far tile")


def test_a_hand_made_index_entry_above_4_gib_is_decoded(tmp_path):
    """Independent of our writer: the entry is packed here as ``offset | size << 40``."""
    path = tmp_path / bundle_name(0, 0)
    _write(path, {(0, 0): b"x"})
    data = b"tile bytes beyond 4 GiB"
    offset = (4 << 30) + 12345
    with open(path, "r+b") as f:
        f.seek(64 + 8 * index_slot(5, 9))
        f.write(struct.pack("<Q", offset | (len(data) << 40)))
        f.seek(offset - 4)
        f.write(struct.pack("<I", len(data)) + data)
    with BundleReader(path) as reader:
        assert reader.entry(5, 9) == (offset, len(data))
        assert reader.get(5, 9) == data
        assert (5, 9) in set(reader.positions())

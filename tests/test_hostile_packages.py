"""Hostile packages (issue 12, item 7): nothing unbounded is inflated to disk or memory.

A deflated member whose declared size is more than it could be (a bundlx other than 81,952
bytes, a bundle past 16,384 records of its header's largest tile, a header naming a tile past the
maximum tile size), or more than the temporary folder holds, is refused before a byte is written;
in a job that is a failed tile naming the member (exit 1, resumable), never a full disk.
"""
from __future__ import annotations

import json
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path

import pytest

from cacheorch.errors import FormatError
from cacheorch.formats import tpk as tpk_module
from cacheorch.formats.cache import open_cache

BUNDLE = "v101/Layers/_alllayers/L00/R0000C0000.bundle"


def _rezip(source: Path, target: Path, replace: dict[str, bytes]) -> None:
    """``source`` deflated into ``target``, members in ``replace`` swapped for the given bytes."""
    with zipfile.ZipFile(source) as src, \
            zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, replace.get(info.filename, src.read(info)))


@pytest.fixture
def tpk(fixtures: Path) -> Path:
    return fixtures / "tpk_v1" / "states_filled.tpk"


@pytest.fixture
def tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _inflated_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_a_bundle_bomb_is_refused_before_it_is_inflated(tpk: Path, tmp_path: Path,
                                                        tmp_dir: Path) -> None:
    with zipfile.ZipFile(tpk) as src:
        real = src.read(BUNDLE)
    largest = struct.unpack_from("<I", real, 8)[0]
    bomb = tmp_path / "bomb.tpk"
    _rezip(tpk, bomb, {BUNDLE: real + bytes(64 * 1024 * 1024)})  # 64 MiB of zeros, ~64 KB zipped
    assert bomb.stat().st_size < 2 * 1024 * 1024
    with open_cache(bomb) as cache, pytest.raises(FormatError) as err:
        cache.get_tile(0, 0, 0)
    message = str(err.value)
    assert "bomb.tpk!" + BUNDLE in message and "refusing to inflate it" in message
    assert f"{largest:,} bytes (its header's largest)" in message
    assert _inflated_bytes(tmp_dir) == 0


def test_a_bundle_header_naming_a_huge_tile_is_refused(tpk: Path, tmp_path: Path,
                                                       tmp_dir: Path) -> None:
    with zipfile.ZipFile(tpk) as src:
        real = bytearray(src.read(BUNDLE))
    struct.pack_into("<I", real, 8, 1 << 30)
    bad = tmp_path / "huge.tpk"
    _rezip(tpk, bad, {BUNDLE: bytes(real)})
    with open_cache(bad) as cache, pytest.raises(FormatError, match="more than the maximum tile size"):
        cache.get_tile(0, 0, 0)
    assert _inflated_bytes(tmp_dir) == 0


def test_an_oversized_bundlx_is_refused(tpk: Path, tmp_path: Path, tmp_dir: Path) -> None:
    bad = tmp_path / "bundlx.tpk"
    _rezip(tpk, bad, {BUNDLE[:-1] + "x": bytes(8 * 1024 * 1024)})
    with open_cache(bad) as cache, pytest.raises(FormatError, match="a bundlx has"):
        cache.get_tile(0, 0, 0)
    assert _inflated_bytes(tmp_dir) == 0


def test_no_room_to_inflate_is_refused_naming_the_member(tpk: Path, tmp_path: Path, tmp_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    honest = tmp_path / "honest.tpk"
    _rezip(tpk, honest, {})
    with open_cache(honest) as cache:  # room enough: reads as the stored package does
        assert cache.get_tile(0, 0, 0) is not None
    full = type("Usage", (), {"free": 10_000})()
    monkeypatch.setattr(tpk_module.shutil, "disk_usage", lambda _: full)
    with open_cache(honest) as cache, pytest.raises(FormatError) as err:
        cache.get_tile(0, 0, 0)
    assert "honest.tpk!" + BUNDLE in str(err.value) and "10,000 free" in str(err.value)


def test_a_job_reading_a_bomb_fails_its_tiles_resumably(cli, tpk: Path, tmp_path: Path,
                                                        tmp_dir: Path) -> None:
    with zipfile.ZipFile(tpk) as src:
        real = src.read(BUNDLE)
    bomb = tmp_path / "bomb.tpk"
    _rezip(tpk, bomb, {BUNDLE: real + bytes(64 * 1024 * 1024)})
    result = cli("run", "--service", str(bomb), "--levels", "0-1", "--output",
                 str(tmp_path / "out.tpkx"), "--json")
    assert result.code == 1, result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "partial"
    assert any("refusing to inflate it" in e and "bomb.tpk!" in e for e in report["errors"])
    assert _inflated_bytes(tmp_dir) < 1024 * 1024  # the level-1 bundle only, never the bomb


def test_a_lying_member_stops_at_its_declared_size(tpk: Path, tmp_path: Path, tmp_dir: Path) -> None:
    """A member whose data inflates past the size it declares is cut there (zipfile stops at the
    declared size; a CRC refuses any difference within it)."""
    with zipfile.ZipFile(tpk) as src:
        real = src.read(BUNDLE)
    liar = tmp_path / "liar.tpk"
    _rezip(tpk, liar, {})
    raw = bytearray(liar.read_bytes())
    with zipfile.ZipFile(liar) as zf:
        info = zf.getinfo(BUNDLE)
    # swap the member's deflated bytes for a stream of the real bundle plus 8 MiB (same declared size)
    packer = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    longer = packer.compress(real + bytes(8 * 1024 * 1024)) + packer.flush()
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start:start + info.compress_size] = longer[:info.compress_size]
    liar.write_bytes(bytes(raw))
    with open_cache(liar) as cache:
        try:  # the declared bytes inflated, or (here) a stream that ends early: a CRC error
            cache.get_tile(0, 0, 0)
        except FormatError as exc:
            assert "liar.tpk!" + BUNDLE in str(exc) and "CRC" in str(exc)
    assert _inflated_bytes(tmp_dir) <= len(real) + 81952  # the bundle and its bundlx, no more

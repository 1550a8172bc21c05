"""A tile is stored only if it is whole (issue 12, items 4-5), against misbehaving loopback servers.

Framing cases use a raw-socket server (tests/_rawserver.py) that sends exactly the bytes a case
needs; each case checks what the engine returns and, where it matters, what it cost.
"""
from __future__ import annotations

import gzip
import json
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from _gdal import colour_of, solid_png
from _rawserver import RawServer, response
from _tiles import mercator_service_json
from cacheorch.fetch import RetryPolicy, TileFetchEngine
from cacheorch.formats.png import encode_png
from cacheorch.net.acceptor import TileAcceptor

PNG = encode_png(8, 8, bytes(range(192)))
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\x22" * 300 + b"\xff\xd9"
FAST = RetryPolicy(retries=2, backoff=0.001, backoff_cap=0.01)
TILE = "/tile/0/0/0"


def _get(srv: RawServer, *, acceptor: TileAcceptor | None = None, timeout: float = 5.0):
    with TileFetchEngine(workers=1, trust_env=False, retry=FAST, timeout=timeout,
                         acceptor=acceptor) as engine:
        return next(iter(engine.fetch([(0, srv.url + TILE)])))


def _ok(body: bytes, *extra: str) -> bytes:
    return response(body, f"Content-Length: {len(body)}", "Content-Type: image/png", *extra)


# -- strict framing ---------------------------------------------------------------------------------

@pytest.mark.parametrize("lengths, why", [
    (("Content-Length: -5",), "bad Content-Length"),
    (("Content-Length: +{n}",), "bad Content-Length"),
    (("Content-Length: {n}", "Content-Length: {m}"), "conflicting Content-Length"),
    (("Content-Length: {n}, {m}",), "conflicting Content-Length"),
])
def test_bad_content_length_is_a_failed_tile(lengths: tuple[str, ...], why: str) -> None:
    headers = [h.format(n=len(PNG), m=len(PNG) - 10) for h in lengths]
    with RawServer(lambda _: response(PNG, *headers)) as srv:
        r = _get(srv)
        assert srv.requests[TILE] == 3  # retried, then failed
    assert r.status == "failed" and r.data is None and why in r.error


def test_repeated_equal_content_lengths_are_fine() -> None:
    n = len(PNG)
    with RawServer(lambda _: response(PNG, f"Content-Length: {n}", f"Content-Length: {n}")) as srv:
        r = _get(srv)
    assert r.status == "ok" and r.data == PNG


def test_body_shorter_than_announced_is_refused() -> None:
    with RawServer(lambda _: response(PNG[:-20], f"Content-Length: {len(PNG)}")) as srv:
        r = _get(srv)
        assert srv.requests[TILE] == 3
    assert r.status == "failed" and "truncated body" in r.error


def test_close_delimited_body_cut_short_is_refused_by_its_structure() -> None:
    # no Content-Length: only the image itself can tell that the connection closed early
    with RawServer(lambda _: response(PNG[:-30], "Content-Type: image/png")) as srv:
        r = _get(srv)
        assert srv.requests[TILE] == 3
    assert r.status == "failed" and "PNG does not end with its IEND chunk" in r.error
    assert "after 3 attempts" in r.error


def test_a_truncated_jpeg_is_refused_and_a_whole_one_accepted() -> None:
    with RawServer(lambda _: response(JPEG[:-40], "Content-Type: image/jpeg")) as srv:
        r = _get(srv, acceptor=TileAcceptor("JPEG"))
    assert r.status == "failed" and "JPEG does not end with its EOI marker" in r.error
    with RawServer(lambda _: response(JPEG, "Content-Type: image/jpeg")) as srv:
        assert _get(srv, acceptor=TileAcceptor("JPEG")).data == JPEG


def test_png_with_trailing_bytes_is_refused() -> None:
    with RawServer(lambda _: _ok(PNG + b"\0\0\0\0")) as srv:
        r = _get(srv)
    assert r.status == "failed" and "IEND" in r.error


@pytest.mark.parametrize("size_line", [b"-5", b"0x10", b"+a", b"zz"])
def test_bad_chunk_sizes_are_refused(size_line: bytes) -> None:
    body = size_line + b"\r\n" + PNG[:16] + b"\r\n0\r\n\r\n"
    with RawServer(lambda _: response(body, "Transfer-Encoding: chunked")) as srv:
        r = _get(srv)
    assert r.status == "failed" and "bad chunk size" in r.error


def test_chunked_body_cut_short_is_refused() -> None:
    body = f"{len(PNG):x}\r\n".encode() + PNG[:-10]
    with RawServer(lambda _: response(body, "Transfer-Encoding: chunked")) as srv:
        r = _get(srv)
    assert r.status == "failed" and "truncated chunked body" in r.error


def test_endless_chunk_size_line_is_refused_without_growing_a_buffer() -> None:
    def endless(_: str) -> Iterator[bytes]:
        yield response(b"", "Transfer-Encoding: chunked")
        for _ in range(200):
            yield b"0" * 4096
    with RawServer(endless) as srv:
        r = _get(srv)
    assert r.status == "failed" and "line too long" in r.error


def test_chunked_and_content_length_together_read_chunked() -> None:
    body = f"{len(PNG):x}\r\n".encode() + PNG + b"\r\n0\r\n\r\n"
    with RawServer(lambda _: response(body, "Transfer-Encoding: chunked",
                                      "Content-Length: 3")) as srv:
        r = _get(srv)
    assert r.status == "ok" and r.data == PNG


# -- size limits ------------------------------------------------------------------------------------

def test_announced_oversized_tile_is_refused_before_its_body_is_read() -> None:
    big = 64 * 1024 * 1024

    def huge(_: str) -> Iterator[bytes]:
        yield response(b"", f"Content-Length: {big}")
        for _ in range(big // 65536):
            yield b"\0" * 65536
    with RawServer(huge) as srv:
        started = time.monotonic()
        r = _get(srv, acceptor=TileAcceptor("PNG", max_size=1024 * 1024))
        elapsed = time.monotonic() - started
        sent = srv.sent[TILE]
    assert r.status == "failed" and "larger than the maximum tile size of 1048576 bytes" in r.error
    assert "67108864 bytes announced" in r.error
    assert sent < 3 * 16 * 1024 * 1024 and elapsed < 5  # the client hung up; 3 × 64 MiB not read


@pytest.mark.parametrize("framing", ["close", "chunked"])
def test_unannounced_oversized_body_stops_at_the_limit(framing: str) -> None:
    limit = 256 * 1024

    def endless(_: str) -> Iterator[bytes]:
        if framing == "close":
            yield response(b"", "Content-Type: image/png") + PNG[:100]
            part = b"\0" * 65536
        else:
            yield response(b"", "Transfer-Encoding: chunked")
            part = b"10000\r\n" + b"\0" * 65536 + b"\r\n"
        for _ in range(2000):  # 128 MiB if nobody stops reading
            yield part
    with RawServer(endless) as srv:
        tracemalloc.start()
        try:
            r = _get(srv, acceptor=TileAcceptor("PNG", max_size=limit))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert r.status == "failed" and f"maximum tile size of {limit} bytes" in r.error
    assert peak < 8 * limit, peak


def test_a_gzip_bomb_costs_kilobytes_not_gigabytes() -> None:
    packer = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"\0" * (1 << 20)
    bomb = b"".join(packer.compress(zeros) for _ in range(64)) + packer.flush()  # 64 MiB inflated
    assert len(bomb) < 100 * 1024
    with RawServer(lambda _: _ok(bomb, "Content-Encoding: gzip")) as srv:
        tracemalloc.start()
        try:
            started = time.monotonic()
            r = _get(srv, acceptor=TileAcceptor("PNG", max_size=1024 * 1024))
            elapsed = time.monotonic() - started
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert r.status == "failed" and "inflates past it" in r.error
    assert peak < 4 * 1024 * 1024, peak  # the body and a capped inflation, not 64 MiB
    assert elapsed < 5


def test_gzip_within_the_limit_and_cut_short() -> None:
    with RawServer(lambda _: _ok(gzip.compress(PNG), "Content-Encoding: gzip")) as srv:
        assert _get(srv).data == PNG
    with RawServer(lambda _: _ok(gzip.compress(PNG)[:-12], "Content-Encoding: gzip")) as srv:
        r = _get(srv)
    assert r.status == "failed" and "gzip body" in r.error


def test_vector_tiles_get_the_size_check_only() -> None:
    pbf = gzip.compress(b"\x1a\x10" + b"layer-bytes....." * 4)
    with RawServer(lambda _: _ok(pbf, "Content-Type: application/x-protobuf")) as srv:
        r = _get(srv, acceptor=TileAcceptor("pbf"))
    assert r.status == "ok" and r.data == pbf  # stored as served, compressed
    error = json.dumps({"error": {"code": 500, "message": "boom", "details": []}}).encode()
    with RawServer(lambda _: _ok(error)) as srv:
        r = _get(srv, acceptor=TileAcceptor("pbf"))
    assert r.status == "failed" and "ArcGIS error 500: boom" in r.error  # not a tile either


# -- a whole job ----------------------------------------------------------------------------------

LEVEL = 1
TILES = {(LEVEL, r, c): solid_png(colour_of(LEVEL, r, c)) for r in range(2) for c in range(2)}


def _job_server(bad: dict[str, bytes]) -> RawServer:
    service = json.dumps(mercator_service_json(LEVEL)).encode()

    def respond(path: str) -> bytes:
        if path.endswith("/MapServer"):
            return response(service, f"Content-Length: {len(service)}",
                            "Content-Type: application/json")
        level, row, col = (int(p) for p in path.rsplit("/", 3)[1:])
        if path.split("/tile", 1)[1] in bad:
            return bad[path.split("/tile", 1)[1]]
        return _ok(TILES[(level, row, col)])
    return RawServer(respond)


@pytest.mark.parametrize("bad_answer, flags, why", [
    (response(TILES[(1, 0, 1)][:-25], "Content-Type: image/png"), (),
     "PNG does not end with its IEND chunk"),
    (response(TILES[(1, 0, 1)], "Content-Length: -1"), (), "bad Content-Length"),
    (_ok(TILES[(1, 0, 1)]), ("--max-tile-size", "100B"), "larger than the maximum tile size"),
])
def test_run_never_says_completed_over_a_broken_tile(cli, tmp_path: Path, bad_answer: bytes,
                                                     flags: tuple[str, ...], why: str) -> None:
    output = tmp_path / "out.tpkx"
    with _job_server({"/1/0/1": bad_answer}) as srv:
        url = srv.url + "/arcgis/rest/services/T/MapServer"
        result = cli("run", "--service", url, "--levels", str(LEVEL), "--output", str(output),
                     "--workers", "2", "--json", *flags)
        assert srv.requests["/arcgis/rest/services/T/MapServer/tile/1/0/1"] >= 2  # retried
    assert result.code == 1, result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "partial"
    assert any("level 1 row 0 col 1" in e and why in e for e in report["errors"]), report["errors"]
    assert not output.exists()  # no output with a hole unless --allow-partial


def test_max_tile_size_from_config_and_resume(cli, tmp_path: Path) -> None:
    from cacheorch.config import load_config
    from cacheorch.jobspec import JobSpec, job_spec_from
    config = tmp_path / "c.ini"
    config.write_text("[job:j]\nservice = http://127.0.0.1:9/x/MapServer\nmax_tile_size = 2MiB\n")
    spec = job_spec_from(load_config(config), "j", {})
    assert spec.max_tile_size == 2 * 1024 * 1024
    assert spec.connection_options()["max_tile_size"] == 2 * 1024 * 1024
    assert JobSpec.from_parameters(json.loads(json.dumps(spec.to_parameters()))) == spec
    from cacheorch.connection import Connection
    from cacheorch.dask_executor import Credentials
    connection = Connection(**spec.connection_options())
    assert connection.max_tile_size == 2 * 1024 * 1024
    assert Credentials.of(connection, 4).connection().max_tile_size == 2 * 1024 * 1024  # workers
    bad = cli("plan", "--service", "http://127.0.0.1:9/x/MapServer", "--max-tile-size", "lots")
    assert bad.code == 2 and "--max-tile-size: 'lots' is not a size" in bad.stderr
    assert bad.stderr.count("\n") == 1


# -- one definition for run and verify ----------------------------------------------------------

BODIES = {
    "whole PNG": PNG,
    "PNG cut short": PNG[:-7],
    "PNG with trailing bytes": PNG + b"\0\0\0\0",
    "whole JPEG": JPEG,
    "JPEG cut short": JPEG[:-50],
    "HTML page": b"<html><body>busy</body></html>",
}


def test_run_stores_exactly_what_verify_passes(tmp_path: Path) -> None:
    """The fetch path and verify give every body the same verdict; re-exporting a cache with
    broken tiles (the ``cache`` tile source) refuses the same ones."""
    from test_verify import export

    from cacheorch.formats.cache import open_cache
    from cacheorch.plugins.tiles_cache import CacheTileFetcher
    from cacheorch.tiling import TileKey
    from cacheorch.verify import verify_output

    keys = {name: (level, 0, 0) for level, name in enumerate(BODIES)}  # a bundle each
    output = export(tmp_path, "compact-v2", {keys[name]: body for name, body in BODIES.items()})
    verify_bad = {int(d.where[1:3]) for d in verify_output(output).defects}
    fetched = {}
    for name, body in BODIES.items():
        with RawServer(lambda _, b=body: response(b)) as srv:
            fetched[name] = _get(srv).status
    with CacheTileFetcher(open_cache(output)) as source:
        reread = {name: source.read(TileKey(*keys[name])).status for name in BODIES}
    for name, (level, _, _) in keys.items():
        whole = name.startswith("whole")
        assert (level not in verify_bad) == whole, name
        assert (fetched[name] == "ok") == whole, name
        assert (reread[name] == "ok") == whole, name


def test_a_full_disk_during_a_job_is_exit_1_naming_the_path_and_resumable(
        cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from cacheorch.formats import bundle

    def no_space(fd: int, buffers: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")
    output = tmp_path / "out.tpkx"
    with _job_server({}) as srv:
        url = srv.url + "/arcgis/rest/services/T/MapServer"
        with monkeypatch.context() as patch:
            patch.setattr(bundle, "_writev_all", no_space)
            result = cli("run", "--service", url, "--levels", str(LEVEL), "--output", str(output))
        assert result.code == 1, result.stderr
        assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
        assert "no space left on" in result.stderr.lower() and "cacheorch resume" in result.stderr
        assert str(output) + ".partial" in result.stderr  # the file being written
        job = json.loads(cli("jobs", "--json").stdout)["jobs"][0]
        assert job["status"] == "failed"
        again = cli("resume", str(job["id"]))
        assert again.code == 0, again.stderr
    assert output.exists()


def test_a_full_sqlite_output_is_exit_1_too(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite says "database or disk is full" (SQLITE_FULL) on its own: the same exit 1, resumable."""
    from cacheorch.plugins import _sqlite_staging

    cls = _sqlite_staging.SqliteStagingSession
    prepare = cls._prepare

    def small(self):  # noqa: ANN001, ANN202 - a database that may not grow past a few pages
        conn = prepare(self)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        return conn
    output = tmp_path / "out.mbtiles"
    with _job_server({}) as srv:
        url = srv.url + "/arcgis/rest/services/T/MapServer"
        with monkeypatch.context() as patch:
            patch.setattr(cls, "_prepare", small)
            result = cli("run", "--service", url, "--levels", str(LEVEL), "--exporter", "mbtiles",
                         "--output", str(output))
        assert result.code == 1, result.stderr
        assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
        assert "full" in result.stderr and "cacheorch resume" in result.stderr
        assert str(output) in result.stderr, result.stderr  # the staging database beside the output

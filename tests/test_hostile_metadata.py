"""Hostile service JSON and JSON files (issue 12, item 6): exit 2 and one line, never a MemoryError,
RecursionError, OverflowError or a traceback, and nothing planned on a broken scheme.

The service JSON comes from a loopback server (tests/_rawserver.py), read by ``cacheorch plan``
as a user would; ``run`` shares the same reading and checks.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest

from _rawserver import RawServer, response
from _tiles import mercator_service_json
from cacheorch.jsonlimits import JSONTooDeepError, loads

GOOD = mercator_service_json(3)


def _with(path: str, value: object) -> bytes:
    """GOOD with the value at a dotted ``path`` replaced (``tileInfo.lods.0.resolution``)."""
    doc = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    holder: object = doc
    for part in parents:
        holder = holder[int(part)] if isinstance(holder, list) else holder[part]  # type: ignore[index]
    if isinstance(holder, list):
        holder[int(last)] = value
    else:
        holder[last] = value  # type: ignore[index]
    return json.dumps(doc).encode()  # NaN and Infinity are written as JSON's usual extension


def _without_sr() -> bytes:
    doc = copy.deepcopy(GOOD)
    del doc["spatialReference"], doc["tileInfo"]["spatialReference"]
    return json.dumps(doc).encode()


def _plan(cli, body: bytes, *flags: str):
    answer = response(body, f"Content-Length: {len(body)}", "Content-Type: application/json")
    with RawServer(lambda _: answer) as srv:
        started = time.monotonic()
        result = cli("plan", "--service", srv.url + "/arcgis/rest/services/X/MapServer",
                     "--levels", "0-3", *flags)
        elapsed = time.monotonic() - started
    return result, elapsed


def _assert_one_line_exit_2(result, elapsed: float, needle: str) -> None:
    assert result.code == 2, (result.code, result.stdout[-300:], result.stderr[-300:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-500:]
    for bad in ("Traceback", "MemoryError", "RecursionError", "OverflowError"):
        assert bad not in result.stderr
    assert needle in lines[0], lines[0]
    assert len(lines[0]) < 400
    assert elapsed < 10


@pytest.mark.parametrize("body, needle", [
    (_with("tileInfo.origin.x", float("nan")), "origin"),
    (_with("tileInfo.origin.y", float("inf")), "origin"),
    (_with("tileInfo.origin.x", "1e400"), "origin"),
    (_with("tileInfo.lods.1.resolution", 0), "resolution"),
    (_with("tileInfo.lods.1.resolution", -2.5), "resolution"),
    (_with("tileInfo.lods.1.resolution", float("nan")), "resolution"),
    (_with("tileInfo.lods.1.resolution", float("inf")), "resolution"),
    (_with("tileInfo.lods.1.scale", float("nan")), "scale"),
    (_with("tileInfo.lods.3.resolution", 1e-12), "tiles a side"),  # finite, yet petabytes to plan
    (_with("fullExtent", {"xmin": -1e300, "ymin": -1e300, "xmax": 1e300, "ymax": 1e300}),
     "tiles a side"),
    (_with("tileInfo.lods.1.level", float("inf")), "whole number"),
    (_with("tileInfo.lods.1.level", -1), "level -1"),
    (_with("tileInfo.lods.1.level", 100), "level 100"),
    (_with("tileInfo.cols", 100000), "tile size"),
    (_with("tileInfo.rows", -256), "tile size"),
    (_with("tileInfo.cols", 3), "tile size"),
    (_with("tileInfo.cols", float("inf")), "tileInfo.cols"),
    (_with("tileInfo.rows", "lots"), "tileInfo.rows"),
    (_with("tileInfo.dpi", -96), "dpi"),
    (_with("tileInfo.lods", [{"level": i, "resolution": 1.0 / (i + 1), "scale": 1.0}
                              for i in range(200_000)]), "lods"),
    (_with("tileInfo.spatialReference", {"wkid": "abc"}), "wkid"),
    (_with("tileInfo.spatialReference", {"wkid": 1e300}), "wkid"),
    (_with("tileInfo.spatialReference", 5), "spatialReference"),
    (_without_sr(), "spatialReference"),
    (b"[" * 200_000 + b"]" * 200_000, "nested more than 64 levels"),
    (b'{"tileInfo": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5001, "nested more than 64 levels"),
])
def test_hostile_service_json_is_one_line_and_exit_2(cli, body: bytes, needle: str) -> None:
    result, elapsed = _plan(cli, body)
    _assert_one_line_exit_2(result, elapsed, needle)


@pytest.mark.parametrize("path, value", [
    ("fullExtent", {"xmin": "a", "ymin": 0, "xmax": 1, "ymax": 1}),
    ("fullExtent", {"xmin": float("nan"), "ymin": 0, "xmax": 1, "ymax": 1}),
    ("fullExtent", "everywhere"),
    ("minLOD", float("inf")),
    ("maxExportTilesCount", float("inf")),
])
def test_malformed_optional_fields_are_ignored_not_a_traceback(cli, path: str, value: object) -> None:
    result, _ = _plan(cli, _with(path, value))
    assert "Traceback" not in result.stderr
    assert result.code == 0 or (result.code == 2 and result.stderr.count("\n") == 1), result.stderr


def test_the_good_service_plans(cli) -> None:
    result, _ = _plan(cli, json.dumps(GOOD).encode())
    assert result.code == 0, result.stderr


def test_json_depth_helper() -> None:
    assert loads(b'{"a": [1, {"b": "[[[[ {{{{"}]}') == {"a": [1, {"b": "[[[[ {{{{"}]}
    assert loads("[" * 64 + "]" * 64) is not None
    with pytest.raises(JSONTooDeepError):
        loads("[" * 65 + "]" * 65)
    with pytest.raises(ValueError):
        loads("[" * 100_000)  # unbalanced and deep: refused, not a RecursionError
    with pytest.raises(ValueError):
        loads(b"{not json")


def test_deep_json_aoi_file_and_root_json(cli, tmp_path: Path) -> None:
    aoi = tmp_path / "deep.geojson"
    aoi.write_text("[" * 100_000 + "]" * 100_000)
    result, elapsed = _plan(cli, json.dumps(GOOD).encode(), "--aoi", f"0-3={aoi}")
    _assert_one_line_exit_2(result, elapsed, "nested more than 64 levels")


def test_deep_json_error_body_under_a_tile_is_a_failed_tile() -> None:
    from cacheorch.fetch import RetryPolicy, TileFetchEngine
    body = b'{"error": ' + b"[" * 30000 + b"]" * 30000 + b"}"
    with RawServer(lambda _: response(body, f"Content-Length: {len(body)}")) as srv, \
            TileFetchEngine(workers=1, trust_env=False, retry=RetryPolicy(retries=0)) as engine:
        r = next(iter(engine.fetch([(0, srv.url + "/tile/0/0/0")])))
    assert r.status == "failed" and "not an image" in r.error

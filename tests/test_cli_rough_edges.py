"""What a newcomer tripped over on the command line (issue 14, part 3), one test per rough edge."""
from __future__ import annotations

import logging
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from cacheorch.demo import make_demo_cache
from cacheorch.serve import CacheServer


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_cache(tmp_path_factory.mktemp("edges") / "small-cache", levels=range(3))


@pytest.fixture(scope="module")
def served(small_cache: Path) -> Iterator[CacheServer]:
    with CacheServer(small_cache) as server:
        yield server


def _run(cli, catalog: Path, url: str, output: Path, *extra: str):
    return cli("--catalog", str(catalog), "run", "--service", url, "--levels", "0-2",
               "--output", str(output), *extra)


def test_jobs_table_is_aligned(cli, served, tmp_path) -> None:
    catalog = tmp_path / "c.sqlite"
    for i in range(2):
        assert _run(cli, catalog, served.url, tmp_path / f"o{i}.tpkx").code == 0
    lines = cli("--catalog", str(catalog), "jobs").stdout.splitlines()
    assert len(lines) == 3
    # every column ends where its heading ends (numbers right-aligned, text left-aligned)
    head = lines[0]
    for word in ("written", "failed"):
        end = head.index(word) + len(word)
        for line in lines[1:]:
            assert line[end - 1].isdigit() and line[end] == " ", (word, lines)
    created = head.index("created")
    starts = {line.index(" ", created + 1) for line in lines[1:]}  # the timestamps end together
    assert len(starts) == 1 and all(line[created].isdigit() for line in lines[1:]), lines
    assert {line.index("/") for line in lines[1:]} == {head.index("output")}


def test_already_exists_names_both_modes(cli, served, tmp_path) -> None:
    catalog = tmp_path / "c.sqlite"
    for exporter, name in (("tpkx", "a.tpkx"), ("compact-v2", "b"), ("mbtiles", "c.mbtiles")):
        assert _run(cli, catalog, served.url, tmp_path / name, "--exporter", exporter).code == 0
        again = _run(cli, catalog, served.url, tmp_path / name, "--exporter", exporter)
        assert again.code != 0
        assert "already exists" in again.stderr, again.stderr
        assert "--mode overwrite" in again.stderr and "--mode merge" in again.stderr


def test_misspelt_local_path_says_no_such_file(cli, small_cache: Path) -> None:
    wrong = str(small_cache) + "x"
    result = cli("plan", "--service", wrong, "--levels", "0")
    assert result.code == 2
    assert "no such file or folder" in result.stderr and "recognises" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_dns_error_is_printed_whole(cli, monkeypatch) -> None:
    """urllib3 wraps the reason in "...(Caused by NameResolutionError(...))": keep its own ")"."""
    reason = ("HTTPSConnectionPool(host='nosuchhost.invalid', port=443): Max retries exceeded with url: "
              "/arcgis/rest/services/X/MapServer?f=json (Caused by NameResolutionError(\"<urllib3."
              "connection.HTTPSConnection object at 0x7f>: Failed to resolve 'nosuchhost.invalid' "
              "([Errno -2] Name or service not known)\"))")

    def fail(*args, **kwargs):
        raise requests.exceptions.ConnectionError(reason)

    monkeypatch.setattr(requests.Session, "get", fail)
    result = cli("plan", "--service", "https://nosuchhost.invalid/arcgis/rest/services/X/MapServer",
                 "--levels", "0")
    assert result.code != 0
    assert result.stderr.strip().endswith(
        "Failed to resolve 'nosuchhost.invalid' ([Errno -2] Name or service not known)"), result.stderr


def test_aoi_tier_outside_the_selection_warns(cli, served, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="cacheorch"):
        result = cli("plan", "--service", served.url, "--levels", "0-2", "--aoi", "1-2=extent",
                     "--aoi", "4-6=extent")
    assert result.code == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "4-6" in warnings[0] and "0-2" in warnings[0], warnings


def test_verify_says_bundles_only_for_bundle_formats(cli, served, tmp_path) -> None:
    catalog = tmp_path / "c.sqlite"
    for exporter, name, bundles in (("compact-v2", "b", True), ("mbtiles", "c.mbtiles", False),
                                    ("gpkg", "d.gpkg", False)):
        assert _run(cli, catalog, served.url, tmp_path / name, "--exporter", exporter).code == 0
        result = cli("verify", str(tmp_path / name))
        assert result.code == 0
        summary = result.stdout.split(": ", 1)[1]  # after the path (the test's folder says bundles)
        assert ("bundle" in summary) is bundles, result.stdout
        assert "21 tiles" in result.stdout


def test_demo_commands_agree_with_each_other(cli, tmp_path) -> None:
    """The by-hand ``serve`` publishes the very URL the printed ``run`` commands use."""
    result = cli("demo", "--dir", str(tmp_path / "demo"))
    assert result.code == 0, result.stderr
    serve_line = re.search(r"by hand: (cacheorch serve [^,]+),", result.stdout).group(1)
    serve_args = shlex.split(serve_line)[2:]
    services = {m for m in re.findall(r"--service (http\S+)", result.stdout)}
    assert len(services) == 1
    (url,) = services
    name = serve_args[serve_args.index("--name") + 1]
    port = serve_args[serve_args.index("--port") + 1]
    with CacheServer(serve_args[0], service_name=name) as server:  # what the by-hand serve does
        assert url == server.url.replace(server.root_url, f"http://127.0.0.1:{port}")

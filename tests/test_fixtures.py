"""The repository carries its own fixtures and bench reference, and points at nothing outside itself.

The fixtures are the files their sources published, byte for byte (SHA256SUMS); every one of them
has its provenance and licence in SOURCES.txt; and no code, test or document names a folder beside
the checkout, so a clone anywhere runs every test (issue 15).
"""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Files in tests/fixtures/ that describe the fixtures rather than being fixtures.
ABOUT = {"SOURCES.txt", "SHA256SUMS", ".gitattributes"}
#: Where the tests and benches used to read from: the developers' machine, not the repository.
OUTSIDE = ("/work/", "bench-reference", "shared/fixtures")
#: What is checked for OUTSIDE: everything of the repository that is code, tests or documents.
CHECKED = ("cacheorch", "plugins", "migrations", "tests", "bench", "docs", "examples", ".ci",
           "README.md", "pyproject.toml", "cacheorch.ini")


def _sums(fixtures: Path) -> dict[str, str]:
    """``SHA256SUMS`` (``sha256sum`` output) as {relative path: hex digest}."""
    rows = [line.split("  ", 1) for line in (fixtures / "SHA256SUMS").read_text().splitlines()]
    return {name: digest for digest, name in rows}


def test_every_fixture_is_the_published_file(fixtures: Path) -> None:
    sums = _sums(fixtures)
    assert len(sums) == 21
    for name, digest in sums.items():
        path = fixtures / name
        assert path.is_file(), f"fixture missing: tests/fixtures/{name}"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"fixture changed: {name}"


def test_every_fixture_has_its_provenance_and_licence(fixtures: Path) -> None:
    files = {p.relative_to(fixtures).as_posix() for p in fixtures.rglob("*") if p.is_file()}
    licences = {name for name in files if name.startswith("LICENSES/")}
    assert files - ABOUT - licences == set(_sums(fixtures)), "every fixture is listed in SHA256SUMS"
    sources = (fixtures / "SOURCES.txt").read_text()
    for top in {name.split("/")[0] for name in _sums(fixtures)}:
        assert f"\n{top}" in sources, f"{top} has no entry in SOURCES.txt"
    assert licences and all(f"-> {name}" in sources for name in licences), licences


def test_bench_reference_is_in_the_repository() -> None:
    reference = ROOT / "bench" / "reference"
    names = {"aoi-europe.geojson", "nginx.conf.tmpl", "mapproxy.yaml.tmpl", "seed.yaml.tmpl"}
    assert names <= {p.name for p in reference.iterdir()}
    spec = importlib.util.spec_from_file_location("bench_nginx", ROOT / "bench" / "_nginx.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.REFERENCE == reference and module.REFERENCE_TEMPLATE.is_file()


def test_nothing_points_outside_the_repository() -> None:
    found = []
    for top in CHECKED:
        paths = [ROOT / top] if (ROOT / top).is_file() else sorted((ROOT / top).rglob("*"))
        for path in paths:
            if (not path.is_file() or path == Path(__file__) or "__pycache__" in path.parts
                    or path.is_relative_to(ROOT / "tests" / "fixtures")):
                continue
            data = path.read_bytes()
            if b"\0" in data:
                continue  # binary
            text = data.decode("utf-8", "replace")
            found += [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
                      for n, line in enumerate(text.splitlines(), 1)
                      if any(mark in line for mark in OUTSIDE)]
    assert not found, "\n".join(found)

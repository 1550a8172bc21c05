"""Shared fixtures: an isolated environment, a CLI runner, a migrated catalog, the fixtures folder."""
from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:  # shared test helpers (_tileserver, _gdal) import by bare name
    sys.path.insert(0, str(TESTS))

#: The real files from public projects (never edited).
FIXTURES = (TESTS.parent.parent / "shared" / "fixtures")
if not FIXTURES.is_dir():
    FIXTURES = Path(os.environ.get("CACHEORCH_FIXTURES", "/work/shared/fixtures"))


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the developer's cacheorch.ini, catalog or token."""
    monkeypatch.setenv("CACHEORCH_CONFIG", str(tmp_path / "no-config.ini"))
    (tmp_path / "no-config.ini").write_text("")
    monkeypatch.setenv("CACHEORCH_CATALOG", str(tmp_path / "catalog.sqlite"))
    for name in ("ARCGIS_TOKEN", "ARCGIS_REFERER", "CACHEORCH_DISABLE_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def fixtures() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip("shared fixtures folder not found")
    return FIXTURES


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str) -> CliResult:
    """Run ``cacheorch ARGS`` in this process, capturing output and the exit code."""
    from cacheorch.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli() -> Iterator[object]:
    yield run_cli

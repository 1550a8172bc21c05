"""Shared fixtures: an isolated environment, a CLI runner, a migrated catalog, the fixtures folder."""
from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import textwrap

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:  # shared test helpers (_tileserver, _gdal) import by bare name
    sys.path.insert(0, str(TESTS))

#: The real files from public projects, carried in the repository (never edited; see SOURCES.txt).
FIXTURES = TESTS / "fixtures"


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the developer's cacheorch.ini, catalog or token."""
    monkeypatch.setenv("CACHEORCH_CONFIG", str(tmp_path / "no-config.ini"))
    (tmp_path / "no-config.ini").write_text("")
    monkeypatch.setenv("CACHEORCH_CATALOG", str(tmp_path / "catalog.sqlite"))
    for name in ("ARCGIS_TOKEN", "ARCGIS_REFERER", "ARCGIS_USERNAME", "ARCGIS_PASSWORD",
                 "ARCGIS_TOKEN_URL", "CACHEORCH_DISABLE_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def fixtures() -> Path:
    """The fixtures folder; its absence fails the test (a missing file is never a skip)."""
    if not FIXTURES.is_dir():
        pytest.fail(f"fixtures folder missing: {FIXTURES}", pytrace=False)
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


def _install_fake_distribution(root: Path) -> None:
    """A real distribution on sys.path: a module plus a dist-info with a `cacheorch` entry point."""
    (root / "cacheorch_keepodd.py").write_text(textwrap.dedent('''
        """A third-party policy: keep odd levels."""
        from cacheorch import hookimpl
        from cacheorch.interfaces import SelectionPolicy

        class KeepOdd(SelectionPolicy):
            """Keep odd levels only."""
            name = "keep-odd"
            def select(self, scheme, levels):
                return [lod for lod in levels if lod.level % 2 == 1]

        @hookimpl
        def cacheorch_register_policies():
            return [KeepOdd]
    '''))
    dist = root / "cacheorch_keepodd-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: cacheorch-keepodd\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text("[cacheorch]\nkeepodd = cacheorch_keepodd\n")
    (dist / "top_level.txt").write_text("cacheorch_keepodd\n")


@pytest.fixture
def fake_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = tmp_path / "site"
    root.mkdir()
    _install_fake_distribution(root)
    monkeypatch.syspath_prepend(str(root))
    from cacheorch.pluginmanager import get_plugins
    get_plugins.cache_clear()
    yield root
    get_plugins.cache_clear()
    sys.modules.pop("cacheorch_keepodd", None)



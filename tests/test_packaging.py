"""The wheel holds one top-level package, cacheorch, with plugins/ and migrations/ inside it."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_has_one_top_level_package(tmp_path: Path) -> None:
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next(tmp_path.glob("cacheorch-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"cacheorch"}
    top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["cacheorch"]
    for path in sorted((ROOT / "plugins").glob("*.py")):
        assert f"cacheorch/plugins/{path.name}" in names
    for path in sorted((ROOT / "migrations").rglob("*.py")):
        assert f"cacheorch/migrations/{path.relative_to(ROOT / 'migrations').as_posix()}" in names
    assert "cacheorch/migrations/script.py.mako" in names
    for asset in ("index.html", "workbench.js", "workbench.css", "vendor/ol-workbench.js",
                  "vendor/ol.css", "vendor/LICENSE-ol.md"):  # the workbench runs from the wheel
        assert f"cacheorch/workbench/static/{asset}" in names
    assert not any("vendor-build" in n or "node_modules" in n for n in names)
    for name in ("maplibre-gl.js", "maplibre-gl.css", "maplibre-gl.LICENSE.txt"):  # vector preview
        assert f"cacheorch/vector/static/{name}" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "cacheorch = cacheorch.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_no_top_level_plugins_or_migrations_module_is_imported() -> None:
    """Importing plugins by a second name would register them twice."""
    import cacheorch.pluginmanager as pm
    pm.make_plugins(load_entrypoints=False)
    assert "plugins" not in sys.modules and "migrations" not in sys.modules


def test_python_dash_m_runs_the_cli() -> None:
    out = subprocess.run([sys.executable, "-m", "cacheorch", "--version"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.startswith("cacheorch, version ")

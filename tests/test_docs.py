"""docs/plugins.md cannot drift from the code: generated blocks, quoted files and hook coverage."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cacheorch import docs_hooks, hookspecs

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "plugins.md"


def test_generated_reference_matches_the_code() -> None:
    stale = docs_hooks.stale_blocks(GUIDE.read_text(encoding="utf-8"))
    assert not stale, (f"docs/plugins.md is out of date ({', '.join(stale)}): run "
                       "python -m cacheorch.docs_hooks --write docs/plugins.md")


def test_a_changed_hook_makes_the_docs_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check can fail: a docstring edit in hookspecs shows up as a stale block."""
    text = GUIDE.read_text(encoding="utf-8")
    func = hookspecs.cacheorch_track_event
    monkeypatch.setattr(func, "__doc__", func.__doc__ + "\n    A new sentence.\n")
    assert docs_hooks.stale_blocks(text) == ["hooks"]


def test_every_hook_spec_and_kind_is_in_the_guide() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    for name in hookspecs.__all__:
        if name.startswith("cacheorch_"):
            assert f"#### `{name}`" in text
            assert f"def {name}(" in text
    for cls in ("ScaleSource", "SelectionPolicy", "AOIGenerator", "TileSource", "Exporter",
                "ExportSession", "BundleSink"):
        assert f"`cacheorch.interfaces.{cls}`" in text


def test_files_quoted_in_the_tutorial_are_the_examples_files() -> None:
    """Each ``<!-- FILE: path -->`` block in the guide is that file, byte for byte."""
    text = GUIDE.read_text(encoding="utf-8")
    quoted = re.findall(r"<!-- FILE: (\S+) -->\n```\w*\n(.*?)```\n", text, re.DOTALL)
    assert len(quoted) >= 2
    for path, body in quoted:
        assert (ROOT / path).read_text(encoding="utf-8") == body, f"{path} differs from the guide"


def test_contracts_named_in_the_guide_exist() -> None:
    import cacheorch.testing as testing
    text = GUIDE.read_text(encoding="utf-8")
    for name in re.findall(r"`(\w+Contract)`", text):
        assert hasattr(testing, name), name


def test_check_command_exits_nonzero_on_a_stale_copy(tmp_path: Path) -> None:
    stale = tmp_path / "plugins.md"
    stale.write_text(GUIDE.read_text(encoding="utf-8").replace(
        "def cacheorch_track_event(event: Event)", "def cacheorch_track_event(event)"))
    run = [sys.executable, "-m", "cacheorch.docs_hooks", "--check"]
    bad = subprocess.run([*run, str(stale)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "out of date: hooks" in bad.stderr
    good = subprocess.run([*run, str(GUIDE)], capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stderr

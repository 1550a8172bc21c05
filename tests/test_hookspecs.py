"""Every hook spec is documented (a :param: per argument) and has a test named after it."""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import pluggy

from cacheorch import hookspecs

TESTS = Path(__file__).resolve().parent


def _specs() -> dict[str, object]:
    return {name: getattr(hookspecs, name) for name in dir(hookspecs)
            if name.startswith("cacheorch_") and callable(getattr(hookspecs, name))}


def test_every_hook_spec_is_registered_with_pluggy() -> None:
    pm = pluggy.PluginManager("cacheorch")
    pm.add_hookspecs(hookspecs)
    assert set(_specs()) == {name for name in dir(pm.hook) if name.startswith("cacheorch_")}
    assert set(_specs()) == set(hookspecs.__all__) - {"hookspec", "hookimpl"}


def test_every_hook_spec_is_documented() -> None:
    for name, func in _specs().items():
        doc = inspect.getdoc(func) or ""
        assert len(doc.splitlines()) >= 3, f"{name} has no real docstring"
        assert "Called" in doc, f"{name}: the docstring must say when it is called"
        for arg in inspect.signature(func).parameters:
            assert f":param {arg}:" in doc, f"{name}: :param {arg}: missing"
        if inspect.signature(func).return_annotation not in ("None", None):
            assert ":return:" in doc, f"{name}: :return: missing"


def test_every_hook_spec_has_a_test() -> None:
    """A test named test_hook_<spec name>[_more] must exist somewhere in tests/."""
    source = "\n".join(p.read_text() for p in TESTS.rglob("test_*.py"))
    tested = set(re.findall(r"def (test_hook_cacheorch_\w+)", source))
    missing = [name for name in _specs()
               if not any(t == f"test_hook_{name}" or t.startswith(f"test_hook_{name}_") for t in tested)]
    assert not missing, f"hook specs without a test_hook_<name> test: {missing}"

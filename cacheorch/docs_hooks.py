"""Generate the reference part of docs/plugins.md from the code: hook specs and plugin base classes.

Why generated: a guide that copies signatures by hand drifts the first time a hook gains an
argument. The guide keeps the generated text between marker comments; ``tests/test_docs.py``
fails when the committed text differs from what this module produces, so docs and code move
together. Usage::

    python -m cacheorch.docs_hooks                 # print the generated blocks
    python -m cacheorch.docs_hooks --write FILE    # refresh them in FILE (docs/plugins.md)
    python -m cacheorch.docs_hooks --check FILE    # exit 1 when FILE is stale
"""
from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["BLOCKS", "hooks_markdown", "interfaces_markdown", "refresh", "stale_blocks", "main"]


def _signature(func: Callable[..., Any], drop_self: bool = False) -> str:
    """``name(arg: Type, ...) -> Return`` with annotations as written in the source."""
    sig = inspect.signature(func)
    params = []
    for i, p in enumerate(sig.parameters.values()):
        if drop_self and i == 0:
            continue
        text = p.name
        if p.kind is p.VAR_POSITIONAL:
            text = "*" + text
        elif p.kind is p.VAR_KEYWORD:
            text = "**" + text
        if p.annotation is not p.empty:
            text += f": {p.annotation if isinstance(p.annotation, str) else p.annotation.__name__}"
        if p.default is not p.empty:
            text += f" = {p.default!r}"
        params.append(text)
    out = f"{func.__name__}({', '.join(params)})"
    ret = sig.return_annotation
    if ret is not sig.empty:
        out += f" -> {ret if isinstance(ret, str) else getattr(ret, '__name__', ret)}"
    return out


def _spec_options(func: Callable[..., Any]) -> str:
    opts = getattr(func, "cacheorch_spec", None) or {}
    flags = [name for name in ("firstresult", "historic") if opts.get(name)]
    return f" ({', '.join(flags)})" if flags else ""


def hooks_markdown() -> str:
    """Every hook spec, in the order of ``hookspecs.__all__``: signature and full docstring."""
    from cacheorch import hookspecs
    parts = []
    for name in hookspecs.__all__:
        if name in ("hookspec", "hookimpl"):
            continue
        func = getattr(hookspecs, name)
        doc = inspect.getdoc(func) or ""
        parts.append(f"#### `{name}`{_spec_options(func)}\n\n```python\n@hookimpl\n"
                     f"def {_signature(func)}: ...\n```\n\n{doc}\n")
    return "\n".join(parts)


def _interface_classes() -> list[type]:
    from cacheorch import interfaces as i
    return [i.Plugin, i.ScaleSource, i.SelectionPolicy, i.PolicyContext, i.AOIGenerator,
            i.TileSource, i.TileFetcher, i.Exporter, i.ExportSession, i.BundleSink,
            i.DelegatedExporter, i.DelegateReport]


def interfaces_markdown() -> str:
    """Each plugin base class: its docstring's first paragraph and its public methods."""
    parts = []
    for cls in _interface_classes():
        doc = (inspect.getdoc(cls) or "").split("\n\n")[0]
        lines = [f"#### `{cls.__module__}.{cls.__name__}`\n", doc, ""]
        for name, member in cls.__dict__.items():
            if name.startswith("_"):
                continue
            func = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
            if isinstance(member, property):
                func = member.fget
            if not inspect.isfunction(func):
                continue
            abstract = " *(abstract)*" if getattr(func, "__isabstractmethod__", False) else ""
            kind = "@classmethod " if isinstance(member, classmethod) else \
                "@property " if isinstance(member, property) else ""
            first = (inspect.getdoc(func) or "").split("\n\n")[0].replace("\n", " ")
            lines.append(f"- `{kind}{_signature(func, drop_self=True)}`{abstract}"
                         + (f": {first}" if first else ""))
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


#: Generated block name → the function producing its text.
BLOCKS: dict[str, Callable[[], str]] = {"hooks": hooks_markdown, "interfaces": interfaces_markdown}


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- BEGIN GENERATED: {name} [^>]*-->\n)(.*?)(<!-- END GENERATED: {name} -->)",
                      re.DOTALL)


def refresh(text: str) -> str:
    """``text`` with every generated block replaced by freshly generated content."""
    for name, make in BLOCKS.items():
        pattern = _pattern(name)
        if not pattern.search(text):
            raise ValueError(f"no generated block {name!r} in the document")
        body = make()
        text = pattern.sub(lambda m, body=body: m.group(1) + "\n" + body + "\n" + m.group(3), text)
    return text


def stale_blocks(text: str) -> list[str]:
    """Names of the blocks whose committed text differs from what the code generates."""
    fresh = refresh(text)
    return [name for name in BLOCKS
            if _pattern(name).search(text).group(2) != _pattern(name).search(fresh).group(2)]  # type: ignore[union-attr]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cacheorch.docs_hooks", description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", metavar="FILE", help="refresh the generated blocks in FILE")
    group.add_argument("--check", metavar="FILE", help="exit 1 when FILE's blocks are stale")
    args = parser.parse_args(argv)
    if args.write or args.check:
        path = Path(args.write or args.check)
        text = path.read_text(encoding="utf-8")
        if args.check:
            stale = stale_blocks(text)
            if stale:
                print(f"{path}: generated blocks out of date: {', '.join(stale)}; run "
                      f"python -m cacheorch.docs_hooks --write {path}", file=sys.stderr)
                return 1
            return 0
        path.write_text(refresh(text), encoding="utf-8")
        return 0
    for make in BLOCKS.values():
        print(make())
    return 0


if __name__ == "__main__":
    sys.exit(main())

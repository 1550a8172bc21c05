"""Which paths the workbench's API may read and write: inside its roots, and only what the user may.

The API can be driven by any local program holding the session token, so a path it is given is
checked here before any plugin opens it: it must lie inside one of the workbench's roots (the
folder it was started in and the user's home unless ``--root`` says otherwise), and the user must
be allowed to read it (a source) or to write its folder (an output).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cacheorch.errors import UsageError

__all__ = ["Roots"]


class Roots:
    """The folders the API's paths must lie in."""

    def __init__(self, roots: Sequence[str | os.PathLike[str]]) -> None:
        self.roots = [Path(r).expanduser().resolve() for r in roots]
        if not self.roots:
            raise UsageError("the workbench needs at least one root folder")

    def _inside(self, value: str, what: str) -> Path:
        text = (value or "").strip()
        if not text:
            raise UsageError(f"no {what} given")
        path = Path(text).expanduser()
        if not path.is_absolute():
            path = self.roots[0] / path
        path = path.resolve()
        if not any(path == root or path.is_relative_to(root) for root in self.roots):
            raise UsageError(f"{what} {path} is outside the workbench's folders "
                             f"({', '.join(map(str, self.roots))}); start it with --root to add one")
        return path

    def readable(self, value: str, what: str = "source") -> Path:
        """A local source (cache folder or package) the user may read."""
        path = self._inside(value, what)
        if not path.exists():
            raise UsageError(f"{what} {path}: no such file or folder")
        if not os.access(path, os.R_OK):
            raise UsageError(f"{what} {path}: not readable by this user")
        return path

    def writable(self, value: str, what: str = "output") -> Path:
        """An output path whose folder exists and which the user may write."""
        path = self._inside(value, what)
        folder = path.parent
        if not folder.is_dir():
            raise UsageError(f"{what} {path}: the folder {folder} does not exist")
        if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise UsageError(f"{what} {path}: this user may not write there")
        return path

    def default_output(self, name: str, extension: str) -> str:
        return str(self.roots[0] / f"{name or 'cache'}{extension}")

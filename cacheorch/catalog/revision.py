"""The newest migration revision, read from the shipped files without importing Alembic.

Importing Alembic costs about 0.4 s; a catalog that is already at head needs none of it, and
most commands open such a catalog. The test suite checks this agrees with Alembic's own head.
"""
from __future__ import annotations

import functools
import re
import sqlite3
from importlib.resources import files
from pathlib import Path

__all__ = ["shipped_head", "at_shipped_head"]

_REVISION = re.compile(r"^revision(?:\s*:\s*[\w\[\]]+)?\s*=\s*['\"]([^'\"]+)['\"]", re.M)
_DOWN = re.compile(r"^down_revision(?:\s*:[^=]+)?\s*=\s*(.+)$", re.M)


@functools.lru_cache(maxsize=1)
def shipped_head() -> str | None:
    """The single revision no other revision names as its parent (None if unclear)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    versions = files("cacheorch.migrations").joinpath("versions")
    for entry in versions.iterdir():
        if not entry.name.endswith(".py"):
            continue
        text = entry.read_text(encoding="utf-8")
        rev = _REVISION.search(text)
        down = _DOWN.search(text)
        if rev is None or down is None:
            return None
        revisions.add(rev.group(1))
        parents.update(re.findall(r"['\"]([^'\"]+)['\"]", down.group(1)))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def at_shipped_head(path: Path) -> bool:
    """Whether the catalog file exists and records exactly the shipped head revision."""
    head = shipped_head()
    if head is None or not path.is_file():
        return False
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            rows = con.execute("SELECT version_num FROM alembic_version").fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return False
    return rows == [(head,)]

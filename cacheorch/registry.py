"""One registry per plugin kind: names → classes, strict about duplicates and unknown names."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from cacheorch.errors import PluginConflictError, UnknownPluginError

__all__ = ["Registry", "Entry"]

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered class and the plugin (module or distribution) that provided it."""

    name: str
    cls: type[T]
    plugin: str


class Registry(Generic[T]):
    """Classes of one kind (``exporter``, ``policy``...) keyed by their ``name``.

    Why strict: two plugins silently shadowing each other is the hardest bug a user can meet,
    so a clash is an error naming both, and a typo lists what exists.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def add(self, cls: type[T], plugin: str) -> None:
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginConflictError(f"{self.kind} class {cls.__qualname__} from plugin {plugin!r} "
                                      "has no name")
        if name in self._entries:
            other = self._entries[name]
            if other.cls is cls:
                return
            raise PluginConflictError(f"{self.kind} {name!r} from plugin {plugin!r} clashes with "
                                      f"{other.plugin!r}")
        self._entries[name] = Entry(name, cls, plugin)

    def get(self, name: str) -> type[T]:
        try:
            return self._entries[name].cls
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise UnknownPluginError(f"unknown {self.kind} {name!r}; available: {known}") from None

    def entry(self, name: str) -> Entry[T]:
        self.get(name)
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names(self) -> list[str]:
        return sorted(self._entries)

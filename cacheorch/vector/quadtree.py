"""The vector tile index (``/tilemap``, a vtpk's ``p12/tilemap/root.json``): a quadtree of present tiles.

``{"index": [NW, NE, SW, SE]}`` holds the four level-1 children of the level-0 tile; each node is
``0`` (no tile), ``1`` (a tile without children: a leaf, clients overzoom it), a list of four
children (a tile with children), or ``2`` (a subtree kept elsewhere; spec §1.8 — undocumented, so
treated as "unknown": its tiles are asked for). Child order NW, NE, SW, SE is (row, col) offsets
(0,0), (0,1), (1,0), (1,1).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["QuadIndex", "build_index", "CHILD_OFFSETS"]

#: (row, col) offsets of the NW, NE, SW, SE children.
CHILD_OFFSETS = ((0, 0), (0, 1), (1, 0), (1, 1))


@dataclass(frozen=True)
class QuadIndex:
    """A parsed tile index; :meth:`has` answers for any (level, row, col)."""

    index: list[Any]

    @classmethod
    def parse(cls, data: Any, where: str = "tilemap") -> QuadIndex:
        """From the JSON document; ValueError naming ``where`` when it is not a tile index."""
        index = data.get("index") if isinstance(data, dict) else None
        if not isinstance(index, list) or len(index) != 4:
            raise ValueError(f"{where}: not a vector tile index (no 4-element 'index')")
        _check(index, where, 1)
        return cls(index)

    def has(self, level: int, row: int, col: int) -> bool | None:
        """True: the tile exists; False: it does not (absent, or below a leaf); None: unknown."""
        if level < 0 or row < 0 or col < 0 or row >= 1 << level or col >= 1 << level:
            return False
        if level == 0:
            return True
        node: Any = self.index
        for depth in range(1, level + 1):
            shift = level - depth
            child = ((row >> shift) & 1) * 2 + ((col >> shift) & 1)
            node = node[child]
            if node == 0:
                return False
            if node == 2:
                return None
            if node == 1:
                return depth == level
        return True

    def block(self, level: int, top: int, left: int, size: int) -> np.ndarray:
        """Presence of a ``size``×``size`` block (``size`` a power of two, ``top``/``left``
        multiples of it), unknown subtrees counted as present. Walks only the block's subtree,
        so a bundle of an empty region costs one descent, not 16,384 lookups."""
        if size < 2 or size & (size - 1):
            raise ValueError(f"block size {size} is not a power of two above 1")
        out = np.zeros((size, size), dtype=bool)
        depth = size.bit_length() - 1
        if level < depth:  # the whole level is smaller than the block
            for r in range(min(size, 1 << level)):
                for c in range(min(size, 1 << level)):
                    out[r, c] = self.has(level, r, c) is not False
            return out
        anc_level, anc_row, anc_col = level - depth, top >> depth, left >> depth
        if anc_row >= 1 << anc_level or anc_col >= 1 << anc_level:
            return out
        node: Any = self.index  # the children of the level-0 tile
        for d in range(1, anc_level + 1):
            shift = anc_level - d
            node = node[((anc_row >> shift) & 1) * 2 + ((anc_col >> shift) & 1)]
            if node == 2:
                out[:] = True
                return out
            if not isinstance(node, list):
                return out  # absent, or a leaf: no tile below it
        _fill(out, node, 1, depth, 0, 0)
        return out

    def tiles(self, max_level: int) -> Iterable[tuple[int, int, int]]:
        """Every tile the index says exists, down to ``max_level`` (level 0 included)."""
        yield (0, 0, 0)
        stack: list[tuple[Any, int, int, int]] = [(self.index, 0, 0, 0)]
        while stack:
            node, level, row, col = stack.pop()
            if level >= max_level:
                continue
            for (dr, dc), child in zip(CHILD_OFFSETS, node):
                if child == 0 or child == 2:
                    continue
                key = (level + 1, 2 * row + dr, 2 * col + dc)
                yield key
                if isinstance(child, list):
                    stack.append((child, *key))


def _fill(out: np.ndarray, node: list[Any], depth: int, target: int, row: int, col: int) -> None:
    """Mark in ``out`` the tiles ``target`` levels below ``node``'s tile (at relative ``depth``)."""
    for (dr, dc), child in zip(CHILD_OFFSETS, node):
        r, c = 2 * row + dr, 2 * col + dc
        if child == 0:
            continue
        if child == 2:  # unknown subtree: everything under it may exist
            span = 1 << (target - depth)
            out[r * span:(r + 1) * span, c * span:(c + 1) * span] = True
        elif depth == target:
            out[r, c] = True
        elif isinstance(child, list):
            _fill(out, child, depth + 1, target, r, c)


def _check(node: list[Any], where: str, level: int) -> None:
    for child in node:
        if isinstance(child, list):
            if len(child) != 4:
                raise ValueError(f"{where}: a node at level {level} has {len(child)} children, not 4")
            _check(child, where, level + 1)
        elif child not in (0, 1, 2) or isinstance(child, bool):
            raise ValueError(f"{where}: node value {child!r} at level {level} (expected 0, 1, 2 "
                             f"or a list)")


def build_index(keys: Iterable[tuple[int, int, int]]) -> dict[str, Any]:
    """The index of a set of tiles: a tile is a list when any descendant exists, 1 when none does.

    Ancestors of a present tile are written as present (lists) even when the package holds no
    tile for them (an export starting at level 5), so the tiles below stay reachable.
    """
    present: set[tuple[int, int, int]] = set()
    reach: set[tuple[int, int, int]] = set()  # tiles with a present descendant
    for level, row, col in keys:
        present.add((level, row, col))
        for up in range(1, level + 1):
            parent = (level - up, row >> up, col >> up)
            if parent in reach:
                break
            reach.add(parent)

    def node(level: int, row: int, col: int) -> Any:
        key = (level, row, col)
        if key in reach:
            return [node(level + 1, 2 * row + dr, 2 * col + dc) for dr, dc in CHILD_OFFSETS]
        return 1 if key in present else 0

    return {"index": [node(1, dr, dc) for dr, dc in CHILD_OFFSETS]}

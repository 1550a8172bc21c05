"""The per-host budget of a map job: layers on one host run one after another, hosts side by side.

Why a schedule and not a shared in-flight limit inside the tile engine: each layer job runs the
whole pipeline (tile engine, writer thread, checkpoints) with its own ``--workers`` and
``--max-rps``. Running the layers of one host one at a time gives that host exactly the pressure
of a single job (never N × workers, never N × max-rps) and costs no more than the sum of the layers
run alone, while hosts that share nothing run in parallel. A limit shared between engines would
have to wake event loops in other threads from inside the engine's hot path (and change
:mod:`cacheorch.fetch`, which other work edits), to gain only the overlap of one layer's last
bundles with the next layer's first ones (bench/map_hosts.py measures both cases).
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar
from urllib.parse import urlsplit

__all__ = ["host_of", "service_hosts", "group_by_host", "run_by_host"]

T = TypeVar("T")


def host_of(location: str | None) -> str:
    """The host a layer's requests go to (``scheme://host:port``), or ``local`` for a path."""
    if not location or "://" not in location:
        return "local"
    parts = urlsplit(location)
    return f"{parts.scheme.lower()}://{(parts.netloc or '').lower()}"


def service_hosts(location: str, tile_servers: Sequence[str] = ()) -> list[str]:
    """Every host a layer's requests go to: its service's, and its ``tileServers``'."""
    return [host_of(location)] + [host_of(url) for url in tile_servers]


def group_by_host(items: Sequence[T], hosts: Callable[[T], Iterable[str]]) -> list[list[T]]:
    """``items`` in groups that share no host, each in the items' order.

    An item may reach several hosts (a hosted tile layer's ``tileServers``); two items that
    share any host are in one group, so no host ever serves two groups at once.
    """
    parent: dict[str, str] = {}

    def root(host: str) -> str:
        while parent.setdefault(host, host) != host:
            host = parent[host] = parent[parent[host]]
        return host
    keys = []
    for item in items:
        mine = [root(h) for h in hosts(item)] or ["local"]
        for other in mine[1:]:
            parent[root(other)] = root(mine[0])
        keys.append(mine[0])
    groups: dict[str, list[T]] = {}
    for item, key in zip(items, keys):
        groups.setdefault(root(key), []).append(item)
    return list(groups.values())


def run_by_host(items: Sequence[T], hosts: Callable[[T], Iterable[str]],
                work: Callable[[T], None]) -> None:
    """Call ``work(item)`` for every item: in order within a host group, groups in parallel
    threads (:func:`group_by_host`).

    ``work`` should handle its own errors (a failed layer must not stop the others); an
    exception that escapes it is re-raised here once every group has finished.
    """
    groups = group_by_host(items, hosts)
    if len(groups) <= 1:
        for item in items:
            work(item)
        return
    errors: list[BaseException] = []

    def run(group: list[T]) -> None:
        try:
            for item in group:
                work(item)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(group,), name=f"map-host-{i}", daemon=True)
               for i, group in enumerate(groups)]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():  # a timed join lets Ctrl-C reach the main thread
            thread.join(0.2)
    if errors:
        raise errors[0]

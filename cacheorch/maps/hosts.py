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
from collections.abc import Callable, Sequence
from typing import TypeVar
from urllib.parse import urlsplit

__all__ = ["host_of", "run_by_host"]

T = TypeVar("T")


def host_of(location: str | None) -> str:
    """The host a layer's requests go to (``scheme://host:port``), or ``local`` for a path."""
    if not location or "://" not in location:
        return "local"
    parts = urlsplit(location)
    return f"{parts.scheme.lower()}://{(parts.netloc or '').lower()}"


def run_by_host(items: Sequence[T], host: Callable[[T], str], work: Callable[[T], None]) -> None:
    """Call ``work(item)`` for every item: in order within a host, hosts in parallel threads.

    ``work`` should handle its own errors (a failed layer must not stop the others); an
    exception that escapes it is re-raised here once every host has finished.
    """
    groups: dict[str, list[T]] = {}
    for item in items:
        groups.setdefault(host(item), []).append(item)
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
               for i, group in enumerate(groups.values())]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():  # a timed join lets Ctrl-C reach the main thread
            thread.join(0.2)
    if errors:
        raise errors[0]

"""The ``dask`` executor: bundles fetched on a dask.distributed cluster, written by this process.

Why this split: fetching is what one machine runs out of (sockets, TLS, the GIL of one process),
while an output file must have exactly one writer. So workers fetch and assemble the tiles of a
bundle and send them back, and this process feeds them to the job's single
:class:`~cacheorch.writer.BundleWriterThread`, which checkpoints each bundle in the catalog as
the local executor does: resume skips the same bundles, failed tiles are recorded the same way,
and the output is the same tile for tile.

Memory stays flat: bundles are submitted lazily from the plan's stream, at most ``window`` tasks
are in flight (submitted, running, or computed and waiting to be gathered), and a full bundle
(up to 16,384 tiles) is split into tasks of at most :data:`TILES_PER_TASK` tiles, so neither a
worker nor this process ever holds more than ``window`` × that many tiles.

Credentials: the token travels inside each task, in memory and over the cluster's connections
only (use TLS comms, ``tls://``, on an untrusted network); :class:`Credentials` hides it from
``repr``, so dask's task logs ("Compute Failed ... args: ...") and dashboard never show it, and
task keys name only the job and the bundle. Workers cannot renew a token (the user's password
never leaves this machine): this process renews it before it expires when it can, and tiles a
worker saw refused end as failed tiles that ``cacheorch resume`` fetches again.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cacheorch.connection import Connection
from cacheorch.errors import CacheorchError, UsageError
from cacheorch.interfaces import Service, TileFetcher, TileSource
from cacheorch.net import NetworkSettings
from cacheorch.net.acceptor import DEFAULT_MAX_TILE_SIZE
from cacheorch.planner import BundlePlan
from cacheorch.tiling import TileKey
from cacheorch.writer import BundleWriterThread

if TYPE_CHECKING:
    from cacheorch.runner import _Run

__all__ = ["Credentials", "BundleTask", "BundleResult", "TILES_PER_TASK", "fetch_bundle",
           "split_bundle", "fetch_all_dask"]

log = logging.getLogger(__name__)

#: Most tiles one task fetches and returns: at 50 KB a tile, 50 MB per task in flight.
TILES_PER_TASK = 1024
#: Tasks in flight per worker thread: one running, one queued so no worker waits for the client.
_TASKS_PER_THREAD = 2
#: Renew the token when it expires within this many seconds (tasks queued meanwhile use it).
_RENEW_BEFORE = 300.0
#: Seconds to wait for the scheduler to answer and for a first worker to join.
_CONNECT_TIMEOUT = 30.0

BundleKey = tuple[int, int, int]
#: What a task returns: (bundle key, [(row, col, bytes)], missing, failed, [(row, col, error)]).
BundleResult = tuple[BundleKey, list[tuple[int, int, bytes]], int, int, list[tuple[int, int, str]]]


@dataclass(frozen=True)
class Credentials:
    """What a worker needs to talk to the service like this process does; the token never shows."""

    token: str | None
    referer: str | None
    user_agent: str
    timeout: float
    retries: int
    headers: tuple[tuple[str, str], ...] = ()
    #: Politeness, per worker thread: the job's ``--max-rps`` shared out over the cluster's threads.
    max_rps: float | None = None
    max_failure_rate: float | None = None
    failure_window: int = 200
    max_tile_size: int = DEFAULT_MAX_TILE_SIZE
    #: CA bundle, proxies and timeouts: workers reach the service as this process does.
    network: NetworkSettings | None = None

    @classmethod
    def of(cls, connection: Connection, threads: int = 1) -> Credentials:
        """``connection``'s settings for one of ``threads`` worker threads fetching at once."""
        max_rps = connection.max_rps
        return cls(connection.token, connection.referer, connection.user_agent, connection.timeout,
                   connection.retries, tuple(sorted(connection.headers.items())),
                   max_rps / max(1, threads) if max_rps else None,
                   connection.max_failure_rate, connection.failure_window, connection.max_tile_size,
                   connection.network)

    def connection(self) -> Connection:
        """A connection with no token provider: workers never hold the user's password."""
        return Connection(token=self.token, referer=self.referer, user_agent=self.user_agent,
                          timeout=None if self.network else self.timeout, retries=self.retries,
                          headers=dict(self.headers),
                          max_rps=self.max_rps, max_failure_rate=self.max_failure_rate,
                          failure_window=self.failure_window, max_tile_size=self.max_tile_size,
                          network=self.network)

    def __repr__(self) -> str:  # dask logs a failed task's arguments
        return f"Credentials(token={'***' if self.token else None}, referer={self.referer!r})"

    __str__ = __repr__


@dataclass(frozen=True)
class BundleTask:
    """Everything but the bundle that a worker needs to fetch it; picklable.

    ``run`` identifies one execution of one job, so a worker thread reuses its open tile source
    (and its kept-alive connections) across that run's tasks and opens a new one for another.
    """

    run: str
    service: Service
    source: TileSource
    credentials: Credentials
    workers: int
    tilemap: bool | None

    def __repr__(self) -> str:
        return f"BundleTask(run={self.run!r}, service={self.service.location!r})"

    __str__ = __repr__


# -- the worker's side --------------------------------------------------------------------------

_local = threading.local()


def _fetcher(task: BundleTask) -> tuple[TileFetcher, Connection]:
    """This worker thread's open tile source for ``task``'s run (and current token)."""
    from cacheorch.plugins.tilemap import with_tilemap
    ident = (task.run, task.credentials)
    held = getattr(_local, "held", None)
    if held is not None and held[0] == ident:
        return held[1], held[2]
    if held is not None:
        _local.held = None
        try:
            held[1].close()
        except Exception:  # a stale fetcher that fails to close must not fail this task
            pass
    connection = task.credentials.connection()
    opened = task.source.open(task.service, connection, task.workers)
    fetcher = with_tilemap(opened, task.service, connection, enabled=task.tilemap)
    _local.held = (ident, fetcher, connection)
    return fetcher, connection


def fetch_bundle(part: BundlePlan, task: BundleTask) -> BundleResult:
    """On a worker: fetch the tiles of ``part`` (one bundle's, or a slice of them) and return them.

    Raises when the source dropped results, as the local executor does, so no bundle is ever
    recorded with tiles nobody fetched.
    """
    fetcher, connection = _fetcher(task)
    tiles: list[tuple[int, int, bytes]] = []
    errors: list[tuple[int, int, str]] = []
    missing = failed = seen = 0
    for result in fetcher.fetch(part.keys()):
        k = result.key
        if result.status == "ok" and result.data is not None:
            tiles.append((k.row, k.col, result.data))
        elif result.status == "missing":
            missing += 1
        else:
            failed += 1
            errors.append((k.row, k.col, connection.redact(result.error or "failed")))
        seen += 1
    if seen != part.tile_count:
        raise CacheorchError(f"the tile source returned {seen} of {part.tile_count} tiles of "
                             f"bundle L{part.level} R{part.bundle_row} C{part.bundle_col}")
    return (part.level, part.bundle_row, part.bundle_col), tiles, missing, failed, errors


def split_bundle(bundle: BundlePlan, size: int = TILES_PER_TASK) -> list[BundlePlan]:
    """``bundle`` as parts of at most ``size`` tiles (rows' spans cut where needed), in order."""
    if bundle.tile_count <= size:
        return [bundle]
    parts: list[BundlePlan] = []
    spans: list[tuple[int, int, int]] = []
    room = size
    for row, first, last in bundle.spans:
        while first <= last:
            take = min(room, last - first + 1)
            spans.append((row, first, first + take - 1))
            first += take
            room -= take
            if room == 0:
                parts.append(BundlePlan(bundle.level, bundle.bundle_row, bundle.bundle_col,
                                        tuple(spans)))
                spans, room = [], size
    if spans:
        parts.append(BundlePlan(bundle.level, bundle.bundle_row, bundle.bundle_col, tuple(spans)))
    return parts


# -- the client's side --------------------------------------------------------------------------

def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise UsageError("the dask executor needs dask.distributed: pip install "
                         "'cacheorch[dask]' (or 'dask[distributed]')") from None
    return distributed


def _connect(distributed: Any, address: str) -> Any:
    try:
        client = distributed.Client(address, timeout=_CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise CacheorchError(f"cannot reach the dask scheduler at {address}: "
                             f"{' '.join(str(exc).split()) or type(exc).__name__}") from None
    try:
        client.wait_for_workers(1, timeout=_CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        client.close()
        raise CacheorchError(f"the dask scheduler at {address} has no worker "
                             f"({type(exc).__name__})") from None
    return client


def _fresh_credentials(run: _Run, current: Credentials, threads: int) -> Credentials:
    """The credentials to ship now: renewed first if the token is about to expire."""
    connection = run.connection
    expires = connection.token_expires
    if (connection.can_renew_token and connection.token and expires is not None
            and expires - time.time() < _RENEW_BEFORE):
        try:
            connection.renew_token(connection.token, run.plan.service.location)
        except CacheorchError:
            pass  # the tiles will tell: refused ones fail and a resume fetches them again
    if connection.token != current.token:
        return Credentials.of(connection, threads)
    return current


def fetch_all_dask(run: _Run, skip: dict[BundleKey, int], *, window: int | None = None,
                   tiles_per_task: int = TILES_PER_TASK) -> None:
    """Run's ``fetch_all`` on the cluster at ``run.plan.spec.scheduler``.

    :param window: tasks in flight at most (default: two per worker thread of the cluster).
    """
    distributed = _distributed()
    spec = run.plan.spec
    source = run.plan.tile_source
    if source is None:
        raise CacheorchError("the plan was made without a tile source")
    address = spec.scheduler or ""
    client = _connect(distributed, address)
    run_id = f"cacheorch-{run.job_id}-{uuid.uuid4().hex[:8]}"
    threads = max(1, sum(client.nthreads().values()))
    credentials = Credentials.of(run.connection, threads)
    if window is None:
        window = max(2, _TASKS_PER_THREAD * threads)
    writer = BundleWriterThread(run.session, run._bundle_done)
    run.writer = writer  # a merge copies the tiles the existing output holds through it
    futures = distributed.as_completed(loop=client.loop)
    in_flight: set[Any] = set()
    pending = (part for fetched in _to_fetch(run, skip)
               for part in split_bundle(fetched, tiles_per_task))

    def submit_next() -> bool:
        nonlocal credentials
        part = next(pending, None)
        if part is None:
            return False
        key = (part.level, part.bundle_row, part.bundle_col)  # in run.open since _to_fetch
        credentials = _fresh_credentials(run, credentials, threads)
        task = BundleTask(run_id, run.plan.service, source, credentials, spec.workers,
                          spec.tilemap)
        row, col, _ = part.spans[0]
        future = client.submit(fetch_bundle, part, task, pure=False,
                               key=f"{run_id}-L{key[0]}-R{key[1]}-C{key[2]}-{row}-{col}")
        in_flight.add(future)
        futures.add(future)
        return True

    try:
        for _ in range(window):
            if not submit_next():
                break
        for future in futures:
            in_flight.discard(future)
            key, tiles, missing, failed, errors = future.result()
            future.release()
            state = run.open[key]
            for row, col, data in tiles:
                writer.add(key, row, col, data)
                state.written += 1
                state.bytes += len(data)
            state.missing += missing
            state.failed += failed
            state.errors.extend((row, col, run.connection.redact(error))
                                for row, col, error in errors)
            count = len(tiles) + missing + failed
            state.seen += count
            del tiles
            if state.seen == state.plan.tile_count:
                del run.open[key]
                writer.finish(key, state)
            writer.check()
            run.progress(count)
            submit_next()
        writer.close()
    except BaseException:
        writer.abort()
        if in_flight:
            try:
                client.cancel(list(in_flight))
            except Exception:  # the cluster may be what failed
                pass
        raise
    finally:
        client.close()
    if run.open:
        raise CacheorchError(f"the cluster returned no result for {len(run.open)} bundle(s)")


def _to_fetch(run: Any, skip: dict[BundleKey, int]) -> Iterator[BundlePlan]:
    """What the workers fetch of every bundle still to do (``_Run._work`` chooses): the whole
    bundle, or as row spans the tiles left to fetch of a repaired or merged one; the tiles the
    staged copy or the existing output already holds go to the job's writer here, on the client.
    """
    for bundle, keys in run._work(skip):
        if keys is None:
            yield bundle
        elif keys:
            yield BundlePlan(bundle.level, bundle.bundle_row, bundle.bundle_col, _spans_of(keys))


def _spans_of(keys: list[TileKey]) -> tuple[tuple[int, int, int], ...]:
    """Keys of one bundle (in row, then column order) as runs of consecutive columns per row."""
    spans: list[tuple[int, int, int]] = []
    for key in keys:
        if spans and spans[-1][0] == key.row and spans[-1][2] + 1 == key.col:
            spans[-1] = (key.row, spans[-1][1], key.col)
        else:
            spans.append((key.row, key.col, key.col))
    return tuple(spans)

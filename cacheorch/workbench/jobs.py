"""Exports started from the workbench: ``run_job`` in a worker thread, its progress kept for the page.

Progress comes from two places the CLI also uses: the ``progress`` callback of ``run_job`` (tiles,
for tiles/s and the ETA) and the ``cacheorch_track_event`` hook (bundles per level, the end).
Cancelling makes the progress callback raise ``KeyboardInterrupt`` in the worker, which is what
Ctrl-C does to ``cacheorch run``: the job is recorded as interrupted and stays resumable.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cacheorch import hookimpl
from cacheorch.errors import CacheorchError, UsageError
from cacheorch.events import BundleDone, Event, JobFinished, JobStarted

if TYPE_CHECKING:
    from collections.abc import Callable

    from cacheorch.catalog import Catalog
    from cacheorch.cli import App
    from cacheorch.connection import Connection
    from cacheorch.jobplan import JobPlan

__all__ = ["LiveJob", "JobManager"]

log = logging.getLogger(__name__)

#: How long a request starting a job waits for it to be recorded (or refused) before answering.
START_TIMEOUT = 30.0


@dataclass
class LiveJob:
    """A job running (or lately run) in this workbench: what the page's progress shows."""

    job_id: int
    tiles_planned: int
    status: str = "running"
    done: int = 0
    written: int = 0
    missing: int = 0
    failed: int = 0
    bytes: int = 0
    message: str = ""
    output: str = ""
    levels: dict[int, dict[str, int]] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def to_json(self) -> dict[str, Any]:
        elapsed = (self.ended or time.monotonic()) - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = max(self.tiles_planned - self.done, 0)
        return {"job_id": self.job_id, "status": self.status, "tiles_planned": self.tiles_planned,
                "tiles_done": self.done, "tiles_written": self.written,
                "tiles_missing": self.missing, "tiles_failed": self.failed, "bytes": self.bytes,
                "tiles_per_second": round(rate, 1), "elapsed_s": round(elapsed, 1),
                "eta_s": round(left / rate, 1) if rate > 0 and self.status == "running" else None,
                "message": self.message, "output": self.output,
                "levels": [{"level": lv} | counts for lv, counts in sorted(self.levels.items())]}


class JobManager:
    """Starts, cancels and watches jobs; registered as a plugin for ``cacheorch_track_event``."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.live: dict[int, LiveJob] = {}
        self.lock = threading.Lock()
        #: Bumped on every change, so the event stream sends only news.
        self.version = 0
        self.threads: list[threading.Thread] = []

    def _changed(self) -> None:
        self.version += 1

    @hookimpl
    def cacheorch_track_event(self, event: Event) -> None:
        with self.lock:
            job = self.live.get(event.job_id)
            if job is None:
                return
            if isinstance(event, BundleDone):
                row = job.levels.setdefault(event.level, {"written": 0, "missing": 0,
                                                          "failed": 0, "bytes": 0})
                for key in row:
                    row[key] += getattr(event, key)
                job.written += event.written
                job.missing += event.missing
                job.failed += event.failed
                job.bytes += event.bytes
            elif isinstance(event, JobStarted):
                job.tiles_planned = event.tiles_planned
            elif isinstance(event, JobFinished):
                job.status, job.output = event.status, event.output
            self._changed()

    def start(self, plan: JobPlan, connection: Connection, job_id: int | None = None,
              retry_failed: bool = False) -> LiveJob:
        """Run ``plan`` in a worker thread (a resume when ``job_id`` is given); return once the
        catalog has the job, or raise what stopped it before that."""
        from cacheorch.runner import run_job
        if job_id is not None and job_id in self.live and self.live[job_id].status == "running":
            raise UsageError(f"job {job_id} is running already")

        def live(new_id: int, catalog: Catalog) -> LiveJob:
            job = LiveJob(new_id, plan.tiles)
            if job_id is not None:  # a resume counts on from the bundles the catalog has done
                done = catalog.get_job(new_id)
                job.written, job.missing, job.failed, job.bytes = (
                    done.get(k) or 0 for k in ("tiles_written", "tiles_missing", "tiles_failed",
                                               "bytes"))
                job.done = job.written + job.missing + job.failed
            return job

        def run(catalog: Catalog, progress: Any, on_start: Any) -> tuple[str, str]:
            outcome = run_job(self.app.plugins, catalog, connection, plan, job_id=job_id,
                              progress=progress, on_start=on_start, retry_failed=retry_failed)
            return outcome.status, outcome.message
        return self.launch(run, live, connection, "job")

    def launch(self, run: Callable[[Catalog, Callable[[int], None], Callable[[int], None]],
                                   tuple[str, str]],
               live: Callable[[int, Catalog], LiveJob], connection: Connection, what: str
               ) -> LiveJob:
        """Call ``run(catalog, progress, on_start)`` in a worker thread; ``on_start(id)`` makes
        the live job with ``live(id, catalog)``; return it once started, or raise what stopped
        it before that. ``run`` returns the status and message it ended with."""
        started = threading.Event()
        box: dict[str, Any] = {}

        def on_start(new_id: int) -> None:
            job = live(new_id, box["catalog"])
            with self.lock:
                self.live[new_id] = job
                self._changed()
            box["job"] = job
            started.set()

        def progress(n: int) -> None:
            job = box.get("job")
            if job is None:
                return
            with self.lock:
                job.done += n
                self._changed()
            if job.cancel.is_set():
                raise KeyboardInterrupt  # run_job records the job as interrupted, resumable

        def work() -> None:
            catalog = box["catalog"] = self.app.open_catalog(redact=connection.redact)
            try:
                status, message = run(catalog, progress, on_start)
                self._ended(box.get("job"), status, message)
            except KeyboardInterrupt:  # cancelled (a map's layer job re-raises it)
                self._ended(box.get("job"), None, "cancelled; resumable")
            except CacheorchError as exc:
                box.setdefault("error", exc)
                self._ended(box.get("job"), None, connection.redact(exc))
            except BaseException as exc:  # a bug: keep the workbench alive, say what happened
                log.warning("%s failed: %s", what, connection.redact(exc))
                box.setdefault("error", CacheorchError(f"internal error: {type(exc).__name__}: "
                                                       f"{connection.redact(exc)}"))
                self._ended(box.get("job"), "failed", connection.redact(exc))
            finally:
                catalog.close()
                connection.close()
                started.set()

        thread = threading.Thread(target=work, name=f"cacheorch-workbench-{what}", daemon=True)
        self.threads.append(thread)
        thread.start()
        if not started.wait(START_TIMEOUT):
            raise CacheorchError(f"the {what} did not start within "
                                 f"{START_TIMEOUT:.0f} s; see the job list")
        if "job" not in box:
            raise box.get("error") or CacheorchError(f"the {what} ended before it started")
        return box["job"]

    def _ended(self, job: LiveJob | None, status: str | None, message: str) -> None:
        if job is None:
            return
        with self.lock:
            if status is not None:
                job.status = status
            elif job.status == "running":
                job.status = "interrupted" if job.cancel.is_set() else "failed"
            job.message = message
            job.ended = time.monotonic()
            self._changed()

    def cancel(self, job_id: int) -> LiveJob:
        job = self.live.get(job_id)
        if job is None or job.status != "running":
            raise UsageError(f"job {job_id} is not running in this workbench")
        job.cancel.set()
        return job

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return [job.to_json() for job in sorted(self.live.values(), key=lambda j: -j.job_id)]

    def wait(self, timeout: float = 10.0) -> None:
        """Cancel every running job and wait for the workers (on shutdown)."""
        for job in list(self.live.values()):
            job.cancel.set()
        for thread in self.threads:
            thread.join(timeout)

"""Whether a job the catalog records as ``running`` still has a process running it.

A job killed with SIGKILL (or by a power cut) cannot record that it stopped, so its status stays
``running``. Each run records which process runs it in a ``process`` event (``pid N on HOST``,
no schema change); a reader on the same host then sees that process gone (or its pid reused by
a process started later) and shows the job as interrupted. On another host nothing can be told,
and the job is shown as the catalog says.
"""
from __future__ import annotations

import os
import re
import socket
from datetime import datetime
from typing import Any

__all__ = ["PROCESS_EVENT", "process_message", "process_gone", "shown_status", "running_process"]

#: The catalog event kind naming the process that runs (or resumes) a job.
PROCESS_EVENT = "process"
_PROCESS = re.compile(r"^pid (\d+) on (.+)$")


def process_message() -> str:
    """What a run records about its own process."""
    return f"pid {os.getpid()} on {socket.gethostname()}"


def running_process(job: dict[str, Any], events: list[dict[str, Any]]
                    ) -> tuple[int | None, str | None]:
    """(pid, host) of the job's latest run; the host is None for jobs recorded before runs
    named their host (then the pid is taken as this host's)."""
    for event in reversed(events):
        if event.get("kind") == PROCESS_EVENT:
            found = _PROCESS.match(str(event.get("message") or ""))
            if found:
                return int(found.group(1)), found.group(2)
    return job.get("pid"), None


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _started_at(pid: int) -> float | None:
    """When the process ``pid`` started (seconds since the epoch), where /proc says (Linux)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        with open("/proc/stat", "rb") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def process_gone(pid: int | None, host: str | None, started: str | None = None) -> bool | None:
    """True when the process that ran a job is gone, False when it still runs, None when this
    host cannot tell (the job runs on another host, or no pid was recorded).

    ``started``: when the run began (ISO text); a live pid whose process started later is
    another program that was given the same pid. This process itself is never a job's runner
    (it is reading the catalog, not running that job).
    """
    if not pid or (host is not None and host != socket.gethostname()):
        return None
    if pid == os.getpid() or not _pid_exists(pid):
        return True
    since = _started_at(pid)
    if since is not None and started:
        try:
            began = datetime.fromisoformat(started).timestamp()
        except ValueError:
            return False
        # (a minute's margin: /proc's boot time is whole seconds, and a virtual machine's wall
        # clock can drift from its uptime by seconds)
        return since > began + 60.0
    return False


def shown_status(job: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """The job as a reader should see it: ``running`` with its process gone is ``interrupted``
    (with an error saying so); anything else as recorded."""
    if job.get("status") != "running":
        return job
    pid, host = running_process(job, events)
    if not process_gone(pid, host, job.get("started_at")):
        return job
    where = f" on {host}" if host else ""
    return job | {"status": "interrupted", "error": job.get("error") or (
        f"the process that ran it (pid {pid}{where}) is gone (killed?); finish it with: "
        f"cacheorch resume {job['id']}")}

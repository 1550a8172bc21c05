"""A short run of bench/memory.py: the runner's memory does not grow with the job (issue 6 item 5).

87,381 tiles (levels 0-8 of the world) through make_plan → run_job → compact-v2, in a child
process whose peak RSS the bench reads from /proc; the full 5.59 M-tile figure is in bench/README.md.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "memory.py"


@pytest.mark.slow  # ~4 s on a quiet machine
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_memory_bench_smoke(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--levels", "0-8", "--json",
                           "--keep", str(tmp_path / "work")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["status"] == "completed"
    assert report["tiles_written"] == report["tiles_planned"] == 87_381
    assert 0 < report["peak_rss_mb"] < 300
    # what the job itself added over the imports: bounded buffers only, not per-tile state
    assert report["peak_rss_mb"] - report["rss_after_imports_mb"] < 40, report
    assert (tmp_path / "work" / "out" / "conf.xml").exists() or \
        any((tmp_path / "work" / "out").rglob("*.bundle"))

"""Peak memory of a multi-million-tile job: does the runner stay flat (issue 6: < 300 MB RSS)?

The job runs in a child process through the normal code path (make_plan → run_job → catalog →
BundleWriterThread → exporter), with a source that costs nothing, so what grows is cacheorch's
own state and nothing else: a ``const:`` scale source (the Web Mercator scheme, full extent) and
a ``const`` tile source answering one small PNG for every key. Levels 0-11 of the full extent are
5,592,405 tiles. The child reports its peak RSS (``VmHWM`` of /proc/self/status) and the parent
checks it against ``getrusage(RUSAGE_CHILDREN).ru_maxrss``.

    .venv/bin/python bench/memory.py                          # levels 0-11: 5.59 M tiles, compact-v2
    .venv/bin/python bench/memory.py --levels 0-8 --exporter tpkx
    .venv/bin/python bench/memory.py --tracemalloc 10         # where the Python heap goes (slower)
    .venv/bin/python bench/memory.py --json
    .venv/bin/python bench/memory.py --levels 0-10 --scheduler tcp://127.0.0.1:8786   # the dask client

Exit code: 0 under ``--limit-mb`` (default 300), 1 over it or the job failed, 2 bad input.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

#: The tile every key gets: an 8×8 PNG (small, so the disk is not what is measured).
_TILE_SIZE = 8


def _vm(field: str) -> int:
    """A ``Vm…`` line of /proc/self/status, in kB (0 where /proc is absent)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _plugins_module() -> Any:
    """The ``const`` scale and tile sources, as a module-like object for ``make_plugins(extra=)``."""
    from types import SimpleNamespace

    from cacheorch import hookimpl
    from cacheorch.formats.png import encode_png
    from cacheorch.interfaces import ScaleSource, Service, TileFetcher, TileResult, TileSource
    from cacheorch.tiling import TileKey, web_mercator_scheme

    tile = encode_png(_TILE_SIZE, _TILE_SIZE, bytes((10, 120, 200)) * (_TILE_SIZE * _TILE_SIZE))

    class ConstScales(ScaleSource):
        """Web Mercator levels 0-23 for ``const:``."""
        name = "const-scales"

        @classmethod
        def accepts(cls, location: str) -> bool:
            return location.startswith("const:")

        def read(self, location: str, connection: Any) -> Service:
            return Service(location, web_mercator_scheme(23), kind="bench", name="const")

    class ConstFetcher(TileFetcher):
        def fetch(self, keys: Iterable[TileKey]) -> Iterator[TileResult]:
            for key in keys:
                yield TileResult(key, "ok", tile)

    class ConstTiles(TileSource):
        """One constant PNG for every tile of ``const:``."""
        name = "const"

        @classmethod
        def accepts(cls, location: str) -> bool:
            return location.startswith("const:")

        def open(self, service: Service, connection: Any, workers: int) -> TileFetcher:
            return ConstFetcher()

    @hookimpl
    def cacheorch_register_scale_sources() -> list[type[ScaleSource]]:
        return [ConstScales]

    @hookimpl
    def cacheorch_register_tile_sources() -> list[type[TileSource]]:
        return [ConstTiles]

    return SimpleNamespace(cacheorch_register_scale_sources=cacheorch_register_scale_sources,
                           cacheorch_register_tile_sources=cacheorch_register_tile_sources,
                           __name__="bench_memory_const")


def child(args: argparse.Namespace) -> int:
    """Run the job here and print one JSON line: tiles, seconds, peak RSS."""
    if args.tracemalloc:
        import tracemalloc
        tracemalloc.start(12)
    from cacheorch.catalog import Catalog
    from cacheorch.connection import Connection
    from cacheorch.jobplan import make_plan
    from cacheorch.jobspec import JobSpec, PluginSpec
    from cacheorch.pluginmanager import make_plugins
    from cacheorch.runner import run_job

    work = Path(args.work)
    plugins = make_plugins(load_entrypoints=False, extra=[_plugins_module()])
    spec = JobSpec(service="const:world", policies=(PluginSpec("levels", {"": args.levels}),),
                   exporter=PluginSpec(args.exporter), output=str(work / f"out{_suffix(args)}"),
                   executor="dask" if args.scheduler else "local", scheduler=args.scheduler)
    connection = Connection()
    rss_before = _vm("VmRSS")
    started = time.perf_counter()
    plan = make_plan(plugins, spec, connection)
    catalog = Catalog.open(work / "catalog.sqlite")
    snapshot = None
    try:
        outcome = run_job(plugins, catalog, connection, plan)
        if args.tracemalloc:
            import tracemalloc
            snapshot = tracemalloc.take_snapshot()
    finally:
        catalog.close()
    seconds = time.perf_counter() - started
    report = {"tiles_planned": plan.tiles, "tiles_written": outcome.written,
              "status": outcome.status, "seconds": round(seconds, 2),
              "tiles_per_s": round(outcome.written / seconds) if seconds else None,
              "rss_after_imports_mb": round(rss_before / 1024, 1),
              "peak_rss_mb": round(_vm("VmHWM") / 1024, 1),
              "exporter": args.exporter, "levels": args.levels,
              "executor": "dask" if args.scheduler else "local"}
    if snapshot is not None:
        import tracemalloc
        top = snapshot.statistics("traceback")[: args.tracemalloc]
        report["tracemalloc_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
        report["top"] = [{"kb": round(s.size / 1024), "count": s.count,
                          "where": [f"{fr.filename}:{fr.lineno}" for fr in s.traceback[-4:]]}
                         for s in top]
    print(json.dumps(report))
    return 0 if outcome.status == "completed" else 1


def _suffix(args: argparse.Namespace) -> str:
    return {"tpkx": ".tpkx", "tpk": ".tpk", "mbtiles": ".mbtiles", "gpkg": ".gpkg"}.get(
        args.exporter, "")


def parent(args: argparse.Namespace) -> int:
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cacheorch-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--work", str(work),
           "--levels", args.levels, "--exporter", args.exporter,
           "--tracemalloc", str(args.tracemalloc)] + \
        (["--scheduler", args.scheduler] if args.scheduler else [])
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        ru_maxrss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode not in (0, 1) or not lines:
        print(f"memory bench: the job failed (exit {done.returncode}): "
              f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}", file=sys.stderr)
        return 1
    report = json.loads(lines[-1])
    report["ru_maxrss_mb"] = round(ru_maxrss_mb, 1) if ru_maxrss_mb > before / 1024 else None
    report["limit_mb"] = args.limit_mb
    report["within_limit"] = report["peak_rss_mb"] < args.limit_mb
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['tiles_written']:,} of {report['tiles_planned']:,} tiles "
              f"({report['status']}) → {args.exporter} in {report['seconds']} s "
              f"({report['tiles_per_s']:,} tiles/s)")
        print(f"peak RSS {report['peak_rss_mb']} MB (VmHWM; ru_maxrss {report['ru_maxrss_mb']} MB), "
              f"{report['rss_after_imports_mb']} MB after imports; limit {args.limit_mb} MB: "
              f"{'OK' if report['within_limit'] else 'OVER'}")
        for entry in report.get("top", []):
            print(f"  {entry['kb']:>8} kB {entry['count']:>8}×  {' <- '.join(reversed(entry['where']))}")
    return 0 if report["within_limit"] and report["status"] == "completed" else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--levels", default="0-11", help="levels of the full extent (0-11: 5.59 M tiles)")
    ap.add_argument("--exporter", default="compact-v2", help="compact-v2 (default), tpkx...")
    ap.add_argument("--limit-mb", type=float, default=300.0)
    ap.add_argument("--tracemalloc", type=int, default=0, metavar="N",
                    help="trace Python allocations and show the N largest at the end")
    ap.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                    help="run with --executor dask on this cluster (the client's RSS is measured; "
                         "the const source is shipped to the workers by value)")
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep the output")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())

"""Tiles/s of ``--executor local`` vs ``--executor dask`` (a scheduler and N workers) on this machine.

Same set-up as ``seed_vs_mapproxy.py``: a loopback nginx answering one fixed ~51.9 KB PNG for every
tile URL, levels 0-10 inside the European polygon (18,086 tiles), output Compact Cache V2. The
dask cluster is started here on 127.0.0.1 (``dask scheduler`` and ``dask worker --nthreads T``
processes) before any run, so cluster start-up is not counted, as it would not be on a real
cluster; each dask run still pays for connecting its client.

    .venv/bin/python bench/executors.py                        # 2 workers × 1 thread, 2 rounds
    .venv/bin/python bench/executors.py --dask-workers 2 --threads 2 --workers 16 --json

Reported per run: wall seconds and tiles/s of the ``cacheorch run`` process, CPU seconds of that
process (the client: planning, receiving tiles, writing) and of the dask workers (fetching), and
nginx's. Rounds alternate the order. Exit 0 when every run wrote every tile, 1 otherwise, 2 when
nginx or dask is missing.
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
from pathlib import Path
from typing import Any

try:
    from bench._nginx import Nginx, _proc_cpu_seconds, bench_service_json, bench_tile, nginx_problem
    from bench.seed_vs_mapproxy import REFERENCE, child_env, count_tiles, json_report
except ImportError:  # run as a script: bench/ itself is on sys.path
    from _nginx import (Nginx, _proc_cpu_seconds, bench_service_json,  # type: ignore[no-redef]
                        bench_tile, nginx_problem)
    from seed_vs_mapproxy import REFERENCE, child_env, count_tiles, json_report  # type: ignore[no-redef]


def _dask_exe() -> str | None:
    exe = Path(sys.executable).with_name("dask")
    return str(exe) if exe.exists() else shutil.which("dask")


class Cluster:
    """A dask scheduler and ``n`` workers on 127.0.0.1, each its own process (stopped on exit)."""

    def __init__(self, exe: str, workdir: Path, workers: int, threads: int) -> None:
        self.exe, self.workdir, self.n, self.threads = exe, workdir, workers, threads
        self.procs: list[subprocess.Popen[bytes]] = []
        self.address = ""

    def __enter__(self) -> Cluster:
        sched = self.workdir / "scheduler.json"
        env = child_env()
        log = open(self.workdir / "dask.log", "ab")
        self.procs.append(subprocess.Popen(
            [self.exe, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--scheduler-file", str(sched)], env=env, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 60
        while not sched.exists():
            if self.procs[0].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the dask scheduler did not start; see " + str(log.name))
            time.sleep(0.05)
        for i in range(self.n):
            self.procs.append(subprocess.Popen(
                [self.exe, "worker", "--scheduler-file", str(sched), "--host", "127.0.0.1",
                 "--nthreads", str(self.threads), "--no-nanny", "--no-dashboard", "--name", f"w{i}"],
                env=env, stdout=log, stderr=subprocess.STDOUT))
        self.address = json.loads(sched.read_text())["address"]
        import distributed
        with distributed.Client(self.address, timeout=60) as client:
            client.wait_for_workers(self.n, timeout=60)
        return self

    def worker_cpu(self) -> float:
        return sum(_proc_cpu_seconds(p.pid) for p in self.procs[1:])

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_one(executor: str, srv: Nginx, cluster: Cluster, work: Path, args: argparse.Namespace,
            rnd: int) -> dict[str, Any]:
    out = work / f"{executor}-{rnd}"
    out.mkdir()
    cmd = [sys.executable, "-m", "cacheorch", "--catalog", str(out / "c.sqlite"), "run",
           "--service", srv.service_url, "--levels", args.levels, "--aoi", str(args.aoi),
           "--exporter", "compact-v2", "--output", str(out / "out"), "--workers", str(args.workers),
           "--json"]
    if executor == "dask":
        cmd += ["--executor", "dask", "--scheduler", cluster.address]
    os.sync()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    workers_before, server_before = cluster.worker_cpu(), srv.cpu_seconds()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=args.timeout)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    tiles, _ = count_tiles(out / "out")
    report = json_report(proc.stdout)
    run = {"executor": executor, "round": rnd, "seconds": round(wall, 2), "tiles": tiles,
           "tiles_per_s": round(tiles / wall) if wall else 0,
           "client_cpu_s": round((after.ru_utime - before.ru_utime)
                                 + (after.ru_stime - before.ru_stime), 2),
           "workers_cpu_s": round(cluster.worker_cpu() - workers_before, 2),
           "nginx_cpu_s": round(srv.cpu_seconds() - server_before, 2),
           "status": report.get("status"), "planned": report.get("tiles_planned"),
           "error": None}
    if proc.returncode != 0 or report.get("status") != "completed":
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        run["error"] = lines[-1][:300] if lines else f"exit {proc.returncode}"
    elif tiles != report.get("tiles_written"):
        run["error"] = f"--json says {report.get('tiles_written')} tiles, the bundles hold {tiles}"
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--levels", default="0-10")
    ap.add_argument("--aoi", type=Path, default=REFERENCE / "aoi-europe.geojson")
    ap.add_argument("--workers", type=int, default=16, help="cacheorch --workers (per fetcher)")
    ap.add_argument("--dask-workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="threads per dask worker")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep outputs and logs")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    exe = _dask_exe()
    if problem := nginx_problem():
        print(problem, file=sys.stderr)
        return 2
    if exe is None:
        print("dask not found: install it with `.venv/bin/pip install 'cacheorch[dask]'`",
              file=sys.stderr)
        return 2
    if not args.aoi.is_file():
        print(f"no AOI file at {args.aoi} (give --aoi)", file=sys.stderr)
        return 2
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cacheorch-exec-"))
    work.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    try:
        with Nginx(bench_tile(), bench_service_json()) as srv, \
                Cluster(exe, work, args.dask_workers, args.threads) as cluster:
            for rnd in range(1, args.rounds + 1):
                order = ("local", "dask") if rnd % 2 else ("dask", "local")
                for executor in order:
                    runs.append(run_one(executor, srv, cluster, work, args, rnd))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    best = {ex: max((r for r in runs if r["executor"] == ex and not r["error"]),
                    key=lambda r: r["tiles_per_s"], default=None) for ex in ("local", "dask")}
    meta = {"levels": args.levels, "aoi": str(args.aoi), "workers": args.workers,
            "dask_workers": args.dask_workers, "threads": args.threads, "cpus": os.cpu_count(),
            "load_before": os.getloadavg()[0]}
    if args.json:
        print(json.dumps({"meta": meta, "best": best, "runs": runs}, indent=2))
    else:
        print(f"levels {args.levels}, --workers {args.workers}, dask {args.dask_workers} worker(s) × "
              f"{args.threads} thread(s), {os.cpu_count()} CPUs")
        print(f"{'executor':<8} {'round':>5} {'tiles':>8} {'s':>7} {'tiles/s':>8} {'client CPU s':>12} "
              f"{'workers CPU s':>13} {'nginx CPU s':>11}  error")
        for r in runs:
            print(f"{r['executor']:<8} {r['round']:>5} {r['tiles']:>8,} {r['seconds']:>7} "
                  f"{r['tiles_per_s']:>8,} {r['client_cpu_s']:>12} {r['workers_cpu_s']:>13} "
                  f"{r['nginx_cpu_s']:>11}  {r['error'] or ''}")
    return 0 if runs and not any(r["error"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())

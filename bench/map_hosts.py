"""Per-host budget of a map job: a 3-layer map on one host vs its layers one after another, and a
3-layer map on three hosts vs its largest layer alone.

The tile servers answer after a delay, as real ones do (``--delay`` seconds per tile, default
0.03), and run in a separate process so they take no CPU time from the client. Every timed run is
``cacheorch run`` called in this process (imports done once, before any timing), each with a fresh
catalog and output folder:

- **one host**: one service on one server; alone = ``run --service`` three times (three layers'
  worth), map = ``run --map`` of a web map with three layers on that service. Target: map ≤ 1.05 ×
  the sum (the layers of one host run one after another, each with the full ``--workers``).
- **three hosts**: three services on three servers (three ports); alone = each layer by itself;
  map = one web map with the three. Target: map ≤ 1.3 × the largest layer alone.
- The servers report the most requests they ever had in flight at once: on one host the map never
  exceeds ``--workers``, the same as a single job.

    .venv/bin/python bench/map_hosts.py                    # levels 0-4 (341 tiles a layer), 8 workers
    .venv/bin/python bench/map_hosts.py --levels 0-5 --delay 0.05 --rounds 3 --json
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def serve(names: list[str], delay: float, max_level: int) -> None:
    """Child process: one TileServer per name; print their URLs; on stdin EOF print the peaks."""
    sys.path.insert(0, str(ROOT / "tests"))
    from _tiles import mercator_service_json, pyramid
    from _tileserver import TileServer
    tiles = pyramid(range(max_level + 1))
    servers = [TileServer(tiles, name=n, service=mercator_service_json(max_level), delay=delay)
               .start() for n in names]
    print(json.dumps([s.url for s in servers]), flush=True)
    sys.stdin.read()
    print(json.dumps([s.max_concurrent for s in servers]), flush=True)
    for s in servers:
        s.stop()


@contextlib.contextmanager
def servers(names: list[str], delay: float, max_level: int):
    proc = subprocess.Popen([sys.executable, __file__, "--serve", ",".join(names),
                             "--delay", str(delay), "--max-level", str(max_level)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    urls = json.loads(proc.stdout.readline())
    peaks: list[int] = []
    try:
        yield urls, peaks
    finally:
        out, _ = proc.communicate("", timeout=60)
        peaks.extend(json.loads(out.strip().splitlines()[-1]) if out.strip() else [])


def timed(args: list[str]) -> tuple[float, dict]:
    from cacheorch.cli import main
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"cacheorch {' '.join(args)} exited {code}: {err.getvalue().strip()}")
    return seconds, json.loads(out.getvalue())


def webmap(urls: list[str]) -> dict:
    return {"operationalLayers": [{"id": f"L{i}", "layerType": "ArcGISTiledMapServiceLayer",
                                   "url": url, "title": f"Layer {i + 1}"}
                                  for i, url in enumerate(urls)],
            "baseMap": {"title": "none", "baseMapLayers": []}}


def case(name: str, hosts: int, args: argparse.Namespace, work: Path) -> dict:
    job = ["--levels", args.levels, "--workers", str(args.workers), "--exporter", "compact-v2"]
    names = [f"S{i}" for i in range(hosts)]
    with servers(names, args.delay, args.max_level) as (urls, peaks):
        layer_urls = urls if hosts > 1 else urls * 3
        d = work / f"{name}-warm-up"  # lazy imports and first-use costs, outside the clock
        timed(["--catalog", str(d / "c.sqlite"), "run", "--service", urls[0], "--levels", "0",
               "--exporter", "compact-v2", "-o", str(d / "out"), "--json"])
        alone = []
        for i, url in enumerate(layer_urls):
            d = work / f"{name}-alone-{i}"
            seconds, data = timed(["--catalog", str(d / "c.sqlite"), "run", "--service", url,
                                   *job, "-o", str(d / "out"), "--json"])
            alone.append(seconds)
            tiles = data["tiles_written"]
        (work / f"{name}.json").write_text(json.dumps(webmap(layer_urls)))
        d = work / f"{name}-map"
        map_seconds, data = timed(["--catalog", str(d / "c.sqlite"), "run", "--map",
                                   str(work / f"{name}.json"), *job, "-o", str(d / "out"),
                                   "--json"])
        assert data["status"] == "completed", data["status"]
    basis = sum(alone) if hosts == 1 else max(alone)
    return {"case": name, "hosts": hosts, "layers": 3, "tiles_per_layer": tiles,
            "alone_seconds": [round(s, 3) for s in alone], "map_seconds": round(map_seconds, 3),
            "basis": "sum of layers alone" if hosts == 1 else "largest layer alone",
            "basis_seconds": round(basis, 3), "ratio": round(map_seconds / basis, 3),
            "target": 1.05 if hosts == 1 else 1.3, "server_peak_in_flight": peaks,
            "workers": args.workers}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="0-4")
    parser.add_argument("--delay", type=float, default=0.03, help="seconds per tile")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--max-level", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve.split(","), args.delay, args.max_level)
        return 0
    args.max_level = max(int(p) for p in args.levels.replace("-", ",").split(","))
    import cacheorch.cli  # noqa: F401 - imports before the clock starts
    import cacheorch.maps.run  # noqa: F401
    import cacheorch.runner  # noqa: F401
    runs = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(case("one-host", 1, args, Path(tmp)))
            runs.append(case("three-hosts", 3, args, Path(tmp)))
    summary = []
    for name in ("one-host", "three-hosts"):
        mine = sorted((r for r in runs if r["case"] == name), key=lambda r: r["ratio"])
        median = mine[(len(mine) - 1) // 2]  # the run with the median ratio (lower middle)
        summary.append(median | {"ratio_median": statistics.median(r["ratio"] for r in mine),
                                 "ratios": [r["ratio"] for r in mine]})
    if args.json:
        print(json.dumps({"levels": args.levels, "delay": args.delay, "summary": summary,
                          "runs": runs}, indent=2))
        return 0
    print(f"levels {args.levels}, {summary[0]['tiles_per_layer']} tiles a layer, "
          f"{args.delay * 1000:.0f} ms a tile, --workers {args.workers}, {args.rounds} round(s)")
    for s in summary:
        verdict = "ok" if s["ratio_median"] <= s["target"] else "OVER TARGET"
        print(f"{s['case']:<12} map {s['map_seconds']:>7.2f} s  vs {s['basis']} "
              f"{s['basis_seconds']:>7.2f} s  (alone: {', '.join(f'{a:.2f}' for a in s['alone_seconds'])})"
              f"  ratio {s['ratio']:.3f}, median of {s['ratios']}: {s['ratio_median']:.3f} "
              f"(target ≤ {s['target']}) {verdict}; "
              f"server peak in flight {s['server_peak_in_flight']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

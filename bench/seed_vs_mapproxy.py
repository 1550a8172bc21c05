"""cacheorch vs MapProxy, side by side: same loopback server, same levels, same polygon, one run.

Why one run: tiles/s depends on the machine, its load and the server; figures from two runs are not
comparable, so both tools are measured here one after the other (alternating order each round)
against the same nginx (bench/_nginx.py; one fixed ~51.7 KB PNG for every tile URL, the set-up of
bench/reference/), writing a Compact Cache V2 from the levels inside the same polygon.

Per run it measures wall time and the CPU time of the tool's whole process tree
(getrusage(RUSAGE_CHILDREN) deltas), counts the tiles each tool actually wrote (MapProxy: the
indexes of its V2 bundles; cacheorch: its --json tiles_written, checked against its bundles), and
prints tiles/s, CPU ms per tile, nginx's own CPU ms per tile, and the cacheorch / MapProxy ratio of
tiles/s (the target is >= 4x) and of CPU per tile. For each tool setting the BEST round (highest
tiles/s) is reported; the median is in --json.

Needs nginx (Debian: nginx-light) and MapProxy 7 in the venv (pip install "mapproxy>=7,<8");
installs nothing. Not part of the test suite.

    .venv/bin/python bench/seed_vs_mapproxy.py                      # levels 0-10, 2 rounds, 16 workers
    .venv/bin/python bench/seed_vs_mapproxy.py --workers 8,16,32 --rounds 2 --json
    .venv/bin/python bench/seed_vs_mapproxy.py --only cacheorch --levels 0-8 --profile prof.svg
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

try:
    from bench._nginx import (REFERENCE, Nginx, NginxError, bench_service_json, bench_tile,
                              nginx_problem)
except ImportError:  # run as a script: bench/ itself is on sys.path
    from _nginx import (REFERENCE, Nginx, NginxError,  # type: ignore[no-redef]
                        bench_service_json, bench_tile, nginx_problem)

MAPPROXY_HINT = 'mapproxy-seed not found: install MapProxy 7 with `.venv/bin/pip install "mapproxy>=7,<8"`'
TARGET_RATIO = 4.0


class BenchError(Exception):
    """Bad input or a missing tool: one line on stderr, exit 2."""


# -- input ----------------------------------------------------------------------------------------

def parse_levels(text: str) -> list[int]:
    """``0-10`` or ``0-5,8`` -> sorted levels (the syntax of cacheorch's --levels)."""
    levels: set[int] = set()
    for part in text.split(","):
        first, sep, last = part.strip().partition("-")
        try:
            lo, hi = int(first), int(last) if sep else int(first)
        except ValueError:
            raise BenchError(f"bad --levels {text!r}: expected e.g. 0-10 or 0-5,8") from None
        if lo < 0 or hi < lo or hi > 19:
            raise BenchError(f"bad --levels {text!r}: levels run 0..19, low to high")
        levels.update(range(lo, hi + 1))
    return sorted(levels)


def format_levels(levels: list[int]) -> str:
    runs: list[str] = []
    start = prev = levels[0]
    for level in levels[1:] + [-2]:
        if level != prev + 1:
            runs.append(f"{start}-{prev}" if prev != start else str(start))
            start = level
        prev = level
    return ",".join(runs)


def parse_workers(text: str) -> list[int]:
    try:
        workers = [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise BenchError(f"bad --workers {text!r}: expected e.g. 16 or 8,16,32") from None
    if not workers or min(workers) < 1:
        raise BenchError(f"bad --workers {text!r}: expected e.g. 16 or 8,16,32")
    return workers


def find_mapproxy_seed() -> str | None:
    """mapproxy-seed of this interpreter's environment first (the venv), then PATH."""
    local = Path(sys.executable).parent / "mapproxy-seed"
    if os.access(local, os.X_OK):
        return str(local)
    return shutil.which("mapproxy-seed")


def mapproxy_templates() -> tuple[str, str]:
    """The reference mapproxy.yaml and seed.yaml templates (bench/reference/)."""
    mp_tmpl, seed_tmpl = REFERENCE / "mapproxy.yaml.tmpl", REFERENCE / "seed.yaml.tmpl"
    for path in (mp_tmpl, seed_tmpl):
        if not path.is_file():
            raise BenchError(f"no MapProxy template at {path}")
    return mp_tmpl.read_text(), seed_tmpl.read_text()


def mapproxy_version() -> str | None:
    try:
        from importlib.metadata import version
        return version("MapProxy")
    except Exception:
        return None


# -- independent tile counting ---------------------------------------------------------------------

def count_v2_bundle(path: Path) -> int:
    """Tiles present in a Compact Cache V2 bundle: index entries with a non-zero size.

    Parsed here rather than with cacheorch's BundleReader so the count is independent of the tool
    being measured: 64-byte header, then 128×128 little-endian u64 (offset: low 40 bits, size: high 24).
    """
    with open(path, "rb") as f:
        f.seek(64)
        raw = f.read(16384 * 8)
    if len(raw) != 16384 * 8:
        raise BenchError(f"{path}: truncated bundle index")
    return sum(1 for (entry,) in struct.iter_unpack("<Q", raw) if entry >> 40)


def count_tiles(root: Path) -> tuple[int, dict[int, int]]:
    """Tiles in all .bundle files under root, total and per level (from the Lnn folder name)."""
    per_level: dict[int, int] = {}
    for bundle in root.rglob("*.bundle"):
        match = re.fullmatch(r"L(\d+)", bundle.parent.name)
        level = int(match.group(1)) if match else -1
        per_level[level] = per_level.get(level, 0) + count_v2_bundle(bundle)
    return sum(per_level.values()), dict(sorted(per_level.items()))


def first_tile(root: Path, level: int) -> tuple[int, int] | None:
    """(row, col) of one tile present at ``level`` under root, from the bundle indexes."""
    for bundle in sorted(root.rglob(f"L{level:02d}/*.bundle")):
        match = re.fullmatch(r"R([0-9a-fA-F]{4,})C([0-9a-fA-F]{4,})", bundle.stem)
        if not match:
            continue
        with open(bundle, "rb") as f:
            f.seek(64)
            raw = f.read(16384 * 8)
        for slot, (entry,) in enumerate(struct.iter_unpack("<Q", raw)):
            if entry >> 40:
                return int(match.group(1), 16) + slot // 128, int(match.group(2), 16) + slot % 128
    return None


def verify_with_gdal(cache: Path, level: int, tile: bytes) -> str:
    """Read one written tile back through GDAL's ESRIC driver and compare it with the served tile.

    An independent reader: if cacheorch wrote bundles GDAL cannot read, or put the tile at the wrong
    place, tiles/s would be meaningless. Returns "" if fine, else why not; "" also when rasterio or
    Pillow is not installed (the check is skipped, the JSON says so).
    """
    try:
        import io

        import numpy as np
        import rasterio
        from PIL import Image
        from rasterio.windows import Window
    except ImportError:
        return ""
    where = first_tile(cache, level)
    if where is None:
        return f"no tile at level {level} to verify"
    row, col = where
    expected = np.asarray(Image.open(io.BytesIO(tile)).convert("RGBA")).transpose(2, 0, 1)
    try:
        with rasterio.open(cache / "conf.xml") as ds:
            got = ds.read(window=Window(col * 256, row * 256, 256, 256))
    except Exception as exc:  # noqa: BLE001 - any GDAL failure is a failed verification
        return f"GDAL cannot read the cache: {exc}"
    if got.shape != expected.shape or not (got == expected).all():
        return f"GDAL reads tile {level}/{row}/{col} differently from the served tile"
    return ""


# -- measured runs ---------------------------------------------------------------------------------

@dataclass
class Run:
    tool: str                 # "mapproxy" or "cacheorch"
    setting: str              # "-c 4" or "--workers 16"
    round: int
    tiles: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    server_cpu_seconds: float = 0.0
    exit_code: int = 0
    error: str = ""
    tiles_by_level: dict[int, int] = field(default_factory=dict)
    reported_tiles: int | None = None  # what the tool itself said (cacheorch --json)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.error and self.tiles > 0

    @property
    def tiles_per_s(self) -> float:
        return self.tiles / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_tile(self) -> float:
        return 1000 * self.cpu_seconds / self.tiles if self.tiles else 0.0

    @property
    def server_cpu_ms_per_tile(self) -> float:
        return 1000 * self.server_cpu_seconds / self.tiles if self.tiles else 0.0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(tiles_per_s=round(self.tiles_per_s, 1), cpu_ms_per_tile=round(self.cpu_ms_per_tile, 3),
                   server_cpu_ms_per_tile=round(self.server_cpu_ms_per_tile, 3), ok=self.ok)
        return out


def child_env() -> dict[str, str]:
    """The environment for the tools: no proxy may sit between them and the loopback server."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def measured(cmd: list[str], srv: Nginx, timeout: float) -> tuple[subprocess.CompletedProcess[str], float, float, float]:
    """Run cmd; return (result, wall s, CPU s of its process tree, nginx CPU s)."""
    # The previous run's ~1 GB of dirty pages would otherwise be written back during this one and
    # throttle its writes: flush them first, for both tools alike.
    os.sync()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = srv.cpu_seconds()
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        proc = subprocess.CompletedProcess(cmd, -9, exc.stdout or "", f"timed out after {timeout:.0f} s")
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc, wall, cpu, srv.cpu_seconds() - server_before


def last_line(text: str) -> str:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def run_mapproxy(exe: str, srv: Nginx, work: Path, levels: list[int], aoi: Path, concurrency: int,
                 rnd: int, timeout: float) -> Run:
    out = work / f"mapproxy-{rnd}"
    out.mkdir()
    mp, seed = mapproxy_templates()
    mp = mp.replace("@URL@", srv.service_url).replace("@OUT@", str(out))
    seed = seed.replace("@AOI@", str(aoi))
    levels_yaml = (f"levels: {{from: {levels[0]}, to: {levels[-1]}}}"
                   if levels == list(range(levels[0], levels[-1] + 1)) else f"levels: {levels}")
    seed, n = re.subn(r"levels:\s*\{[^}]*\}", levels_yaml, seed)
    if n != 1:
        raise BenchError("seed.yaml template has no `levels: {from: .., to: ..}` line to replace")
    (out / "mapproxy.yaml").write_text(mp)
    (out / "seed.yaml").write_text(seed)
    cmd = [exe, "-q", "-s", str(out / "seed.yaml"), "-f", str(out / "mapproxy.yaml"),
           "-c", str(concurrency), "--seed", "bench"]
    proc, wall, cpu, server = measured(cmd, srv, timeout)
    run = Run("mapproxy", f"-c {concurrency}", rnd, seconds=wall, cpu_seconds=cpu,
              server_cpu_seconds=server, exit_code=proc.returncode)
    if proc.returncode != 0:
        run.error = last_line(proc.stderr) or last_line(proc.stdout) or f"exit {proc.returncode}"
    run.tiles, run.tiles_by_level = count_tiles(out / "Layers" / "_alllayers")
    # MapProxy logs failed tile requests but may still exit 0: a short count is the tell.
    if not run.error and "error" in (proc.stderr or "").lower():
        run.error = last_line(proc.stderr)
    return run


def json_report(stdout: str) -> dict[str, Any]:
    """The JSON object cacheorch --json printed (py-spy, when profiling, prints lines around it)."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"^\{", stdout, re.MULTILINE):
        try:
            obj, _ = decoder.raw_decode(stdout, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    return {}


def cacheorch_cmd(srv: Nginx, out: Path, levels: list[int], aoi: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "cacheorch", "--catalog", str(out / "c.sqlite"), "run",
            "--service", srv.service_url, "--levels", format_levels(levels), "--aoi", str(aoi),
            "--exporter", "compact-v2", "--output", str(out / "out"), "--workers", str(workers),
            "--json"]


def run_cacheorch(srv: Nginx, work: Path, levels: list[int], aoi: Path, workers: int, rnd: int,
                  timeout: float, profile: Path | None = None, verify: bytes | None = None) -> Run:
    out = work / f"cacheorch-w{workers}-{rnd}"
    out.mkdir()
    cmd = cacheorch_cmd(srv, out, levels, aoi, workers)
    if profile is not None:
        py_spy = Path(sys.executable).parent / "py-spy"
        exe = str(py_spy) if py_spy.exists() else (shutil.which("py-spy") or "")
        if not exe:
            raise BenchError("py-spy not found: install it with `.venv/bin/pip install py-spy`")
        fmt = "speedscope" if profile.suffix == ".json" else ("raw" if profile.suffix == ".txt" else "flamegraph")
        cmd = [exe, "record", "--subprocesses", "--threads", "-r", "200", "-f", fmt, "-o", str(profile),
               "--", *cmd]
    proc, wall, cpu, server = measured(cmd, srv, timeout)
    run = Run("cacheorch", f"--workers {workers}", rnd, seconds=wall, cpu_seconds=cpu,
              server_cpu_seconds=server, exit_code=proc.returncode)
    report = json_report(proc.stdout)
    if report:
        run.reported_tiles = sum(int(lv.get("tiles_written", 0)) for lv in report.get("levels", []))
    run.tiles, run.tiles_by_level = count_tiles(out / "out")
    if proc.returncode != 0:
        run.error = last_line(proc.stderr) or f"exit {proc.returncode}"
    elif not report:
        run.error = "no --json report on stdout"
    elif run.reported_tiles != run.tiles:
        run.error = f"--json says {run.reported_tiles} tiles written, bundles hold {run.tiles}"
    elif verify is not None:
        run.error = verify_with_gdal(out / "out", max(levels), verify)
    return run


def wrk_ceiling(srv: Nginx, seconds: int) -> float | None:
    """Requests/s nginx serves the tile to wrk (the loopback ceiling), if wrk is installed."""
    exe = shutil.which("wrk")
    if not exe or seconds <= 0:
        return None
    proc = subprocess.run([exe, "-t1", "-c16", f"-d{seconds}s", srv.tile_url(3, 2, 1)],
                          capture_output=True, text=True, env=child_env())
    match = re.search(r"Requests/sec:\s+([\d.]+)", proc.stdout)
    return float(match.group(1)) if match else None


# -- summary ---------------------------------------------------------------------------------------

def summarize(runs: list[Run]) -> list[dict[str, Any]]:
    """Per tool setting: the best round (highest tiles/s) and the medians."""
    out: list[dict[str, Any]] = []
    keys = list(dict.fromkeys((r.tool, r.setting) for r in runs))
    for tool, setting in keys:
        good = [r for r in runs if (r.tool, r.setting) == (tool, setting) and r.ok]
        if not good:
            out.append({"tool": tool, "setting": setting, "ok": False})
            continue
        best = max(good, key=lambda r: r.tiles_per_s)
        out.append({
            "tool": tool, "setting": setting, "ok": True, "rounds": len(good), "tiles": best.tiles,
            "seconds": round(best.seconds, 2), "tiles_per_s": round(best.tiles_per_s, 1),
            "cpu_ms_per_tile": round(best.cpu_ms_per_tile, 3),
            "server_cpu_ms_per_tile": round(best.server_cpu_ms_per_tile, 3),
            "median_tiles_per_s": round(statistics.median(r.tiles_per_s for r in good), 1),
            "median_cpu_ms_per_tile": round(statistics.median(r.cpu_ms_per_tile for r in good), 3),
        })
    mp = next((s for s in out if s["tool"] == "mapproxy" and s["ok"]), None)
    for s in out:
        if s["tool"] == "cacheorch" and s["ok"] and mp:
            s["ratio_tiles_per_s"] = round(s["tiles_per_s"] / mp["tiles_per_s"], 2)
            s["ratio_cpu_per_tile"] = round(s["cpu_ms_per_tile"] / mp["cpu_ms_per_tile"], 3)
            s["median_ratio_tiles_per_s"] = round(s["median_tiles_per_s"] / mp["median_tiles_per_s"], 2)
    return out


def print_table(summary: list[dict[str, Any]], runs: list[Run], meta: dict[str, Any]) -> None:
    print(f"levels {meta['levels']} in {meta['aoi']}; tile {meta['tile_bytes']:,} B; "
          f"{meta['rounds']} round(s), best round shown; {os.cpu_count()} CPUs, "
          f"load average before {meta['load_average_before'][0]:.2f}, after {meta['load_average_after'][0]:.2f}")
    if meta.get("wrk_requests_per_s"):
        print(f"nginx ceiling (wrk -t1 -c16): {meta['wrk_requests_per_s']:,.0f} requests/s")
    head = f"{'tool':<10} {'setting':<13} {'tiles':>7} {'seconds':>8} {'tiles/s':>8} {'CPU ms/tile':>11} " \
           f"{'nginx ms/t':>10} {'x tiles/s':>9} {'x CPU':>6}"
    print(head)
    print("-" * len(head))
    for s in summary:
        if not s["ok"]:
            errors = {r.error for r in runs if (r.tool, r.setting) == (s["tool"], s["setting"])}
            print(f"{s['tool']:<10} {s['setting']:<13} FAILED: {'; '.join(sorted(errors))}")
            continue
        ratio = f"{s['ratio_tiles_per_s']:.2f}" if "ratio_tiles_per_s" in s else ""
        cpu_ratio = f"{s['ratio_cpu_per_tile']:.2f}" if "ratio_cpu_per_tile" in s else ""
        print(f"{s['tool']:<10} {s['setting']:<13} {s['tiles']:>7,} {s['seconds']:>8.2f} "
              f"{s['tiles_per_s']:>8.0f} {s['cpu_ms_per_tile']:>11.3f} {s['server_cpu_ms_per_tile']:>10.3f} "
              f"{ratio:>9} {cpu_ratio:>6}")
    print("x tiles/s = cacheorch tiles/s ÷ MapProxy tiles/s; x CPU = cacheorch CPU ms/tile ÷ MapProxy's")
    ratios = [s["ratio_tiles_per_s"] for s in summary if "ratio_tiles_per_s" in s]
    if ratios:
        best = max(ratios)
        verdict = "met" if best >= TARGET_RATIO else "NOT met"
        print(f"target >= {TARGET_RATIO:.0f}x MapProxy tiles/s: {verdict} (best {best:.2f}x)")
    counts = {s["tiles"] for s in summary if s["ok"]}
    if len(counts) > 1:
        print(f"note: the tools wrote different tile counts {sorted(counts)} "
              "(each one's tiles/s uses its own count)")
    for r in runs:
        if r.error and r.tiles:
            print(f"warning: {r.tool} {r.setting} round {r.round}: {r.error}", file=sys.stderr)


# -- main ------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", default="0-10", help="levels to seed (default 0-10)")
    ap.add_argument("--aoi", type=Path, default=REFERENCE / "aoi-europe.geojson",
                    help="GeoJSON polygon (WGS84), default the reference European polygon")
    ap.add_argument("--rounds", type=int, default=2, help="rounds per tool setting; best is shown (default 2)")
    ap.add_argument("--workers", default="16", help="cacheorch --workers, comma list (default 16)")
    ap.add_argument("--concurrency", type=int, default=4, help="mapproxy-seed -c (default 4, as the reference)")
    ap.add_argument("--only", choices=("both", "cacheorch", "mapproxy"), default="both")
    ap.add_argument("--wrk-seconds", type=int, default=3, help="wrk ceiling probe length, 0 to skip")
    ap.add_argument("--nginx-cpu", type=int, default=None, help="pin nginx to this CPU (default: not pinned)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds before a tool run is killed")
    ap.add_argument("--keep", type=Path, default=None, help="keep configs and outputs in this folder")
    ap.add_argument("--profile", type=Path, default=None,
                    help="run cacheorch once more under py-spy and write this file (.svg, .json, .txt)")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                    help="first wait up to SECONDS for the 1-minute load average to drop below 1")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args(argv)
    try:
        return _main(args)
    except BenchError as exc:
        print(f"seed_vs_mapproxy: {exc}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    levels = parse_levels(args.levels)
    workers = parse_workers(args.workers)
    if args.rounds < 1:
        raise BenchError("--rounds must be at least 1")
    if not args.aoi.is_file():
        raise BenchError(f"AOI file not found: {args.aoi}")
    aoi = args.aoi.resolve()
    if problem := nginx_problem():
        raise BenchError(problem)
    mapproxy_seed = None
    if args.only in ("both", "mapproxy"):
        mapproxy_seed = find_mapproxy_seed()
        if mapproxy_seed is None:
            raise BenchError(MAPPROXY_HINT)
        version = mapproxy_version()
        if version and not version.startswith("7."):
            print(f"warning: MapProxy {version}, the reference figures are MapProxy 7", file=sys.stderr)

    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="seed-vs-mapproxy-", dir=args.keep))
    else:
        work = Path(tempfile.mkdtemp(prefix="seed-vs-mapproxy-"))
    deadline = time.monotonic() + args.wait_idle
    while os.getloadavg()[0] >= 1.0 and time.monotonic() < deadline:
        time.sleep(5)
    if os.getloadavg()[0] >= 1.0:
        print(f"warning: load average {os.getloadavg()[0]:.2f} before the run: other work on the machine "
              "skews the figures", file=sys.stderr)
    tile = bench_tile()
    runs: list[Run] = []
    meta: dict[str, Any] = {
        "levels": format_levels(levels), "aoi": str(aoi), "rounds": args.rounds, "tile_bytes": len(tile),
        "mapproxy_version": mapproxy_version(), "mapproxy_concurrency": args.concurrency,
        "cacheorch_workers": workers, "cpus": os.cpu_count(), "selection": "best round (highest tiles/s)",
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "gdal_check": all(importlib.util.find_spec(m) for m in ("rasterio", "PIL", "numpy")),
    }
    try:
        with Nginx(tile, bench_service_json(), cpu=args.nginx_cpu) as srv:
            meta["wrk_requests_per_s"] = wrk_ceiling(srv, args.wrk_seconds)
            for rnd in range(1, args.rounds + 1):
                jobs: list[tuple[str, int]] = []
                if mapproxy_seed:
                    jobs.append(("mapproxy", args.concurrency))
                if args.only in ("both", "cacheorch"):
                    jobs += [("cacheorch", w) for w in workers]
                if rnd % 2 == 0:  # alternate the order: neither tool always runs on a cold/warm machine
                    jobs.reverse()
                for tool, n in jobs:
                    if tool == "mapproxy":
                        assert mapproxy_seed is not None
                        run = run_mapproxy(mapproxy_seed, srv, work, levels, aoi, n, rnd, args.timeout)
                    else:
                        run = run_cacheorch(srv, work, levels, aoi, n, rnd, args.timeout, verify=tile)
                    runs.append(run)
                    if not args.json:
                        status = "ok" if run.ok else f"FAILED: {run.error}"
                        print(f"  round {rnd}: {run.tool} {run.setting}: {run.tiles:,} tiles in "
                              f"{run.seconds:.2f} s, {run.tiles_per_s:,.0f} tiles/s, "
                              f"{run.cpu_ms_per_tile:.3f} CPU ms/tile  [{status}]", file=sys.stderr)
            if args.profile is not None and args.only in ("both", "cacheorch"):
                prof = run_cacheorch(srv, work, levels, aoi, max(workers), 0, args.timeout,
                                     profile=args.profile.resolve())
                meta["profile"] = {"file": str(args.profile), "run": prof.to_json()}
    except NginxError as exc:
        raise BenchError(str(exc)) from None
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            meta["kept"] = str(work)
    meta["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    summary = summarize(runs)
    if args.json:
        print(json.dumps({"meta": meta, "summary": summary, "runs": [r.to_json() for r in runs]}, indent=1))
    else:
        print_table(summary, runs, meta)
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())

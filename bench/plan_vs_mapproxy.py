"""Planning speed: `cacheorch plan` vs `mapproxy-seed --dry-run`, on the same polygon, in one run.

Why: the issue's target is that `plan` of a 1,000-vertex polygon covering about 5% of the world,
levels 0-18 (about 10^9 tiles), takes under 2 s; and MapProxy's dry run took 50 s to count 1.13 M
tiles (levels 0-13 over the reference European polygon). Figures from two machines or two loads
are not comparable, so this script measures both tools here, one after the other:

1. cacheorch on a generated polygon: a deterministic wobbly star over Africa, 1,000 vertices,
   5% of the Earth's surface (geodesic area on WGS84), levels 0-18;
2. cacheorch and MapProxy on the reference polygon (bench/reference/aoi-europe.geojson, the
   MapProxy configuration of that folder's templates), levels 0-13;
3. optionally (--mapproxy-blob-levels) MapProxy on the generated polygon too.

Each figure is the wall time of the whole command (process start, imports, reading and projecting
the polygon, counting), best of --rounds; the planner's own time (in this process, no start-up) is
printed beside cacheorch's. The tile counts of the two tools differ a little: MapProxy counts the
tiles whose box intersects the polygon projected vertex by vertex; cacheorch counts those sharing
area with it after densifying its edges every 0.25 degrees before projecting (a straight edge in
longitude/latitude is a curve in Web Mercator). Both are printed.

Needs MapProxy 7 in the venv for the comparison (pip install "mapproxy>=7,<8"); without it, only
cacheorch is measured. Not part of the test suite.

    .venv/bin/python bench/plan_vs_mapproxy.py
    .venv/bin/python bench/plan_vs_mapproxy.py --rounds 5 --json
    .venv/bin/python bench/plan_vs_mapproxy.py --skip-mapproxy
    .venv/bin/python bench/plan_vs_mapproxy.py --mapproxy-blob-levels 0-12 --keep /tmp/planbench
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

try:
    from bench.seed_vs_mapproxy import (
        REFERENCE, BenchError, find_mapproxy_seed, mapproxy_templates, mapproxy_version)
except ImportError:  # run as a script: bench/ itself is on sys.path
    from seed_vs_mapproxy import (  # type: ignore[no-redef]
        REFERENCE, BenchError, find_mapproxy_seed, mapproxy_templates, mapproxy_version)

TARGET_SECONDS = 2.0
MAPPROXY_HINT = ('mapproxy-seed not found: install MapProxy 7 with `.venv/bin/pip install '
                 '"mapproxy>=7,<8"` (or pass --skip-mapproxy)')


# -- the polygon ---------------------------------------------------------------------------------

def blob_polygon(vertices: int = 1000, share: float = 0.05) -> list[tuple[float, float]]:
    """A wobbly star over Africa covering ``share`` of the Earth (WGS84), as a closed lon/lat ring.

    The same formula as tests/test_planner_scale.py: a radius r(θ) with three wobbles, scaled by
    bisection until the geodesic area is the share wanted. Deterministic, no random numbers.
    """
    from pyproj import Geod
    t = np.linspace(0, 2 * math.pi, vertices, endpoint=False)
    wobble = 1 + 0.22 * np.sin(5 * t) + 0.09 * np.sin(13 * t + 1.0) + 0.04 * np.sin(41 * t + 2.0)
    geod = Geod(ellps="WGS84")
    earth = 4 * math.pi * 6371008.8 ** 2
    lo, hi = 1.0, 60.0
    for _ in range(50):
        radius = (lo + hi) / 2
        area = abs(geod.polygon_area_perimeter(15 + 1.25 * radius * wobble * np.cos(t),
                                               8 + radius * wobble * np.sin(t))[0])
        lo, hi = (radius, hi) if area < share * earth else (lo, radius)
    ring = list(zip((15 + 1.25 * radius * wobble * np.cos(t)).tolist(),
                    (8 + radius * wobble * np.sin(t)).tolist()))
    return ring + [ring[0]]


def write_geojson(path: Path, ring: list[tuple[float, float]], name: str) -> None:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": name},
         "geometry": {"type": "Polygon", "coordinates": [[list(p) for p in ring]]}}]}))


def geodesic_share(ring: list[tuple[float, float]]) -> float:
    from pyproj import Geod
    lon, lat = zip(*ring)
    return abs(Geod(ellps="WGS84").polygon_area_perimeter(lon, lat)[0]) / (4 * math.pi * 6371008.8 ** 2)


# -- the tools ------------------------------------------------------------------------------------

def parse_levels(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", text)
    if not m or int(m.group(1)) > int(m.group(2)):
        raise BenchError(f"bad levels {text!r}: expected FIRST-LAST, e.g. 0-13")
    return int(m.group(1)), int(m.group(2))


def child_env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["NO_PROXY"] = "127.0.0.1,localhost"
    env["CACHEORCH_CONFIG"] = str(work / "no-config.ini")  # nobody's config or catalog
    env["CACHEORCH_CATALOG"] = str(work / "catalog.sqlite")
    return env


def cacheorch_exe() -> str:
    local = Path(sys.executable).parent / "cacheorch"
    if os.access(local, os.X_OK):
        return str(local)
    exe = shutil.which("cacheorch")
    if exe is None:
        raise BenchError("cacheorch not found: install it (pip install -e .) in this interpreter's venv")
    return exe


def best_of(rounds: int, run: Any) -> tuple[float, Any]:
    """The fastest of ``rounds`` runs of ``run()`` (wall seconds) and its result."""
    best: tuple[float, Any] | None = None
    for _ in range(rounds):
        started = time.perf_counter()
        result = run()
        elapsed = time.perf_counter() - started
        if best is None or elapsed < best[0]:
            best = (elapsed, result)
    assert best is not None
    return best


def cacheorch_plan(aoi: Path, levels: tuple[int, int], work: Path, timeout: float) -> dict[str, Any]:
    lv = f"{levels[0]}-{levels[1]}"
    cmd = [cacheorch_exe(), "plan", "--service", "defaults", "--levels", lv, "--aoi", f"{lv}={aoi}",
           "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env(work))
    if proc.returncode != 0:
        raise BenchError(f"cacheorch plan failed (exit {proc.returncode}): "
                         f"{(proc.stderr or proc.stdout).strip()[-300:]}")
    out = json.loads(proc.stdout)
    return {"tiles": out["tiles_planned"],
            "by_level": {lv["level"]: lv["tiles_planned"] for lv in out["levels"]}}


def planner_only(aoi: Path, levels: tuple[int, int]) -> tuple[float, int]:
    """Seconds the planner itself takes (count_levels) on the area `plan` builds from the file."""
    from cacheorch.connection import Connection
    from cacheorch.interfaces import Service
    from cacheorch.planner import count_levels
    from cacheorch.plugins.aoi_file import FileArea
    from cacheorch.tiling import web_mercator_scheme
    scheme = web_mercator_scheme()
    area = FileArea().area(str(aoi), Service("defaults", scheme, kind="defaults"), Connection())
    count_levels(scheme, [0], area)  # warm: imports, the edges of the area
    started = time.perf_counter()
    counts = count_levels(scheme, range(levels[0], levels[1] + 1), area)
    return time.perf_counter() - started, sum(counts.values())


def vertex_only_count(aoi: Path, levels: tuple[int, int]) -> int:
    """cacheorch's count on the polygon projected vertex by vertex, as MapProxy projects it.

    Tells the two tools' counting apart from their projection: on the same projected polygon
    the counts should agree (MapProxy counts tiles whose box intersects it).
    """
    import shapely
    from pyproj import Transformer
    from shapely.geometry import shape

    from cacheorch.planner import count_levels
    from cacheorch.tiling import web_mercator_scheme
    data = json.loads(aoi.read_text())
    geoms = [f["geometry"] for f in data["features"]] if data.get("type") == "FeatureCollection" \
        else [data.get("geometry", data)]
    fwd = Transformer.from_crs(4326, 3857, always_xy=True)
    area = shapely.transform(shapely.union_all([shape(g) for g in geoms]),
                             lambda xy: np.column_stack(fwd.transform(xy[:, 0], xy[:, 1])))
    return sum(count_levels(web_mercator_scheme(), range(levels[0], levels[1] + 1), area).values())


def mapproxy_dry_run(exe: str, aoi: Path, levels: tuple[int, int], work: Path, timeout: float
                     ) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix="mapproxy-", dir=work))
    mp, seed = mapproxy_templates()
    # A dry run fetches nothing: the URL is never asked (port 9 is discard).
    mp = mp.replace("@URL@", "http://127.0.0.1:9/arcgis/rest/services/Bench/MapServer")
    mp = mp.replace("@OUT@", str(out))
    seed = seed.replace("@AOI@", str(aoi))
    seed, n = re.subn(r"levels:\s*\{[^}]*\}", f"levels: {{from: {levels[0]}, to: {levels[1]}}}", seed)
    if n != 1:
        raise BenchError("seed.yaml template has no `levels: {from: .., to: ..}` line to replace")
    (out / "mapproxy.yaml").write_text(mp)
    (out / "seed.yaml").write_text(seed)
    cmd = [exe, "-s", str(out / "seed.yaml"), "-f", str(out / "mapproxy.yaml"), "-c", "4",
           "--seed", "bench", "--dry-run"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env(work))
    counts = [int(n) for n in re.findall(r"\((\d+) tiles\)", proc.stdout)]
    if proc.returncode != 0 or not counts:
        raise BenchError(f"mapproxy-seed --dry-run failed (exit {proc.returncode}): "
                         f"{(proc.stderr or proc.stdout).strip()[-300:]}")
    return {"tiles": max(counts)}  # progress lines count up; the last (largest) is the total


# -- main -----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="0-18", help="cacheorch levels on the generated polygon")
    parser.add_argument("--compare-levels", default="0-13",
                        help="levels of the side-by-side run on the reference polygon")
    parser.add_argument("--aoi", default=str(REFERENCE / "aoi-europe.geojson"),
                        help="the reference polygon (GeoJSON, WGS84)")
    parser.add_argument("--vertices", type=int, default=1000)
    parser.add_argument("--share", type=float, default=0.05, help="of the Earth's surface")
    parser.add_argument("--rounds", type=int, default=3, help="cacheorch runs; the best is kept")
    parser.add_argument("--mapproxy-rounds", type=int, default=1)
    parser.add_argument("--mapproxy-blob-levels", default="",
                        help="also dry-run MapProxy on the generated polygon (e.g. 0-12)")
    parser.add_argument("--skip-mapproxy", action="store_true")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--keep", help="keep the polygons and configs in this folder")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        return _main(args)
    except BenchError as exc:
        print(f"plan_vs_mapproxy: {exc}", file=sys.stderr)
        return 2
    except subprocess.TimeoutExpired as exc:
        print(f"plan_vs_mapproxy: timed out after {exc.timeout:g} s: {' '.join(exc.cmd[:3])}",
              file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    levels, compare = parse_levels(args.levels), parse_levels(args.compare_levels)
    blob_mp = parse_levels(args.mapproxy_blob_levels) if args.mapproxy_blob_levels else None
    mp_exe = None if args.skip_mapproxy else find_mapproxy_seed()
    if not args.skip_mapproxy and mp_exe is None:
        raise BenchError(MAPPROXY_HINT)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="planbench-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "no-config.ini").write_text("")
    try:
        europe = Path(args.aoi)
        if not europe.is_file():
            raise BenchError(f"{europe}: no such file")
        ring = blob_polygon(args.vertices, args.share)
        blob = work / "blob.geojson"
        write_geojson(blob, ring, f"{args.vertices}-vertex blob, {args.share:.0%} of the Earth")
        report: dict[str, Any] = {"meta": {
            "cpus": os.cpu_count(), "python": sys.version.split()[0],
            "blob": {"vertices": len(ring) - 1, "share_of_earth": round(geodesic_share(ring), 4),
                     "file": str(blob) if args.keep else None},
            "reference": str(europe), "mapproxy": mapproxy_version() if mp_exe else None}}

        secs, plan = best_of(args.rounds, lambda: cacheorch_plan(blob, levels, work, args.timeout))
        own, own_tiles = planner_only(blob, levels)
        assert own_tiles == plan["tiles"], (own_tiles, plan["tiles"])
        report["blob"] = {"levels": list(levels), "cacheorch_seconds": secs,
                          "planner_seconds": own, "tiles": plan["tiles"],
                          "tiles_by_level": plan["by_level"], "target_seconds": TARGET_SECONDS,
                          "target_met": secs < TARGET_SECONDS}

        secs, plan = best_of(args.rounds, lambda: cacheorch_plan(europe, compare, work, args.timeout))
        own, _ = planner_only(europe, compare)
        side: dict[str, Any] = {"levels": list(compare), "cacheorch_seconds": secs,
                                "planner_seconds": own, "cacheorch_tiles": plan["tiles"],
                                "cacheorch_vertex_only_tiles": vertex_only_count(europe, compare)}
        if mp_exe:
            mp_secs, mp = best_of(args.mapproxy_rounds,
                                  lambda: mapproxy_dry_run(mp_exe, europe, compare, work, args.timeout))
            side.update(mapproxy_seconds=mp_secs, mapproxy_tiles=mp["tiles"],
                        speedup=mp_secs / secs,
                        tiles_difference=plan["tiles"] / mp["tiles"] - 1)
        report["reference"] = side

        if mp_exe and blob_mp:
            mp_secs, mp = best_of(1, lambda: mapproxy_dry_run(mp_exe, blob, blob_mp, work, args.timeout))
            c_secs, plan = best_of(args.rounds, lambda: cacheorch_plan(blob, blob_mp, work, args.timeout))
            report["blob_mapproxy"] = {"levels": list(blob_mp), "mapproxy_seconds": mp_secs,
                                       "mapproxy_tiles": mp["tiles"], "cacheorch_seconds": c_secs,
                                       "cacheorch_tiles": plan["tiles"], "speedup": mp_secs / c_secs}
        if mp_exe:  # MapProxy at its measured rate on the whole generated-polygon job
            rate = side["mapproxy_tiles"] / side["mapproxy_seconds"]
            report["blob"]["mapproxy_estimated_seconds"] = report["blob"]["tiles"] / rate
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0 if report["blob"]["target_met"] else 1


def print_report(r: dict[str, Any]) -> None:
    b, s = r["blob"], r["reference"]
    meta = r["meta"]
    print(f"machine: {meta['cpus']} CPUs, Python {meta['python']}, MapProxy {meta['mapproxy'] or '-'}")
    print(f"\n1. cacheorch plan, {meta['blob']['vertices']}-vertex polygon, "
          f"{meta['blob']['share_of_earth']:.1%} of the Earth, levels {b['levels'][0]}-{b['levels'][1]}")
    print(f"   {b['tiles']:,} tiles in {b['cacheorch_seconds']:.2f} s (whole command; planner alone "
          f"{b['planner_seconds']:.3f} s)  target < {b['target_seconds']:g} s: "
          f"{'met' if b['target_met'] else 'MISSED'}")
    if "mapproxy_estimated_seconds" in b:
        est = b["mapproxy_estimated_seconds"]
        print(f"   MapProxy at its rate below would need about {est:,.0f} s ({est / 3600:.1f} h): "
              f"{est / b['cacheorch_seconds']:,.0f}x longer")
    print(f"\n2. reference polygon ({Path(r['meta']['reference']).name}), levels "
          f"{s['levels'][0]}-{s['levels'][1]}")
    print(f"   cacheorch plan            {s['cacheorch_tiles']:>12,} tiles  {s['cacheorch_seconds']:8.2f} s"
          f"  (planner alone {s['planner_seconds']:.3f} s)")
    if "mapproxy_seconds" in s:
        print(f"   mapproxy-seed --dry-run   {s['mapproxy_tiles']:>12,} tiles  {s['mapproxy_seconds']:8.2f} s")
        print(f"   ratio (MapProxy time / cacheorch time): {s['speedup']:,.0f}x whole command, "
              f"{s['mapproxy_seconds'] / s['planner_seconds']:,.0f}x planner alone")
        print(f"   tile counts differ by {s['tiles_difference']:+.2%}: cacheorch densifies edges before "
              f"projecting; projected vertex by vertex as MapProxy does, it counts "
              f"{s['cacheorch_vertex_only_tiles']:,}")
    if "blob_mapproxy" in r:
        m = r["blob_mapproxy"]
        print(f"\n3. generated polygon, levels {m['levels'][0]}-{m['levels'][1]}")
        print(f"   cacheorch plan            {m['cacheorch_tiles']:>12,} tiles  {m['cacheorch_seconds']:8.2f} s")
        print(f"   mapproxy-seed --dry-run   {m['mapproxy_tiles']:>12,} tiles  {m['mapproxy_seconds']:8.2f} s")
        print(f"   ratio: {m['speedup']:,.0f}x")


if __name__ == "__main__":
    sys.exit(main())

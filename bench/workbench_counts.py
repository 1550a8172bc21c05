"""How long the workbench takes to update its counts for a country at levels 0-18.

Issue 11 asks for an update under 200 ms for a country at level 18. This measures the API call
the page makes on every tick or drawn area (``POST /api/plan``): a 2,000-vertex polygon of about
550,000 km² (France-sized) in Web Mercator, levels 0-18 (about 71 million tiles), against a
loopback MapServer. It prints the planner's own time and the whole request's, median of N.

    .venv/bin/python bench/workbench_counts.py --rounds 10

Needs the test extra (``pip install -e '.[test]'``): it reuses the tests' loopback server.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from _tiles import mercator_service_json  # noqa: E402
from _tileserver import TileServer  # noqa: E402
from _workbench import Api, country, start_workbench  # noqa: E402


def measure(rounds: int) -> tuple[list[float], list[float], int]:
    """(planner ms, request ms, tiles planned) over ``rounds`` updates after one warm-up."""
    with TileServer({}, service=mercator_service_json(18)) as srv, \
            tempfile.TemporaryDirectory() as root:
        server = start_workbench(Path(root))
        try:
            api = Api(server)
            src = api.ok("POST", "/api/sources", {"location": srv.url})
            selection = {"source": src["id"], "levels": list(range(19)), "tiers": [
                {"levels": "0-18", "area": {"kind": "geojson", "geometry": country()}}]}
            api.ok("POST", "/api/plan", selection)
            planner, request = [], []
            for _ in range(rounds):
                started = time.perf_counter()
                counts = api.ok("POST", "/api/plan", selection)
                request.append((time.perf_counter() - started) * 1000)
                planner.append(counts["planner_ms"])
        finally:
            server.stop()
    return planner, request, counts["tiles"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    planner, request, tiles = measure(args.rounds)
    print(f"country at levels 0-18: {tiles:,} tiles planned")
    print(f"planner  median {statistics.median(planner):6.1f} ms  max {max(planner):6.1f} ms")
    print(f"request  median {statistics.median(request):6.1f} ms  max {max(request):6.1f} ms"
          f"  (target: under 200 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Which HTTP client should fetch tiles in bulk? Measure them side by side against nginx.

Starts nginx (Debian package ``nginx-light``; this script installs nothing) on 127.0.0.1 with
bench/reference/nginx.conf.tmpl through bench/_nginx.py, serving one fixed ~51.7 KB
PNG for every tile URL, then fetches the same N distinct tile URLs (levels 10-12) with each client
at each concurrency and prints tiles/s and CPU milliseconds per tile (process CPU: all threads of
this process; nginx's own CPU is shown apart).

By default the client process is pinned to CPU 0 and nginx to CPU 1, the set-up the pipeline
target assumes ("nginx on the other core"); ``--no-pin`` lets the kernel place both.
``--work-us`` makes the consumer burn CPU per tile, standing in for the exporter, to show how a
client behaves when the thread that takes its tiles is busy.

    .venv/bin/python bench/http_clients.py                   # 5,000 tiles, 8 and 16 in flight
    .venv/bin/python bench/http_clients.py -n 20000 --repeat 3 --clients cacheorch,aiohttp
    .venv/bin/python bench/http_clients.py --work-us 150 --clients cacheorch,cacheorch-thread

Exit code 2 (and one line saying how to install it) when nginx is missing.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import queue
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from cacheorch.formats.png import is_image

try:
    from bench._nginx import Nginx, bench_service_json, bench_tile, nginx_problem
except ImportError:  # run as a script: bench/ itself is on sys.path
    from _nginx import (  # type: ignore[no-redef]
        Nginx, bench_service_json, bench_tile, nginx_problem)


# -- the clients ------------------------------------------------------------------------------
# Each takes (URLs, in flight, consume) and calls consume(good) once per tile in the thread that
# would hand tiles to the exporter; consume() may burn CPU to stand in for the rest of a pipeline.

Consume = Callable[[bool], None]


def run_requests(urls: list[str], inflight: int, consume: Consume) -> None:
    import requests
    from requests.adapters import HTTPAdapter
    session = requests.Session()
    session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=inflight))

    def get(url: str) -> bool:
        r = session.get(url, timeout=30)
        return r.status_code == 200 and is_image(r.content)

    with ThreadPoolExecutor(inflight) as pool:
        for good in pool.map(get, urls):
            consume(good)
    session.close()


def run_urllib3(urls: list[str], inflight: int, consume: Consume) -> None:
    import urllib3
    http = urllib3.PoolManager(maxsize=inflight, block=True, retries=False)

    def get(url: str) -> bool:
        r = http.request("GET", url, timeout=30)
        return r.status == 200 and is_image(r.data)

    with ThreadPoolExecutor(inflight) as pool:
        for good in pool.map(get, urls):
            consume(good)
    http.clear()


async def _aiohttp_main(urls: list[str], inflight: int, consume: Consume,
                        trust_env: bool = False) -> None:
    import aiohttp
    it = iter(urls)
    connector = aiohttp.TCPConnector(limit=inflight)
    # trust_env=True (proxies from the environment) makes aiohttp look proxies and .netrc up on
    # every request: see the "aiohttp, trust_env=True" row.
    async with aiohttp.ClientSession(connector=connector, trust_env=trust_env) as session:
        async def worker() -> None:
            for url in it:
                async with session.get(url) as r:
                    body = await r.read()
                    consume(r.status == 200 and is_image(body))
        await asyncio.gather(*(worker() for _ in range(inflight)))


def run_aiohttp(urls: list[str], inflight: int, consume: Consume) -> None:
    asyncio.run(_aiohttp_main(urls, inflight, consume))


def run_aiohttp_env(urls: list[str], inflight: int, consume: Consume) -> None:
    asyncio.run(_aiohttp_main(urls, inflight, consume, trust_env=True))


def _through_queue(produce: Callable[[Consume], None], consume: Consume) -> None:
    """Run ``produce`` on a background thread and consume its results here, via a queue."""
    q: queue.SimpleQueue = queue.SimpleQueue()
    done = object()

    def background() -> None:
        try:
            produce(q.put)
        finally:
            q.put(done)
    t = threading.Thread(target=background)
    t.start()
    while (item := q.get()) is not done:
        consume(item)
    t.join()


def run_aiohttp_thread(urls: list[str], inflight: int, consume: Consume) -> None:
    """aiohttp on a background loop feeding a queue: one design considered for fetch.py."""
    _through_queue(lambda put: asyncio.run(_aiohttp_main(urls, inflight, put)), consume)


def _cacheorch_fetch(urls: list[str], inflight: int, consume: Consume) -> None:
    from cacheorch.connection import Connection
    from cacheorch.interfaces import Service
    from cacheorch.plugins.tiles_rest import RestTileSource
    from cacheorch.tiling import TileKey, web_mercator_scheme
    base = urls[0].split("/tile/")[0]
    keys = (TileKey(*map(int, u.rsplit("/tile/", 1)[1].split("/"))) for u in urls)
    service = Service(location=base, scheme=web_mercator_scheme(19))
    with RestTileSource().open(service, Connection(), inflight) as fetcher:
        for r in fetcher.fetch(keys):
            consume(r.status == "ok")


def run_cacheorch(urls: list[str], inflight: int, consume: Consume) -> None:
    """Our fetcher, through the TileFetcher interface the pipeline uses."""
    _cacheorch_fetch(urls, inflight, consume)


def run_cacheorch_thread(urls: list[str], inflight: int, consume: Consume) -> None:
    """Our engine driven from a background thread feeding a queue: the design fetch.py rejected."""
    _through_queue(lambda put: _cacheorch_fetch(urls, inflight, put), consume)


CLIENTS: dict[str, tuple[str, Callable[[list[str], int, Consume], None]]] = {
    "requests": ("requests + ThreadPoolExecutor", run_requests),
    "urllib3": ("urllib3 PoolManager + threads", run_urllib3),
    "aiohttp": ("aiohttp (asyncio.run)", run_aiohttp),
    "aiohttp-env": ("aiohttp, trust_env=True", run_aiohttp_env),
    "aiohttp-thread": ("aiohttp, loop thread → queue", run_aiohttp_thread),
    "cacheorch": ("cacheorch.fetch (TileFetcher)", run_cacheorch),
    "cacheorch-thread": ("cacheorch.fetch, thread → queue", run_cacheorch_thread),
}


def tile_urls(base: str, n: int) -> list[str]:
    """``n`` distinct tile URLs spread over levels 10-12, bundle-ordered like the planner."""
    urls = []
    per_level = -(-n // 3)
    for level in (10, 11, 12):
        side = int(per_level ** 0.5) + 1
        r0 = c0 = (1 << level) // 3
        for i in range(per_level):
            urls.append(f"{base}/tile/{level}/{r0 + i // side}/{c0 + i % side}")
    return urls[:n]


def measure(name: str, urls: list[str], inflight: int, server: Nginx, work_us: float
            ) -> tuple[float, float, float]:
    """(tiles/s, client CPU ms per tile, nginx CPU ms per tile) for one client and concurrency."""
    fn = CLIENTS[name][1]
    good = 0
    spin = work_us / 1e6

    def consume(ok: bool) -> None:
        nonlocal good
        good += ok
        if spin:
            end = time.perf_counter() + spin
            while time.perf_counter() < end:
                pass

    fn(urls[:200], inflight, consume)  # warm up: imports, connections, caches
    good = 0
    cpu0, wall0, srv0 = time.process_time(), time.perf_counter(), server.cpu_seconds()
    fn(urls, inflight, consume)
    wall, cpu, srv = (time.perf_counter() - wall0, time.process_time() - cpu0,
                      server.cpu_seconds() - srv0)
    if good != len(urls):
        raise SystemExit(f"{name}: only {good} of {len(urls)} tiles were good")
    n = len(urls)
    return n / wall, cpu / n * 1000, srv / n * 1000


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=5000, help="tiles per measurement (default 5000)")
    ap.add_argument("--inflight", default="8,16", help="concurrency levels (default 8,16)")
    ap.add_argument("--clients", default=",".join(CLIENTS), help="comma list of " + ", ".join(CLIENTS))
    ap.add_argument("--repeat", type=int, default=1, help="runs per cell; the median is shown")
    ap.add_argument("--no-pin", action="store_true", help="do not pin client and nginx to CPUs 0/1")
    ap.add_argument("--work-us", type=float, default=0.0,
                    help="CPU µs the consumer burns per tile, standing in for the exporter")
    args = ap.parse_args(argv)
    names = [c.strip() for c in args.clients.split(",") if c.strip()]
    for name in names:
        if name not in CLIENTS:
            ap.error(f"unknown client {name!r}")
    levels = [int(x) for x in args.inflight.split(",")]
    pin = not args.no_pin and len(os.sched_getaffinity(0)) >= 2
    if pin:
        os.sched_setaffinity(0, {0})
    if problem := nginx_problem():
        print(problem, file=sys.stderr)
        raise SystemExit(2)
    with Nginx(bench_tile(), bench_service_json(), cpu=1 if pin else None) as srv:
        load0 = os.getloadavg()
        base = srv.service_url
        urls = tile_urls(base, args.n)
        print(f"nginx {base}  tile {len(srv.tile_bytes):,} bytes  {len(urls):,} distinct tiles "
              f"(levels 10-12)  {'client on CPU 0, nginx on CPU 1' if pin else 'not pinned'}  "
              f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
              + (f"  consumer burns {args.work_us:g} µs/tile" if args.work_us else ""))
        # Rounds interleave the clients, so a burst of load elsewhere on the machine hits all
        # of them alike; each cell shows the median over rounds.
        cells: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
        for rnd in range(args.repeat):
            for name in names:
                for inflight in levels:
                    m = measure(name, urls, inflight, srv, args.work_us)
                    cells.setdefault((name, inflight), []).append(m)
                    print(f"  round {rnd + 1}: {name} x{inflight}: {m[0]:,.0f} tiles/s, "
                          f"{m[1]:.3f} ms CPU/tile", file=sys.stderr, flush=True)
        print(f"load average before/after: {load0[0]:.2f} / {os.getloadavg()[0]:.2f}")
        print()
        print("| client | in flight | tiles/s | client CPU ms/tile | nginx CPU ms/tile |")
        print("|---|---:|---:|---:|---:|")
        for (name, inflight), runs in cells.items():
            rate = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            srv = statistics.median(r[2] for r in runs)
            print(f"| {CLIENTS[name][0]} | {inflight} | {rate:,.0f} | {cpu:.3f} | {srv:.3f} |")


if __name__ == "__main__":
    main()

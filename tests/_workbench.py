"""Helpers for the workbench tests: a workbench on a loopback port and a client for its API."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from _gdal import solid_png
from _tileserver import TileServer
from _tiles import mercator_service_json

from cacheorch.cli import App
from cacheorch.workbench.app import TOKEN_HEADER
from cacheorch.workbench.server import WorkbenchServer

__all__ = ["Api", "start_workbench", "quadrant_tiles", "QUADRANTS", "MAX_LEVEL", "service", "wb", "country"]

MAX_LEVEL = 5
#: The world's quadrants, each a solid colour at every level (none of them a tier's colour).
QUADRANTS = {(0, 0): (220, 30, 40), (0, 1): (30, 170, 60), (1, 0): (240, 200, 20),
             (1, 1): (40, 70, 210)}


def quadrant_tiles(levels: range = range(0, 4)) -> dict[tuple[int, int, int], bytes]:
    """Levels 1.. of a Web Mercator world, each tile the colour of its quadrant (level 0: grey)."""
    colours = {rgb: solid_png(rgb) for rgb in QUADRANTS.values()}
    tiles = {}
    for level in levels:
        if level == 0:
            tiles[(0, 0, 0)] = solid_png((128, 128, 128))
            continue
        half = 2 ** (level - 1)
        for r in range(2 ** level):
            for c in range(2 ** level):
                tiles[(level, r, c)] = colours[QUADRANTS[(r // half, c // half)]]
    return tiles


def service_json() -> dict[str, Any]:
    return mercator_service_json(MAX_LEVEL) | {"description": "Quadrants for the workbench tests"}


def start_workbench(root: Path, **kw: Any) -> WorkbenchServer:
    return WorkbenchServer(App(), roots=[str(root)], **kw).start()


@pytest.fixture
def service():
    with TileServer(quadrant_tiles(), service=service_json()) as srv:
        yield srv


@pytest.fixture
def wb(tmp_path: Path):
    server = start_workbench(tmp_path)
    try:
        yield server
    finally:
        server.stop()


class Api:
    """The JSON API with the session token, as another tool would drive it."""

    def __init__(self, server: WorkbenchServer) -> None:
        self.base = server.root_url
        self.session = requests.Session()
        self.session.headers[TOKEN_HEADER] = server.workbench.token
        self.session.trust_env = False

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.session.get(self.base + path, timeout=60, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> requests.Response:
        return self.session.post(self.base + path, json=body, timeout=60, **kw)

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        response = self.get(path) if method == "GET" else self.post(path, body)
        assert response.status_code in (200, 201), (response.status_code, response.text)
        return response.json()

    def wait_job(self, job_id: int, until: tuple[str, ...] = ("completed", "partial", "failed",
                                                               "interrupted"),
                 timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.ok("GET", f"/api/jobs/{job_id}")
            live = job.get("live") or {}
            if job["status"] in until and live.get("status", job["status"]) != "running":
                return job
            assert time.monotonic() < deadline, f"job {job_id} still {job['status']}"
            time.sleep(0.1)


def country(vertices: int = 2000):
    """A wobbly country of about 550,000 km² around France, in Web Mercator (GeoJSON)."""
    import math

    from pyproj import Transformer
    t = np.linspace(0, 2 * math.pi, vertices, endpoint=False)
    wobble = 1 + 0.12 * np.sin(7 * t) + 0.05 * np.sin(23 * t + 1) + 0.02 * np.sin(97 * t + 2)
    lon, lat = 2.5 + 5.6 * wobble * np.cos(t), 46.6 + 3.9 * wobble * np.sin(t)
    x, y = Transformer.from_crs(4326, 3857, always_xy=True).transform(lon, lat)
    ring = [[float(a), float(b)] for a, b in zip(x, y)]
    return {"type": "Polygon", "coordinates": [ring + [ring[0]]]}

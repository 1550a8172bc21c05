"""Headless Chromium screenshots, for the tests of pages people look at (serve's preview, plan --html).

Why a real browser: the pages are JavaScript drawing tiles or SVG; only running them proves they
show something. Debian's ``chromium`` package is what CI installs (``.ci/run``). A test that needs
it calls :func:`need_chromium`, which skips with the reason when it is missing, and
:func:`screenshot`, which returns the picture as an RGB array (decoded by GDAL's PNG driver).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest

__all__ = ["chromium", "need_chromium", "screenshot", "dump_dom", "colour_pixels"]

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium() -> str | None:
    """The browser's path ($CHROMIUM first), or None."""
    explicit = os.environ.get("CHROMIUM")
    if explicit and Path(explicit).exists():
        return explicit
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def need_chromium() -> str:
    found = chromium()
    if found is None:
        pytest.skip("chromium not installed (Debian: apt-get install -y --no-install-recommends "
                    "chromium; .ci/run does this)")
    return found


def screenshot(url: str, *, size: tuple[int, int] = (800, 600), timeout: float = 90.0,
               budget_ms: int = 5000) -> np.ndarray:
    """Load ``url`` in headless Chromium and return the screenshot as an (h, w, 3) uint8 array.

    ``--virtual-time-budget`` lets the page run its scripts and load what they ask for before the
    picture is taken; the flags keep Chromium from talking to anything but ``url``.
    """
    import rasterio
    import rasterio.errors

    with tempfile.TemporaryDirectory(prefix="cacheorch-chromium-") as tmp:
        png = Path(tmp) / "shot.png"
        result = _run(tmp, [f"--screenshot={png}"], url, size, timeout, budget_ms)
        if not png.exists():
            raise AssertionError(f"chromium wrote no screenshot (exit {result.returncode}): "
                                 f"{result.stderr.decode(errors='replace')[-2000:]}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(png) as ds:
                bands = ds.read()
    return np.ascontiguousarray(np.moveaxis(bands[:3], 0, -1))


def _run(tmp: str, extra: list[str], url: str, size: tuple[int, int], timeout: float,
         budget_ms: int) -> subprocess.CompletedProcess:
    browser = need_chromium()
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-proxy-server", "--hide-scrollbars",
            f"--user-data-dir={tmp}/profile", *extra,
            f"--window-size={size[0]},{size[1]}", f"--virtual-time-budget={budget_ms}", url]
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return subprocess.run(args, capture_output=True, timeout=timeout, env=env, check=False)


def dump_dom(url: str, *, size: tuple[int, int] = (800, 600), timeout: float = 90.0,
             budget_ms: int = 5000) -> str:
    """The page's DOM as HTML after its scripts ran (what the scripts set is in it)."""
    with tempfile.TemporaryDirectory(prefix="cacheorch-chromium-") as tmp:
        result = _run(tmp, ["--dump-dom"], url, size, timeout, budget_ms)
    return result.stdout.decode(errors="replace")


def colour_pixels(image: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 6) -> int:
    """How many pixels of ``image`` are ``rgb`` (each channel within ``tolerance``)."""
    diff = np.abs(image.astype(np.int16) - np.array(rgb, dtype=np.int16))
    return int(np.count_nonzero(diff.max(axis=-1) <= tolerance))

"""A progress bar with rate and ETA on a terminal; none when stderr is not a TTY or with --json."""
from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

from _gdal import solid_png
from _tileserver import TileServer
from cacheorch.tiling import web_mercator_scheme


def _service() -> dict:
    return {"currentVersion": 10.81, "spatialReference": {"wkid": 102100},
            "tileInfo": web_mercator_scheme(5).to_json(),
            "fullExtent": {"xmin": -2e7, "ymin": -2e7, "xmax": 2e7, "ymax": 2e7}}


def _run(url: str, tmp_path: Path, *extra: str, tty: bool) -> tuple[str, str]:
    args = [sys.executable, "-m", "cacheorch", "run", "--service", url, "--levels", "0-5",
            "--output", str(tmp_path / f"p{len(list(tmp_path.iterdir()))}.tpkx"), *extra]
    if not tty:
        proc = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout, proc.stderr
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=slave, cwd=tmp_path, text=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    out = proc.communicate(timeout=60)[0]
    os.close(master)
    assert proc.returncode == 0
    return out, b"".join(chunks).decode(errors="replace")


def test_progress_bar_only_on_a_terminal(tmp_path: Path) -> None:
    tiles = {(lv, r, c): solid_png((lv, r, c)) for lv in range(6) for r in range(2 ** lv)
             for c in range(2 ** lv)}
    with TileServer(tiles, service=_service()) as srv:
        _, on_tty = _run(srv.url, tmp_path, tty=True)
        # counts as whole numbers (not 1.36k), and the rate
        assert "1365/1365" in on_tty and "tile/s" in on_tty
        _, piped = _run(srv.url, tmp_path, tty=False)
        assert piped == ""
        out, json_on_tty = _run(srv.url, tmp_path, "--json", tty=True)
        assert "tile/s" not in json_on_tty and json.loads(out)["status"] == "completed"

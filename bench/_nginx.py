"""A loopback ArcGIS tile server (nginx answering one fixed tile) for side-by-side benchmarks.

Why nginx and one fixed tile: the benchmarks compare *clients* (cacheorch, MapProxy, HTTP
libraries), so the server must cost as little CPU as possible and answer every tile identically;
nginx with ``alias`` to one file does that at tens of thousands of requests/s on one core, far
above any client here. The set-up is the one the peer figures were measured with
(bench/reference/nginx.conf.tmpl), so results stay comparable.

    from bench._nginx import Nginx, bench_tile, bench_service_json
    with Nginx(bench_tile(), bench_service_json()) as srv:
        srv.service_url            # http://127.0.0.1:PORT/arcgis/rest/services/Bench/MapServer
        srv.tile_url(3, 2, 1)      # .../MapServer/tile/3/2/1
        srv.cpu_seconds()          # CPU nginx itself used so far (master + workers)

Nothing is installed here: if nginx is absent, :class:`NginxMissing` says how to get it.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from array import array
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "INSTALL_HINT", "REFERENCE", "REFERENCE_TEMPLATE", "REFERENCE_TILE_BYTES", "SERVICE_PATH", "Nginx",
    "NginxError", "NginxMissing", "bench_service_json", "bench_tile", "find_nginx", "nginx_problem",
]

#: The reference set-up the peer figures were measured with: polygon, nginx and MapProxy templates.
REFERENCE = Path(__file__).resolve().parent / "reference"
REFERENCE_TEMPLATE = REFERENCE / "nginx.conf.tmpl"
SERVICE_PATH = "/arcgis/rest/services/Bench/MapServer"
REFERENCE_TILE_BYTES = 51_763
INSTALL_HINT = "nginx not found: install it with `apt-get install -y nginx-light` (Debian/Ubuntu)"


class NginxError(RuntimeError):
    """nginx could not be started (the message carries the tail of its error log)."""


class NginxMissing(NginxError):
    """No nginx executable; the message is the one-line install hint."""


def find_nginx() -> str | None:
    """The nginx executable, also where Debian puts it outside a non-root PATH (/usr/sbin)."""
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def nginx_problem() -> str | None:
    """Why :class:`Nginx` cannot start here, in one line (no nginx, no reference template), or None."""
    if find_nginx() is None:
        return INSTALL_HINT
    if not REFERENCE_TEMPLATE.is_file():
        return f"no nginx template at {REFERENCE_TEMPLATE}"
    return None


# -- what the server answers --------------------------------------------------------------------

def _noisy_bands(share: int, seed: int) -> bytes:
    """RGB samples of a banded gradient where ``share``/65536 of them are replaced by noise.

    A smooth gradient deflates to almost nothing and pure noise not at all (encode_png uses no
    row filters); a share of noisy samples over coarse colour bands gives a tile whose size can be
    tuned finely, so the per-tile cost (bytes read, copied, written) matches real imagery.
    """
    n = 256 * 256 * 3
    rnd = random.Random(seed)
    noise = rnd.randbytes(n)
    select = array("H", rnd.randbytes(2 * n))
    base = bytes(v for y in range(256) for x in range(256) for v in (x & 0xE0, y & 0xE0, 0x80))
    return bytes(r if s < share else b for r, s, b in zip(noise, select, base))


def bench_tile(target_bytes: int = REFERENCE_TILE_BYTES, seed: int = 51_763) -> bytes:
    """A deterministic noisy 256×256 RGB PNG within 0.5 % of ``target_bytes``.

    The reference measurements served a 51,763-byte tile; tile size drives per-tile cost, so the
    noise share is bisected until the encoded size lands close to the target.
    """
    from cacheorch.formats.png import encode_png

    lo, hi = 0, 65_536
    png = b""
    for _ in range(20):
        share = (lo + hi) // 2
        png = encode_png(256, 256, _noisy_bands(share, seed), level=6)
        if abs(len(png) - target_bytes) * 200 <= target_bytes or hi - lo <= 1:
            break
        lo, hi = (share, hi) if len(png) < target_bytes else (lo, share)
    return png


def bench_service_json(max_level: int = 19) -> dict[str, Any]:
    """A cached Web Mercator MapServer description (levels 0..max_level), as ArcGIS 10.81 sends it."""
    from cacheorch.tiling import web_mercator_scheme

    scheme = web_mercator_scheme(max_level)
    sr = scheme.spatial_reference.to_json()
    extent = scheme.full_extent.to_json() if scheme.full_extent is not None else None
    return {
        "currentVersion": 10.81, "serviceDescription": "cacheorch bench: one fixed tile",
        "mapName": "Bench", "singleFusedMapCache": True, "capabilities": "Map",
        "spatialReference": sr, "tileInfo": scheme.to_json(),
        "fullExtent": extent, "initialExtent": extent, "units": "esriMeters",
        "supportedImageFormatTypes": "PNG32,PNG24,PNG,JPG", "maxImageHeight": 4096,
        "maxImageWidth": 4096,
    }


# -- the server ---------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Nginx:
    """nginx on 127.0.0.1 answering ``tile_bytes`` for every tile URL and ``service_json`` for the
    MapServer URL; a context manager that always stops the server it started.

    ``workdir``: where config, tile and logs go (a fresh temp dir, removed on exit, by default).
    ``cpu``: pin nginx (master and workers) to this CPU, to keep it off the client's core.
    ``template``: an nginx.conf with @DIR@ and @PORT@ (default: the reference template).
    """

    def __init__(self, tile_bytes: bytes, service_json: dict[str, Any] | str, *,
                 workdir: str | os.PathLike[str] | None = None, port: int | None = None,
                 cpu: int | None = None, template: str | os.PathLike[str] | None = None,
                 start_timeout: float = 10.0) -> None:
        self.tile_bytes = tile_bytes
        self.service_text = service_json if isinstance(service_json, str) else json.dumps(service_json)
        self._workdir_arg = Path(workdir) if workdir is not None else None
        self._port_arg = port
        self.cpu = cpu
        self.template = Path(template) if template is not None else REFERENCE_TEMPLATE
        self.start_timeout = start_timeout
        self.workdir: Path | None = None
        self.port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.worker_pids: list[int] = []
        self._own_workdir = False

    # -- addresses ---------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        if self.port is None:
            raise NginxError("nginx is not running")
        return f"http://127.0.0.1:{self.port}"

    @property
    def service_url(self) -> str:
        """The MapServer URL to hand to a client (``.../arcgis/rest/services/Bench/MapServer``)."""
        return self.base_url + SERVICE_PATH

    def tile_url(self, level: int, row: int, col: int) -> str:
        return f"{self.service_url}/tile/{level}/{row}/{col}"

    # -- measurement -------------------------------------------------------------------------
    @property
    def pids(self) -> list[int]:
        return ([self.proc.pid] if self.proc is not None else []) + self.worker_pids

    def cpu_seconds(self) -> float:
        """User + system CPU nginx has used so far (master and workers), for per-tile server cost."""
        return sum(_proc_cpu_seconds(pid) for pid in self.pids)

    # -- life cycle --------------------------------------------------------------------------
    def _config_text(self) -> str:
        template = self.template.read_text()
        assert self.workdir is not None and self.port is not None
        return template.replace("@DIR@", str(self.workdir)).replace("@PORT@", str(self.port))

    def start(self) -> Nginx:
        exe = find_nginx()
        if exe is None:
            raise NginxMissing(INSTALL_HINT)
        if not self.template.is_file():
            raise NginxError(f"no nginx template at {self.template}")
        if self._workdir_arg is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="cacheorch-nginx-"))
            self._own_workdir = True
        else:
            self.workdir = self._workdir_arg
            self.workdir.mkdir(parents=True, exist_ok=True)
        # Run as root, nginx workers drop to an unprivileged user that must still read the files.
        self.workdir.chmod(0o755)
        (self.workdir / "tmp").mkdir(exist_ok=True)
        (self.workdir / "tile.png").write_bytes(self.tile_bytes)
        (self.workdir / "service.json").write_text(self.service_text)
        attempts = 1 if self._port_arg is not None else 3
        last_error = ""
        for _ in range(attempts):  # a free port can be taken between probing and binding
            self.port = self._port_arg or _free_port()
            conf = self.workdir / "nginx.conf"
            conf.write_text(self._config_text())
            self.proc = subprocess.Popen(
                [exe, "-p", str(self.workdir), "-c", str(conf), "-e", str(self.workdir / "error.log")],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if self._wait_listening():
                break
            last_error = self._failure_text()
            self._stop_process()
        else:
            self._cleanup()
            raise NginxError(f"nginx did not start: {last_error}")
        self.worker_pids = self._children()
        if self.cpu is not None:
            for pid in self.pids:
                os.sched_setaffinity(pid, {self.cpu})
        return self

    def _wait_listening(self) -> bool:
        assert self.proc is not None and self.port is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                time.sleep(0.02)
        return False

    def _failure_text(self) -> str:
        assert self.workdir is not None
        log = self.workdir / "error.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        if not text and self.proc is not None and self.proc.poll() is not None and self.proc.stderr:
            text = self.proc.stderr.read().decode(errors="replace")
        lines = [line for line in text.splitlines() if line.strip()]
        return lines[-1] if lines else "no output (timed out)"

    def _children(self) -> list[int]:
        assert self.proc is not None
        try:
            found = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            found = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                                   text=True).stdout.split()
        return [int(pid) for pid in found]

    def _stop_process(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish open responses
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None
        self.worker_pids = []

    def _cleanup(self) -> None:
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
            self._own_workdir = False

    def stop(self) -> None:
        self._stop_process()
        self._cleanup()
        self.port = None

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

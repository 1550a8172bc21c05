"""Run the workbench with uvicorn: on 127.0.0.1 unless told otherwise, in this thread or another."""
from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cacheorch.cli import App

__all__ = ["WorkbenchServer"]


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, telling the workbench when it is asked to stop (Ctrl-C, SIGTERM)."""

        def __init__(self, config: Any, stopping: threading.Event) -> None:
            super().__init__(config)
            self.stopping = stopping

        def handle_exit(self, sig: int, frame: Any) -> None:
            self.stopping.set()
            super().handle_exit(sig, frame)
    return Server


def _Server(config: Any, stopping: threading.Event) -> Any:  # noqa: N802 - a class, built lazily
    return _server_class()(config, stopping)


class WorkbenchServer:
    """The workbench on ``host:port`` (port 0: a free one); ``url`` carries the session token.

    Access logs are off: tile and event-stream URLs carry the session token.
    """

    def __init__(self, app: App, host: str = "127.0.0.1", port: int = 0,
                 roots: Sequence[str] = (), token: str | None = None) -> None:
        import os

        import uvicorn

        from cacheorch.workbench.app import Workbench, create_app
        from cacheorch.workbench.paths import Roots
        self.workbench = Workbench(app, Roots(list(roots) or [os.getcwd(), os.path.expanduser("~")]),
                                   token)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        self.socket.listen(128)  # connections wait for uvicorn rather than being refused
        self.host, self.port = host, self.socket.getsockname()[1]
        config = uvicorn.Config(create_app(self.workbench), log_level=logging.WARNING,
                                access_log=False, lifespan="off", timeout_graceful_shutdown=2)
        self.server = _Server(config, self.workbench.stopping)
        self._thread: threading.Thread | None = None

    @property
    def root_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The page's URL with the session token: what the user opens."""
        return f"{self.root_url}/?token={self.workbench.token}"

    def serve_forever(self) -> None:
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self.workbench.close()

    def start(self) -> WorkbenchServer:
        import time
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                        name="cacheorch-workbench", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.workbench.stopping.set()
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self.workbench.close()
        self.socket.close()

    def __enter__(self) -> WorkbenchServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

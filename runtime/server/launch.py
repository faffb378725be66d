"""Running the server: ``serve`` (blocking, as ``sglang-dsl serve`` does) and ``BackgroundServer`` (uvicorn in a
thread on a loopback port, for tests and in-process use)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

from runtime.args import RuntimeArgs
from runtime.server.app import create_app


def serve(args: RuntimeArgs, host: str = "127.0.0.1", port: int = 30000, api_key: str | None = None,
          served_model_name: str | None = None, log_level: str = "info") -> None:
    """Load an engine for ``args`` and serve it until interrupted; the engine is shut down on the way out."""
    from runtime.engine import Engine

    engine = Engine(args)
    try:
        app = create_app(engine, api_key=api_key, served_model_name=served_model_name)
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
    finally:
        engine.shutdown()


class BackgroundServer:
    """Serve an app from a background thread on ``host`` and a free port (or ``port``).

    ``with BackgroundServer(app) as server: httpx.get(server.url + "/health")``. Startup is bounded by
    ``startup_timeout``; ``stop()`` asks uvicorn to exit and joins the thread."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 30.0,
                 log_level: str = "warning") -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host, self.port = host, self._socket.getsockname()[1]
        config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=2, lifespan="off")
        self._server = uvicorn.Server(config)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"uvicorn-{self.port}", daemon=True)
        self._startup_timeout = startup_timeout

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "BackgroundServer":
        self._thread.start()
        deadline = time.monotonic() + self._startup_timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the server thread exited during startup: {self._error!r}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the server did not start within {self._startup_timeout} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)
        self._socket.close()

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        except BaseException as err:  # reported by start()
            self._error = err

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

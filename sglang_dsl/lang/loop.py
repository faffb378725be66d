"""The interpreter's event loop: one daemon thread, started on first use, that runs every program's nodes.

Program bodies are ordinary (blocking) Python in the caller's threads; what they append runs here as coroutines,
so any number of programs and forks wait on the backend concurrently without a thread each."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def event_loop() -> asyncio.AbstractEventLoop:
    """The running interpreter loop, started if needed."""
    global _loop, _thread
    with _lock:
        if _loop is None or _thread is None or not _thread.is_alive():
            _loop = asyncio.new_event_loop()
            _thread = threading.Thread(target=_loop.run_forever, name="sglang-dsl-interpreter", daemon=True)
            _thread.start()
        return _loop


def spawn(coro: Coroutine[Any, Any, T]) -> Future[T]:
    """Schedule ``coro`` on the interpreter loop; the returned future's ``cancel`` cancels the task."""
    return asyncio.run_coroutine_threadsafe(coro, event_loop())


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the interpreter loop and wait for its result (not from the loop's own thread)."""
    if threading.current_thread() is _thread:
        coro.close()
        raise RuntimeError("a program state was used from inside the interpreter loop; call it from program code")
    return spawn(coro).result()

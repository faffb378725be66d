"""`ConcurrencyLimit`: at most N requests of one backend out at once; the others wait their turn.

A backend with ``max_concurrency`` tells ``run_batch`` that it queues requests itself (so a body's thread is
freed as soon as the body returns); this is that queue. An `asyncio.Semaphore` belongs to one event loop, so
there is one per loop (the interpreter's in practice)."""

from __future__ import annotations

import asyncio
import threading
import weakref


class ConcurrencyLimit:
    def __init__(self, limit: int):
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"max_concurrency must be a positive integer, got {limit!r}")
        self.limit = limit
        self._semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary())
        self._lock = threading.Lock()

    def slot(self) -> asyncio.Semaphore:
        """The running loop's semaphore: ``async with limit.slot(): ...`` holds one of the ``limit`` slots."""
        loop = asyncio.get_running_loop()
        with self._lock:
            semaphore = self._semaphores.get(loop)
            if semaphore is None:
                semaphore = self._semaphores[loop] = asyncio.Semaphore(self.limit)
            return semaphore

"""A limit on the programs ``run_batch`` keeps in flight, without a thread waiting on each.

A body thread takes a slot before the body runs (`InFlight.enter`) and hands the program over when its body
returns (`InFlight.track`); the thread is then free for the next body, while the program's queued work runs on
the interpreter loop. One watcher thread polls the tracked programs (every `POLL_SECONDS`; states have no
completion callback) and frees a slot as each one finishes, in whatever order they finish. Threads blocked in
`Executor.wait` would be woken by every change of their state; the watcher costs one cheap check per program
per poll instead."""

from __future__ import annotations

import threading
from typing import Callable

from sglang_dsl.lang.state import ProgramState

POLL_SECONDS = 0.002


class InFlight:
    """At most ``limit`` programs between `enter` and their end; ``on_finished(state)`` runs (on the watcher
    thread) as each tracked program finishes. Use as a context manager: leaving it stops the watcher."""

    def __init__(self, limit: int, on_finished: Callable[[ProgramState], None] = lambda _: None):
        self._slots = threading.Semaphore(limit)
        self._on_finished = on_finished
        self._tracked: list[ProgramState] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="sglang-dsl-batch-watcher", daemon=True)

    def __enter__(self) -> "InFlight":
        self._watcher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._watcher.join()

    def enter(self) -> None:
        """Wait for a free slot."""
        self._slots.acquire()

    def leave(self) -> None:
        """Free a slot taken by `enter` whose program will not be tracked (its body raised)."""
        self._slots.release()

    def track(self, state: ProgramState) -> None:
        """The body of ``state`` returned: free its slot once its work has run."""
        with self._lock:
            self._tracked.append(state)

    def _watch(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            with self._lock:
                if not self._tracked:
                    continue
                finished = [s for s in self._tracked if _finished(s)]
                if finished:
                    done = set(map(id, finished))
                    self._tracked = [s for s in self._tracked if id(s) not in done]
            for state in finished:
                self._slots.release()
                self._on_finished(state)


def _finished(state: ProgramState) -> bool:
    executor = state._ex
    with executor.changed:
        return executor.finished()

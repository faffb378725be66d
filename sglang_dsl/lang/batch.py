"""``run_batch``: one program over many argument sets, concurrently, in input order.

Bodies run on a thread pool (they are ordinary blocking Python); their expressions all run on the interpreter
loop, so the backend sees the whole batch at once and batches it. Each body holds its thread until its program
ends, so ``num_threads`` programs are in flight; except on a backend that limits its own requests in flight
(``Backend.max_concurrency``, a remote server's client): there a body's thread is free as soon as the body
returns, and the backend keeps that many requests out. On a backend with a prefix cache
(``global_config.enable_precache_with_tracing``), a program that traces runs by a batch plan
(`sglang_dsl.lang.planned_batch`): every prefix the batch shares is computed once, before its group, and the
programs start in the plan's depth-first order. Otherwise (``enable_batch_planning`` off, or no trace), the first
program's prompt is handed to the prefix cache when its first request goes out and the rest start after it."""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Iterator

from sglang_dsl.compiler.capabilities import check_run
from sglang_dsl.lang.config import global_config, resolve_backend
from sglang_dsl.lang.params import SamplingParams
from sglang_dsl.lang.planned_batch import kv_budget, plan_for, submit_planned
from sglang_dsl.lang.state import ProgramState

if TYPE_CHECKING:
    from backends.base import Backend
    from sglang_dsl.lang.function import SglFunction


def run_batch(function: "SglFunction", batch: list, defaults: SamplingParams, backend: "Backend | None",
              num_threads: int | str, progress_bar: bool, generator_style: bool):
    """See `SglFunction.run_batch`."""
    arguments = [_arguments(function, entry) for entry in batch]
    if not arguments:
        return iter(()) if generator_style else []
    backend = resolve_backend(backend)
    for args in arguments:
        check_run(function, args, defaults, backend)
    states = _states(function, arguments, defaults, backend, _threads(num_threads, len(arguments)), progress_bar)
    return states if generator_style else list(states)


def _states(function: "SglFunction", arguments: list[dict[str, Any]], defaults: SamplingParams,
            backend: "Backend", threads: int, progress_bar: bool) -> Iterator[ProgramState]:
    precache = global_config.enable_precache_with_tracing and len(arguments) > 1
    plan = plan_for(function, arguments, backend) if precache and global_config.enable_batch_planning else None

    detached = backend.max_concurrency is not None

    def one(args: dict[str, Any], before_first_request=None) -> ProgramState:
        state = function.execute(args, defaults, backend, before_first_request=before_first_request)
        if not detached:
            state.error()  # hold this thread (one of ``threads`` programs in flight) until the program ends
        return state

    with _progress(function.name, len(arguments), progress_bar) as advance, \
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"sglang-dsl-{function.name}") as pool:
        futures: list[Future[ProgramState]] = []
        try:
            if plan is not None:
                futures = submit_planned(plan, pool, backend, lambda i: one(arguments[i]), kv_budget(plan, backend))
            else:
                futures = _submit_unplanned(pool, one, arguments, precache)
            for future in futures:
                state = future.result()
                state.error()  # wait for it; a failure stays in the state
                advance()
                yield state
        finally:
            for future in futures:
                future.cancel()


def _submit_unplanned(pool: ThreadPoolExecutor, one, arguments: list[dict[str, Any]],
                      precache: bool) -> list[Future[ProgramState]]:
    """All programs at once; with ``precache``, the first one's prompt is cached before the others start."""
    warm = threading.Event()
    first = pool.submit(one, arguments[0], warm.set if precache else None)
    if precache:
        first.add_done_callback(lambda _: warm.set())
        warm.wait()
    return [first] + [pool.submit(one, args) for args in arguments[1:]]


def _arguments(function: "SglFunction", entry: Any) -> dict[str, Any]:
    if isinstance(entry, dict):
        return function.arguments((), entry)
    if isinstance(entry, (list, tuple)):
        required = len(function.arg_names) - len(function.arg_defaults) - len(function.bind_arguments)
        if not max(required, 0) <= len(entry) <= len(function.arg_names):
            raise TypeError(f"{function.name}: a batch entry of {len(entry)} values does not match its arguments "
                            f"({', '.join(function.arg_names)})")
        return function.arguments(entry, {})
    raise TypeError(f"{function.name}: batch entries must be dicts or lists, got {type(entry).__name__}")


def _threads(num_threads: int | str, size: int) -> int:
    if num_threads == "auto":
        return min(size, max(96, (os.cpu_count() or 1) * 16))
    if not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be a positive integer or 'auto', got {num_threads!r}")
    return min(num_threads, size)


class _progress:
    """A rich progress bar advanced from any thread (or nothing when ``enabled`` is false)."""

    def __init__(self, name: str, total: int, enabled: bool):
        self.name, self.total, self.enabled = name, total, enabled
        self._bar: Any = None
        self._lock = threading.Lock()

    def __enter__(self):
        if self.enabled:
            from rich.progress import Progress

            self._bar = Progress()
            self._bar.start()
            self._task = self._bar.add_task(self.name, total=self.total)
        return self.advance

    def advance(self) -> None:
        if self._bar is not None:
            with self._lock:
                self._bar.advance(self._task)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()

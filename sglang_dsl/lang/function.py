"""``@function``: a Python function over a program state ``s`` becomes a program that can be run, batched,
bound and traced.

``run()`` runs the body in the caller's thread (in a new one with ``stream=True``), waits for what it appended,
and returns the `ProgramState`. Its sampling keyword arguments are the program's defaults: a ``gen`` argument
left ``None`` takes them, and what neither sets is not sent at all."""

from __future__ import annotations

import inspect
import threading
from typing import TYPE_CHECKING, Any, Callable

from sglang_dsl.compiler.capabilities import check_run
from sglang_dsl.lang.config import global_config, resolve_backend
from sglang_dsl.lang.executor import Executor
from sglang_dsl.lang.params import SamplingParams
from sglang_dsl.lang.state import ProgramState

if TYPE_CHECKING:
    import asyncio

    from backends.base import Backend

# run()'s sampling keyword arguments (SGLang's, plus min_new_tokens), all defaulting to "not set".
SAMPLING_ARGS = ("max_new_tokens", "min_new_tokens", "n", "stop", "stop_token_ids", "stop_regex", "temperature",
                 "top_p", "top_k", "min_p", "frequency_penalty", "presence_penalty", "ignore_eos", "return_logprob",
                 "logprob_start_len", "top_logprobs_num", "return_text_in_logprobs")


def function(func: Callable | None = None, num_api_spec_tokens: int | None = None):
    """Decorate a program: ``@function`` or ``@function(num_api_spec_tokens=...)``. The first parameter must be
    named ``s`` (the program state); the others are the program's arguments.

    ``num_api_spec_tokens`` (speculative execution for black-box chat APIs) is kept on the function for
    backends that use it; the local runtime does not need it."""
    if func is None:
        return lambda f: SglFunction(f, num_api_spec_tokens=num_api_spec_tokens)
    return SglFunction(func, num_api_spec_tokens=num_api_spec_tokens)


class SglFunction:
    """A program. Call it (or ``run``) with its arguments and sampling defaults to get a `ProgramState`."""

    def __init__(self, func: Callable, num_api_spec_tokens: int | None = None,
                 bind_arguments: dict[str, Any] | None = None):
        parameters = list(inspect.signature(func).parameters.values())
        if not parameters or parameters[0].name != "s":
            raise TypeError(f"@function {func.__name__}: the first parameter must be named 's' (the program state)")
        self.func = func
        self.name = func.__name__
        self.num_api_spec_tokens = num_api_spec_tokens
        self.bind_arguments = dict(bind_arguments or {})
        self.arg_names = [p.name for p in parameters[1:]]
        self.arg_defaults = [p.default for p in parameters[1:] if p.default is not inspect.Parameter.empty]
        self.__doc__ = func.__doc__
        self.__wrapped__ = func

    def __repr__(self) -> str:
        return f"<sglang_dsl function {self.name}({', '.join(self.arg_names)})>"

    def __call__(self, *args: Any, **kwargs: Any) -> ProgramState:
        return self.run(*args, **kwargs)

    def run(self, *args: Any, max_new_tokens: int | None = None, min_new_tokens: int | None = None,
            n: int | None = None, stop: Any = None, stop_token_ids: Any = None, stop_regex: Any = None,
            temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
            min_p: float | None = None, frequency_penalty: float | None = None,
            presence_penalty: float | None = None, ignore_eos: bool | None = None,
            return_logprob: bool | None = None, logprob_start_len: int | None = None,
            top_logprobs_num: int | None = None, return_text_in_logprobs: bool | None = None,
            stream: bool = False, backend: "Backend | None" = None, use_thread: bool = True,
            **kwargs: Any) -> ProgramState:
        """Run the program and return its state once everything it appended has run (at once with
        ``stream=True``: iterate ``text_iter()``). Raises the body's own exceptions unchanged, and a
        `ProgramError` naming the node when the backend fails (`UnsupportedFeatureError` before any request
        when the backend lacks what a node needs: `sglang_dsl.compiler.capabilities`). ``use_thread`` is
        accepted for compatibility."""
        defaults = SamplingParams.build(
            max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, n=n, stop=stop,
            stop_token_ids=stop_token_ids, stop_regex=stop_regex, temperature=temperature, top_p=top_p,
            top_k=top_k, min_p=min_p, frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
            ignore_eos=ignore_eos, return_logprob=return_logprob, logprob_start_len=logprob_start_len,
            top_logprobs_num=top_logprobs_num, return_text_in_logprobs=return_text_in_logprobs)
        arguments = self.arguments(args, kwargs)
        backend = resolve_backend(backend)
        check_run(self, arguments, defaults, backend)
        if stream:
            return self.start(arguments, defaults, backend, stream=True)
        state = self.execute(arguments, defaults, backend)
        state.sync()
        if global_config.verbosity >= 2:
            print(state.text())
        return state

    async def run_async(self, *args: Any, **kwargs: Any) -> ProgramState:
        """``await f.run_async(...)``: `run` without blocking the event loop (the body runs in its own
        thread)."""
        import asyncio

        loop = asyncio.get_running_loop()
        result: asyncio.Future[ProgramState] = loop.create_future()

        def body() -> None:
            try:
                state = self.run(*args, **kwargs)
                loop.call_soon_threadsafe(_settle, result, state, None)
            except BaseException as err:  # handed to the awaiting coroutine
                loop.call_soon_threadsafe(_settle, result, None, err)

        threading.Thread(target=body, name=f"sglang-dsl-{self.name}", daemon=True).start()
        return await result

    def run_batch(self, batch_kwargs: list, *, num_threads: int | str = "auto", progress_bar: bool = False,
                  generator_style: bool = False, backend: "Backend | None" = None, **sampling: Any):
        """Run the program once per entry of ``batch_kwargs`` (dicts, or lists mapped onto the arguments in
        order) and return the states in input order. A program whose backend call failed is returned with
        ``error()`` set (its variables raise when read); an exception of a body is raised. See
        `sglang_dsl.lang.batch`."""
        from sglang_dsl.lang.batch import run_batch

        unknown = sorted(set(sampling) - set(SAMPLING_ARGS))
        if unknown:
            raise TypeError(f"run_batch() got unexpected keyword arguments: {', '.join(unknown)}")
        return run_batch(self, batch_kwargs, SamplingParams.build(**sampling), backend, num_threads,
                         progress_bar, generator_style)

    def bind(self, **kwargs: Any) -> "SglFunction":
        """A copy of this program with some arguments fixed (they win over the same arguments at call time)."""
        unknown = sorted(set(kwargs) - set(self.arg_names))
        if unknown:
            raise TypeError(f"{self.name}() has no arguments {', '.join(unknown)} to bind")
        return SglFunction(self.func, num_api_spec_tokens=self.num_api_spec_tokens,
                           bind_arguments={**self.bind_arguments, **kwargs})

    def trace(self, **kwargs: Any):
        """Trace the program into the IR (`sglang_dsl.ir.tracer`), with ``kwargs`` as argument values."""
        from sglang_dsl.ir.tracer import trace

        return trace(self, **kwargs)

    # ---- the pieces run() and run_batch() are made of ----------------------------------------------------

    def arguments(self, args: tuple | list, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Positional and keyword program arguments as one dict, bound arguments winning."""
        if len(args) > len(self.arg_names):
            raise TypeError(f"{self.name}() takes {len(self.arg_names)} arguments but {len(args)} were given")
        arguments = dict(zip(self.arg_names, args))
        for name, value in kwargs.items():
            if name in arguments:
                raise TypeError(f"{self.name}() got multiple values for argument {name!r}")
            arguments[name] = value
        arguments.update(self.bind_arguments)
        return arguments

    def execute(self, arguments: dict[str, Any], defaults: SamplingParams, backend: "Backend | None",
                before_first_request: Callable[[], None] | None = None) -> ProgramState:
        """Run the body in this thread and return the state without waiting for its queued work. If the body
        raises, its queued work is cancelled and the exception propagates unchanged."""
        state = self._new_state(defaults, backend, stream=False)
        state._ex.before_first_request = before_first_request
        state._ex.body_thread = threading.current_thread()
        try:
            self.func(state, **arguments)
        except BaseException as err:
            state._ex.abort(err)
            raise
        state._ex.end()
        return state

    def start(self, arguments: dict[str, Any], defaults: SamplingParams, backend: "Backend | None",
              stream: bool) -> ProgramState:
        """Run the body in a new thread and return the state at once; a body exception becomes the state's
        error (raised by its iterators and reads)."""
        state = self._new_state(defaults, backend, stream=stream)

        def body() -> None:
            try:
                self.func(state, **arguments)
            except BaseException as err:  # recorded for whoever reads the state
                state._ex.abort(err)
            state._ex.end()

        thread = threading.Thread(target=body, name=f"sglang-dsl-{self.name}", daemon=True)
        state._ex.body_thread = thread
        thread.start()
        return state

    def _new_state(self, defaults: SamplingParams, backend: "Backend | None", stream: bool) -> ProgramState:
        executor = Executor(self.name, resolve_backend(backend), defaults, stream=stream,
                            extra_sampling=global_config.extra_sampling(), spec_tokens=self.num_api_spec_tokens)
        return ProgramState(executor)


def _settle(future: "asyncio.Future", value: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)

"""The in-process engine: a model, its tokenizer and a scheduler thread that runs continuous batching.

Requests go in from any thread or event loop; the scheduler thread owns every piece of mutable state and runs
commands (submit, abort, flush) between steps, so nothing here needs a lock."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import uuid
from concurrent.futures import Future
from dataclasses import asdict, replace
from typing import Any, AsyncIterator, Callable, Sequence

from runtime import __version__
from runtime.args import RuntimeArgs
from runtime.constraint import ConstraintManager
from runtime.metrics import EngineMetrics
from runtime.model_runner import ModelRunner
from runtime.program import ProgramGen, ProgramOutput, ProgramRequest, ProgramStep, parse_steps, step_label
from runtime.program_run import ProgramRun, when_all
from runtime.req import Req
from runtime.requests import (
    FinishReason, GenerateOutput, GenerateRequest, InvalidRequestError, LogprobRequest, SamplingParams,
)
from runtime.scheduler import Scheduler
from runtime.tokenizer import load_tokenizer

log = logging.getLogger(__name__)
IDLE_POLL_SECONDS = 0.05


class Engine:
    """``Engine(model="smollm2-135m")`` loads the model and starts serving requests in the background.

    ``generate`` is the synchronous API (text or token ids, one prompt or a batch); ``async_generate`` and
    ``generate_stream`` are the asynchronous ones. ``generate_program`` / ``async_generate_program`` run a
    program request (`runtime.program`: text, gen and select steps as one request). Call ``shutdown`` (or use
    ``with Engine(...)``) to stop."""

    def __init__(self, args: RuntimeArgs | None = None, **overrides: Any):
        self.args = replace(args or RuntimeArgs(), **overrides)
        self.runner = ModelRunner(self.args)
        self.tokenizer = load_tokenizer(self.runner.source)
        self.model_config = self.runner.config
        self.model_path = str(self.runner.source.path)
        self.context_length = self.runner.context_length
        self.metrics = EngineMetrics()
        self.scheduler = Scheduler(self.runner, self.tokenizer.eos_token_ids, self.args, self.metrics)
        self.constraints = ConstraintManager(self.tokenizer)  # regex / json_schema / ebnf sampling params
        self.scheduler.jump_forward = self.constraints.jump_forward
        self._inbox: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sglang-dsl-scheduler", daemon=True)
        self._thread.start()

    # ---- requests -----------------------------------------------------------------------------------------

    def make_request(
        self,
        *,
        text: str | None = None,
        input_ids: Sequence[int] | None = None,
        sampling_params: dict | SamplingParams | None = None,
        return_logprob: bool = False,
        logprob_start_len: int = -1,
        top_logprobs_num: int = 0,
        return_text_in_logprobs: bool = False,
        token_ids_logprob: Sequence[int] | None = None,
        rid: str | None = None,
        stream: bool = False,
        priority: int = 0,
    ) -> GenerateRequest:
        """A validated request; ``InvalidRequestError`` names what is wrong."""
        ids = self._prompt_ids(text, input_ids)
        sampling = sampling_params if isinstance(sampling_params, SamplingParams) else SamplingParams.from_dict(sampling_params)
        self.constraints.spec_of(sampling)  # a bad regex, schema or grammar is refused here
        if not -1 <= logprob_start_len <= len(ids) - 1:
            raise InvalidRequestError(f"logprob_start_len must be -1 or a prompt position (0..{len(ids) - 1}), got {logprob_start_len}")
        if top_logprobs_num < 0:
            raise InvalidRequestError(f"top_logprobs_num must be >= 0, got {top_logprobs_num}")
        listed = self._token_ids("token_ids_logprob", token_ids_logprob or ())
        logprobs = LogprobRequest(return_logprob, logprob_start_len, top_logprobs_num, return_text_in_logprobs, listed)
        return GenerateRequest(rid or uuid.uuid4().hex, tuple(ids), sampling, logprobs, stream, priority)

    def _prompt_ids(self, text: str | None, input_ids: Sequence[int] | None) -> list[int]:
        if (text is None) == (input_ids is None):
            raise InvalidRequestError("give exactly one of text or input_ids")
        if text is not None:
            if not isinstance(text, str):
                raise InvalidRequestError(f"text must be a string, got {type(text).__name__}")
            ids = self.tokenizer.encode(text)
        else:
            ids = list(self._token_ids("input_ids", input_ids))
        if not ids:
            raise InvalidRequestError("the prompt is empty")
        if len(ids) >= self.runner.context_length:
            raise InvalidRequestError(
                f"the prompt has {len(ids)} tokens; the context holds {self.runner.context_length} (prompt and output)"
            )
        return ids

    def _token_ids(self, name: str, ids: Sequence[int]) -> tuple[int, ...]:
        vocab = self.model_config.vocab_size
        if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in ids):
            raise InvalidRequestError(f"{name} must be token ids in [0, {vocab})")
        return tuple(ids)

    def submit(self, request: GenerateRequest, emit: Callable[[GenerateOutput], None]) -> None:
        """Queue a request; ``emit`` is called from the scheduler thread with each output (only the final one
        unless ``request.stream``)."""
        req = Req(request, self.tokenizer, emit)
        spec = self.constraints.spec_of(request.sampling)
        if spec is not None:  # compiled off the scheduler thread; the request is queued once it is ready
            req.constraint_future = self.constraints.compile(spec)
            req.constraint_future.add_done_callback(lambda _: self._inbox.put(self.scheduler.promote_compiled))
        self._inbox.put(lambda: self.scheduler.add(req))

    async def generate_stream(self, request: GenerateRequest) -> AsyncIterator[GenerateOutput]:
        """Cumulative outputs until the finished one. Leaving the iteration early aborts the request."""
        loop = asyncio.get_running_loop()
        outputs: asyncio.Queue[GenerateOutput] = asyncio.Queue()

        def emit(output: GenerateOutput) -> None:
            if not loop.is_closed():  # a consumer whose loop is gone no longer listens
                loop.call_soon_threadsafe(outputs.put_nowait, output)

        self.submit(request, emit)
        finished = False
        try:
            while not finished:
                output = await outputs.get()
                finished = output.finished
                yield output
        finally:
            if not finished:
                self._inbox.put(lambda: self.scheduler.abort(request.rid))

    async def async_generate(self, request: GenerateRequest) -> GenerateOutput:
        async for output in self.generate_stream(request):
            if output.finished:
                return output
        raise RuntimeError("the engine ended a request without a final output")

    def generate(
        self,
        text: str | list[str] | None = None,
        sampling_params: dict | SamplingParams | None = None,
        *,
        input_ids: list[int] | list[list[int]] | None = None,
        **request_options: Any,
    ) -> GenerateOutput | list[GenerateOutput]:
        """Blocking generation. A list of prompts (or ``n > 1``) gives a list of outputs, in order."""
        batch = isinstance(text, list) or (input_ids is not None and bool(input_ids) and isinstance(input_ids[0], list))
        prompts = [dict(text=t) for t in text] if isinstance(text, list) else (
            [dict(input_ids=i) for i in input_ids] if batch else [dict(text=text, input_ids=input_ids)])
        sampling = sampling_params if isinstance(sampling_params, SamplingParams) else SamplingParams.from_dict(sampling_params)
        requests = [self.make_request(**p, sampling_params=_nth_sample(sampling, j), **request_options)
                    for p in prompts for j in range(sampling.n)]
        futures = [self._submit_future(r) for r in requests]
        outputs = [f.result() for f in futures]
        return outputs if batch or sampling.n > 1 else outputs[0]

    # ---- program requests (runtime/program.py) -------------------------------------------------------------

    def make_program(self, text: str, steps: Sequence[ProgramStep | dict], rid: str | None = None) -> ProgramRequest:
        """A validated program request: ``text`` then ``steps`` (step objects or their native dicts).
        `InvalidRequestError` names the step that is wrong."""
        if not isinstance(text, str):
            raise InvalidRequestError(f"text must be a string, got {type(text).__name__}")
        parsed = parse_steps(steps)
        for index, step in enumerate(parsed):
            if isinstance(step, ProgramGen):
                try:
                    self.constraints.spec_of(step.sampling)
                except InvalidRequestError as err:
                    raise InvalidRequestError(f"{step_label(index, step.node)}: {err}") from None
        return ProgramRequest(rid or uuid.uuid4().hex, text, parsed)

    def submit_program(self, program: ProgramRequest, deliver: Callable[[ProgramOutput], None]) -> None:
        """Queue a program request; ``deliver`` gets its output once, from the scheduler thread (at once when it
        has no gen or select step). Raises `InvalidRequestError` when the text before its first step does not
        fit the context."""
        compiles = {i: self.constraints.compile(spec) for i, step in enumerate(program.steps)
                    if isinstance(step, ProgramGen) and (spec := self.constraints.spec_of(step.sampling))}
        run = ProgramRun(program, self.tokenizer, deliver, compiles)
        if run.advance() is None:
            run.finished(GenerateOutput(program.rid, "", (), FinishReason("stop"), 0, 0, 0))
            return
        ids = run.target_ids()
        if not ids or len(ids) >= self.runner.context_length:
            raise InvalidRequestError(f"the text before steps[{run.step_index}] has {len(ids)} tokens; it must have "
                                      f"1 to {self.runner.context_length - 1}")
        req = Req(run.step_request(ids), self.tokenizer, run.finished, program=run)
        nodes = {i: program.steps[i].node for i in compiles}
        req.constraint_future = when_all(compiles, nodes, run.step_index)
        if req.constraint_future is not None:
            req.constraint_future.add_done_callback(lambda _: self._inbox.put(self.scheduler.promote_compiled))
        self._inbox.put(lambda: self.scheduler.add(req))

    async def async_generate_program(self, program: ProgramRequest) -> ProgramOutput:
        """Run a program request; cancelling the caller aborts it."""
        loop = asyncio.get_running_loop()
        result: asyncio.Future[ProgramOutput] = loop.create_future()

        def deliver(output: ProgramOutput) -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(lambda: result.done() or result.set_result(output))

        self.submit_program(program, deliver)
        try:
            return await result
        finally:
            if not result.done():
                self._inbox.put(lambda: self.scheduler.abort(program.rid))

    def generate_program(self, text: str, steps: Sequence[ProgramStep | dict], *,
                         rid: str | None = None) -> ProgramOutput:
        """Blocking `async_generate_program` of ``make_program(text, steps, rid)``."""
        future: Future = Future()
        self.submit_program(self.make_program(text, steps, rid), future.set_result)
        return future.result()

    def _submit_future(self, request: GenerateRequest) -> Future:
        future: Future = Future()
        self.submit(request, lambda out: out.finished and future.set_result(out))
        return future

    # ---- control ------------------------------------------------------------------------------------------

    def abort(self, rid: str) -> bool:
        return self._call(lambda: self.scheduler.abort(rid))

    def flush_cache(self) -> bool:
        """Empty the radix cache; False (and nothing flushed) while requests are in flight."""
        return self._call(self.scheduler.flush_cache)

    def check_integrity(self) -> None:
        """Raise AssertionError if KV accounting is broken (free + cached + in use != total)."""
        self._call(self.scheduler.check_integrity)

    def stats(self) -> dict[str, Any]:
        """Requests running (prefilling or decoding), waiting, and parked (programs whose select is being
        scored); KV usage, cache hit rate and cached tokens."""
        def read():
            s = self.scheduler
            return dict(running=len(s.running) + len(s.prefilling), waiting=len(s.waiting), parked=len(s.parked),
                        kv_usage=s.kv_usage(), cache_hit_rate=s.cache_hit_rate(),
                        cached_tokens=s.cache.cached_size)
        return self._call(read)

    @property
    def is_running(self) -> bool:
        """Whether the scheduler thread is serving requests (False after ``shutdown`` or a crash)."""
        return self._thread.is_alive() and not self._stopping.is_set()

    def server_info(self) -> dict[str, Any]:
        return {**asdict(self.args), "model_path": self.model_path, "version": __version__,
                "max_total_num_tokens": (self.runner.allocator.num_pages - 1) * self.runner.allocator.page_size,
                "context_length": self.runner.context_length}

    def shutdown(self) -> None:
        self._stopping.set()
        self._thread.join()
        self.constraints.shutdown()
        self.runner.release()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the scheduler thread between steps and return its result."""
        if threading.current_thread() is self._thread:
            return fn()
        future: Future = Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as err:  # handed to the caller
                future.set_exception(err)

        self._inbox.put(run)
        return future.result()

    # ---- the scheduler thread -----------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._run_commands(block=not self.scheduler.has_work)
                if self.scheduler.has_work:
                    self.scheduler.step()
            except Exception as err:  # keep serving: fail what was in flight, loudly
                log.exception("scheduler step failed")
                self.scheduler.abort_all(f"engine error: {type(err).__name__}: {err}")
            s = self.scheduler
            self.metrics.update_state(len(s.running) + len(s.prefilling), len(s.waiting), s.kv_usage(), s.cache_hit_rate())
        self.scheduler.abort_all("the engine shut down")

    def _run_commands(self, block: bool) -> None:
        try:
            command = self._inbox.get(timeout=IDLE_POLL_SECONDS) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            command()
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                return


def _nth_sample(sampling: SamplingParams, j: int) -> SamplingParams:
    """The j-th of ``n`` samples of one prompt: a single sample, with seed ``seed + j`` when seeded."""
    return replace(sampling, n=1, seed=None if sampling.seed is None else sampling.seed + j)

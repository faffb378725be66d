"""The local backend: programs run on an in-process `runtime.engine.Engine`.

``sgl.Runtime(model="smollm2-135m", **runtime_args)`` loads the model once; every program, fork and batch that
runs on it shares the engine's radix cache, so shared prefixes are computed once. Roles render through the
model's own chat template. ``select`` scores all choices in one batch over a prefix prefilled once
(`backends.scoring`). ``run_segment`` runs a straight-line run of text/gen/select steps as one program request
of the engine (`runtime.program`): its KV stays in place from step to step and selects are scored inside.

This module imports torch (through the runtime); ``sglang_dsl`` imports it only when a runtime is created."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Mapping, Sequence, TypeVar

from backends.base import (
    Backend, Capabilities, GenerateCall, Generation, Prompt, SegmentCall, SegmentError, SegmentResult, SelectCall,
    SelectStep, StepOutput,
)
from backends.scoring import EngineScorer, score_choices
from sglang_dsl.lang.choices import ChoicesDecision
from sglang_dsl.lang.errors import ProgramError

if TYPE_CHECKING:
    from sglang_dsl.compiler.codec import TokenizerCodec
    from sglang_dsl.compiler.constraint import ConstraintSpec

T = TypeVar("T")
# How often a caller waiting on the engine checks that it is still running (so nothing waits on a dead engine).
LIVENESS_POLL_SECONDS = 0.25


class Runtime(Backend):
    """An in-process runtime on ``model`` (an alias, a Hugging Face directory or a ``.gguf``). ``runtime_args``
    are `runtime.args.RuntimeArgs` fields (``device``, ``dtype``, ``max_total_tokens``...); ``model_path`` is
    accepted as SGLang spells it. Use as a context manager or call `shutdown`."""

    name = "local runtime"
    capabilities = Capabilities(select=True, streaming=True, images=False, prefix_cache=True, segments=True)

    def __init__(self, model: str = "smollm2-135m", *, model_path: str | None = None, log_level: str | None = None,
                 **runtime_args: Any):
        from runtime.args import RuntimeArgs
        from runtime.engine import Engine

        known = {f.name for f in fields(RuntimeArgs)}
        unknown = sorted(set(runtime_args) - known)
        if unknown:
            raise TypeError(f"Runtime() got unknown options {', '.join(unknown)}; "
                            f"the runtime's options are: {', '.join(sorted(known - {'model'}))}")
        if log_level is not None:
            logging.getLogger("runtime").setLevel(log_level.upper())
        self.engine = Engine(replace(RuntimeArgs(), model=model_path or model, **runtime_args))
        self.tokenizer = self.engine.tokenizer
        self._template = _ModelTemplate(self.tokenizer) if self.tokenizer.chat_template else None
        self._closed = False

    def __repr__(self) -> str:
        return f"Runtime(model={self.engine.model_path!r})"

    # ---- the backend interface --------------------------------------------------------------------------

    def chat_template(self) -> "_ModelTemplate | None":
        return self._template

    async def generate(self, call: GenerateCall) -> Generation:
        requests = self._requests(call, stream=False)
        outputs = await self.wait_all([self.engine.async_generate(r) for r in requests])
        metas = [native_meta(_finished(o), r) for o, r in zip(outputs, requests)]
        if len(requests) == 1 and (call.params.n or 1) == 1:
            return Generation(outputs[0].text, metas[0])
        return Generation([o.text for o in outputs], metas)

    async def stream(self, call: GenerateCall) -> AsyncIterator[Generation]:
        (request,) = self._requests(call, stream=True)
        outputs = self.engine.generate_stream(request)
        try:
            while True:
                output = await self._alive(anext(outputs, None))
                if output is None:
                    return
                yield Generation(output.text, native_meta(_finished(output), request), output.finished)
        finally:
            await outputs.aclose()

    async def select(self, call: SelectCall) -> ChoicesDecision:
        self._check_running()
        return await score_choices(EngineScorer(self), call)

    async def run_segment(self, call: SegmentCall) -> SegmentResult:
        self._check_running()
        program = self.engine.make_program(call.prompt.text, [_program_step(step) for step in call.steps])
        output = await self._alive(self.engine.async_generate_program(program))
        outputs = tuple(StepOutput(r.node, r.name, r.value, native_meta(r.output, r.request) if r.output
                                   else r.meta_info) for r in output.steps)
        if output.error is not None:
            raise SegmentError(f"the runtime aborted the request: {output.error}",
                               node=call.failed_node(len(outputs)), completed=outputs)
        return SegmentResult(outputs)

    async def cache_prefix(self, prompt: Prompt) -> None:
        self._check_running()
        await self.prefill(self.encode(prompt.text))

    def prompt_codec(self) -> "TokenizerCodec":
        from sglang_dsl.compiler.codec import TokenizerCodec

        return TokenizerCodec(self.encode, self.tokenizer)

    def prepare_constraints(self, specs: Sequence["ConstraintSpec"]) -> None:
        """Start compiling ``specs`` on the engine's constraint worker (cached; requests then find them ready)."""
        for spec in specs:
            try:
                self.engine.constraints.compile(spec)
            except Exception as err:  # noqa: BLE001 -- a hint: the request itself reports a bad constraint
                logging.getLogger(__name__).debug("not compiling %s ahead: %s", spec.description, err)

    def flush_cache(self) -> bool:
        return not self._closed and self.engine.flush_cache()

    def server_info(self) -> dict[str, Any]:
        return self.engine.server_info()

    def shutdown(self) -> None:
        if not self._closed:
            self._closed = True
            self.engine.shutdown()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def get_tokenizer(self):
        return self.tokenizer

    # ---- helpers (also used by backends.scoring) ---------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of a program's text. Special tokens spelled in it (from the chat template) map to their ids,
        and BOS is not added twice when the template already wrote it."""
        from runtime.program import encode_program_text

        return encode_program_text(self.tokenizer, text)

    async def prefill(self, ids: Sequence[int], next_token_ids: Sequence[int] = ()):
        """Compute (and cache) the KV of ``ids``; returns the engine's output (``cached_tokens``, and the
        next-token logprobs of ``next_token_ids`` as ``output_token_ids_logprobs[0]``)."""
        request = self.engine.make_request(input_ids=list(ids), sampling_params={"max_new_tokens": 0},
                                           return_logprob=bool(next_token_ids), token_ids_logprob=next_token_ids,
                                           return_text_in_logprobs=True)
        (output,) = await self.wait_all([self.engine.async_generate(request)])
        return _finished(output)

    async def wait_all(self, waits: Sequence[Awaitable[T]]) -> list[T]:
        """Await engine requests together, failing (and aborting them) if the engine stops meanwhile."""
        self._check_running()
        return await self._alive(asyncio.gather(*waits))

    async def _alive(self, wait: Awaitable[T]) -> T:
        task = asyncio.ensure_future(wait)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=LIVENESS_POLL_SECONDS)
                if done:
                    return task.result()
                self._check_running()
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    def _check_running(self) -> None:
        # The engine has no public liveness flag; a dead scheduler thread would never answer a request.
        if self._closed or not self.engine.is_running:
            raise ProgramError("the runtime has been shut down")

    def _requests(self, call: GenerateCall, stream: bool):
        """One engine request per sample (``n`` of them, seeds ``seed + j`` when seeded)."""
        from runtime.requests import SamplingParams as EngineSampling

        self._check_running()
        sampling = EngineSampling.from_dict(call.sampling_params())
        ids = self.encode(call.prompt.text)
        options = call.logprob_options()
        return [self.engine.make_request(input_ids=ids, sampling_params=_nth(sampling, j), stream=stream,
                                         **options)
                for j in range(sampling.n)]


class _ModelTemplate:
    """The model's chat template as the interpreter wants it (text-only models have no image token)."""

    image_token = None

    def __init__(self, tokenizer: Any):
        self._tokenizer = tokenizer

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False) -> str:
        return self._tokenizer.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt)


def native_meta(output: Any, request: Any) -> dict[str, Any]:
    """An engine output's meta in the native API's shape."""
    meta: dict[str, Any] = {
        "id": output.rid, "finish_reason": output.finish.to_dict() if output.finish else None,
        "prompt_tokens": output.prompt_tokens, "completion_tokens": output.completion_tokens,
        "cached_tokens": output.cached_tokens,
    }
    if request.logprobs.return_logprob:
        meta["input_token_logprobs"] = [list(e) for e in output.input_token_logprobs or ()]
        meta["output_token_logprobs"] = [list(e) for e in output.output_token_logprobs or ()]
        meta["output_token_logprobs_length"] = len(meta["output_token_logprobs"])
        if request.logprobs.top_logprobs_num:
            meta["input_top_logprobs"] = [None if t is None else [list(e) for e in t]
                                          for t in output.input_top_logprobs or ()]
            meta["output_top_logprobs"] = [[list(e) for e in t] for t in output.output_top_logprobs or ()]
    return meta


def _program_step(step: Any) -> Any:
    """A segment step as the engine takes it (a select keeps its method object: custom methods run too)."""
    from runtime.program import ProgramSelect

    if isinstance(step, SelectStep):
        return ProgramSelect(step.node, step.name, step.choices, step.temperature, step.method)
    return step.native()


def _finished(output: Any) -> Any:
    """``output``, unless the engine aborted it (an engine error, a shutdown): then raise its message."""
    if output.finish is not None and output.finish.type == "abort":
        raise ProgramError(f"the runtime aborted the request: {output.finish.message}")
    return output


def _nth(sampling: Any, j: int) -> Any:
    return replace(sampling, n=1, seed=None if sampling.seed is None else sampling.seed + j)

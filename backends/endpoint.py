"""``RuntimeEndpoint``: programs run on a server that speaks SGLang's native API — ``sglang-dsl serve`` or an
SGLang deployment — over a pooled async HTTP client (`backends.http`).

What goes over the wire:

- ``gen``: ``POST /generate`` with the program's text and the sampling parameters the program set (constraints
  included), logprob options and images; ``stream`` uses the server-sent-event form (cumulative text; output
  logprobs per chunk from our server, cumulative from SGLang's: `sglang_dsl.lang.stream_meta`).
- ``select``: the same algorithm as the local runtime (`backends.scoring`): the choices are tokenized with
  ``POST /tokenize``, the prefix prefilled once, and every ``prefix + choice`` scored in one batch of
  ``input_ids`` requests that return prompt-token logprobs; all three choices methods work.
- ``cache_prefix`` (fork, run_batch): a ``max_new_tokens=0`` request, as SGLang's frontend sends.
- Chat roles render through the model's own Jinja template when the server's ``/get_model_info`` carries it
  (ours does), else through ``chat_template_name`` (`backends.chat_templates`).
- Segments: when ``/server_info`` (or, on older SGLang releases, ``/get_server_info``) says
  ``"program_endpoint": true``, a straight-line run of text/gen/select nodes is one program in a
  ``POST /generate_program``, coalesced with other programs' (`Backend.run_segment`). A server that answers
  neither is used through SGLang's API alone.

Everything is async on the interpreter's loop: ``run_batch`` starts every program at once and the endpoint keeps
up to ``max_concurrency`` prompts out at the server, in a few coalesced requests (`backends.native_batch`)."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Mapping, Sequence

from backends.base import (
    Backend, Capabilities, GenerateCall, Generation, Prompt, SegmentCall, SegmentError, SegmentResult, SelectCall,
    SelectStep, StepOutput,
)
from backends.chat_templates import JinjaTemplate, named_template
from backends.http import HttpClient, HttpConfig, HttpError
from backends.native_batch import PER_PROMPT_DEFAULTS, PROGRAM_PER_PROMPT, NativeBatcher
from backends.scoring import ZERO_TOKENS, Prefilled, ScoredPrompt, score_choices
from sglang_dsl.compiler.choice_scoring import next_token_entries
from sglang_dsl.lang import loop
from sglang_dsl.lang.choices import ChoicesDecision
from sglang_dsl.lang.errors import ProgramError, UnsupportedFeatureError
from sglang_dsl.lang.stream_meta import accumulate

# Where servers answer their model and server info, newest name first: SGLang releases before ``/server_info``
# and ``/model_info`` answer only ``/get_server_info`` and ``/get_model_info`` (later ones answer both).
MODEL_INFO_PATHS = ("/get_model_info", "/model_info")
SERVER_INFO_PATHS = ("/server_info", "/get_server_info")
# The choices methods a server's program endpoint runs itself.
SERVER_SELECT_METHODS = frozenset({
    "token_length_normalized", "greedy_token_selection", "unconditional_likelihood_normalized"})


class InvalidRequestError(HttpError):
    """The server refused a request as invalid (HTTP 400): its message first, then where it came from."""

    def __str__(self) -> str:
        return f"{self.message} ({self.url} answered {self.status})"


class RuntimeEndpoint(Backend):
    """A native-API server at ``base_url``. ``api_key`` is sent as ``Authorization: Bearer``; ``verify`` is a
    CA bundle path (or False); ``chat_template_name`` picks a named template for servers that do not send theirs.
    ``timeout``: seconds to wait for any response bytes; ``max_retries``: retries on connection errors and 503;
    ``max_concurrency``: prompts out at the server at once in coalesced requests, and separately streams and
    program requests out at once (``run_batch`` programs beyond them wait their turn);
    ``max_http_requests``: coalesced HTTP requests out at once (requests issued meanwhile join the next batch).

    The constructor asks the server for its model info (`MODEL_INFO_PATHS`; it fails with the URL if it cannot)
    and its server info (`SERVER_INFO_PATHS`; a server that answers neither has no program endpoint)."""

    name = "runtime endpoint"

    def __init__(self, base_url: str, api_key: str | None = None, verify: bool | str | None = None,
                 chat_template_name: str | None = None, *, timeout: float = 120.0, max_retries: int = 3,
                 max_concurrency: int = 512, max_http_requests: int = 4):
        self.base_url = base_url.rstrip("/")
        self.max_concurrency = max_concurrency
        self.max_http_requests = max_http_requests
        config = HttpConfig(timeout=timeout, max_retries=max_retries, max_connections=max_concurrency,
                            verify=True if verify is None else verify)
        self.http = HttpClient(self.base_url, api_key, config=config)
        self._closed = False
        self._batchers: dict[tuple[asyncio.AbstractEventLoop, str], NativeBatcher] = {}
        self._slots: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}
        named = named_template(chat_template_name) if chat_template_name is not None else None
        try:
            self.model_info: dict[str, Any] = loop.run(self._info(MODEL_INFO_PATHS))
            self._server_info: dict[str, Any] = loop.run(self._optional_info(SERVER_INFO_PATHS))
        except BaseException:
            self.http.close()
            raise
        self._template = named or _server_template(self.model_info)
        self.capabilities = Capabilities(
            select=True, streaming=True, prefix_cache=True,
            images=bool(self.model_info.get("has_image_understanding")),
            segments=bool(self._server_info.get("program_endpoint")),
        )
        self._bos_text = (self.model_info.get("chat_template_variables") or {}).get("bos_token")

    def __repr__(self) -> str:
        return f"RuntimeEndpoint({self.base_url!r})"

    # ---- the backend interface --------------------------------------------------------------------------

    def chat_template(self):
        return self._template

    async def generate(self, call: GenerateCall) -> Generation:
        result = await self._generate(self._generate_payload(call))
        results = result if isinstance(result, list) else [result]
        texts = [_checked(r)["text"] for r in results]
        metas = [r["meta_info"] for r in results]
        if not isinstance(result, list) and (call.params.n or 1) == 1:
            return Generation(texts[0], metas[0])
        return Generation(texts, metas)

    async def stream(self, call: GenerateCall) -> AsyncIterator[Generation]:
        self._check_open()
        payload = {**self._generate_payload(call), "stream": True}
        finished, meta = False, None
        try:
            async with self._slot():
                async for event in self.http.stream_events("/generate", payload):
                    meta = accumulate(meta, _checked(event)["meta_info"])
                    finished = meta.get("finish_reason") is not None
                    yield Generation(event["text"], meta, finished)
        except HttpError as err:
            raise _refined(err) from err.__cause__
        if not finished:
            raise ProgramError(f"the stream from {self.http.url('/generate')} ended before the generation finished")

    async def select(self, call: SelectCall) -> ChoicesDecision:
        return await score_choices(_HttpScorer(self), call)

    async def cache_prefix(self, prompt: Prompt) -> None:
        await self._generate({"text": prompt.text, "sampling_params": ZERO_TOKENS, **_images(prompt)})

    async def run_segment(self, call: SegmentCall) -> SegmentResult:
        if not self.capabilities.segments:
            return await super().run_segment(call)
        payload = {"text": call.prompt.text, "steps": [_segment_step(step) for step in call.steps],
                   **_images(call.prompt)}
        async with self._slot():
            result = await self._batched("/generate_program", payload)
        outputs = tuple(StepOutput(o["node"], o.get("name"), o["value"], o.get("meta_info") or {})
                        for o in result["outputs"])
        finish = result.get("finish_reason")
        if isinstance(finish, dict) and finish.get("type") == "abort":
            raise SegmentError(f"the server aborted the request: {finish.get('message')}",
                               node=call.failed_node(len(outputs)), completed=outputs)
        return SegmentResult(outputs)

    def flush_cache(self) -> bool:
        if self._closed:
            return False
        try:
            loop.run(self.http.post_text("/flush_cache"))
        except HttpError as err:
            if err.status == 400:  # the server is busy: SGLang answers 400, and so do we
                return False
            raise
        except ProgramError:
            return False
        return True

    def server_info(self) -> dict[str, Any]:
        self._check_open()
        return loop.run(self._info(SERVER_INFO_PATHS))

    def shutdown(self) -> None:
        """Close the connections (the server keeps running); later calls fail at once."""
        if not self._closed:
            self._closed = True
            self.http.close()

    def __enter__(self) -> "RuntimeEndpoint":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def encode(self, text: str) -> list[int]:
        """Token ids of a program's text, as the server tokenizes it (from a thread outside the loop)."""
        return loop.run(self.encode_all([text]))[0]

    async def encode_all(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (``POST /tokenize``); BOS is not added twice when the text already starts with
        it (the chat template wrote it)."""
        add_special = not (self._bos_text and texts and texts[0].startswith(self._bos_text))
        result = await self._batched("/tokenize", {"prompt": list(texts), "add_special_tokens": add_special})
        return result["tokens"]

    # ---- requests ---------------------------------------------------------------------------------------

    async def _info(self, paths: Sequence[str]) -> dict[str, Any]:
        """The JSON of the first of ``paths`` the server answers; if it refuses them all, the first refusal is
        raised (a connection that fails is raised at once)."""
        refusals: list[HttpError] = []
        for path in paths:
            try:
                return await self.http.get_json(path)
            except HttpError as err:
                if err.status is None:
                    raise
                refusals.append(err)
        raise refusals[0]

    async def _optional_info(self, paths: Sequence[str]) -> dict[str, Any]:
        """`_info`, or ``{}`` from a server that cannot be asked (it then offers nothing beyond SGLang's API)."""
        try:
            return await self._info(paths)
        except HttpError:
            return {}

    def _generate_payload(self, call: GenerateCall) -> dict[str, Any]:
        return {"text": call.prompt.text, "sampling_params": call.sampling_params(), **call.logprob_options(),
                **_images(call.prompt)}

    async def _generate(self, payload: dict[str, Any]) -> Any:
        """``POST /generate``, coalesced with other programs' requests (`backends.native_batch`)."""
        return await self._batched("/generate", payload)

    async def _batched(self, path: str, payload: dict[str, Any]) -> Any:
        self._check_open()
        key = (asyncio.get_running_loop(), path)
        batcher = self._batchers.get(key)
        if batcher is None:
            send = lambda body: self.http.post_json(path, body)  # noqa: E731
            per_prompt = PROGRAM_PER_PROMPT if path == "/generate_program" else PER_PROMPT_DEFAULTS
            batcher = self._batchers[key] = NativeBatcher(send, self.http.url(path), max_prompts=self.max_concurrency,
                                                          max_requests=self.max_http_requests, per_prompt=per_prompt)
        try:
            return await batcher.request(payload)
        except HttpError as err:
            raise _refined(err) from err.__cause__

    def _slot(self) -> asyncio.Semaphore:
        """One of ``max_concurrency`` places for a request that is not coalesced (a stream, a program request)."""
        running = asyncio.get_running_loop()
        slots = self._slots.get(running)
        if slots is None:
            slots = self._slots[running] = asyncio.Semaphore(self.max_concurrency)
        return slots

    def _check_open(self) -> None:
        if self._closed:
            raise ProgramError(f"the endpoint {self.base_url} has been shut down")


class _HttpScorer:
    """`backends.scoring.TokenScorer` over ``/tokenize`` and ``input_ids`` requests to ``/generate``."""

    def __init__(self, endpoint: RuntimeEndpoint):
        self.endpoint = endpoint
        self.bos_token_id = endpoint.model_info.get("bos_token_id")
        self.encode_all = endpoint.encode_all

    async def prefill(self, ids: Sequence[int], next_token_ids: Sequence[int]) -> Prefilled:
        body: dict[str, Any] = {"input_ids": list(ids), "sampling_params": ZERO_TOKENS}
        if next_token_ids:  # one new token: SGLang reports token_ids_logprob at output positions only
            body.update(sampling_params={"max_new_tokens": 1, "temperature": 0}, return_logprob=True,
                        token_ids_logprob=list(next_token_ids), return_text_in_logprobs=True)
        meta = _checked(await self.endpoint._generate(body))["meta_info"]
        listed = next_token_entries(meta.get("output_token_ids_logprobs"))
        return Prefilled(meta.get("cached_tokens", 0), listed if next_token_ids else {})

    async def score(self, prompts: Sequence[Sequence[int]], starts: Sequence[int]) -> list[ScoredPrompt]:
        results = await self.endpoint._generate({
            "input_ids": [list(ids) for ids in prompts], "sampling_params": ZERO_TOKENS, "return_logprob": True,
            "logprob_start_len": list(starts), "return_text_in_logprobs": True})
        return [ScoredPrompt([tuple(entry) for entry in _checked(r)["meta_info"]["input_token_logprobs"]],
                             r["meta_info"].get("cached_tokens", 0))
                for r in results]


def _checked(result: Mapping[str, Any]) -> Mapping[str, Any]:
    """``result``, unless the server aborted the request: then raise its message."""
    finish = result.get("meta_info", {}).get("finish_reason")
    if isinstance(finish, dict) and finish.get("type") == "abort":
        raise ProgramError(f"the server aborted the request: {finish.get('message')}")
    return result


def _refined(err: HttpError) -> HttpError:
    if err.status == 400:
        return InvalidRequestError(err.url, err.message, err.status)
    return err


def _images(prompt: Prompt) -> dict[str, Any]:
    return {"image_data": [image.base64() for image in prompt.images]} if prompt.images else {}


def _segment_step(step: Any) -> dict[str, Any]:
    if not isinstance(step, SelectStep):
        return step.native()
    if step.method.name not in SERVER_SELECT_METHODS:
        raise UnsupportedFeatureError("custom choices methods in a program request", RuntimeEndpoint.name,
                                      node=step.node)
    return {"type": "select", "node": step.node, "name": step.name, "choices": list(step.choices),
            "temperature": step.temperature, "method": step.method.name}


def _server_template(model_info: Mapping[str, Any]) -> JinjaTemplate | None:
    """The model's own template, when the server sends it (ours does), else None."""
    if not model_info.get("chat_template"):
        return None
    return JinjaTemplate(model_info["chat_template"], model_info.get("chat_template_variables") or {})

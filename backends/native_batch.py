"""Coalescing ``/generate`` (and ``/tokenize``, and our ``/generate_program``) requests: the native API takes a
batch in one request (lists of prompts, with per-prompt ``sampling_params`` and logprob options, or per-prompt
``steps``), so requests that many programs issue while earlier ones are out go out together as one HTTP request
and their answers are split back.

A ``run_batch`` over a remote server then costs a few HTTP requests per wave of programs instead of one per
node, and the server still sees every prompt at once. Only what batches exactly is coalesced: requests with the
same prompt kind (``text`` / ``input_ids``) and the same request-wide options, without streaming, ``n > 1`` or
media. A lone request goes out unchanged. A coalesced batch the server refuses as a whole (400) is resent
request by request, so each error reaches the program that caused it. Cancelling every waiter of a batch
cancels its HTTP request (which closes the connection, and the server aborts the work)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from backends.http import HttpError

# Per-prompt fields of a /generate request, with the value a prompt that does not set them gets in a batch (a
# request for one prompt holds its own value; a batch request, a list of them or one for all).
PER_PROMPT_DEFAULTS: dict[str, Any] = {
    "sampling_params": {}, "return_logprob": False, "logprob_start_len": -1, "top_logprobs_num": 0,
}
# The prompt fields: /generate's ``text`` or ``input_ids``, /tokenize's ``prompt`` (answered ``{"tokens": [...]}``).
PROMPT_FIELDS = ("text", "input_ids", "prompt")
# /generate_program (our extension) batches programs the same way: one list of steps per prompt.
PROGRAM_PER_PROMPT: dict[str, Any] = {"steps": []}
_UNBATCHABLE = frozenset({"stream", "image_data", "video_data", "audio_data", "rid", "input_embeds"})

Send = Callable[[dict[str, Any]], Awaitable[Any]]


@dataclass
class _Pending:
    """One caller's request: its ``prompts`` (a batch request of its own brings several) and whether it wants
    the single (unwrapped) answer."""

    payload: dict[str, Any]
    prompts: list
    single: bool
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class NativeBatcher:
    """``await batcher.request(payload)`` answers as ``send(payload)`` (a POST to ``url``) would; see the module
    docstring. At most ``max_prompts`` prompts and ``max_requests`` HTTP requests are out at once; requests made
    meanwhile wait and coalesce, up to ``max_prompts`` prompts per request. Use it from one event loop."""

    def __init__(self, send: Send, url: str, max_prompts: int = 512, max_requests: int = 4,
                 per_prompt: dict[str, Any] = PER_PROMPT_DEFAULTS):
        self._send = send
        self._url = url
        self._per_prompt = per_prompt
        self._max_prompts = max_prompts
        self._max_requests = max_requests
        self._requests_out = 0
        self._prompts_out = 0
        self._pending: dict[tuple, list[_Pending]] = {}
        self._scheduled = False

    async def request(self, payload: dict[str, Any]) -> Any:
        shape = _shape(payload, self._per_prompt)
        if shape is None:
            return await self._send(payload)
        key, prompts, single = shape
        item = _Pending(payload, prompts, single)
        self._pending.setdefault(key, []).append(item)
        self._schedule()
        return await item.future

    def _schedule(self) -> None:
        if not self._scheduled and self._pending and self._has_room():
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _has_room(self) -> bool:
        return self._requests_out < self._max_requests and self._prompts_out < self._max_prompts

    def _dispatch(self) -> None:
        """Send the oldest group's first prompts, while there is room for more in flight."""
        self._scheduled = False
        while self._pending and self._has_room():
            key = next(iter(self._pending))
            chunk, rest = _take(self._pending.pop(key), self._max_prompts - self._prompts_out)
            if rest:
                self._pending[key] = rest
            prompts = sum(len(item.prompts) for item in chunk)
            self._requests_out += 1
            self._prompts_out += prompts
            task = asyncio.ensure_future(self._run(key[0], chunk))
            task.add_done_callback(lambda _, n=prompts: self._sent(n))
            for item in chunk:
                item.future.add_done_callback(lambda _, t=task, c=chunk: _cancel_if_abandoned(t, c))

    def _sent(self, prompts: int) -> None:
        self._requests_out -= 1
        self._prompts_out -= prompts
        self._schedule()

    async def _run(self, field_name: str, items: list[_Pending]) -> None:
        try:
            if len(items) == 1:
                _settle(items[0], await self._send(items[0].payload))
                return
            try:
                results = await self._send(_combined(field_name, items, self._per_prompt))
            except HttpError as err:
                if err.status != 400:
                    raise
                await asyncio.gather(*(self._run(field_name, [item]) for item in items))
                return
            _split(self._url, field_name, items, results)
        except Exception as err:  # noqa: BLE001 - handed to every waiter of the batch
            for item in items:
                if not item.future.done():
                    item.future.set_exception(err)


def _shape(payload: dict[str, Any], per_prompt: dict[str, Any]) -> tuple[tuple, list, bool] | None:
    """(group key, prompts, single) of a coalescible request, else None."""
    if _UNBATCHABLE & payload.keys():
        return None
    field_name = next((name for name in PROMPT_FIELDS if payload.get(name) is not None), None)
    if field_name is None:
        return None
    prompts = payload[field_name]
    is_list = isinstance(prompts, list) and (field_name != "input_ids" or (bool(prompts) and isinstance(prompts[0], list)))
    sampling = payload.get("sampling_params") or {}
    for params in sampling if isinstance(sampling, list) else [sampling]:
        if (params or {}).get("n", 1) != 1:
            return None
    common = [(k, v) for k, v in payload.items() if k != field_name and k not in per_prompt]
    key = (field_name, json.dumps(sorted(common)) if common else "")
    return key, (prompts if is_list else [prompts]), not is_list


def _combined(field_name: str, items: list[_Pending], per_prompt: dict[str, Any]) -> dict[str, Any]:
    first = items[0].payload
    batch: dict[str, Any] = {k: v for k, v in first.items() if k != field_name and k not in per_prompt}
    batch[field_name] = [prompt for item in items for prompt in item.prompts]
    for name, default in per_prompt.items():
        if any(name in item.payload for item in items):
            batch[name] = [value for item in items for value in _per_prompt(item, name, default)]
    return batch


def _per_prompt(item: _Pending, name: str, default: Any) -> list:
    value = item.payload.get(name, default)
    if item.single:
        return [value]
    return value if isinstance(value, list) else [value] * len(item.prompts)


def _split(url: str, field_name: str, items: list[_Pending], response: Any) -> None:
    results = response.get("tokens") if field_name == "prompt" and isinstance(response, dict) else response
    expected = sum(len(item.prompts) for item in items)
    if not isinstance(results, list) or len(results) != expected:
        raise HttpError(url, f"a batch of {expected} prompts was answered with "
                             f"{len(results) if isinstance(results, list) else 'no list of'} results")
    start = 0
    for item in items:
        part = results[start:start + len(item.prompts)]
        start += len(item.prompts)
        answer = part[0] if item.single else part
        _settle(item, {"tokens": answer} if field_name == "prompt" else answer)


def _settle(item: _Pending, result: Any) -> None:
    if not item.future.done():
        item.future.set_result(result)


def _take(items: list[_Pending], size: int) -> tuple[list[_Pending], list[_Pending]]:
    """The first items holding at most ``size`` prompts (at least one item), and the rest."""
    count = 0
    for index, item in enumerate(items):
        count += len(item.prompts)
        if count > size and index > 0:
            return items[:index], items[index:]
    return items, []


def _cancel_if_abandoned(task: asyncio.Task, items: list[_Pending]) -> None:
    if not task.done() and all(item.future.cancelled() for item in items):
        task.cancel()

"""Running requests on the engine for the HTTP APIs: ``n``-expansion, concurrent generation, and merged streams
that abort whatever has not finished when they are cancelled or closed (a client that went away)."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from runtime.requests import FinishReason, GenerateOutput, GenerateRequest, InvalidRequestError


def new_rid() -> str:
    return uuid.uuid4().hex


def expand_n(request: GenerateRequest) -> list[GenerateRequest]:
    """One request per parallel sample: ``rid-0 .. rid-(n-1)``, each with ``n=1``. A seeded request gives sample
    ``j`` the seed ``seed + j`` so that samples differ yet stay reproducible. The samples share the prompt, so the
    radix cache computes its prefix once."""
    n = request.sampling.n
    if n <= 1:
        return [request]
    out = []
    for j in range(n):
        seed = request.sampling.seed
        sampling = dataclasses.replace(request.sampling, n=1, seed=None if seed is None else seed + j)
        out.append(dataclasses.replace(request, rid=f"{request.rid}-{j}", sampling=sampling))
    return out


class ActiveRequests:
    """The engine requests behind each client-visible rid, so ``/abort_request`` on a batch's or an ``n>1``
    request's rid aborts all of them."""

    def __init__(self) -> None:
        self._groups: dict[str, list[str]] = {}

    def add(self, rid: str, members: Sequence[str]) -> None:
        """Register a request; ``InvalidRequestError`` if one of its rids belongs to a request still in flight."""
        busy = ({rid, *members} & ({*self._groups, *self.all_rids()}))
        if busy:
            raise InvalidRequestError(f"rid {sorted(busy)[0]!r} is already in use by a running request")
        self._groups[rid] = list(members)

    def remove(self, rid: str) -> None:
        self._groups.pop(rid, None)

    def members(self, rid: str) -> list[str]:
        """The engine rids behind ``rid``: its group, else the samples ``rid-j`` of one prompt of a batch."""
        if rid in self._groups:
            return self._groups[rid]
        return [r for r in self.all_rids() if r.startswith(f"{rid}-")] or [rid]

    def all_rids(self) -> list[str]:
        return [r for members in self._groups.values() for r in members]


async def generate_all(
    engine: Any, requests: Sequence[GenerateRequest], disconnected: Awaitable[Any] | None = None
) -> list[GenerateOutput]:
    """Final outputs of ``requests``, run concurrently. If one fails, the caller is cancelled, or
    ``disconnected`` (an awaitable that completes when the client goes away) completes first, the unfinished
    requests are cancelled (which aborts them); a disconnect raises ``ClientGone``."""
    tasks = [asyncio.ensure_future(engine.async_generate(r)) for r in requests]
    gathered = asyncio.gather(*tasks)
    try:
        return list(await (gathered if disconnected is None else until_disconnect(gathered, disconnected)))
    finally:
        _cancel(tasks)
        if not gathered.done():
            gathered.cancel()
        # A failed gather leaves its other tasks' results unretrieved; don't log them as lost.
        gathered.add_done_callback(lambda f: f.cancelled() or f.exception())


async def until_disconnect(work: Awaitable[Any], disconnected: Awaitable[Any]) -> Any:
    """The result of ``work``; if ``disconnected`` completes first, ``work`` is cancelled (which aborts its
    engine requests) and ``ClientGone`` raised."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected)
    try:
        await asyncio.wait([task, watcher], return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            raise ClientGone("the client disconnected before the response was ready")
        return task.result()
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


class ClientGone(Exception):
    """The client closed the connection before its response was ready."""


async def wait_for_disconnect(receive: Callable[[], Awaitable[dict]]) -> None:
    """Complete when the ASGI ``receive`` channel reports ``http.disconnect`` (call after reading the body)."""
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            return


async def stream_all(
    engine: Any, requests: Sequence[GenerateRequest]
) -> AsyncIterator[tuple[int, GenerateOutput]]:
    """``(index, cumulative output)`` of every request as they come, until each has finished. An engine error
    is raised here. Closing or cancelling this iterator cancels the engine streams still open; the engine then
    aborts their requests and frees their KV."""
    queue: asyncio.Queue[tuple[int, GenerateOutput | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, request: GenerateRequest) -> None:
        stream = engine.generate_stream(request)
        try:
            async for output in stream:
                queue.put_nowait((index, output))
            queue.put_nowait((index, None))
        except asyncio.CancelledError:
            raise
        except BaseException as err:  # noqa: BLE001 - reported to the consumer
            queue.put_nowait((index, err))
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except BaseException:  # noqa: BLE001
                    pass

    tasks = [asyncio.ensure_future(pump(i, r)) for i, r in enumerate(requests)]
    remaining = len(tasks)
    try:
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        _cancel(tasks)


def _cancel(tasks: Sequence[asyncio.Future]) -> None:
    """Cancel the unfinished tasks. A cancelled engine stream aborts its request without blocking (a blocking
    ``engine.abort`` here would stall the event loop until the scheduler's step ends); a task cancelled before it
    ever ran never submitted its request."""
    for task in tasks:
        if not task.done():
            task.cancel()


def streamable_text(output: GenerateOutput, request: GenerateRequest) -> str:
    """The text of a streamed output that is safe to send: an unfinished output's text without a trailing piece
    that could be the start of a stop string (the next token may complete the stop, and the stop is trimmed from
    the final text). So streamed text only ever grows and ends as the final text."""
    text, sampling = output.text, request.sampling
    if output.finished or not sampling.stop or sampling.no_stop_trim:
        return text
    hold = 0
    for stop in sampling.stop:
        for size in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:size]):
                hold = size
                break
    return text[: len(text) - hold]


def finish_reason_dict(output: GenerateOutput) -> dict[str, Any] | None:
    """SGLang's ``meta_info.finish_reason``: ``{"type": "stop", "matched": ...}``, ``{"type": "length",
    "length": N}`` or ``{"type": "abort", "message": ...}``; None while unfinished."""
    finish: FinishReason | None = output.finish
    if finish is None:
        return None
    out = finish.to_dict()
    if finish.type == "length":
        out.setdefault("length", finish.matched if isinstance(finish.matched, int) else output.completion_tokens)
    return out


def logprob_list(entries: Sequence[Sequence[Any]] | None) -> list[list[Any]] | None:
    """``[(lp, id, text), ...]`` as JSON lists (NaN or infinite logprobs, as for impossible tokens, as null)."""
    if entries is None:
        return None
    return [[_finite(e[0]), e[1], e[2]] for e in entries]


def top_logprob_lists(rows: Sequence[Sequence[Sequence[Any]] | None] | None) -> list[Any] | None:
    if rows is None:
        return None
    return [None if row is None else logprob_list(row) for row in rows]


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None

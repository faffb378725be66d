"""Server-sent events: ``data: {json}\\n\\n`` frames, the closing ``data: [DONE]\\n\\n``, and a response that always
closes its event iterator, so a client that disconnects mid-stream gets its requests aborted at once."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

DONE = "data: [DONE]\n\n"


def event(payload: Any) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


class EventStream(StreamingResponse):
    """A ``text/event-stream`` response over an async iterator of frames; ``on_close`` runs when it ends.

    Starlette stops sending when the client disconnects but may leave the iterator suspended; here it is closed
    (its ``finally`` blocks run and abort the engine requests) whatever way the response ends."""

    def __init__(self, frames: AsyncIterator[str], on_close: Callable[[], None] | None = None) -> None:
        super().__init__(frames, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()
            if self.on_close is not None:
                self.on_close()

"""A deterministic stand-in for a plain OpenAI-compatible server (no extensions advertised), for backend tests.

Completions continue a fixed *document*: a prompt that is a prefix of it gets the rest of the document (cut at
the request's stop strings and at ``max_tokens`` words), any other prompt gets ``"unknown\\n"``. Chat completions
answer the whole document. Every request is counted by path in ``requests``; bodies are kept in ``bodies``; completions take ``delay``
seconds, and ``most_in_flight`` says how many were answered at once."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from backends.speculation import cut_at_stop


class OpenAIStub:
    def __init__(self, document: str, model: str = "stub-model", card: dict[str, Any] | None = None):
        self.document, self.model = document, model
        self.card = card if card is not None else {"id": model, "object": "model"}
        self.requests: Counter[str] = Counter()
        self.bodies: list[dict[str, Any]] = []
        self.delay = 0.0  # seconds each completion takes
        self.in_flight = self.most_in_flight = 0
        self.app = self._app()

    def continuation(self, prompt: str, body: dict[str, Any]) -> tuple[str, str]:
        """The answer to ``prompt`` under ``body``'s stop and max_tokens, and its finish reason."""
        rest = self.document[len(prompt):] if self.document.startswith(prompt) else "unknown\n"
        cut = cut_at_stop(rest, body.get("stop") or [])
        if cut is not None:
            rest = cut
        words = re.findall(r"\S*\s*", rest)
        limit = body.get("max_tokens")
        if limit is not None and len(words) > limit:
            return "".join(words[:limit]), "length"
        return rest, "stop"

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models/{model}")
        async def card(model: str):
            self.requests["models"] += 1
            if model != self.model:
                return JSONResponse({"error": {"message": f"no model {model}"}}, 404)
            return self.card

        @app.post("/v1/completions")
        async def completions(request: Request):
            body = await request.json()
            self.requests["completions"] += 1
            self.bodies.append(body)
            await self._wait()
            text, finish = self.continuation(body["prompt"], body)
            if body.get("stream"):
                return _stream("text_completion", text, finish, lambda piece: {"text": piece})
            return _reply("text_completion", {"index": 0, "text": text, "finish_reason": finish})

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            self.requests["chat"] += 1
            self.bodies.append(body)
            text, finish = self.continuation("", body)
            if body.get("stream"):
                return _stream("chat.completion.chunk", text, finish, lambda piece: {"delta": {"content": piece}})
            return _reply("chat.completion", {"index": 0, "message": {"role": "assistant", "content": text},
                                              "finish_reason": finish})

        return app

    async def _wait(self) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1


def _reply(obj: str, choice: dict[str, Any]) -> dict[str, Any]:
    return {"id": "stub-1", "object": obj, "choices": [choice],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}


def _stream(obj: str, text: str, finish: str, piece_of: Any) -> StreamingResponse:
    """``text`` word by word as server-sent chunks, then the finish reason, the usage and ``[DONE]``."""
    def events():
        for word in re.findall(r"\S*\s*", text)[:-1] or [""]:
            yield _event({"id": "stub-1", "object": obj, "choices": [{"index": 0, **piece_of(word),
                                                                       "finish_reason": None}]})
        yield _event({"id": "stub-1", "object": obj, "choices": [{"index": 0, **piece_of(""),
                                                                   "finish_reason": finish}]})
        yield _event({"id": "stub-1", "object": obj, "choices": [], "usage": _reply(obj, {})["usage"]})
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"

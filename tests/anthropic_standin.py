"""A local stand-in for Anthropic's Messages API (``POST /v1/messages``), deterministic and offline.

It checks requests the way the API does (``x-api-key``, ``anthropic-version``, ``max_tokens`` required, roles
``user``/``assistant`` alternating from ``user``, ``system`` only as the top-level field) and answers errors in
the API's shape (``{"type": "error", "error": {"type", "message"}}``). The answer echoes the last user message
(``"You said: <text>"``, continued after an assistant prefill), cut at ``stop_sequences`` and at ``max_tokens`` words, with the API's stop reasons,
usage, and streaming events. ``requests`` counts requests; ``bodies`` keeps them."""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

API_KEY = "sk-ant-test"


class AnthropicStandIn:
    def __init__(self, api_key: str = API_KEY):
        self.api_key = api_key
        self.requests = 0
        self.bodies: list[dict[str, Any]] = []
        self.app = FastAPI()
        self.app.post("/v1/messages")(self.messages)

    async def messages(self, request: Request):
        self.requests += 1
        if request.headers.get("x-api-key") != self.api_key:
            return _error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return _error(400, "invalid_request_error", "anthropic-version: header is required")
        body = await request.json()
        self.bodies.append(body)
        problem = _invalid(body)
        if problem:
            return _error(400, "invalid_request_error", problem)
        try:
            text, reason, matched = self.answer(body)
        except ValueError as err:
            return _error(400, "invalid_request_error", str(err))
        usage = {"input_tokens": sum(len(m["content"].split()) for m in body["messages"]),
                 "output_tokens": len(text.split())}
        if body.get("stream"):
            return StreamingResponse(_events(text, reason, matched, usage), media_type="text/event-stream")
        return {"id": "msg_standin", "type": "message", "role": "assistant", "model": body["model"],
                "content": [{"type": "text", "text": text}], "stop_reason": reason, "stop_sequence": matched,
                "usage": usage}

    @staticmethod
    def answer(body: dict[str, Any]) -> tuple[str, str, str | None]:
        """The echo of the last user message; after an assistant prefill, the echo's rest (the echo whole, after a
        space, when the prefill is not its start)."""
        *_, last_user = (m["content"] for m in body["messages"] if m["role"] == "user")
        text = "You said: " + last_user
        if body["messages"][-1]["role"] == "assistant":
            prefill = body["messages"][-1]["content"]
            if prefill != prefill.rstrip():
                raise ValueError("final assistant content cannot end with trailing whitespace")
            text = text[len(prefill):] if text.startswith(prefill) else " " + text
        found = [(text.find(s), s) for s in body.get("stop_sequences") or () if s in text]
        if found:
            index, matched = min(found)
            return text[:index], "stop_sequence", matched
        words = re.findall(r"\S+\s*", text)
        if len(words) > body["max_tokens"]:
            return "".join(words[:body["max_tokens"]]), "max_tokens", None
        return text, "end_turn", None


def _invalid(body: dict[str, Any]) -> str | None:
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not messages:
        return "messages: at least one message is required"
    for i, message in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if message.get("role") != expected:
            return f"messages.{i}.role: expected {expected!r}, got {message.get('role')!r} (roles must alternate)"
        if not isinstance(message.get("content"), str):
            return f"messages.{i}.content: expected a string"
    return None


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"type": "error", "error": {"type": kind, "message": message}}, status)


def _events(text: str, reason: str, matched: str | None, usage: dict[str, int]):
    def event(kind: str, payload: dict[str, Any]) -> str:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **payload})}\n\n"

    yield event("message_start", {"message": {"id": "msg_standin", "type": "message", "role": "assistant",
                                              "content": [], "usage": {"input_tokens": usage["input_tokens"],
                                                                       "output_tokens": 0}}})
    yield event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
    yield "event: ping\ndata: {\"type\": \"ping\"}\n\n"
    for word in re.findall(r"\S+\s*", text):
        yield event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": word}})
    yield event("content_block_stop", {"index": 0})
    yield event("message_delta", {"delta": {"stop_reason": reason, "stop_sequence": matched},
                                  "usage": {"output_tokens": usage["output_tokens"]}})
    yield event("message_stop", {})

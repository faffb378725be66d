"""The Anthropic backend: programs on Claude models over the Messages API (``POST /v1/messages``), through
`backends.http`.

The program's system turns become the request's ``system``; its user and assistant turns the ``messages``. Like
any chat API it answers as the assistant; a gen after text in an assistant turn sends that text as the last
(assistant) message, which the API continues (a *prefill*). ``max_tokens`` is required by the API: a gen that
sets none gets the backend's ``max_tokens``. ``stop`` goes as ``stop_sequences``; ``temperature``, ``top_p`` and
``top_k`` as themselves. The API has no logprobs and no constrained decoding, so ``select``,
``regex``, ``json_schema``, ``dtype``, ``grammar`` and logprob options are unsupported — reported before a
program runs (`sglang_dsl.compiler.capabilities`), naming the node. Streaming follows the API's server-sent events
(``content_block_delta`` text deltas, ``message_delta`` with the stop reason and usage)."""

from __future__ import annotations

import os
from typing import Any, AsyncIterator, Mapping

from backends.base import Backend, Capabilities, ChatTemplate, GenerateCall, Generation
from backends.http import HttpClient, HttpConfig
from backends.limit import ConcurrencyLimit
from backends.openai import TokenUsage
from backends.templates import CLAUDE, answer_messages
from sglang_dsl.lang.errors import ProgramError
from sglang_dsl.lang.executor import _text_content

ANTHROPIC_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
CAPABILITIES = Capabilities(select=False, streaming=True, images=False, prefix_cache=False, regex=False,
                            json_schema=False, grammar=False, logprobs=False, completion=False, continue_assistant=True,
                            sampling=frozenset({"max_new_tokens", "stop", "temperature", "top_p", "top_k"}))  # no n
# The API's stop reasons as the native API's finish types.
FINISH_TYPES = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


class Anthropic(Backend):
    """A Claude model. ``api_key`` defaults to ``$ANTHROPIC_API_KEY``, ``base_url`` to ``$ANTHROPIC_BASE_URL`` or
    Anthropic's; ``max_tokens`` is sent for gens that set no limit; ``max_concurrency``: requests out at once."""

    capabilities = CAPABILITIES

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None, *,
                 max_tokens: int = 1024, chat_template: ChatTemplate | None = None, timeout: float = 120.0,
                 max_retries: int = 3, verify: bool | str = True, max_concurrency: int = 64):
        base_url = base_url or os.environ.get("ANTHROPIC_BASE_URL") or ANTHROPIC_BASE_URL
        api_key = api_key if api_key is not None else os.environ.get("ANTHROPIC_API_KEY")
        self.model = model
        self.max_tokens = max_tokens
        self.max_concurrency = max_concurrency
        self._limit = ConcurrencyLimit(max_concurrency)
        self.http = HttpClient(base_url, api_key, headers={"anthropic-version": API_VERSION},
                               auth_header="x-api-key", auth_scheme="",
                               config=HttpConfig(timeout=timeout, max_retries=max_retries, verify=verify,
                                                 max_connections=max_concurrency))
        self.name = f"Anthropic({model!r} at {self.http.base_url})"
        self._template = chat_template or CLAUDE
        self.token_usage = TokenUsage()

    def __repr__(self) -> str:
        return self.name

    def chat_template(self) -> ChatTemplate:
        return self._template

    async def generate(self, call: GenerateCall) -> Generation:
        body, trimmed = self._body(call)
        async with self._limit.slot():
            reply = await self.http.post_json("v1/messages", body)
        if not isinstance(reply, dict) or not isinstance(reply.get("content"), list):
            raise ProgramError(f"{self.http.url('v1/messages')} answered without content: {str(reply)[:200]!r}")
        self.token_usage.add(_usage(reply.get("usage")))
        text = "".join(block.get("text", "") for block in reply["content"] if block.get("type") == "text")
        return Generation(_after(text, trimmed), _meta(reply.get("id"), reply, reply.get("usage")))

    async def stream(self, call: GenerateCall) -> AsyncIterator[Generation]:
        text, message, usage, final = "", {}, {}, {}
        body, trimmed = self._body(call)
        async with self._limit.slot():
            async for event in self.http.stream_events("v1/messages", {**body, "stream": True}):
                kind = event.get("type")
                if kind == "message_start":
                    message = event.get("message") or {}
                    usage = dict(message.get("usage") or {})
                elif kind == "content_block_delta" and (event.get("delta") or {}).get("type") == "text_delta":
                    text += event["delta"].get("text", "")
                    yield Generation(_after(text, trimmed), _meta(message.get("id"), {}, usage), finished=False)
                elif kind == "message_delta":
                    final = event.get("delta") or {}
                    usage.update(event.get("usage") or {})
        self.token_usage.add(_usage(usage))
        yield Generation(_after(text, trimmed), _meta(message.get("id"), final, usage), finished=True)

    def server_info(self) -> dict[str, Any]:
        return {"backend": "anthropic", "model": self.model, "base_url": self.http.base_url}

    def shutdown(self) -> None:
        self.http.close()

    def _body(self, call: GenerateCall) -> tuple[dict[str, Any], bool]:
        """The request, and whether the open assistant turn sent as a prefill lost trailing whitespace (the API
        refuses it there), so that the answer's leading whitespace goes too."""
        history = answer_messages(call.prompt, call.node, self)
        system = "\n\n".join(_text_content(m["content"]) for m in history if m["role"] == "system")
        messages = [{"role": m["role"], "content": _text_content(m["content"])}
                    for m in history if m["role"] != "system"]
        trimmed = False
        if messages and messages[-1]["role"] == "assistant":  # a prefill: the answer continues it
            content = messages[-1]["content"]
            messages[-1]["content"] = content.rstrip()
            trimmed = content != messages[-1]["content"]
        params = call.params
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": params.max_new_tokens if params.max_new_tokens is not None else self.max_tokens,
            "messages": messages,
        }
        if system:
            body["system"] = system
        if params.stop:
            body["stop_sequences"] = list(params.stop)
        body.update({key: value for key, value in (("temperature", params.temperature), ("top_p", params.top_p),
                                                   ("top_k", params.top_k)) if value is not None})
        return body, trimmed


def _after(text: str, trimmed: bool) -> str:
    return text.lstrip() if trimmed else text


def _usage(usage: Mapping[str, Any] | None) -> dict[str, int]:
    usage = usage or {}
    return {"prompt_tokens": usage.get("input_tokens") or 0, "completion_tokens": usage.get("output_tokens") or 0}


def _meta(reply_id: Any, stopped: Mapping[str, Any], usage: Mapping[str, Any] | None) -> dict[str, Any]:
    """The native meta of an answer; ``stopped`` holds ``stop_reason`` / ``stop_sequence`` when it ended."""
    reason = stopped.get("stop_reason")
    finish = None
    if reason is not None:
        finish = {"type": FINISH_TYPES.get(reason, reason)}
        if stopped.get("stop_sequence"):
            finish["matched"] = stopped["stop_sequence"]
    counts = _usage(usage)
    return {"id": reply_id, "finish_reason": finish, **counts,
            "cached_tokens": (usage or {}).get("cache_read_input_tokens") or 0}

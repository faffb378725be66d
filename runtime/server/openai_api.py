"""The OpenAI-compatible API: ``/v1/models``, ``/v1/completions`` and ``/v1/chat/completions``, plain or streamed
(server-sent chunks ending with ``data: [DONE]``), with ``n`` choices, logprobs and usage."""

from __future__ import annotations

import dataclasses
import json
import time
from contextlib import aclosing
from typing import Any, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from runtime.requests import GenerateOutput, GenerateRequest
from runtime.server.dispatch import (
    expand_n, generate_all, new_rid, stream_all, streamable_text, wait_for_disconnect,
)
from runtime.server.errors import APIError, as_api_error
from runtime.server.schemas import ChatCompletionBody, ChatMessage, CompletionBody, _OpenAISampling, parse_body
from runtime.server.sse import DONE, EventStream, event
from runtime.server.state import ServerState, server_state

router = APIRouter(prefix="/v1")

# OpenAI's stand-in for the logprob of an impossible token (JSON has no -inf).
MIN_LOGPROB = -9999.0

# What this server takes beyond the OpenAI API, for clients to discover (`backends.openai` reads it): the
# ``regex`` / ``json_schema`` / ``ebnf`` constraint fields, chat ``response_format``, the ``sampling`` extras
# (top_k, min_p, min_tokens, ignore_eos, stop_token_ids), logprobs, echoed prompt logprobs on completions, and
# chat answers that continue a final assistant message (``continue_final_message``).
EXTENSIONS = ("regex", "json_schema", "ebnf", "response_format", "sampling", "logprobs", "echo_logprobs",
              "continue_final_message")

# Template variables the server sets itself; ``chat_template_kwargs`` cannot override them.
_TEMPLATE_RESERVED = frozenset({"messages", "add_generation_prompt", "tools", "self"})

# OpenAI body field -> native sampling parameter, for the fields passed through when given.
_SAMPLING_FIELDS = {
    "temperature": "temperature", "top_p": "top_p", "seed": "seed", "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty", "top_k": "top_k", "min_p": "min_p",
    "repetition_penalty": "repetition_penalty", "min_tokens": "min_new_tokens", "ignore_eos": "ignore_eos",
    "stop_token_ids": "stop_token_ids", "skip_special_tokens": "skip_special_tokens",
    "spaces_between_special_tokens": "spaces_between_special_tokens", "no_stop_trim": "no_stop_trim",
    "regex": "regex", "json_schema": "json_schema", "ebnf": "ebnf",
}


# --------------------------------------------------------------------------------------------- models

@router.get("/models")
async def list_models(request: Request) -> dict:
    state = server_state(request)
    return {"object": "list", "data": [_model_card(state)]}


@router.get("/models/{model:path}")
async def retrieve_model(model: str, request: Request) -> dict:
    state = server_state(request)
    _check_model(state, model)
    return _model_card(state)


def _model_card(state: ServerState) -> dict:
    return {"id": state.served_model_name, "object": "model", "created": int(state.started),
            "owned_by": "sglang-dsl", "root": state.engine.model_path, "max_model_len": state.context_length(),
            "extensions": list(EXTENSIONS)}


def _check_model(state: ServerState, name: str | None) -> None:
    if name is not None and name not in state.model_aliases:
        raise APIError(f"the model {name!r} does not exist; this server serves {state.served_model_name!r}",
                       404, param="model", code="model_not_found")


# --------------------------------------------------------------------------------------------- completions

@router.post("/completions")
async def completions(request: Request) -> Response:
    state = server_state(request)
    body = parse_body(await request.body(), CompletionBody)
    _check_model(state, body.model)
    if body.suffix:
        raise APIError("suffix is not supported", param="suffix")
    if body.best_of not in (None, 1, body.n):
        raise APIError("best_of is not supported (only best_of == n)", param="best_of")
    prompts = _completion_prompts(body.prompt)
    sampling = _sampling_params(body, body.max_tokens)
    want_logprobs = body.logprobs is not None
    rid = body.rid or new_rid()
    requests: list[GenerateRequest] = []
    echoes: list[str] = []
    for i, prompt in enumerate(prompts):
        request_ = state.engine.make_request(
            **prompt, sampling_params=sampling, return_logprob=want_logprobs,
            logprob_start_len=0 if (body.echo and want_logprobs) else -1, top_logprobs_num=body.logprobs or 0,
            return_text_in_logprobs=True, rid=rid if len(prompts) == 1 else f"{rid}-{i}", stream=body.stream)
        if body.max_tokens is None:
            request_ = _fill_context(state, request_)
        samples = expand_n(request_)
        requests.extend(samples)
        echo = prompt.get("text") if "text" in prompt else state.engine.tokenizer.decode(prompt["input_ids"])
        echoes.extend([echo if body.echo else ""] * len(samples))
    reply = _Reply("cmpl-" + rid, body.model or state.served_model_name, body.n)
    top_n = body.logprobs or 0
    if body.stream:
        chunks = _completion_chunks(reply, body, echoes, top_n)
        return _event_stream(state, rid, requests, _stream(state, reply, requests, body, chunks))
    outputs = await _generate(state, rid, requests, request)
    choices = [
        {"index": i, "text": echoes[i] + out.text, "finish_reason": _finish_reason(out),
         "logprobs": _completion_logprobs(out, body.echo, top_n) if want_logprobs else None}
        for i, out in enumerate(outputs)
    ]
    return JSONResponse({**reply.head("text_completion"), "choices": choices, "usage": reply.usage(outputs)})


def _completion_prompts(prompt: Any) -> list[dict[str, Any]]:
    if isinstance(prompt, str):
        return [{"text": prompt}]
    if prompt and isinstance(prompt[0], str):
        return [{"text": p} for p in prompt]
    if prompt and isinstance(prompt[0], list):
        return [{"input_ids": ids} for ids in prompt]
    return [{"input_ids": prompt}]


def _completion_logprobs(out: GenerateOutput, echo: bool, top_n: int, start: int = 0, offset: int = 0,
                         with_input: bool | None = None) -> dict[str, Any]:
    """The legacy completions ``logprobs`` object for output entries ``start..`` (and, with echo, the prompt's)."""
    entries = list(out.output_token_logprobs or ())[start:]
    tops = list(out.output_top_logprobs or ())[start:] if top_n else []
    if echo if with_input is None else with_input:
        entries = list(out.input_token_logprobs or ()) + entries
        tops = (list(out.input_top_logprobs or ()) + tops) if top_n else []
    tokens = [e[2] or "" for e in entries]
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": [_logprob(e[0], allow_none=True) for e in entries],
        "top_logprobs": [None if row is None else {e[2] or "": _logprob(e[0]) for e in row} for row in tops]
        if top_n else None,
        "text_offset": offsets,
    }


def _completion_chunks(reply: "_Reply", body: CompletionBody, echoes: list[str], top_n: int):
    want_logprobs = body.logprobs is not None

    def chunk(index: int, out: GenerateOutput, delta: str, logprob_start: int, first: bool, offset: int) -> dict:
        text = (echoes[index] if first else "") + delta
        logprobs = None
        if want_logprobs:
            logprobs = _completion_logprobs(out, False, top_n, logprob_start, offset,
                                            with_input=body.echo and first)
        choice = {"index": index, "text": text, "logprobs": logprobs,
                  "finish_reason": _finish_reason(out) if out.finished else None}
        return reply.chunk("text_completion", [choice])

    return chunk


# --------------------------------------------------------------------------------------------- chat

@router.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    state = server_state(request)
    body = parse_body(await request.body(), ChatCompletionBody)
    _check_model(state, body.model)
    if body.tools:
        raise APIError("tools are not supported by this server", param="tools")
    if body.top_logprobs and not body.logprobs:
        raise APIError("top_logprobs requires logprobs to be true", param="top_logprobs")
    tokenizer = state.engine.tokenizer
    template_kwargs = {k: v for k, v in (body.chat_template_kwargs or {}).items() if k not in _TEMPLATE_RESERVED}
    messages = [_message(m, i) for i, m in enumerate(body.messages)]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=not body.continue_final_message,
                                           **template_kwargs)
    if body.continue_final_message:
        prompt = _up_to_final_message(prompt, messages[-1])
    input_ids = tokenizer.encode(prompt, add_special_tokens=False)
    max_new = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    sampling = _sampling_params(body, max_new)
    if body.response_format is not None and body.response_format.type != "text":
        schema = (body.response_format.json_schema or {}).get("schema", {"type": "object"}) \
            if body.response_format.type == "json_schema" else {"type": "object"}
        sampling["json_schema"] = json.dumps(schema)
    rid = body.rid or new_rid()
    request_ = state.engine.make_request(
        input_ids=input_ids, sampling_params=sampling, return_logprob=body.logprobs,
        top_logprobs_num=body.top_logprobs or 0, return_text_in_logprobs=True, rid=rid, stream=body.stream)
    if max_new is None:
        request_ = _fill_context(state, request_)
    requests = expand_n(request_)
    reply = _Reply("chatcmpl-" + rid, body.model or state.served_model_name, body.n)
    if body.stream:
        chunks = _chat_chunks(reply, body)
        return _event_stream(state, rid, requests, _stream(state, reply, requests, body, chunks, role_first=True))
    outputs = await _generate(state, rid, requests, request)
    choices = [
        {"index": i, "message": {"role": "assistant", "content": out.text},
         "logprobs": _chat_logprobs(out, 0) if body.logprobs else None, "finish_reason": _finish_reason(out)}
        for i, out in enumerate(outputs)
    ]
    return JSONResponse({**reply.head("chat.completion"), "choices": choices, "usage": reply.usage(outputs)})


def _up_to_final_message(prompt: str, final: dict[str, Any]) -> str:
    """``continue_final_message`` (as vLLM takes it): the rendered conversation cut right after the final
    (assistant) message's content, so that the answer continues that message."""
    if final["role"] != "assistant":
        raise APIError("continue_final_message needs the last message to be the assistant's",
                       param="continue_final_message")
    end = prompt.rfind(final["content"]) if final["content"] else -1
    if end < 0:
        raise APIError("continue_final_message: the chat template does not render the final message's content "
                       "as given", param="continue_final_message")
    return prompt[:end + len(final["content"])]


def _message(message: ChatMessage, index: int) -> dict[str, Any]:
    """A message as chat templates expect it: text content only, ``developer`` as ``system``."""
    extra = {k: v for k, v in (message.model_extra or {}).items() if v is not None}
    content = message.content
    if isinstance(content, list):
        texts = []
        for part in content:
            if part.type != "text" or part.text is None:
                raise APIError(f"messages[{index}].content: only text parts are supported, got {part.type!r}",
                               param="messages")
            texts.append(part.text)
        content = "".join(texts)
    out = {**extra, "role": "system" if message.role == "developer" else message.role,
           "content": content if content is not None else ""}
    if message.name is not None:
        out["name"] = message.name
    return out


def _chat_logprobs(out: GenerateOutput, start: int) -> dict[str, Any]:
    entries = list(out.output_token_logprobs or ())[start:]
    tops = list(out.output_top_logprobs or ())[start:]

    def item(entry) -> dict[str, Any]:
        token = entry[2] or ""
        return {"token": token, "logprob": _logprob(entry[0]), "bytes": list(token.encode("utf-8"))}

    content = []
    for j, entry in enumerate(entries):
        content.append({**item(entry), "top_logprobs": [item(e) for e in tops[j]] if j < len(tops) else []})
    return {"content": content}


def _chat_chunks(reply: "_Reply", body: ChatCompletionBody):
    def chunk(index: int, out: GenerateOutput, delta: str, logprob_start: int, first: bool, offset: int) -> dict:
        choice = {"index": index, "delta": {"content": delta} if delta else {},
                  "logprobs": _chat_logprobs(out, logprob_start) if body.logprobs else None,
                  "finish_reason": _finish_reason(out) if out.finished else None}
        return reply.chunk("chat.completion.chunk", [choice])

    return chunk


# --------------------------------------------------------------------------------------------- shared

class _Reply:
    """Identity of one OpenAI response (id, created, model) and its usage accounting."""

    def __init__(self, id: str, model: str, n: int) -> None:
        self.id, self.model, self.n = id, model, n
        self.created = int(time.time())

    def head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def chunk(self, obj: str, choices: list[dict], usage: Any = ...) -> dict[str, Any]:
        out = {**self.head(obj), "choices": choices}
        if usage is not ...:
            out["usage"] = usage
        return out

    def usage(self, outputs: list[GenerateOutput]) -> dict[str, Any]:
        """Each prompt's tokens count once however many choices it has; cached tokens are those its choices all
        found in the cache."""
        groups = [outputs[i:i + self.n] for i in range(0, len(outputs), self.n)]
        prompt = sum(g[0].prompt_tokens for g in groups)
        completion = sum(o.completion_tokens for o in outputs)
        cached = sum(min(o.cached_tokens for o in g) for g in groups)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": cached}}


def _sampling_params(body: _OpenAISampling, max_tokens: int | None) -> dict[str, Any]:
    if body.logit_bias:
        raise APIError("logit_bias is not supported", param="logit_bias")
    sampling: dict[str, Any] = {"n": body.n}
    if max_tokens is not None:
        sampling["max_new_tokens"] = max_tokens
    if body.stop is not None:
        sampling["stop"] = [body.stop] if isinstance(body.stop, str) else body.stop
    for field, key in _SAMPLING_FIELDS.items():
        value = getattr(body, field)
        if value is not None:
            sampling[key] = value
    return sampling


def _fill_context(state: ServerState, request: GenerateRequest) -> GenerateRequest:
    """No ``max_tokens``: generate up to the end of the context."""
    context = state.context_length()
    if context is None:
        return request
    room = max(1, context - len(request.input_ids))
    return dataclasses.replace(request, sampling=dataclasses.replace(request.sampling, max_new_tokens=room))


def _finish_reason(out: GenerateOutput) -> str | None:
    if out.finish is None:
        return None
    return "length" if out.finish.type == "length" else "stop"


def _abort_error(out: GenerateOutput) -> APIError:
    message = (out.finish.message if out.finish else None) or "the request was aborted"
    if message.startswith("engine error"):
        return APIError(message, 500, type="server_error")
    return APIError(message, 400, code="request_aborted")


def _logprob(value: float | None, allow_none: bool = False) -> float | None:
    if value is None:
        return None if allow_none else MIN_LOGPROB
    value = float(value)
    if value != value or value == float("-inf"):
        return MIN_LOGPROB
    return value


def _event_stream(state: ServerState, rid: str, requests: list[GenerateRequest], frames) -> EventStream:
    state.active.add(rid, [r.rid for r in requests])
    return EventStream(frames, on_close=lambda: state.active.remove(rid))


async def _generate(state: ServerState, rid: str, requests: list[GenerateRequest],
                    http_request: Request) -> list[GenerateOutput]:
    state.active.add(rid, [r.rid for r in requests])
    try:
        outputs = await generate_all(state.engine, requests, wait_for_disconnect(http_request.receive))
    finally:
        state.active.remove(rid)
    for out in outputs:
        if out.finish is not None and out.finish.type == "abort":
            raise _abort_error(out)
    return outputs


async def _stream(state: ServerState, reply: _Reply, requests: list[GenerateRequest], body: _OpenAISampling,
                  make_chunk: Callable[..., dict], role_first: bool = False):
    """Chunks of every choice as their text grows; then, with ``stream_options.include_usage``, a usage chunk
    (``choices: []``); then ``[DONE]``. An abort or engine failure ends the stream with an error event."""
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    obj = "chat.completion.chunk" if role_first else "text_completion"
    sent_text = [""] * len(requests)
    sent_logprobs = [0] * len(requests)
    started = [False] * len(requests)
    finals: list[GenerateOutput | None] = [None] * len(requests)

    def with_usage(payload: dict) -> dict:
        if include_usage:
            payload["usage"] = None
        return payload

    try:
        if role_first:
            for i in range(len(requests)):
                role = {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                        "finish_reason": None}
                yield event(with_usage(reply.chunk(obj, [role])))
        async with aclosing(stream_all(state.engine, requests)) as outputs:
            async for i, out in outputs:
                if out.finish is not None and out.finish.type == "abort":
                    raise _abort_error(out)
                text = streamable_text(out, requests[i])
                delta = text[len(sent_text[i]):] if text.startswith(sent_text[i]) else ""
                count = len(out.output_token_logprobs or ())
                first = not started[i]
                if delta or count > sent_logprobs[i] or out.finished or (first and not role_first):
                    offset = len(sent_text[i])
                    yield event(with_usage(make_chunk(i, out, delta, sent_logprobs[i], first, offset)))
                    started[i] = True
                    sent_logprobs[i] = count
                    if delta:
                        sent_text[i] = text
                if out.finished:
                    finals[i] = out
        if include_usage:
            yield event(reply.chunk(obj, [], usage=reply.usage([o for o in finals if o is not None])))
    except Exception as err:  # noqa: BLE001 - reported in-stream; headers are already sent
        error = as_api_error(err)
        yield event({"error": {"message": error.message, "type": error.type, "param": error.param,
                               "code": error.code if error.code is not None else error.status}})
    yield DONE

"""SGLang's native HTTP API, as its frontend's ``RuntimeEndpoint`` uses it: ``/generate`` (single or batch, plain
or streamed), model and server info, tokenization, cache flush, health checks, abort, and ``/metrics``.
A streamed ``/generate`` sends cumulative text and counts, and in each frame only the output logprobs of the
tokens it adds (`sglang_dsl.lang.stream_meta`).

Our extension: ``POST /generate_program`` runs a program request (`runtime.program`: text, gen and select steps
as one request, so a remote interpreter saves a round trip per node); ``/get_server_info`` says
``"program_endpoint": true``. Body: ``{"text", "steps": [...], "rid"}``; answer: ``{"outputs": [{"node", "name",
"value", "meta_info"}], "text", "finish_reason"}``. A batch (``"text": [...]`` with one list of steps per prompt,
or one list for all) answers a list, in order. In an answer, ``finish_reason`` is None when every step ran, else the
abort (``{"type": "abort", "message"}``) and ``outputs`` holds the steps that completed. A bad step is a 400
naming it (``steps[2] (gen('answer')): ...``)."""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from runtime.config import SUPPORTED_ARCHITECTURES
from runtime.program import ProgramOutput
from runtime.requests import GenerateOutput, GenerateRequest
from runtime.server.dispatch import (
    expand_n, finish_reason_dict, generate_all, logprob_list, new_rid, stream_all, streamable_text,
    top_logprob_lists, until_disconnect, wait_for_disconnect,
)
from runtime.server.errors import APIError, as_api_error
from runtime.server.schemas import AbortBody, GenerateBody, ProgramBody, TokenizeBody, parse_body
from runtime.server.sse import DONE, EventStream, event
from runtime.server.state import ServerState, server_state
from sglang_dsl.lang.stream_meta import chunk_meta

HEALTH_GENERATE_TIMEOUT_S = 30.0

router = APIRouter()


# --------------------------------------------------------------------------------------------- /generate

@router.api_route("/generate", methods=["POST", "PUT"])
async def generate(request: Request) -> Response:
    state = server_state(request)
    received = time.perf_counter()
    body = parse_body(await request.body(), GenerateBody)
    top_rid, requests, batch = _build_requests(state, body)
    state.active.add(top_rid, [r.rid for r in requests])
    if body.stream:
        return EventStream(_stream_frames(state, requests, batch, received),
                           on_close=lambda: state.active.remove(top_rid))
    try:
        outputs = await generate_all(state.engine, requests, wait_for_disconnect(request.receive))
    finally:
        state.active.remove(top_rid)
    results = [_result(out, req, received) for out, req in zip(outputs, requests)]
    return JSONResponse(results if batch else results[0])


def _build_requests(state: ServerState, body: GenerateBody) -> tuple[str, list[GenerateRequest], bool]:
    """The engine requests of a ``/generate`` body, ``n``-expanded, in response order (prompt-major); whether the
    response is a list."""
    if body.input_embeds is not None:
        raise APIError("input_embeds is not supported by this server", param="input_embeds")
    for media in ("image_data", "video_data", "audio_data"):
        if getattr(body, media) not in (None, [], ""):
            raise APIError(f"{media} is not supported: the served model is text-only", param=media)
    if body.lora_path not in (None, [], ""):
        raise APIError("lora_path is not supported by this server", param="lora_path")
    if (body.text is None) == (body.input_ids is None):
        raise APIError("give exactly one of text or input_ids", param="text")
    if body.text is not None:
        batch = isinstance(body.text, list)
        prompts = [{"text": t} for t in body.text] if batch else [{"text": body.text}]
    else:
        batch = bool(body.input_ids) and isinstance(body.input_ids[0], list)
        prompts = [{"input_ids": ids} for ids in body.input_ids] if batch else [{"input_ids": body.input_ids}]
    if batch and not prompts:
        raise APIError("the batch is empty", param="text" if body.text is not None else "input_ids")
    count = len(prompts)
    if isinstance(body.rid, list):
        top_rid, rids = new_rid(), _per_prompt("rid", body.rid, count, batch)
    else:
        top_rid = body.rid or new_rid()
        rids = [f"{top_rid}-{i}" for i in range(count)] if batch else [top_rid]
    if len(set(rids)) != len(rids):
        raise APIError("rid values must be unique within a request", param="rid")
    sampling = _per_prompt("sampling_params", body.sampling_params, count, batch)
    return_logprob = _per_prompt("return_logprob", body.return_logprob, count, batch)
    start_len = _per_prompt("logprob_start_len", body.logprob_start_len, count, batch)
    top_num = _per_prompt("top_logprobs_num", body.top_logprobs_num, count, batch)
    listed = _listed_per_prompt(body.token_ids_logprob, count, batch)
    requests: list[GenerateRequest] = []
    for i, prompt in enumerate(prompts):
        request = state.engine.make_request(
            **prompt, sampling_params=sampling[i] or {}, return_logprob=return_logprob[i],
            logprob_start_len=start_len[i], top_logprobs_num=top_num[i], token_ids_logprob=listed[i],
            return_text_in_logprobs=body.return_text_in_logprobs, rid=rids[i], stream=body.stream)
        samples = expand_n(request)
        if len(samples) > 1:
            batch = True  # one prompt with n > 1 answers a list, as SGLang does
        requests.extend(samples)
    return top_rid, requests, batch


def _per_prompt(name: str, value: Any, count: int, batch: bool) -> list[Any]:
    """A per-prompt value list: a scalar (or dict) is broadcast; a list must have one entry per prompt."""
    if not isinstance(value, list):
        return [value] * count
    if len(value) != count:
        where = f"the batch has {count} prompts" if batch else "there is one prompt"
        raise APIError(f"{name} has {len(value)} entries but {where}", param=name)
    return value


def _listed_per_prompt(value: list | None, count: int, batch: bool) -> list[list[int]]:
    """``token_ids_logprob``: one list of token ids for every prompt, or (a list of lists) one per prompt."""
    if value and isinstance(value[0], list):
        return _per_prompt("token_ids_logprob", value, count, batch)
    return [value or []] * count


def _result(out: GenerateOutput, request: GenerateRequest, received: float, index: int | None = None,
            streaming: bool = False) -> dict:
    meta: dict[str, Any] = {
        "id": out.rid,
        "finish_reason": finish_reason_dict(out),
        "prompt_tokens": out.prompt_tokens,
        "completion_tokens": out.completion_tokens,
        "cached_tokens": out.cached_tokens,
        "reasoning_tokens": 0,
        "weight_version": "default",
        "num_retractions": 0,
    }
    if out.finished:
        meta["e2e_latency"] = time.perf_counter() - received
    if request.logprobs.return_logprob:
        meta["input_token_logprobs"] = logprob_list(out.input_token_logprobs) or []
        meta["output_token_logprobs"] = logprob_list(out.output_token_logprobs) or []
        meta["output_token_logprobs_length"] = len(meta["output_token_logprobs"])
        if request.logprobs.top_logprobs_num > 0:
            meta["input_top_logprobs"] = top_logprob_lists(out.input_top_logprobs) or []
            meta["output_top_logprobs"] = top_logprob_lists(out.output_top_logprobs) or []
        if request.logprobs.token_ids_logprob:
            meta["input_token_ids_logprobs"] = top_logprob_lists(out.input_token_ids_logprobs) or []
            meta["output_token_ids_logprobs"] = top_logprob_lists(out.output_token_ids_logprobs) or []
    text = streamable_text(out, request) if streaming else out.text
    result = {"text": text, "output_ids": list(out.output_ids), "meta_info": meta}
    if index is not None:
        result["index"] = index
    return result


async def _stream_frames(state: ServerState, requests: list[GenerateRequest], batch: bool, received: float):
    """The frames of a streamed ``/generate``: each request's cumulative text and counts, and only the output
    logprob entries of the tokens the frame adds (`sglang_dsl.lang.stream_meta`)."""
    sent: list[dict[str, int]] = [{} for _ in requests]  # per request: output logprob entries already sent, by key
    try:
        async with aclosing(stream_all(state.engine, requests)) as outputs:
            async for index, out in outputs:
                result = _result(out, requests[index], received, index if batch else None, streaming=True)
                result["meta_info"] = chunk_meta(result["meta_info"], sent[index])
                yield event(result)
    except Exception as err:  # noqa: BLE001 - reported in-stream; headers are already sent
        error = as_api_error(err)
        yield event({"error": {"message": error.message, "type": error.type, "code": error.status,
                               "retryable": False}})
    yield DONE


# --------------------------------------------------------------------------------------------- /generate_program

@router.post("/generate_program")
async def generate_program(request: Request) -> JSONResponse:
    state = server_state(request)
    received = time.perf_counter()
    body = parse_body(await request.body(), ProgramBody)
    if body.image_data not in (None, [], ""):
        raise APIError("image_data is not supported: the served model is text-only", param="image_data")
    top_rid = body.rid or new_rid()
    programs = [state.engine.make_program(text, steps, rid=rid) for text, steps, rid in _program_batch(body, top_rid)]
    state.active.add(top_rid, [p.rid for p in programs])
    try:
        outputs = await until_disconnect(asyncio.gather(*map(state.engine.async_generate_program, programs)),
                                         wait_for_disconnect(request.receive))
    finally:
        state.active.remove(top_rid)
    results = [_program_result(output, received) for output in outputs]
    return JSONResponse(results if isinstance(body.text, list) else results[0])


def _program_batch(body: ProgramBody, top_rid: str) -> list[tuple[str, list, str]]:
    """(text, steps, rid) of each program of a ``/generate_program`` body."""
    if not isinstance(body.text, list):
        return [(body.text, body.steps, top_rid)]
    if not body.text:
        raise APIError("the batch is empty", param="text")
    per_program = bool(body.steps) and all(isinstance(steps, list) for steps in body.steps)
    steps = body.steps if per_program else [body.steps] * len(body.text)
    if len(steps) != len(body.text):
        raise APIError(f"steps has {len(steps)} lists for {len(body.text)} prompts", param="steps")
    return [(text, s, f"{top_rid}-{i}") for i, (text, s) in enumerate(zip(body.text, steps))]


def _program_result(output: ProgramOutput, received: float) -> dict:
    steps = [{"node": r.node, "name": r.name, "value": r.value,
              "meta_info": _result(r.output, r.request, received)["meta_info"] if r.output else r.meta_info}
             for r in output.steps]
    finish = output.finish.to_dict() if output.finish is not None else None
    return {"outputs": steps, "text": output.text, "finish_reason": finish}


# --------------------------------------------------------------------------------------------- info, control

@router.get("/model_info")
@router.get("/get_model_info")
async def model_info(request: Request) -> dict:
    state = server_state(request)
    engine = state.engine
    arch = getattr(engine.model_config, "architecture", None)
    args = getattr(engine, "args", None)
    return {
        "model_path": engine.model_path,
        "tokenizer_path": engine.model_path,
        "served_model_name": state.served_model_name,
        "is_generation": True,
        "preferred_sampling_params": None,
        "weight_version": "default",
        "load_format": getattr(args, "load_format", None),
        "model_type": arch,
        "architectures": [name for name, short in SUPPORTED_ARCHITECTURES.items() if short == arch][:1],
        "context_length": state.context_length(),
        "has_image_understanding": False,
        "has_audio_understanding": False,
        # Our extension: remote clients render roles exactly as the model's template does.
        "chat_template": engine.tokenizer.chat_template,
        "chat_template_variables": engine.tokenizer.chat_template_variables,
        "bos_token_id": engine.tokenizer.bos_token_id,
    }


@router.post("/tokenize")
async def tokenize(request: Request) -> dict:
    """Token ids of ``prompt`` (a string or a list of them), as SGLang's ``/tokenize`` answers them."""
    state = server_state(request)
    body = parse_body(await request.body(), TokenizeBody)
    prompts = body.prompt if isinstance(body.prompt, list) else [body.prompt]
    tokens = [state.engine.tokenizer.encode(p, add_special_tokens=body.add_special_tokens) for p in prompts]
    return {"tokens": tokens if isinstance(body.prompt, list) else tokens[0],
            "count": sum(len(t) for t in tokens), "max_model_len": state.context_length()}


@router.get("/server_info")
@router.get("/get_server_info")
async def server_info(request: Request) -> JSONResponse:
    state = server_state(request)
    info = await run_in_threadpool(state.engine.server_info)
    info = {**info, "served_model_name": state.served_model_name, "startup_time": state.started,
            "program_endpoint": True}
    info.setdefault("version", _version())
    return JSONResponse(json.loads(json.dumps(info, default=str)))


@router.api_route("/flush_cache", methods=["GET", "POST"])
async def flush_cache(request: Request) -> PlainTextResponse:
    if await run_in_threadpool(server_state(request).engine.flush_cache):
        return PlainTextResponse("Cache flushed.\n")
    return PlainTextResponse("Cache not flushed: requests are running. Retry when the server is idle.\n",
                             status_code=400)


@router.post("/abort_request")
async def abort_request(request: Request) -> dict:
    state = server_state(request)
    body = parse_body(await request.body(), AbortBody)
    rids = state.active.all_rids() if body.abort_all else state.active.members(body.rid)
    aborted = [await run_in_threadpool(state.engine.abort, rid) for rid in rids]
    return {"success": any(aborted)}


@router.get("/health")
async def health() -> Response:
    return Response(status_code=200)


@router.get("/health_generate")
async def health_generate(request: Request) -> Response:
    """Generate one token; 200 if the engine answers in time, else 503."""
    engine = server_state(request).engine
    probe = engine.make_request(input_ids=[0], sampling_params={"max_new_tokens": 1, "temperature": 0},
                                rid=f"health-{new_rid()}")
    try:
        await asyncio.wait_for(generate_all(engine, [probe]), HEALTH_GENERATE_TIMEOUT_S)
    except Exception as err:  # noqa: BLE001 - any failure means unhealthy
        return JSONResponse(APIError(f"health check failed: {type(err).__name__}: {err}", 503).body(),
                            status_code=503)
    return Response(status_code=200)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    engine_metrics = getattr(server_state(request).engine, "metrics", None)
    if engine_metrics is None:
        return PlainTextResponse("")
    return Response(engine_metrics.render(), media_type=engine_metrics.content_type)


def _version() -> str:
    from runtime import __version__

    return __version__

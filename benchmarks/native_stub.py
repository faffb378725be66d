"""An instant stand-in for a native-API server, to measure a frontend's own overhead.

It answers at once, from a separate process (so it does not share the frontend's interpreter), with plausible
responses: ``/get_model_info``, ``/server_info``, ``/tokenize`` (word-level tokens),
``/generate`` for ``text`` or ``input_ids``, single or batched, with prompt-token logprobs from
``logprob_start_len`` when asked (what ``select`` needs), ``/flush_cache``, and optionally our
``/generate_program``. It speaks just enough HTTP/1.1 for
keep-alive clients (httpx) and one-shot ones (urllib), over a raw asyncio server."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import re
from typing import Any

ANSWER = " a stub answer"


class _Vocabulary:
    """Word-level tokens (GPT-2-like pieces: a word with its leading space, a punctuation mark, a newline), ids
    handed out on first sight, so prompts have realistic token counts and ids map back to text."""

    PIECES = re.compile(r" ?\w+| ?[^\w\s]|\s")

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.pieces: list[str] = []

    def encode(self, text: str) -> list[int]:
        return [self._id(piece) for piece in self.PIECES.findall(text)]

    def _id(self, piece: str) -> int:
        token = self.ids.get(piece)
        if token is None:
            token = self.ids[piece] = len(self.pieces)
            self.pieces.append(piece)
        return token

    def piece(self, token: int) -> str:
        return self.pieces[token] if token < len(self.pieces) else "?"


VOCABULARY = _Vocabulary()


def _prompt_ids(prompt: Any) -> list[int]:
    return VOCABULARY.encode(prompt) if isinstance(prompt, str) else list(prompt)


def _one(prompt: Any, options: dict, index: int) -> dict:
    ids = _prompt_ids(prompt)
    sampling = options.get("sampling_params") or {}
    limit = sampling.get("max_new_tokens")
    text = ANSWER[:min(128 if limit is None else int(limit), len(ANSWER))]
    meta: dict[str, Any] = {
        "id": f"stub-{index}", "finish_reason": {"type": "length", "length": len(text)}, "prompt_tokens": len(ids),
        "completion_tokens": len(text), "cached_tokens": 0, "e2e_latency": 0.0,
    }
    if options.get("return_logprob"):
        start = options.get("logprob_start_len", -1)
        with_text = options.get("return_text_in_logprobs", False)
        window = range(start, len(ids)) if start is not None and start >= 0 else range(0)
        meta["input_token_logprobs"] = [
            [None if i == start else _made_up_logprob(ids[i]), ids[i], VOCABULARY.piece(ids[i]) if with_text else None]
            for i in window]
        meta["output_token_logprobs"] = [[-0.1, t, VOCABULARY.piece(t) if with_text else None]
                                         for t in VOCABULARY.encode(text)]
        meta["output_token_logprobs_length"] = len(meta["output_token_logprobs"])
        listed = options.get("token_ids_logprob") or []
        if listed:
            position = [[_made_up_logprob(t), t, VOCABULARY.piece(t) if with_text else None] for t in listed]
            meta["output_token_ids_logprobs"] = [position for _ in meta["output_token_logprobs"]]
    return {"text": text, "output_ids": VOCABULARY.encode(text), "meta_info": meta}


def _made_up_logprob(token: int) -> float:
    return -0.05 * (1 + token % 11)


def _per_prompt(key: str, value: Any, batch: bool) -> bool:
    """Whether a batch request's ``value`` holds one entry per prompt (``token_ids_logprob``: a list of lists)."""
    if not batch or not isinstance(value, list) or key == "text":
        return False
    return key != "token_ids_logprob" or bool(value) and isinstance(value[0], list)


def generate(body: dict) -> Any:
    """A ``/generate`` answer: per-prompt options may be lists (one entry per prompt) or broadcast scalars."""
    prompts = body.get("text") if body.get("text") is not None else body.get("input_ids")
    batch = isinstance(prompts, list) and (isinstance(body.get("text"), list) or
                                           (bool(prompts) and isinstance(prompts[0], list)))
    items = prompts if batch else [prompts]
    results = [_one(p, {k: v[i] if _per_prompt(k, v, batch) else v for k, v in body.items()}, i)
               for i, p in enumerate(items)]
    return results if batch else results[0]


def generate_program(body: dict) -> Any:
    """A ``/generate_program`` answer (our extension), for one program or a batch (a list of texts, one list of
    steps each)."""
    if isinstance(body["text"], list):
        return [_program(text, steps) for text, steps in zip(body["text"], body["steps"])]
    return _program(body["text"], body["steps"])


def _program(text: str, steps: list) -> dict:
    """Text steps append, gens append the stub answer, selects pick the choice whose tokens score best under the
    stub's made-up logprobs."""
    outputs = []
    for step in steps:
        if step["type"] == "text":
            text += step["text"]
            continue
        if step["type"] == "gen":
            value = _one(text, step, len(outputs))["text"]
            meta = {"prompt_tokens": len(_prompt_ids(text)), "completion_tokens": len(_prompt_ids(value)),
                    "cached_tokens": 0, "finish_reason": {"type": "length", "length": len(value)}}
        else:
            scores = [sum(_made_up_logprob(t) for t in ids) / max(len(ids), 1)
                      for ids in (_prompt_ids(choice) for choice in step["choices"])]
            value = step["choices"][scores.index(max(scores))]
            meta = {"normalized_prompt_logprobs": scores, "prompt_tokens": len(_prompt_ids(text))}
        text += value
        outputs.append({"node": step["node"], "name": step.get("name"), "value": value, "meta_info": meta})
    return {"outputs": outputs, "text": text}


def route(method: str, path: str, body: bytes, program_endpoint: bool = False) -> tuple[int, Any]:
    path = path.split("?", 1)[0]
    if path in ("/get_model_info", "/model_info"):
        return 200, {"model_path": "stub-model", "is_generation": True, "has_image_understanding": False}
    if path in ("/server_info", "/get_server_info"):
        return 200, {"version": "stub", "program_endpoint": program_endpoint}
    if path == "/flush_cache":
        return 200, "Cache flushed."
    data = json.loads(body or b"{}")
    if path == "/tokenize":
        prompts = data["prompt"]
        tokens = [_prompt_ids(p) for p in prompts] if isinstance(prompts, list) else _prompt_ids(prompts)
        return 200, {"tokens": tokens, "count": 0, "max_model_len": 1 << 20}
    if path == "/generate":
        return 200, generate(data)
    if path == "/generate_program" and program_endpoint:
        return 200, generate_program(data)
    return 404, {"error": {"message": f"no route {method} {path}"}}


async def _serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            program_endpoint: bool) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, version = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            body = await reader.readexactly(int(headers.get("content-length", 0)))
            status, payload = route(method, path, body, program_endpoint)
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
            writer.write(b"HTTP/1.1 %d OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n"
                         % (status, len(data), b"connection: close\r\n" if close else b"") + data)
            await writer.drain()
            if close:
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def _run(port_pipe, program_endpoint: bool) -> None:
    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: _serve_connection(r, w, program_endpoint), "127.0.0.1", 0,
                                            backlog=4096)
        port_pipe.send(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(main())


class NativeStub:
    """``with NativeStub() as url:`` — the stub in its own process on a free loopback port; with
    ``program_endpoint`` it also offers ``/generate_program`` (and says so in ``/server_info``)."""

    def __init__(self, program_endpoint: bool = False):
        self.program_endpoint = program_endpoint

    def __enter__(self) -> str:
        context = multiprocessing.get_context("spawn")
        receiver, sender = context.Pipe(duplex=False)
        self._process = context.Process(target=_run, args=(sender, self.program_endpoint), daemon=True)
        self._process.start()
        if not receiver.poll(30):
            raise TimeoutError("the native stub did not start within 30 s")
        return f"http://127.0.0.1:{receiver.recv()}"

    def __exit__(self, *exc: Any) -> None:
        self._process.terminate()
        self._process.join(5)

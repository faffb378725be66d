"""`RuntimeEndpoint` when the server misbehaves, against small stub servers on loopback: killed mid-run, slow,
500s, 503 then success, malformed JSON, a dropped stream, nobody listening. Each fails with a clear error within
its timeout (or succeeds after safe retries), nothing hangs, and threads and sockets return to their baseline.
Also: requests from many programs are coalesced into native batch requests and split back correctly."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import time
from typing import Any, Awaitable, Callable

import pytest

import sglang_dsl as sgl
from backends.http import HttpClient, HttpConfig, HttpError

Handler = Callable[["Stub", str, dict], Awaitable[None]]


class Stub:
    """A raw HTTP/1.1 server on a loopback port in its own thread; ``handler(stub, path, body)`` answers each
    request by calling `respond`, `stream` or `hang` (or by closing the connection), except those for the
    ``info_paths``, answered with ``model_info`` or ``server_info``. ``requests`` logs them."""

    def __init__(self, handler: Handler, server_info: dict | None = None, model_info: dict | None = None,
                 info_paths: tuple[str, ...] = ("/get_model_info", "/server_info")):
        self.handler = handler
        self.server_info = server_info or {}
        self.model_info = model_info or {"model_path": "stub"}
        self.info_paths = info_paths
        self.requests: list[tuple[str, Any]] = []
        self.connections: set[asyncio.StreamWriter] = set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self.loop).result(5)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.add(writer)
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
                raw = await reader.readexactly(int(headers.get("content-length", 0)))
                path = head[0].split(" ")[1]
                body = json.loads(raw) if raw else {}
                self.requests.append((path, body))
                if path in self.info_paths:
                    await self.respond(writer, 200, self.model_info if "model" in path else self.server_info)
                else:
                    await self.handler(self, path, body, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.connections.discard(writer)
            writer.close()

    @staticmethod
    async def respond(writer: asyncio.StreamWriter, status: int, payload: Any) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        writer.write(b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                     % (status, len(data)) + data)
        await writer.drain()

    def kill(self) -> None:
        """Stop listening and reset every open connection, as a killed process would."""
        def kill_now() -> None:
            self.server.close()
            for writer in list(self.connections):
                writer.transport.abort()
        self.loop.call_soon_threadsafe(kill_now)

    def stop(self) -> None:
        self.kill()
        asyncio.run_coroutine_threadsafe(self.server.wait_closed(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def generate_count(self) -> int:
        return sum(path == "/generate" for path, _ in self.requests)


def answer(text: str = " ok", prompt: Any = None) -> dict:
    return {"text": text, "output_ids": [1], "meta_info": {
        "id": "x", "finish_reason": {"type": "length", "length": 1}, "prompt_tokens": 3, "completion_tokens": 1,
        "cached_tokens": 0}}


def _sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


@pytest.fixture
def baseline():
    """Threads and sockets before the test; after it, none of the test's may be left."""
    from sglang_dsl.lang import loop

    loop.event_loop()  # the interpreter's own thread is not the test's
    threads, sockets = {t.ident for t in threading.enumerate()}, _sockets()
    yield
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and (
            {t.ident for t in threading.enumerate()} - threads or _sockets() > sockets):
        time.sleep(0.05)
    assert {t.name for t in threading.enumerate() if t.ident not in threads} == set()
    assert _sockets() <= sockets


@pytest.fixture
def unplanned(monkeypatch):
    """run_batch without prefix prefills, so that the stub sees only the programs' own requests."""
    monkeypatch.setattr(sgl.global_config, "enable_precache_with_tracing", False)


@sgl.function
def one_gen(s):
    s += "Hello" + sgl.gen("x", max_tokens=4)


def _endpoint(stub: Stub, **options: Any) -> "sgl.RuntimeEndpoint":
    return sgl.RuntimeEndpoint(stub.url, **options)


def _run_and_fail(endpoint, match: str, within: float) -> sgl.ProgramError:
    start = time.perf_counter()
    with pytest.raises(sgl.ProgramError, match=match) as caught:
        one_gen.run(backend=endpoint)
    assert time.perf_counter() - start < within
    return caught.value


def test_a_server_killed_mid_run_fails_the_programs_clearly(baseline):
    started = threading.Event()

    async def hang(stub, path, body, writer):
        started.set()
        await asyncio.sleep(60)

    stub = Stub(hang)
    endpoint = _endpoint(stub, timeout=30)
    killer = threading.Thread(target=lambda: started.wait(10) and stub.kill())
    killer.start()
    states = one_gen.run_batch([{}] * 5, backend=endpoint)
    killer.join()
    assert started.is_set()
    for state in states:
        message = str(state.error())
        assert "node gen('x')" in message and stub.url + "/generate" in message
        assert "Server disconnected" in message or "ConnectError" in message or "ReadError" in message
    endpoint.shutdown()
    stub.stop()


def test_a_slow_server_times_out_with_the_url_and_the_limit(baseline):
    async def slow(stub, path, body, writer):
        await asyncio.sleep(5)

    stub = Stub(slow)
    endpoint = _endpoint(stub, timeout=0.5)
    _run_and_fail(endpoint, r"/generate failed: no answer within 0.5 s \(ReadTimeout", within=3)
    assert stub.generate_count() == 1  # a timed-out request may have been received: it is not repeated
    endpoint.shutdown()
    stub.stop()


def test_a_500_is_reported_with_the_status_and_the_servers_message_and_not_retried(baseline):
    async def broken(stub, path, body, writer):
        await stub.respond(writer, 500, {"error": {"message": "CUDA out of memory"}})

    stub = Stub(broken)
    endpoint = _endpoint(stub)
    _run_and_fail(endpoint, r"HttpError: http://127.0.0.1:\d+/generate answered 500: CUDA out of memory", within=2)
    assert stub.generate_count() == 1
    endpoint.shutdown()
    stub.stop()


def test_503_is_retried_with_backoff_until_the_server_answers(baseline):
    async def busy_then_ok(stub, path, body, writer):
        if stub.generate_count() < 3:
            await stub.respond(writer, 503, {"error": {"message": "warming up"}})
        else:
            await stub.respond(writer, 200, answer(" fine"))

    stub = Stub(busy_then_ok)
    endpoint = _endpoint(stub)
    assert one_gen.run(backend=endpoint)["x"] == " fine"
    assert stub.generate_count() == 3
    endpoint.shutdown()
    stub.stop()


def test_503_forever_gives_up_after_the_retries(baseline):
    async def busy(stub, path, body, writer):
        await stub.respond(writer, 503, {"error": {"message": "overloaded"}})

    stub = Stub(busy)
    endpoint = _endpoint(stub, max_retries=2)
    _run_and_fail(endpoint, r"answered 503: overloaded", within=5)
    assert stub.generate_count() == 3
    endpoint.shutdown()
    stub.stop()


def test_malformed_json_is_a_clear_error(baseline):
    async def garbage(stub, path, body, writer):
        await stub.respond(writer, 200, b'{"text": "unterminated')

    stub = Stub(garbage)
    endpoint = _endpoint(stub)
    _run_and_fail(endpoint, r"/generate failed: malformed JSON in the answer .*unterminated", within=2)
    endpoint.shutdown()
    stub.stop()


def test_a_dropped_stream_fails_the_reader_clearly(baseline):
    async def drop(stub, path, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        event = b'data: {"text": " par", "meta_info": {"finish_reason": null}}\n\n'
        writer.write(b"%x\r\n%s\r\n" % (len(event), event))
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.transport.abort()

    stub = Stub(drop)
    endpoint = _endpoint(stub)
    state = one_gen.run(backend=endpoint, stream=True)
    start = time.perf_counter()
    with pytest.raises(sgl.ProgramError, match=r"node gen\('x'\): HttpError: request to http://127.0.0.1:\d+/"
                                               r"generate failed: stream broke off"):
        list(state.text_iter())
    assert time.perf_counter() - start < 3
    assert stub.generate_count() == 1  # bytes had arrived: not retried
    endpoint.shutdown()
    stub.stop()


def test_nobody_listening_fails_after_retrying_the_connection(baseline):
    stub = Stub(lambda *a: asyncio.sleep(0))
    endpoint = _endpoint(stub)
    stub.stop()
    _run_and_fail(endpoint, r"ConnectError.*\(after 4 attempts\)", within=5)
    endpoint.shutdown()


def test_the_constructor_names_the_url_it_could_not_reach():
    with pytest.raises(HttpError, match=r"request to http://127.0.0.1:9/get_model_info failed: ConnectError"):
        sgl.RuntimeEndpoint("http://127.0.0.1:9", max_retries=0)


# ------------------------------------------------------------------------------ coalescing

async def generate_only(stub: Stub, path: str, body: dict, writer) -> None:
    """SGLang's ``/generate`` (one answer) and a 404 for every other route."""
    if path == "/generate":
        await stub.respond(writer, 200, answer())
    else:
        await stub.respond(writer, 404, {"detail": "Not Found"})


@pytest.mark.parametrize("info_paths", [("/get_model_info", "/get_server_info"), ("/model_info", "/server_info")],
                         ids=["older-sglang", "newest-names-only"])
def test_model_and_server_info_are_asked_where_the_server_answers_them(baseline, info_paths):
    stub = Stub(generate_only, server_info={"program_endpoint": True, "version": "old"}, info_paths=info_paths)
    try:
        with _endpoint(stub) as endpoint:
            assert endpoint.capabilities.segments and endpoint.server_info()["version"] == "old"
            assert one_gen.run(backend=endpoint)["x"] == " ok"
        asked = [path for path, _ in stub.requests if path != "/generate"]
        assert set(info_paths) <= set(asked) and len(asked) <= 5  # each name tried once, at most
    finally:
        stub.stop()


def test_a_server_without_server_info_is_used_through_sglangs_api_alone(baseline):
    stub = Stub(generate_only, info_paths=("/get_model_info",))
    try:
        with _endpoint(stub) as endpoint:
            assert not endpoint.capabilities.segments
            assert one_gen.run(backend=endpoint)["x"] == " ok"
            with pytest.raises(HttpError, match="/server_info answered 404"):
                endpoint.server_info()
    finally:
        stub.stop()


@pytest.mark.parametrize("cumulative", [False, True], ids=["per-chunk (ours)", "cumulative (SGLang's default)"])
def test_streamed_logprobs_add_up_whether_a_server_sends_them_per_chunk_or_cumulative(baseline, cumulative):
    """Three tokens " a", " b" (held back: no text), " c": the pieces carry each token's entry once, and the
    variable's meta all three, from a server of either kind."""
    entries = [[-0.5, 1, " a"], [-0.6, 2, " b"], [-0.7, 3, " c"]]
    texts = [" a", " a", " a b c"]

    async def frames(stub, path, body, writer):
        payload = b""
        for n, text in enumerate(texts, 1):
            meta = {"finish_reason": {"type": "length", "length": 3} if n == 3 else None, "completion_tokens": n,
                    "output_token_logprobs": entries[: n] if cumulative else entries[n - 1: n],
                    "output_token_logprobs_length": n}
            payload += b"data: %s\n\n" % json.dumps({"text": text, "meta_info": meta}).encode()
        await stub.respond(writer, 200, payload + b"data: [DONE]\n\n")

    @sgl.function
    def scored(s):
        s += "Hello" + sgl.gen("x", max_tokens=3, return_logprob=True)

    async def consume(endpoint):
        state = scored.run(backend=endpoint, stream=True)
        return state, [item async for item in state.text_async_iter("x", return_meta_data=True)]

    stub = Stub(frames)
    try:
        with _endpoint(stub) as endpoint:
            state, pieces = asyncio.run(consume(endpoint))
        assert [(piece, meta["output_token_logprobs"]) for piece, meta in pieces] == [
            (" a", entries[:1]), (" b c", entries[1:])]
        assert state.get_meta_info("x")["output_token_logprobs"] == entries
    finally:
        stub.stop()


def test_concurrent_requests_are_coalesced_and_split_back_in_order(baseline, unplanned):

    async def batched(stub, path, body, writer):
        if len(stub.requests) == 3:  # the first /generate: hold it so that the others queue up behind it
            await asyncio.sleep(0.3)
        prompts = body["text"]
        if isinstance(prompts, str):
            await stub.respond(writer, 200, answer(f" <{prompts[-2:]}>"))
        else:
            await stub.respond(writer, 200, [answer(f" <{p[-2:]}>") for p in prompts])

    stub = Stub(batched)
    endpoint = _endpoint(stub, max_http_requests=1)

    @sgl.function
    def numbered(s, i):
        s += f"Q{i:02d}" + sgl.gen("x", max_tokens=2 + i % 3)

    states = numbered.run_batch([{"i": i} for i in range(20)], backend=endpoint)
    assert [s["x"] for s in states] == [f" <{i:02d}>" for i in range(20)]
    generates = [body for path, body in stub.requests if path == "/generate"]
    assert len(generates) < 20  # most went out together
    batch = next(body for body in generates if isinstance(body["text"], list))
    assert [p["max_new_tokens"] for p in batch["sampling_params"]] == [
        2 + int(t[1:]) % 3 for t in batch["text"]]  # per-prompt parameters travel with their prompt
    endpoint.shutdown()
    stub.stop()


def test_a_refused_batch_is_resent_request_by_request(baseline, unplanned):
    async def picky(stub, path, body, writer):
        if len(stub.requests) == 3:
            await asyncio.sleep(0.3)
        prompts = body["text"]
        if isinstance(prompts, list):
            await stub.respond(writer, 400, {"error": {"message": "one of them is bad"}})
        elif "bad" in prompts:
            await stub.respond(writer, 400, {"error": {"message": f"prompt {prompts!r} is bad"}})
        else:
            await stub.respond(writer, 200, answer())

    stub = Stub(picky)
    endpoint = _endpoint(stub, max_http_requests=1)

    @sgl.function
    def prog(s, word):
        s += word + sgl.gen("x", max_tokens=2)

    states = prog.run_batch([{"word": w} for w in ["first", "good", "bad", "fine"]], backend=endpoint)
    assert [s.error() is None for s in states] == [True, True, False, True]
    assert "InvalidRequestError: prompt 'bad' is bad" in str(states[2].error())
    endpoint.shutdown()
    stub.stop()


def test_http_client_streams_events_and_closes_from_another_thread(baseline):
    async def events(stub, path, body, writer):
        payload = b"".join(b'data: {"n": %d}\n\n' % i for i in range(3)) + b"data: [DONE]\n\n"
        await stub.respond(writer, 200, payload)

    stub = Stub(events)
    client = HttpClient(stub.url, "key", config=HttpConfig(max_retries=0))
    from sglang_dsl.lang import loop

    async def collect():
        return [event async for event in client.stream_events("/x", {})]

    assert loop.run(collect()) == [{"n": 0}, {"n": 1}, {"n": 2}]
    client.close()
    stub.stop()


def test_a_program_request_aborted_midway_keeps_the_steps_that_ran(baseline):
    async def half(stub, path, body, writer):
        assert path == "/generate_program" and [step["type"] for step in body["steps"]] == ["text", "gen", "text", "gen"]
        first = body["steps"][1]
        await stub.respond(writer, 200, {
            "outputs": [{"node": first["node"], "name": first["name"], "value": " one", "meta_info": {}}],
            "text": body["text"] + " one", "finish_reason": {"type": "abort", "message": "out of memory"}})

    stub = Stub(half, server_info={"program_endpoint": True})
    endpoint = _endpoint(stub)
    assert endpoint.capabilities.segments

    @sgl.function
    def two(s):
        s += "A:" + sgl.gen("a", max_tokens=2) + " B:" + sgl.gen("b", max_tokens=2)

    (state,) = two.run_batch([{}], backend=endpoint)
    assert "node gen('b')" in str(state.error()) and "the server aborted the request: out of memory" in str(
        state.error())
    assert state["a"] == " one"
    assert stub.generate_count() == 0  # the whole program went as one request
    endpoint.shutdown()
    stub.stop()


def test_program_requests_are_coalesced_with_their_own_steps(baseline, unplanned):
    async def programs(stub, path, body, writer):
        if len(stub.requests) == 3:  # the first program: hold it so that the others queue up behind it
            await asyncio.sleep(0.3)

        def run(text, steps):
            gens = [step for step in steps if step["type"] == "gen"]
            number = (text + steps[0].get("text", ""))[1:3]  # the program's "Qnn" opens its first text
            return {"outputs": [{"node": gen["node"], "name": gen["name"], "value": f" <{number}>",
                                 "meta_info": {}} for gen in gens], "text": text, "finish_reason": None}

        if isinstance(body["text"], list):
            await stub.respond(writer, 200, [run(t, steps) for t, steps in zip(body["text"], body["steps"])])
        else:
            await stub.respond(writer, 200, run(body["text"], body["steps"]))

    stub = Stub(programs, server_info={"program_endpoint": True})
    endpoint = _endpoint(stub, max_http_requests=1)

    @sgl.function
    def numbered(s, i):
        s += f"Q{i:02d}" + sgl.gen("x", max_tokens=2 + i % 3) + "." + sgl.gen("y", max_tokens=1)

    states = numbered.run_batch([{"i": i} for i in range(20)], backend=endpoint)
    assert [(s["x"], s["y"]) for s in states] == [(f" <{i:02d}>", f" <{i:02d}>") for i in range(20)]
    assert all(path == "/generate_program" for path, _ in stub.requests[2:])  # after the two info requests
    bodies = [body for path, body in stub.requests if path == "/generate_program"]
    assert len(bodies) < 20  # most went out together
    batch = next(body for body in bodies if isinstance(body["text"], list))
    assert len(batch["steps"]) == len(batch["text"]) > 1
    for steps in batch["steps"]:  # each program's own steps: its "Qnn" and its gen's max_tokens 2 + nn % 3
        assert steps[1]["sampling_params"]["max_new_tokens"] == 2 + int(steps[0]["text"][1:3]) % 3
    endpoint.shutdown()
    stub.stop()


def test_a_named_chat_template_renders_roles_for_servers_that_send_none(baseline):
    async def echo(stub, path, body, writer):
        await stub.respond(writer, 200, answer(" Paris"))

    stub = Stub(echo)
    with pytest.raises(ValueError, match="unknown chat template 'nope'; known: chatml, default"):
        _endpoint(stub, chat_template_name="nope")
    endpoint = _endpoint(stub, chat_template_name="chatml")

    @sgl.function
    def chat(s):
        s += sgl.user("Capital of France?")
        s += sgl.assistant(sgl.gen("city", max_tokens=4))

    assert chat.run(backend=endpoint)["city"] == " Paris"
    sent = [body["text"] for path, body in stub.requests if path == "/generate"][-1]
    assert sent == "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n"
    endpoint.shutdown()
    stub.stop()


def test_images_go_as_image_data_to_a_multimodal_server(baseline):
    async def seen(stub, path, body, writer):
        await stub.respond(writer, 200, answer(" a cat"))

    stub = Stub(seen, model_info={"model_path": "stub-vl", "has_image_understanding": True})
    endpoint = _endpoint(stub, chat_template_name="llama-3-instruct")
    assert endpoint.capabilities.images
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(16))

    @sgl.function
    def describe(s):
        s += sgl.user(sgl.image(png) + "What is this?")
        s += sgl.assistant(sgl.gen("answer", max_tokens=4))

    assert describe.run(backend=endpoint)["answer"] == " a cat"
    body = [body for path, body in stub.requests if path == "/generate"][-1]
    assert "<|image|>What is this?" in body["text"]
    assert body["image_data"] == [base64.b64encode(png).decode()]
    endpoint.shutdown()
    stub.stop()

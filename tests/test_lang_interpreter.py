"""Interpreter semantics on a scripted backend (no model): state, roles, forks and joins, streaming, errors,
batches, and what reaches the backend."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import sglang_dsl as sgl
from backends.base import Backend, Capabilities, GenerateCall, Generation, SelectCall
from sglang_dsl.lang.choices import ChoicesDecision


class ChatML:
    image_token = "<image>"

    def render(self, messages, add_generation_prompt=False):
        head = "" if messages and messages[0]["role"] == "system" else "<|im_start|>system\nDefault.<|im_end|>\n"
        body = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return head + body + ("<|im_start|>assistant\n" if add_generation_prompt else "")


class Scripted(Backend):
    """Answers ``gen('x')`` with ``replies['x']`` (default ``<x>``) after ``delay`` seconds; records calls."""

    name = "scripted"

    def __init__(self, replies=None, delay=0.0, fail_on=None, images=False):
        self.replies, self.delay, self.fail_on = replies or {}, delay, fail_on
        self.capabilities = Capabilities(images=images, prefix_cache=True)
        self.calls: list = []
        self.cached: list[str] = []

    def chat_template(self):
        return ChatML()

    def _reply(self, call: GenerateCall) -> str:
        self.calls.append(call)
        if self.fail_on and self.fail_on in call.node:
            raise ValueError("the backend refused this request")
        key = call.node.split("'")[1] if "'" in call.node else "?"
        return self.replies.get(key, f"<{key}>")

    async def generate(self, call: GenerateCall) -> Generation:
        await asyncio.sleep(self.delay)
        text = self._reply(call)
        n = call.params.n or 1
        return Generation(text if n == 1 else [f"{text}{i}" for i in range(n)], {"prompt": call.prompt.text})

    async def stream(self, call: GenerateCall):
        text = self._reply(call)
        for i in range(1, len(text) + 1):
            await asyncio.sleep(self.delay)
            yield Generation(text[:i], {"output_token_logprobs": [[-0.5, 0, c] for c in text[:i]]}, i == len(text))

    async def select(self, call: SelectCall) -> ChoicesDecision:
        self.calls.append(call)
        return ChoicesDecision(call.choices[-1], {"scored": list(call.choices)})

    async def cache_prefix(self, prompt) -> None:
        self.cached.append(prompt.text)


@pytest.fixture
def backend():
    return Scripted()


def test_text_variables_and_what_the_backend_is_sent(backend):
    @sgl.function
    def qa(s, question):
        s += "Q: " + question + "\nA:" + sgl.gen("answer", max_tokens=8, stop="\n")
        s += " / " + sgl.select("verdict", ["yes", "no"])

    state = qa.run(question="why?", temperature=0.5, backend=backend)
    assert state.text() == "Q: why?\nA:<answer> / no"
    assert state["answer"] == "<answer>" and state["verdict"] == "no" and "answer" in state
    assert state.get_meta_info("verdict") == {"scored": ["yes", "no"]}
    gen_call = backend.calls[0]
    assert gen_call.prompt.text == "Q: why?\nA:"
    assert gen_call.sampling_params() == {"max_new_tokens": 8, "stop": ["\n"], "temperature": 0.5}
    assert gen_call.logprob_options() == {}


def test_roles_render_through_the_backends_template(backend):
    @sgl.function
    def chat(s):
        s += sgl.user("Hi")
        s += sgl.assistant(sgl.gen("reply"))
        with s.user():
            s += "More"
        s += s.assistant("Done")  # appends the turn once (SGLang would append it twice)

    state = chat.run(backend=backend)
    assert state.text() == ("<|im_start|>system\nDefault.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                            "<|im_start|>assistant\n<reply><|im_end|>\n<|im_start|>user\nMore<|im_end|>\n"
                            "<|im_start|>assistant\nDone<|im_end|>\n")
    assert state.messages() == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<reply>"},
                                {"role": "user", "content": "More"}, {"role": "assistant", "content": "Done"}]
    assert backend.calls[0].prompt.text.endswith("<|im_start|>assistant\n")


def test_misused_roles_fail_naming_the_node(backend):
    @sgl.function
    def nested(s):
        s += sgl.user_begin() + "a" + sgl.assistant_begin()

    with pytest.raises(sgl.ProgramError, match=r"program 'nested', node assistant_begin\(\): .*do not nest"):
        nested.run(backend=backend)


def test_images_are_refused_by_a_text_only_backend_and_listed_in_messages_otherwise(backend):
    @sgl.function
    def look(s):
        s += sgl.user(sgl.image(b"\x89PNG....") + "What is this?")

    with pytest.raises(sgl.UnsupportedFeatureError, match=r"node image\('<bytes>'\).*does not support images"):
        look.run(backend=backend)
    (message,) = look.run(backend=Scripted(images=True)).messages()
    assert message["content"][0] == {"type": "text", "text": "<image>What is this?"}
    assert message["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")


def test_var_scope_and_tool_use():
    @sgl.function
    def tool_use(s, lhs, rhs):
        s += "calculate(" + sgl.gen("expression", stop=")") + ") = "
        with s.var_scope("answer"):
            s += str(eval(s["expression"]))

    state = tool_use(lhs=257, rhs=983, backend=Scripted({"expression": "257*983"}))
    assert int(state["answer"]) == 257 * 983


def test_forks_run_concurrently_and_join_gathers_variables():
    backend = Scripted(delay=0.3)

    @sgl.function
    def tips(s):
        s += "Tips:" + sgl.gen("outline")
        forks = s.fork(4)
        forks += lambda i: f"\nTip {i}:" + sgl.gen("tip")
        forks.join()
        s += "\nSummary:" + sgl.gen("summary")

    start = time.perf_counter()
    state = tips.run(backend=backend)
    assert time.perf_counter() - start < 1.5  # 6 gens of 0.3 s: the four branches overlap
    assert state["tip"] == ["<tip>"] * 4
    assert backend.cached == ["Tips:<outline>"]  # the shared prefix was handed to the cache once
    assert {c.prompt.text for c in backend.calls if "tip" in c.node} == {f"Tips:<outline>\nTip {i}:" for i in range(4)}
    assert "fork[2] gen('tip')" in [c.node for c in backend.calls]


def test_concate_and_append_really_appends_the_branches_text(backend):
    @sgl.function
    def encode(s, contexts):
        forks = s.fork(len(contexts))
        forks += [f"Statement {i}: {c}\n" for i, c in enumerate(contexts)]
        forks.join(mode="concate_and_append")
        s += "ASSISTANT:" + sgl.gen("answer")

    state = encode.run(contexts=["a", "b", "c"], backend=backend)
    assert state.text() == "Statement 0: a\nStatement 1: b\nStatement 2: c\nASSISTANT:<answer>"


def test_copy_gathers_new_variables_without_touching_the_text(backend):
    @sgl.function
    def prog(s):
        s += "x"
        with s.copy() as branch:
            branch += sgl.gen("side")
        s += "y"

    state = prog.run(backend=backend)
    assert state.text() == "xy" and state["side"] == ["<side>"]


def test_program_defaults_and_node_settings_layer(backend):
    @sgl.function
    def prog(s):
        s += sgl.gen("a") + sgl.gen("b", temperature=0.2, n=2)

    state = prog.run(max_new_tokens=5, temperature=0.9, backend=backend)
    assert [c.sampling_params() for c in backend.calls] == [
        {"max_new_tokens": 5, "temperature": 0.9}, {"max_new_tokens": 5, "temperature": 0.2, "n": 2}]
    assert state["b"] == ["<b>0", "<b>1"] and state.text() == "<a><b>0"


def test_bind_and_positional_arguments(backend):
    @sgl.function(num_api_spec_tokens=8)
    def prog(s, a, b="B"):
        s += a + b

    bound = prog.bind(b="bound")
    assert bound.num_api_spec_tokens == 8
    assert bound.run("x", backend=backend).text() == "xbound"
    assert prog("x", backend=backend).text() == "xB"
    with pytest.raises(TypeError, match="no arguments c"):
        prog.bind(c=1)


def test_a_backend_failure_is_raised_by_run_naming_program_and_node():
    before = set(threading.enumerate())

    @sgl.function
    def prog(s):
        s += "a" + sgl.gen("first") + sgl.gen("second") + sgl.gen("third")

    with pytest.raises(sgl.ProgramError, match=r"program 'prog', node gen\('second'\): ValueError: the backend") as info:
        prog.run(backend=Scripted(fail_on="second"))
    assert isinstance(info.value.__cause__, ValueError)
    assert set(threading.enumerate()) - before <= {t for t in threading.enumerate() if t.name == "sglang-dsl-interpreter"}


def test_reads_after_a_failure_raise_instead_of_hanging():
    @sgl.function
    def prog(s):
        s += sgl.gen("bad")
        s += sgl.gen("after")

    state = prog.run(stream=True, backend=Scripted(fail_on="bad"))
    with pytest.raises(sgl.ProgramError, match="bad"):
        state["after"]
    with pytest.raises(sgl.ProgramError):
        state += "more"
    assert isinstance(state.error(), sgl.ProgramError)
    with pytest.raises(sgl.ProgramError):
        list(state.text_iter())


def test_a_body_exception_propagates_unchanged_and_cancels_queued_work():
    backend = Scripted(delay=0.2)
    boom = RuntimeError("boom")

    @sgl.function
    def prog(s):
        s += sgl.gen("a") + sgl.gen("b")
        raise boom

    with pytest.raises(RuntimeError) as info:
        prog.run(backend=backend)
    assert info.value is boom
    time.sleep(0.5)
    assert len(backend.calls) <= 1


def test_a_variable_can_be_read_before_the_rest_of_its_expression_ran():
    backend = Scripted(delay=0.4)

    @sgl.function
    def prog(s):
        s += sgl.gen("a") + sgl.gen("b") + sgl.gen("c")
        start = time.perf_counter()
        s["a"]
        s["elapsed"] = time.perf_counter() - start

    assert prog.run(backend=backend)["elapsed"] < 0.7


def test_unknown_variable_is_a_key_error(backend):
    @sgl.function
    def prog(s):
        s += sgl.gen("a")

    with pytest.raises(KeyError, match="no variable 'zzz'.*'a'"):
        prog.run(backend=backend)["zzz"]


def test_streaming_pieces_join_up_to_the_text():
    @sgl.function
    def prog(s):
        s += "Hi " + sgl.gen("greeting") + "!"

    backend = Scripted({"greeting": "héllo wörld"}, delay=0.01)
    state = prog.run(stream=True, backend=backend)
    pieces = list(state.text_iter("greeting"))
    assert "".join(pieces) == "héllo wörld" and len(pieces) > 1
    assert "".join(prog.run(stream=True, backend=backend).text_iter()) == "Hi héllo wörld!"

    async def consume():
        state = prog.run(stream=True, backend=backend)
        return [item async for item in state.text_async_iter("greeting", return_meta_data=True)]

    items = asyncio.run(consume())
    assert "".join(piece for piece, _ in items) == "héllo wörld"
    assert all(len(meta["output_token_logprobs"]) == len(piece) for piece, meta in items)


def test_reading_a_streamed_run_waits_for_variables_the_body_has_not_appended_yet():
    @sgl.function
    def slow_body(s):
        time.sleep(0.3)
        s += sgl.gen("late")

    state = slow_body.run(stream=True, backend=Scripted())
    assert state["late"] == "<late>"
    with pytest.raises(KeyError, match="never"):
        state["never"]


def test_text_iter_without_streaming_gives_everything_at_once(backend):
    @sgl.function
    def prog(s):
        s += "x" + sgl.gen("a")

    state = prog.run(backend=backend)
    assert list(state.text_iter()) == ["x<a>"] and list(state.text_iter("a")) == ["<a>"]


def test_run_batch_keeps_order_and_precaches_the_shared_prefix():
    backend = Scripted(delay=0.05)

    @sgl.function
    def prog(s, q):
        s += "Shared prefix. Q: " + q + sgl.gen("a")

    states = prog.run_batch([{"q": str(i)} for i in range(20)] + [["20"]], temperature=0, num_threads=8,
                            backend=backend, progress_bar=True)
    assert [s.text() for s in states] == [f"Shared prefix. Q: {i}<a>" for i in range(21)]
    assert backend.cached == ["Shared prefix. Q: "]  # the batch plan's shared prefix (character granularity)
    assert all(c.sampling_params() == {"temperature": 0} for c in backend.calls)
    assert prog.run_batch([], backend=backend) == []
    with pytest.raises(TypeError, match="does not match"):
        prog.run_batch([[1, 2]], backend=backend)


def test_run_batch_keeps_failures_in_the_states():
    @sgl.function
    def prog(s, q):
        s += q + sgl.gen(q)

    states = prog.run_batch([{"q": "ok"}, {"q": "bad"}], backend=Scripted(fail_on="bad"))
    assert states[0]["ok"] == "<ok>" and isinstance(states[1].error(), sgl.ProgramError)


def test_run_async():
    @sgl.function
    def prog(s, q):
        s += q + sgl.gen("a")

    async def main():
        return await asyncio.gather(*(prog.run_async(q=str(i), backend=Scripted()) for i in range(3)))

    assert [s.text() for s in asyncio.run(main())] == ["0<a>", "1<a>", "2<a>"]


def test_first_parameter_must_be_s():
    with pytest.raises(TypeError, match="must be named 's'"):
        sgl.function(lambda state: None)

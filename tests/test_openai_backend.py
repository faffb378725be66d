"""The OpenAI backend against a plain OpenAI-compatible stub (tests/openai_stub.py, loopback, no model): request
mapping, capabilities read from the server, unsupported features reported before any request, and API
speculative execution (``num_api_spec_tokens``) answering several gens from one request."""

from __future__ import annotations

import pytest

import sglang_dsl as sgl
from backends.openai import OpenAI, capabilities_for
from backends.openai_wire import echoed_entries, sampling_fields
from openai_stub import OpenAIStub
from runtime.server import BackgroundServer
from sglang_dsl.lang.params import SamplingParams

DOCUMENT = "Name: Alice\nBirthday: May 1\nJob: pilot\n"


@pytest.fixture(scope="module")
def stub():
    stub = OpenAIStub(DOCUMENT)
    with BackgroundServer(stub.app) as server:
        stub.url = server.url + "/v1"
        yield stub


def _connected(stub, chat: bool):
    stub.requests.clear()
    stub.bodies.clear()
    backend = OpenAI(stub.model, base_url=stub.url, api_key="sk-test", is_chat_model=chat)
    yield backend
    backend.shutdown()


@pytest.fixture
def completion(stub):
    yield from _connected(stub, chat=False)


@pytest.fixture
def chat(stub):
    yield from _connected(stub, chat=True)


def profile(spec=None):
    @sgl.function(num_api_spec_tokens=spec)
    def person(s):
        s += "Name:" + sgl.gen("name", stop="\n", max_tokens=8)
        s += "\nBirthday:" + sgl.gen("birthday", stop="\n", max_tokens=8)
        s += "\nJob:" + sgl.gen("job", stop="\n", max_tokens=8)

    return person


def test_a_server_that_advertises_nothing_gets_the_minimal_capabilities(completion, stub):
    assert completion.features == {"logprobs"} and stub.requests["models"] == 1
    caps = completion.capabilities
    assert caps.completion and not caps.select and not caps.regex and not caps.json_schema
    assert capabilities_for(frozenset({"echo_logprobs"}), chat=False).select
    chat_caps = capabilities_for(frozenset({"regex"}), chat=True)
    assert chat_caps.select and not chat_caps.completion and chat_caps.select_methods == {"token_length_normalized"}
    with pytest.raises(ValueError, match="unknown OpenAI server features grammar"):
        OpenAI(stub.model, base_url=stub.url, features=["grammar"])


def test_completion_programs_and_what_is_sent(completion, stub):
    state = profile().run(backend=completion, temperature=0)
    assert (state["name"], state["birthday"], state["job"]) == (" Alice", " May 1", " pilot")
    assert stub.requests["completions"] == 3
    assert stub.bodies[0] == {"model": "stub-model", "prompt": "Name:", "max_tokens": 8, "stop": ["\n"],
                              "temperature": 0}
    assert completion.token_usage.prompt_tokens == 15 and completion.token_usage.completion_tokens == 9
    streamed = profile().run(backend=completion, temperature=0, stream=True)
    assert "".join(streamed.text_iter()) == "Name: Alice\nBirthday: May 1\nJob: pilot"


def test_speculation_answers_several_gens_from_one_request(completion, stub):
    state = profile(spec=64).run(backend=completion, temperature=0)
    assert (state["name"], state["birthday"], state["job"]) == (" Alice", " May 1", " pilot")
    assert stub.requests["completions"] == 1  # three gens, one request
    assert stub.bodies[0] == {"model": "stub-model", "prompt": "Name:", "max_tokens": 64, "temperature": 0}
    assert state.get_meta_info("birthday")["speculated"] is True


def test_speculation_that_misses_falls_back_to_a_request(completion, stub):
    @sgl.function(num_api_spec_tokens=64)
    def person(s):
        s += "Name:" + sgl.gen("name", stop="\n", max_tokens=8)
        s += "\nHobby:" + sgl.gen("hobby", stop="\n", max_tokens=8)  # not what the model wrote next

    state = person.run(backend=completion)
    assert (state["name"], state["hobby"]) == (" Alice", "unknown")
    assert stub.requests["completions"] == 2


def test_chat_speculation_fills_the_gens_of_one_assistant_turn(chat, stub):
    @sgl.function(num_api_spec_tokens=64)
    def person(s):
        s += sgl.user("Describe a person.")
        s += sgl.assistant("Name:" + sgl.gen("name", stop="\n") + "\nBirthday:" + sgl.gen("birthday", stop="\n"))

    state = person.run(backend=chat)
    assert (state["name"], state["birthday"]) == (" Alice", " May 1")
    assert stub.requests["chat"] == 1
    assert stub.bodies[0]["messages"] == [{"role": "user", "content": "Describe a person."}]
    assert state.messages()[-1] == {"role": "assistant", "content": "Name: Alice\nBirthday: May 1"}


def test_unsupported_features_fail_before_any_request(chat, completion, stub):
    @sgl.function
    def constrained(s):
        s += sgl.user("A number?")
        s += sgl.assistant(sgl.gen("number", regex="[0-9]+", top_k=3))

    with pytest.raises(sgl.UnsupportedFeatureError) as caught:
        constrained.run(backend=chat)
    assert str(caught.value).startswith("program 'constrained', node gen('number'): backend OpenAI('stub-model' "
                                        f"at {stub.url}) does not support regex")
    assert "top_k" in str(caught.value)

    @sgl.function
    def pick(s):
        s += "Answer:" + sgl.select("answer", ["yes", "no"])

    with pytest.raises(sgl.UnsupportedFeatureError, match="node select\\('answer'\\).*does not support select"):
        pick.run(backend=completion)
    with pytest.raises(sgl.UnsupportedFeatureError, match="node gen\\('x'\\).*does not support completion"):
        sgl.function(lambda s: s.__iadd__("Plain text " + sgl.gen("x"))).run(backend=chat)
    assert stub.requests["chat"] == stub.requests["completions"] == 0


def test_past_the_trace_boundary_each_node_is_checked_as_it_runs(completion, stub):
    @sgl.function
    def dynamic(s):
        s += "Name:" + sgl.gen("name", stop="\n", max_tokens=8)
        if s["name"]:  # the trace ends here; the rest is checked as it runs
            s += "\nAge:" + sgl.gen("age", dtype=int)

    with pytest.raises(sgl.UnsupportedFeatureError, match="program 'dynamic', node gen\\('age'\\).*regex"):
        dynamic.run(backend=completion)
    assert stub.requests["completions"] == 1


def test_request_fields_and_echoed_logprobs():
    params = SamplingParams.build(max_new_tokens=5, stop="\n", temperature=0.5, top_k=3, min_new_tokens=2,
                                  json_schema={"type": "object"}, return_logprob=True, top_logprobs_num=2)
    assert sampling_fields(params, frozenset({"sampling"}), chat=True) == {
        "max_tokens": 5, "stop": ["\n"], "temperature": 0.5, "top_k": 3, "min_tokens": 2, "logprobs": True,
        "top_logprobs": 2,
        "response_format": {"type": "json_schema", "json_schema": {"name": "output", "schema": {"type": "object"}}}}
    fields = sampling_fields(SamplingParams.build(dtype=int, json_schema='{"type": "integer"}'),
                             frozenset({"json_schema", "regex"}), chat=False)
    assert fields == {"stop": [" ", "\n"], "regex": r"[-+]?[0-9]+[ \n]*", "json_schema": '{"type": "integer"}'}
    grammar = 'start: "yes" | "no"'
    assert sampling_fields(SamplingParams.build(grammar=grammar), frozenset({"ebnf"}), chat=True) == {"ebnf": grammar}
    assert capabilities_for(frozenset({"ebnf"}), chat=True).grammar
    assert not capabilities_for(frozenset({"regex", "json_schema"}), chat=True).grammar
    # "is" + " Paris" / BOS first: the token across the prompt's end counts with the choice
    choice = {"logprobs": {"tokens": ["<s>", "The", " capital", " is", " Paris"],
                           "token_logprobs": [None, -1.0, -2.0, -0.5, -0.25]}}
    assert echoed_entries(choice, "The capital is Paris", len("The capital is ")) == [(-0.25, None, " Paris")]
    assert echoed_entries(choice, "The capital is Paris", len("The capital is")) == [(-0.25, None, " Paris")]
    assert echoed_entries(choice, "The capital is Paris", len("The capital")) == [(-0.5, None, " is"),
                                                                                 (-0.25, None, " Paris")]


def test_chat_images_go_as_image_url_parts(chat, stub, tmp_path):
    path = tmp_path / "pixel.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n")

    @sgl.function
    def describe(s):
        s += sgl.user(sgl.image(str(path)) + "What is this?")
        s += sgl.assistant(sgl.gen("answer", max_tokens=2))

    assert describe.run(backend=chat)["answer"] == "Name: Alice\n"
    (user,) = stub.bodies[0]["messages"]
    assert user["role"] == "user" and user["content"][0] == {"type": "text", "text": "What is this?"}
    assert user["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")


def test_server_failures_are_clear_errors_naming_the_node():
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, PlainTextResponse

    app = FastAPI()
    answers = iter([JSONResponse({"error": {"message": "the GPU caught fire"}}, 500),
                    PlainTextResponse("{not json", 200), JSONResponse({"object": "nothing"}, 200)])

    @app.post("/v1/completions")
    async def completions():
        return next(answers)

    with BackgroundServer(app) as server:
        backend = OpenAI("m", base_url=server.url + "/v1", is_chat_model=False, features=(), max_retries=0,
                         timeout=10)

        @sgl.function
        def one(s):
            s += "Hello" + sgl.gen("x", max_tokens=4)

        for expected in ("answered 500: the GPU caught fire", "malformed JSON in the answer",
                         "answered without choices"):
            with pytest.raises(sgl.ProgramError, match=rf"program 'one', node gen\('x'\): .*{expected}"):
                one.run(backend=backend)
        backend.shutdown()


def test_speculation_store_answers_only_what_the_model_wrote():
    from backends.speculation import SpeculationStore, Speculated

    store = SpeculationStore(capacity=2)
    store.keep("ctx", Speculated("Name:", " Alice\nAge: 30\nJob: pilot", finished=False))
    assert store.take("ctx", "Name:", ["\n"]) == " Alice"
    assert store.take("ctx", "Name: Alice\nAge:", ["\n", " "]) == ""  # the earliest stop wins
    assert store.take("ctx", "Name: Alice\nAge:", ["\n"]) == " 30"
    assert store.take("ctx", "Name: Alice\nJob:", ["\n"]) is None  # the program's text differs from the model's
    assert store.take("other", "Name:", ["\n"]) is None
    assert store.take("ctx", "Name: Alice\nAge: 30\nJob:", ["\n"]) is None  # no stop yet, and not finished
    store.keep("ctx", Speculated("Q:", " done", finished=True))
    assert store.take("ctx", "Q:", ["\n"]) == " done"  # the model ended there itself
    store.keep("ctx", Speculated("R:", " x", finished=True))
    assert store.take("ctx", "Name:", ["\n"]) is None  # capacity 2: the oldest went


@pytest.mark.parametrize("limit", [64, 6])
def test_run_batch_keeps_max_concurrency_requests_in_flight(stub, limit):
    stub.delay, stub.most_in_flight = 0.2, 0
    stub.requests.clear()
    backend = OpenAI(stub.model, base_url=stub.url, is_chat_model=False, max_concurrency=limit)

    @sgl.function
    def name(s, i):
        s += "Name:" + sgl.gen("name", stop="\n", max_tokens=4)
        s += f" #{i}"

    try:
        states = name.run_batch([{"i": i} for i in range(40)], num_threads=8, backend=backend)
    finally:
        stub.delay = 0.0
        backend.shutdown()
    assert [s.text() for s in states] == [f"Name: Alice #{i}" for i in range(40)]
    assert stub.requests["completions"] == 40
    # the backend queues what is over its limit, so 8 body threads still keep more than 8 requests out
    if limit < 40:
        assert stub.most_in_flight == limit
    else:
        assert stub.most_in_flight >= 20

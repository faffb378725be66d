"""The language suite's programs (tests/test_lang_programs.py, unchanged) on the `OpenAI` backend against
``sglang-dsl serve``'s OpenAI API (BackgroundServer on a free loopback port, SmolLM2-135M-Instruct).

The completion model (``/v1/completions``) renders roles with ChatML as SmolLM2 does, so it runs every kind of
program: plain text, roles, select scored with echoed logprobs (all three choices methods), regex / dtype /
JSON-schema constraints through the server's extensions, forks, ``n`` samples, streaming with logprobs. The chat
model (``/v1/chat/completions``) runs the conversation programs; its select is a constrained generation."""

from __future__ import annotations

from dataclasses import replace

import pytest

import sglang_dsl as sgl
import test_lang_programs as suite
from runtime.args import RuntimeArgs
from runtime.engine import Engine
from runtime.server import BackgroundServer, create_app
from backends.templates import CHATML

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def server(smollm2_source):
    args = replace(RuntimeArgs(), model=str(smollm2_source.path), device="cpu", max_total_tokens=16384)
    with Engine(args) as engine, BackgroundServer(create_app(engine, served_model_name=MODEL)) as server:
        server.tokenizer = engine.tokenizer
        yield server


def _default_backend(server, chat: bool):
    """An OpenAI backend on ``server`` as the default backend while a test runs."""
    backend = sgl.OpenAI(MODEL, base_url=server.url + "/v1", api_key="unused", is_chat_model=chat,
                         chat_template=CHATML)
    backend.tokenizer = server.tokenizer  # read by test_gen_min_new_tokens
    previous = sgl.global_config.default_backend
    sgl.set_default_backend(backend)
    yield backend
    sgl.set_default_backend(previous)
    backend.shutdown()


@pytest.fixture
def completion(server):
    yield from _default_backend(server, chat=False)


@pytest.fixture
def chat(server):
    yield from _default_backend(server, chat=True)


def test_the_server_advertises_its_extensions(completion, chat):
    assert completion.features == chat.features == {"regex", "json_schema", "ebnf", "response_format", "sampling",
                                                    "logprobs", "echo_logprobs", "continue_final_message"}
    assert completion.capabilities.select and completion.capabilities.select_methods is None
    assert chat.capabilities.select and not chat.capabilities.completion


@pytest.mark.parametrize("program", [
    suite.test_few_shot_qa, suite.test_select, suite.test_select_heals_the_token_boundary, suite.test_expert_answer,
    suite.test_tool_use, suite.test_parallel_decoding, suite.test_n_samples, suite.test_stream_logprobs,
], ids=lambda program: program.__name__.removeprefix("test_"))
def test_completion_programs(completion, program):
    program(completion)


@pytest.mark.parametrize("method", [sgl.token_length_normalized, sgl.greedy_token_selection,
                                    sgl.unconditional_likelihood_normalized], ids=lambda m: m.name)
def test_completion_select_methods(completion, method):
    suite.test_select_methods_and_temperature(completion, method)


@pytest.mark.parametrize("program", [suite.test_regex, suite.test_dtype_gen, suite.test_decode_json_regex,
                                     suite.test_constraints_are_carried_to_the_runtime],
                         ids=lambda program: program.__name__.removeprefix("test_"))
def test_completion_constrained_programs(completion, program):
    if program is suite.test_constraints_are_carried_to_the_runtime:
        program(completion)
    else:
        program(completion, constrained=None)


@pytest.mark.parametrize("program", [suite.test_mt_bench, suite.test_stream_matches_the_non_streaming_text,
                                     suite.test_gen_min_new_tokens],
                         ids=lambda program: program.__name__.removeprefix("test_"))
def test_chat_programs(chat, program):
    program(chat)


def test_chat_continues_an_assistant_turn_that_has_text(chat):
    @sgl.function
    def capital(s):
        s += sgl.user("What is the capital of France?")
        s += sgl.assistant("The capital of France is" + sgl.gen("city", max_tokens=3, temperature=0))
        s += sgl.user("And of Spain?")
        s += sgl.assistant("The capital of Spain is" + sgl.select("spain", [" Madrid", " Paris", " London"]))

    state = capital.run()
    assert state.messages()[1]["content"] == "The capital of France is" + state["city"]
    assert state["city"].startswith(" Paris") and state["spain"] == " Madrid"


def test_chat_select_is_a_constrained_generation(chat):
    @sgl.function
    def verdict(s, statement):
        s += sgl.system("Answer with True or False.")
        s += sgl.user("Is this statement true? " + statement)
        s += sgl.assistant(sgl.select("answer", ["True", "False"]))

    state = verdict.run(statement="The capital of France is Paris.")
    assert state["answer"] in ("True", "False")
    assert state.get_meta_info("answer")["method"] == "constrained generation"
    assert state.messages()[-1] == {"role": "assistant", "content": state["answer"]}


def _profile(spec_tokens):
    @sgl.function(num_api_spec_tokens=spec_tokens)
    def profile(s):
        s += "Name: Alice Smith\nBirthday: March 3\nJob: teacher\n\nName: Bob Jones\nBirthday: July 9\nJob: pilot\n\n"
        s += "Name:" + sgl.gen("name", stop="\n", max_tokens=8)
        s += "\nBirthday:" + sgl.gen("birthday", stop="\n", max_tokens=8)
        s += "\nJob:" + sgl.gen("job", stop="\n", max_tokens=8)

    return profile


def test_speculation_takes_fewer_requests_than_gens_with_the_same_greedy_text(completion):
    plain = _profile(None).run(temperature=0)
    assert completion.token_usage.requests == 3
    plain_prompt_tokens = completion.token_usage.prompt_tokens
    completion.token_usage.reset()
    speculated = _profile(48).run(temperature=0)
    assert completion.token_usage.requests < 3
    assert completion.token_usage.prompt_tokens < plain_prompt_tokens  # SGLang's test_completion_speculative
    assert speculated.text() == plain.text()
    assert [speculated[v] for v in ("name", "birthday", "job")] == [plain[v] for v in ("name", "birthday", "job")]


def test_continue_final_message_needs_a_final_assistant_message(server):
    import httpx

    reply = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
        "model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "continue_final_message": True,
        "max_tokens": 1})
    assert reply.status_code == 400
    assert reply.json()["error"]["message"] == "continue_final_message needs the last message to be the assistant's"


def test_chat_speculation_that_misses_continues_the_turn(chat):
    @sgl.function(num_api_spec_tokens=24)
    def form(s):
        s += sgl.user("Fill in a form for a person from Paris.")
        s += sgl.assistant("Name:" + sgl.gen("name", stop="\n", max_tokens=6) + "\nCity:" +
                           sgl.gen("city", stop="\n", max_tokens=6))

    state = form.run(temperature=0)
    assert state.messages()[-1]["content"] == f"Name:{state['name']}\nCity:{state['city']}"
    # one speculative answer of the whole turn; the 135M model does not write "Name:" first, so each gen then
    # continues the turn itself
    assert chat.token_usage.requests == 3


# ---- structured output through the openai SDK itself ---------------------------------------------------------

SUM = 'start: NUMBER ("+" NUMBER)~0..3\nNUMBER: /[1-9][0-9]?/'


def test_the_openai_sdk_gets_structured_output(server):
    import json
    import re

    import lark
    import openai
    import pydantic

    class City(pydantic.BaseModel):
        name: str = pydantic.Field(max_length=20)
        country: str = pydantic.Field(max_length=20)
        population_millions: float

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    ask = [{"role": "user", "content": "Describe Paris as JSON."}]
    try:
        parsed = client.chat.completions.parse(model=MODEL, messages=ask, response_format=City, max_tokens=96,
                                               temperature=1.0, seed=3)
        assert isinstance(parsed.choices[0].message.parsed, City)
        anything = client.chat.completions.create(model=MODEL, messages=ask, max_tokens=48, temperature=1.0,
                                                  response_format={"type": "json_object"}, seed=3)
        assert anything.choices[0].finish_reason == "stop"
        assert isinstance(json.loads(anything.choices[0].message.content), dict)
        ask = [{"role": "user", "content": "Write a sum of numbers that equals 12."}]
        for extension, check in [({"ebnf": SUM}, lambda text: lark.Lark(SUM).parse(text)),
                                 ({"regex": r"[0-9]{2}\+[0-9]{2}"}, lambda text: re.fullmatch(r"[0-9]{2}\+[0-9]{2}",
                                                                                               text).group())]:
            reply = client.chat.completions.create(model=MODEL, messages=ask, max_tokens=24, temperature=1.0,
                                                   n=3, extra_body=extension)
            for choice in reply.choices:
                assert choice.finish_reason == "stop" and check(choice.message.content), choice.message.content
    finally:
        client.close()


def test_output_is_valid_when_the_tokens_run_out_over_http(server):
    """The token budget rule over both APIs: outputs cut short by max_tokens still parse, with finish_reason stop;
    length only where no complete output fits at all."""
    import json
    import re

    import httpx
    import jsonschema
    import openai

    schema = {"type": "object", "required": ["city", "story"],
              "properties": {"city": {"type": "string"}, "story": {"type": "string"}}}
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    try:
        reply = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Tell a long story about a city, as JSON."}],
            max_tokens=20, temperature=1.0, n=6, seed=5,
            response_format={"type": "json_schema", "json_schema": {"name": "story", "schema": schema}})
    finally:
        client.close()
    for choice in reply.choices:
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), schema)
    ipv4 = r"((25[0-5]|2[0-4]\d|[01]?\d\d?)\.){3}(25[0-5]|2[0-4]\d|[01]?\d\d?)"
    for budget, finish in ((8, "stop"), (5, "length")):
        body = {"text": "The server's IP address is ",
                "sampling_params": {"max_new_tokens": budget, "temperature": 1.0, "regex": ipv4}}
        out = httpx.post(server.url + "/generate", json=body, timeout=60).json()
        assert out["meta_info"]["finish_reason"]["type"] == finish
        assert finish == "length" or re.fullmatch(ipv4, out["text"])

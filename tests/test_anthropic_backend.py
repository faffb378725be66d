"""The Anthropic backend against a local stand-in of the Messages API (tests/anthropic_standin.py): system
prompt and turns, required max_tokens, stop sequences, streaming events, API errors, and the features the API
lacks reported before any request."""

from __future__ import annotations

import pytest

import sglang_dsl as sgl
from anthropic_standin import API_KEY, AnthropicStandIn
from runtime.server import BackgroundServer


@pytest.fixture(scope="module")
def standin():
    standin = AnthropicStandIn()
    with BackgroundServer(standin.app) as server:
        standin.url = server.url
        yield standin


@pytest.fixture
def claude(standin):
    standin.requests = 0
    standin.bodies.clear()
    backend = sgl.Anthropic("claude-test", base_url=standin.url, api_key=API_KEY, max_tokens=64)
    yield backend
    backend.shutdown()


@sgl.function
def mt_bench(s, question_1, question_2):
    s += sgl.system("You are a helpful assistant.")
    s += sgl.user(question_1)
    s += sgl.assistant(sgl.gen("answer_1"))
    with s.user():
        s += question_2
    with s.assistant():
        s += sgl.gen("answer_2", stop=" joke")


def test_turns_system_prompt_max_tokens_and_stop_sequences(claude, standin):
    state = mt_bench.run(question_1="Who are you?", question_2="Could you tell me a joke?", temperature=0.7)
    assert state["answer_1"] == "You said: Who are you?"
    assert state["answer_2"] == "You said: Could you tell me a"
    assert [m["role"] for m in state.messages()] == ["system", "user", "assistant", "user", "assistant"]
    first, second = standin.bodies
    assert first == {"model": "claude-test", "max_tokens": 64, "system": "You are a helpful assistant.",
                     "temperature": 0.7, "messages": [{"role": "user", "content": "Who are you?"}]}
    assert second["messages"][1:] == [{"role": "assistant", "content": "You said: Who are you?"},
                                      {"role": "user", "content": "Could you tell me a joke?"}]
    assert second["stop_sequences"] == [" joke"]
    assert state.get_meta_info("answer_2")["finish_reason"] == {"type": "stop", "matched": " joke"}
    short = mt_bench.run(question_1="One two three four five", question_2="x", max_new_tokens=3)
    assert short["answer_1"] == "You said: One " and short.get_meta_info("answer_1")["finish_reason"] == {
        "type": "length"}
    assert claude.token_usage.completion_tokens > 0


@pytest.fixture(autouse=True)
def default_backend(claude):
    previous = sgl.global_config.default_backend
    sgl.set_default_backend(claude)
    yield
    sgl.set_default_backend(previous)


def test_streaming_follows_the_message_events(claude):
    @sgl.function
    def qa(s, question):
        s += sgl.system("Be brief.")
        s += sgl.user(question)
        s += sgl.assistant(sgl.gen("answer"))

    state = qa.run(question="What is the capital of France?", stream=True)
    pieces = list(state.text_iter("answer"))
    assert len(pieces) > 3 and "".join(pieces) == "You said: What is the capital of France?"
    assert state.get_meta_info("answer")["finish_reason"] == {"type": "stop"}


def test_unsupported_features_fail_before_any_request(standin):
    @sgl.function
    def pick(s):
        s += sgl.user("Yes or no?")
        s += sgl.assistant(sgl.select("answer", ["yes", "no"]))

    @sgl.function
    def number(s):
        s += sgl.user("A number?")
        s += sgl.assistant(sgl.gen("n", dtype=int, return_logprob=True))

    @sgl.function
    def plain(s):
        s += "Once upon a time" + sgl.gen("story")

    with pytest.raises(sgl.UnsupportedFeatureError, match=r"program 'pick', node select\('answer'\): backend "
                                                          r"Anthropic\('claude-test'.*does not support select"):
        pick.run()
    with pytest.raises(sgl.UnsupportedFeatureError, match=r"node gen\('n'\).*regex.*also node gen\('n'\): logprobs"):
        number.run()
    with pytest.raises(sgl.UnsupportedFeatureError, match=r"node gen\('story'\).*completion.*outside any chat turn"):
        plain.run()
    with pytest.raises(sgl.UnsupportedFeatureError, match=r"node gen\('answer_1'\).*min_p"):
        mt_bench.run(question_1="a", question_2="b", min_p=0.2)
    assert standin.requests == 0


def test_api_errors_name_the_node_and_say_what_the_server_said(standin):
    wrong_key = sgl.Anthropic("claude-test", base_url=standin.url, api_key="sk-ant-wrong", max_retries=0)

    @sgl.function
    def two_users(s):
        s += sgl.user("Hi")
        s += sgl.user("Hi again")
        s += sgl.assistant(sgl.gen("answer"))

    with pytest.raises(sgl.ProgramError, match=r"program 'mt_bench', node gen\('answer_1'\).*401.*invalid x-api-key"):
        mt_bench.run(question_1="a", question_2="b", backend=wrong_key)
    with pytest.raises(sgl.ProgramError, match=r"node gen\('answer'\).*400.*roles must alternate"):
        two_users.run()
    wrong_key.shutdown()


def test_a_gen_after_text_in_an_assistant_turn_continues_it_as_a_prefill(standin):
    @sgl.function
    def prefilled(s):
        s += sgl.user("Paris")
        s += sgl.assistant("You said: " + sgl.gen("rest"))

    state = prefilled.run()
    assert state["rest"] == "Paris" and state.messages()[-1]["content"] == "You said: Paris"
    assert standin.bodies[-1]["messages"] == [{"role": "user", "content": "Paris"},
                                              {"role": "assistant", "content": "You said:"}]
    streamed = prefilled.run(stream=True)
    assert "".join(streamed.text_iter("rest")) == "Paris"

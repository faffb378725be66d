"""The capability check (`sglang_dsl.compiler.capabilities`): every node a backend cannot run is found on the
traced graph, and ``run`` / ``run_batch`` fail before the first request, naming the node."""

from __future__ import annotations

import pytest

import sglang_dsl as sgl
from backends.base import Backend, Capabilities, GenerateCall, Generation, SelectCall
from backends.templates import DEFAULT
from sglang_dsl.compiler.capabilities import missing_capabilities
from sglang_dsl.lang.choices import ChoicesDecision
from sglang_dsl.lang.params import SamplingParams

CHAT_ONLY = Capabilities(completion=False, regex=False, json_schema=False, grammar=False, logprobs=False,
                         select_methods=frozenset({"token_length_normalized"}),
                         sampling=frozenset({"max_new_tokens", "temperature", "stop"}))


class Counting(Backend):
    """Answers every gen with "ok" and every select with its first choice; counts the calls."""

    name = "counting"

    def __init__(self, capabilities: Capabilities):
        self.capabilities = capabilities
        self.calls = 0

    def chat_template(self):
        return DEFAULT

    async def generate(self, call: GenerateCall) -> Generation:
        self.calls += 1
        return Generation("ok", {})

    async def select(self, call: SelectCall) -> ChoicesDecision:
        self.calls += 1
        return ChoicesDecision(call.choices[0], {})


def found(program, capabilities, defaults=SamplingParams(), speculative=False, **arguments):
    graph = program.trace(**arguments)
    return [(m.label, m.capability) for m in missing_capabilities(graph, capabilities, defaults, speculative)]


@sgl.function
def chat_program(s):
    s += sgl.system("Be brief.")
    s += sgl.user("Hi" + sgl.gen("in_user", max_tokens=4))
    s += sgl.assistant(sgl.gen("at_start", max_tokens=4))
    s += sgl.assistant("Sure: " + sgl.gen("after_text", max_tokens=4))
    s += "loose text " + sgl.gen("outside", max_tokens=4)


def test_a_chat_only_backend_answers_only_at_the_start_of_an_assistant_turn():
    assert found(chat_program, CHAT_ONLY) == [
        ("gen('in_user')", "completion"), ("gen('after_text')", "completion"), ("gen('outside')", "completion")]
    # num_api_spec_tokens lets one answer fill later gens of an assistant turn, never gens outside one
    assert found(chat_program, CHAT_ONLY, speculative=True) == [
        ("gen('in_user')", "completion"), ("gen('outside')", "completion")]
    assert found(chat_program, Capabilities()) == []


def test_constraints_logprobs_and_sampling_parameters_including_the_run_defaults():
    @sgl.function
    def program(s):
        s += sgl.user("Q")
        with s.assistant():
            s += sgl.gen("number", dtype=int)
        s += sgl.user("Q")
        s += sgl.assistant(sgl.gen("person", json_schema={"type": "object"}, top_k=5))
        s += sgl.user("Q")
        s += sgl.assistant(sgl.gen("scored", return_logprob=True))
        s += sgl.user("Q")
        s += sgl.assistant(sgl.gen("sum", grammar='start: NUMBER "+" NUMBER\nNUMBER: /[0-9]+/'))

    assert found(program, CHAT_ONLY) == [
        ("gen('number')", "regex"), ("gen('person')", "json_schema"), ("gen('person')", "sampling parameters"),
        ("gen('scored')", "logprobs"), ("gen('sum')", "grammar")]
    # a run default applies to every gen that does not set it
    defaults = SamplingParams.build(min_p=0.1)
    assert [label for label, capability in found(program, CHAT_ONLY, defaults)
            if capability == "sampling parameters"] == ["gen('number')", "gen('person')", "gen('scored')",
                                                         "gen('sum')"]
    assert found(program, Capabilities()) == []


def test_selects_images_and_fork_branches():
    @sgl.function
    def program(s, path):
        s += sgl.user("Pick one.")
        s += sgl.assistant(sgl.select("plain", ["a", "b"]))
        s += sgl.user(sgl.image(path) + "Again.")
        s += sgl.assistant(sgl.select("greedy", ["a", "b"], choices_method=sgl.greedy_token_selection))
        s += sgl.user("In parallel.")
        with s.assistant():
            forks = s.fork(2)
            forks += sgl.gen("branch", max_tokens=4)  # each branch starts inside the empty assistant turn
            forks.join()

    problems = found(program, CHAT_ONLY, path=__file__)
    assert problems == [("image('" + __file__ + "')", "images"), ("select('greedy')", "select method")]
    assert ("select('plain')", "select") in found(program, Capabilities(select=False, images=True), path=__file__)


def test_run_fails_before_the_first_request_naming_every_node():
    backend = Counting(CHAT_ONLY)

    @sgl.function
    def program(s):
        s += sgl.user("What is 2 + 2?")
        s += sgl.assistant(sgl.gen("fine", max_tokens=4))
        s += "Answer: " + sgl.gen("answer", regex="[0-9]+")

    with pytest.raises(sgl.UnsupportedFeatureError) as caught:
        program.run(backend=backend)
    error = caught.value
    assert str(error).startswith("program 'program', node gen('answer'): backend counting does not support regex")
    assert "also node gen('answer'): completion" in str(error)
    assert [(m.label, m.capability) for m in error.missing] == [("gen('answer')", "regex"),
                                                              ("gen('answer')", "completion")]
    assert backend.calls == 0
    with pytest.raises(sgl.UnsupportedFeatureError, match="node gen\\('fine'\\).*min_p"):
        program.run_batch([{}, {}], min_p=0.5, backend=backend)
    assert backend.calls == 0


def test_programs_the_backend_can_run_are_untouched():
    backend = Counting(CHAT_ONLY)

    @sgl.function
    def program(s, question):
        s += sgl.user(question)
        s += sgl.assistant(sgl.gen("answer", max_tokens=4, stop="\n"))
        if s["answer"] == "ok":  # beyond the trace boundary: checked by the backend as it runs
            s += sgl.user("Thanks.")

    assert program.run(question="Hi?", backend=backend)["answer"] == "ok"
    assert [s["answer"] for s in program.run_batch([{"question": "a"}, {"question": "b"}], backend=backend)] == [
        "ok", "ok"]
    assert backend.calls == 3


def test_past_a_trace_boundary_the_interpreter_checks_each_node_before_calling_the_backend():
    backend = Counting(CHAT_ONLY)

    @sgl.function
    def program(s):
        s += sgl.user("Hi")
        s += sgl.assistant(sgl.gen("greeting", max_tokens=4))
        if s["greeting"] == "ok":  # the trace ends here
            s += sgl.user("Pick")
            s += sgl.assistant("Well, " + sgl.select("pick", ["a", "b"]))

    with pytest.raises(sgl.UnsupportedFeatureError, match=r"node select\('pick'\): backend counting does not "
                                                          r"support completion: .* after text already in"):
        program.run(backend=backend)
    assert backend.calls == 1

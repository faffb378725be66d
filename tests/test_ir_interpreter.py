"""The IR interpreter: a traced program run through its graph gives what running the program gives.

Both runs use `EchoBackend`, a deterministic fake: each generation is derived from the prompt and the sampling
parameters, each select picks a choice from a hash of the prompt, so equal prompts give equal results whatever
the order in which forked branches run.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping, Sequence

import pytest

from backends.base import Backend, Capabilities, GenerateCall, Generation, SelectCall
from sglang_dsl.ir import Graph, Interpreter, interpret
from sglang_dsl.ir.nodes import Gen
from sglang_dsl.lang.choices import ChoicesDecision
from sglang_dsl.lang.executor import Executor
from sglang_dsl.lang.function import function
from sglang_dsl.lang.params import SamplingParams
from sglang_dsl.lang.primitives import gen
from sglang_dsl.lang.state import ProgramState
from test_ir_programs import CONTEXTS, TRACES

_DTYPE_OUTPUT = {"int": "24", "float": "3.14", "str": '"Paris"', "bool": "True"}


class EchoTemplate:
    image_token = None

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False) -> str:
        turns = "".join(f"<|{m['role']}|>{m['content']}<|end|>\n" for m in messages)
        return turns + ("<|assistant|>" if add_generation_prompt else "")


class EchoBackend(Backend):
    name = "echo"
    capabilities = Capabilities(select=True, streaming=False)

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def chat_template(self) -> EchoTemplate:
        return EchoTemplate()

    async def generate(self, call: GenerateCall) -> Generation:
        self.prompts.append(call.prompt.text)
        params = call.params.given()
        digest = _digest(call.prompt.text + repr(sorted(params.items())))
        text = _DTYPE_OUTPUT.get(params.get("dtype", ""), f" {digest}")
        return Generation(text, {"prompt_tokens": len(call.prompt.text), "completion_tokens": 1})

    async def select(self, call: SelectCall) -> ChoicesDecision:
        self.prompts.append(call.prompt.text)
        choice = call.choices[int(_digest(call.prompt.text), 16) % len(call.choices)]
        return ChoicesDecision(choice, {"method": call.method.name})


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def fresh_state(graph: Graph, backend: Backend) -> ProgramState:
    return ProgramState(Executor(graph.name, backend, SamplingParams()))


# Values for the placeholders the golden traces leave open.
ARGUMENTS = {
    "question": "What is the capital of Japan?", "question_1": "Name a prime.", "question_2": "And another?",
    "statement": "Water is wet.", "topic": "staying healthy", "contexts": CONTEXTS,
}


def run_both(case: str) -> tuple[ProgramState, dict[str, ProgramState], Graph]:
    program, given = TRACES[case]
    graph = program.trace(**given)
    arguments = {name: ARGUMENTS[name] for name in graph.arguments}
    eager = program.run(backend=EchoBackend(), **given, **arguments)
    streams = interpret(graph, fresh_state(graph, EchoBackend()), arguments)
    streams["main"].sync()
    return eager, streams, graph


STATIC = sorted(case for case in TRACES if TRACES[case][0].trace(**TRACES[case][1]).boundary is None)


@pytest.mark.parametrize("case", STATIC)
def test_static_program_through_its_graph_matches_eager_execution(case: str) -> None:
    eager, streams, graph = run_both(case)
    assert graph.boundary is None
    ir = streams["main"]
    assert ir.text() == eager.text()
    assert ir.variables() == eager.variables()
    assert ir.messages() == eager.messages()


def test_fork_branches_match_eager_branches() -> None:
    @function
    def branches(s, topic):
        s += "Topic: " + topic + "\n"
        forks = s.fork(2)
        for i, branch in enumerate(forks):
            branch += f"Idea {i}:" + gen("idea", max_tokens=8)
        forks.join()
        s += "Best:" + forks[1]["idea"] + "\nAll:" + str(s["idea"])

    graph = branches.trace()
    eager_state = branches.run(backend=EchoBackend(), topic="tea")
    streams = interpret(graph, fresh_state(graph, EchoBackend()), {"topic": "tea"})
    assert streams["main"].text() == eager_state.text()
    assert streams["main"]["idea"] == eager_state["idea"]
    assert [streams[b]["idea"] for b in ("fork.0", "fork.1")] == eager_state["idea"]


def test_a_graph_with_a_boundary_runs_its_static_prefix() -> None:
    program, given = TRACES["react"]
    graph = program.trace(**given)
    assert graph.boundary is not None
    eager = program.run(backend=EchoBackend(), question=ARGUMENTS["question"])
    ir = interpret(graph, fresh_state(graph, EchoBackend()), {"question": ARGUMENTS["question"]})["main"]
    assert eager.text().startswith(ir.text())
    assert ir.variables() == {"action_1": eager["action_1"]}


def test_a_value_is_read_where_its_producer_left_it() -> None:
    """A branch reads the parent's ``x`` as it was at the fork, although the parent overwrote it later."""

    @function
    def overwrite(s):
        s += "A:" + gen("x", max_tokens=4)
        forks = s.fork(1)
        s += "B:" + gen("x", max_tokens=4)
        forks[0] += "Old:" + s["x"] + " / " + forks[0]["x"]
        forks.join()
        s += "End"

    graph = overwrite.trace()
    old_x = graph.stream_nodes("fork.0")[0].parts[3]
    assert old_x.node == "gen_x"
    eager = overwrite.run(backend=EchoBackend())
    ir = interpret(graph, fresh_state(graph, EchoBackend()))["main"]
    assert ir.text() == eager.text()


def test_missing_argument_is_a_type_error() -> None:
    graph = TRACES["few_shot_qa"][0].trace()
    with pytest.raises(TypeError, match="question"):
        interpret(graph, fresh_state(graph, EchoBackend()))


def test_a_subclass_overrides_one_node_kind() -> None:
    class Greedy(Interpreter):
        def gen(self, node: Gen) -> None:
            super().gen(Gen(name=node.name, stream=node.stream, var=node.var,
                            params=tuple(sorted({**dict(node.params), "temperature": 0.0}.items())),
                            constraint=node.constraint))

    backend = EchoBackend()
    graph = TRACES["decode_int"][0].trace()
    seen: list[dict[str, Any]] = []
    original = backend.generate

    async def spy(call: GenerateCall) -> Generation:
        seen.append(call.params.given())
        return await original(call)

    backend.generate = spy  # type: ignore[method-assign]
    Greedy(graph).run(fresh_state(graph, backend), {})["main"].sync()
    assert [p["temperature"] for p in seen] == [0.0, 0.0]

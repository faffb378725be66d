"""The tracer: placeholders, data-flow edges, and where dynamic boundaries go."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sglang_dsl.ir import Boundary, Gen, Join, Ref, ScopeBegin, Text
from sglang_dsl.ir.tracer import NeedsValue, TracingGroup, TracingState
from sglang_dsl.lang.choices import ChoicesSamplingMethod
from sglang_dsl.lang.function import function
from sglang_dsl.lang.primitives import gen, image, select, user
from sglang_dsl.lang.state import ProgramState, ProgramStateGroup


# -- placeholders ------------------------------------------------------------------------------------------------

@function
def greet(s, name, greeting="Hello"):
    s += greeting + ", " + name + "!" + gen("reply", max_tokens=8)


def test_arguments_not_given_become_placeholders_in_order() -> None:
    graph = greet.trace()
    assert graph.arguments == ("name", "greeting")
    assert [n.op for n in graph.nodes[:2]] == ["placeholder", "placeholder"]
    text = graph.nodes[2]
    assert isinstance(text, Text)
    assert text.parts == (Ref("greeting", "greeting"), ", ", Ref("name", "name"), "!")


def test_given_and_bound_arguments_are_constants() -> None:
    graph = greet.bind(greeting="Hi").trace(name="Ada")
    assert graph.arguments == ()
    assert graph.nodes[0] == Text(name="0", parts=("Hi, Ada!",))


def test_unknown_argument_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="colour"):
        greet.trace(colour="red")


# -- data flow ---------------------------------------------------------------------------------------------------

def test_text_built_from_variables_reads_them() -> None:
    @function
    def flow(s):
        s += "A:" + gen("a") + "\n"
        s += f"Echo {s['a']}; " + "%s and " % s["a"] + " / ".join([s["a"], "x"])
        s += user("Again: " + s["a"])

    graph = flow.trace()
    echo = graph.nodes[3]
    assert isinstance(echo, Text)
    assert echo.parts == ("Echo ", Ref("gen_a", "a"), "; ", Ref("gen_a", "a"), " and ", Ref("gen_a", "a"), " / x")
    assert [n.name for n in graph.users("gen_a")] == [echo.name, graph.nodes[5].name]
    assert graph.boundary is None


def test_branches_read_inherited_and_own_variables_and_the_parent_reads_branches() -> None:
    @function
    def tree(s):
        s += gen("topic", max_tokens=4)
        forks = s.fork(2)
        forks += lambda i: f"[{i}] on " + forks[i]["topic"] + ":" + gen("idea")
        forks.join()
        s += "First: " + forks[0]["idea"] + ", all: " + str(s["idea"])

    graph = tree.trace()
    branch_texts = [n for n in graph if isinstance(n, Text) and n.stream.startswith("fork.")]
    assert [t.parts[1] for t in branch_texts] == [Ref("gen_topic", "topic")] * 2
    join = graph["join"]
    assert isinstance(join, Join) and join.vars == ("idea",)
    assert graph.nodes[-1].reads == (Ref("gen_idea", "idea"), Ref("join", "idea"))


def test_copy_is_a_one_branch_fork_and_join() -> None:
    @function
    def draft(s):
        s += "Draft:"
        with s.copy() as scratch:
            scratch += gen("note")
        s += "Note: " + str(s["note"])

    graph = draft.trace()
    assert [(n.op, n.stream) for n in graph] == [
        ("text", "main"), ("fork", "main"), ("gen", "fork.0"), ("join", "main"), ("text", "main")]
    assert graph.nodes[-1].reads == (Ref("join", "note"),)


def test_a_gathered_list_concatenated_to_text_ends_the_trace_like_eager_fails() -> None:
    @function
    def bad(s):
        forks = s.fork(2)
        forks += gen("x")
        forks.join()
        s += "All: " + s["x"]

    boundary = bad.trace().boundary
    assert boundary is not None and boundary.reason == "+" and boundary.needs == (Ref("join", "x"),)


def test_a_gen_with_n_samples_is_a_list() -> None:
    @function
    def samples(s):
        s += gen("x", n=2)
        s += "Got " + str(s["x"])
        s += "First " + s["x"][0]

    graph = samples.trace()
    assert graph.nodes[1].reads == (Ref("gen_x", "x"),)
    assert graph.boundary is not None and graph.boundary.reason == "indexing"


# -- dynamic boundaries ------------------------------------------------------------------------------------------

def _boundary_of(body) -> Boundary:
    graph = function(body).trace()
    assert graph.boundary is not None, str(graph)
    graph.lint()
    return graph.boundary


@pytest.mark.parametrize("use, reason", [
    (lambda v: v == "yes", "=="),
    (lambda v: "yes" == v, "=="),
    (lambda v: v in ("a", "b"), "=="),
    (lambda v: bool(v), "truth test"),
    (lambda v: int(v), "int()"),
    (lambda v: float(v), "float()"),
    (lambda v: len(v), "len()"),
    (lambda v: [c for c in v], "iteration"),
    (lambda v: v.strip(), ".strip()"),
    (lambda v: v[0], "indexing"),
    (lambda v: {v: 1}, "hash()"),
    (lambda v: f"{v:>10}", "format spec '>10'"),
    (lambda v: repr(v), "repr()"),
])
def test_using_a_generated_value_in_python_ends_the_static_part(use, reason) -> None:
    def body(s):
        s += "Q:" + gen("x")
        use(s["x"])
        s += "never traced"

    boundary = _boundary_of(body)
    assert boundary.reason == reason
    assert boundary.needs == (Ref("gen_x", "x"),)
    assert boundary.line == 2


def test_the_boundary_comes_right_after_the_static_part() -> None:
    @function
    def branchy(s):
        s += "Pick:" + select("c", ["a", "b"])
        if s["c"] == "a":
            s += gen("more")

    graph = branchy.trace()
    assert [n.op for n in graph] == ["text", "select", "boundary"]
    assert graph.boundary.line == 3


@pytest.mark.parametrize("act, reason", [
    (lambda s: s.text(), "s.text()"),
    (lambda s: s.messages(), "s.messages()"),
    (lambda s: s.get_meta_info("x"), "s.get_meta_info('x')"),
    (lambda s: s.__setitem__("y", 1), "s['y'] = ... (a variable set from Python)"),
    (lambda s: "x" in s, "'x' in s"),
    (lambda s: s["nope"], "s['nope'], a variable the traced program has not set"),
])
def test_reading_results_or_setting_variables_ends_the_static_part(act, reason) -> None:
    def body(s):
        s += gen("x")
        act(s)

    boundary = _boundary_of(body)
    assert boundary.reason == reason


def test_what_the_ir_cannot_hold_ends_the_static_part() -> None:
    class Custom(ChoicesSamplingMethod):
        name = "custom"

    assert "custom choices method" in _boundary_of(lambda s: s.__iadd__(select("x", ["a"], 0.0, Custom()))).reason
    assert _boundary_of(lambda s: s.__iadd__(image(b"\x89PNG...."))).reason == "image from a <bytes> value, not a file"

    def param_from_value(s):
        s += gen("x")
        s += gen("y", stop=s["x"])

    boundary = _boundary_of(param_from_value)
    assert boundary.reason == "gen parameter stop depends on a run-time value"
    assert boundary.needs == (Ref("gen_x", "x"),)


def test_an_exception_ends_the_static_part_and_names_unused_reads() -> None:
    def body(s):
        s += gen("expr")
        s += "Result: " + str(eval(s["expr"]))

    boundary = _boundary_of(body)
    assert boundary.reason == "raised SyntaxError"
    assert boundary.needs == (Ref("gen_expr", "expr"),)


def test_program_except_clauses_do_not_swallow_the_signal() -> None:
    def body(s):
        s += gen("x")
        try:
            int(s["x"])
        except Exception:
            s += "fallback"

    assert _boundary_of(body).reason == "int()"


def test_a_boundary_inside_a_block_leaves_it_open() -> None:
    @function
    def scoped(s):
        with s.user():
            with s.var_scope("v"):
                s += gen("x")
                if s["x"]:
                    s += "!"

    graph = scoped.trace()
    assert [n.op for n in graph] == ["role_begin", "scope_begin", "gen", "boundary"]
    assert isinstance(graph.nodes[1], ScopeBegin)


def test_a_boundary_inside_a_branch_goes_on_the_main_stream() -> None:
    @function
    def forked(s):
        forks = s.fork(2)
        forks[1] += gen("x")
        if forks[1]["x"]:
            pass

    graph = forked.trace()
    assert graph.boundary.stream == "main" and graph.boundary.needs == (Ref("gen_x", "x"),)
    graph.lint()


def test_unnamed_gens_write_no_variable() -> None:
    graph = function(lambda s: s.__iadd__(gen() + gen("a"))).trace()
    gens = [n for n in graph if isinstance(n, Gen)]
    assert [(g.name, g.writes) for g in gens] == [("gen", ()), ("gen_a", ("a",))]


def test_need_value_is_not_an_exception() -> None:
    assert not issubclass(NeedsValue, Exception)


# -- surface and isolation ---------------------------------------------------------------------------------------

def _surface(cls: type) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_") or n in ("__iadd__", "__getitem__", "__setitem__",
                                                                    "__contains__", "__len__", "__iter__")}


def test_tracing_state_offers_the_program_state_surface() -> None:
    assert _surface(ProgramState) <= _surface(TracingState)
    # parent, states and commit_prefix are what the executors use, not what programs write
    assert _surface(ProgramStateGroup) <= _surface(TracingGroup) | {"parent", "states", "commit_prefix"}


def test_importing_the_ir_does_not_import_torch() -> None:
    code = "import sys, sglang_dsl.ir; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

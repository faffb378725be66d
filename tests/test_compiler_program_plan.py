"""The graph passes of `sglang_dsl.compiler.program_plan`: segments, forks, selects, constraints, JSON form."""

from __future__ import annotations

import sglang_dsl as sgl
from sglang_dsl.compiler.codec import CharacterCodec
from sglang_dsl.compiler.constraint_plan import constraint_specs
from sglang_dsl.compiler.program_plan import ProgramPlan, plan_forks, plan_program, plan_selects
from sglang_dsl.compiler.segments import mark_segments


@sgl.function
def chain(s, x):
    s += "A " + x + sgl.gen("a", max_tokens=2)
    s += " then " + sgl.gen("b", max_tokens=2)
    s += " echo " + s["a"]  # reads a value produced inside the segment
    s += sgl.gen("c", max_tokens=2, n=2)  # several samples: not fusable
    s += " end"


@sgl.function
def scoped(s):
    s += "x" + sgl.gen("a", max_tokens=1)
    with s.var_scope("v"):
        s += sgl.gen("b", max_tokens=1)


@sgl.function
def forked(s):
    s += "Start. "
    forks = s.fork(3)
    for i, branch in enumerate(forks):
        branch += f"Path {i}: " + sgl.gen("step", max_tokens=4)
    forks.join("concate_and_append")


@sgl.function
def constrained(s):
    s += "n=" + sgl.gen("a", dtype=int) + " m=" + sgl.gen("b", regex=r"[-+]?[0-9]+[ \n]*")  # SGLang's REGEX_INT
    s += " k=" + sgl.gen("c", regex="[a-z]")


def names(segment):
    return list(segment.nodes)


def test_segments_break_at_inner_reads_and_multi_sample_gens():
    graph = chain.trace()
    (first,) = mark_segments(graph)
    assert names(first) == [graph.nodes[1].name, "gen_a", graph.nodes[3].name, "gen_b"]
    assert first.calls == 2  # the echo of %gen_a and the n=2 gen start no segment of their own with a call


def test_segments_break_at_scopes():
    segments = mark_segments(scoped.trace())
    assert [s.calls for s in segments] == [1, 1]
    assert names(segments[1]) == ["gen_b"]


def test_fork_plan_names_branches_join_and_shared_text():
    (fork,) = plan_forks(forked.trace())
    assert fork.n == 3 and fork.commit_prefix
    assert fork.shared_text == "Path "  # the branches' constant heads differ after it
    assert fork.first_calls == ("gen_step", "gen_step_1", "gen_step_2")
    assert fork.join_mode == "concate_and_append" and fork.gathered == ()


def test_select_plan_counts_requests():
    @sgl.function
    def pick(s):
        s += "x" + sgl.select("a", ["1", "2", "3"])
        s += sgl.select("b", ["yes", "no"], choices_method=sgl.unconditional_likelihood_normalized)

    first, second = plan_selects(pick.trace(), codec=None)  # token counts unknown: a scoring row per choice
    assert (first.requests, first.unconditional) == (4, False)
    assert (second.requests, second.unconditional) == (5, True)
    # one token per character: the prefix's request scores "1", "2", "3" itself; "yes" and "no" need rows
    first, second = plan_selects(pick.trace(), codec=CharacterTokens())
    assert (first.requests, second.requests) == (1, 1 + 2 + 2)


class CharacterTokens(CharacterCodec):
    granularity = "token"


def test_constraints_are_deduplicated_with_dtype_as_its_regex():
    specs = constraint_specs(constrained.trace())
    assert [(spec.kind, nodes) for spec, nodes in specs.items()] == [
        ("regex", ("gen_a", "gen_b")), ("regex", ("gen_c",))]


def test_program_plan_requests_and_json_round_trip():
    plan = plan_program(forked.trace())
    assert plan.requests == 4 and plan.fused_requests == 4  # a prefill and three single-call branches
    assert ProgramPlan.from_json(plan.to_json()) == plan
    chained = plan_program(chain.trace())
    assert chained.requests == 4 and chained.fused_requests == 3
    assert chained.boundary is None

"""Graph invariants (`Graph.lint`), the text form's details, and exact JSON round-trips of random graphs."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sglang_dsl.ir import (
    Boundary, Constraint, Fork, Gen, Graph, GraphError, Image, Join, Node, Placeholder, Ref, RoleBegin, RoleEnd,
    ScopeBegin, ScopeEnd, Select, Text,
)
from sglang_dsl.ir.printer import literal


def _graph(*nodes: Node) -> Graph:
    return Graph("g", nodes)


# -- lint --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("nodes, message", [
    ((Text(name="a", parts=("x",)), Placeholder(name="q", arg="q")), "placeholders come first"),
    ((Text(name="a", parts=(Ref("g", "x"),)), Gen(name="g", var="x")), "not an earlier node"),
    ((Gen(name="g", var="x"), Text(name="a", parts=(Ref("g", "y"),))), "does not write"),
    ((Placeholder(name="q", arg="q"), Text(name="a", parts=(Ref("q", "r"),))), "placeholder %q"),
    ((Text(name="a", parts=("x",), stream="f.0"),), "stream is not open"),
    ((Fork(name="f", n=2), Join(name="j", fork="f", mode="gather_variable"), Text(name="a", stream="f.1",
                                                                                   parts=("x",))),
     "stream is not open"),
    ((Fork(name="f", n=1), Join(name="j", fork="f", mode="gather_variable", stream="f.0")), "not an open fork"),
    ((Fork(name="f", n=1), Join(name="j", fork="f", mode="zip")), "unknown join mode"),
    ((Fork(name="f", n=-1),), "negative number of branches"),
    ((Boundary(name="b", reason="r"), Text(name="a", parts=("x",))), "must be the last node"),
    ((Fork(name="f", n=1), Boundary(name="b", reason="r", stream="f.0")), "on the main stream"),
    ((RoleBegin(name="a", role="user"), RoleBegin(name="b", role="assistant")), "still open"),
    ((RoleBegin(name="a", role="user"), RoleEnd(name="b", role="assistant")), "closes role"),
    ((ScopeEnd(name="a", var="v"),), "closes scope"),
    ((Text(name="a", parts=("x", "y")),), "adjacent string parts"),
    ((Text(name="a", parts=()),), "empty text part"),
    ((Gen(name="g", var=None, params=(("top_p", 1.0), ("max_new_tokens", 3))),), "sorted by key"),
    ((Gen(name="g", var=None, constraint=Constraint("cfg", "x")),), "unknown constraint"),
])
def test_lint_rejects(nodes: tuple[Node, ...], message: str) -> None:
    with pytest.raises(GraphError, match=message):
        _graph(*nodes).lint()


def test_duplicate_names_are_rejected_on_append() -> None:
    with pytest.raises(GraphError, match="already used"):
        _graph(Text(name="a", parts=("x",)), Text(name="a", parts=("y",)))


def test_branches_inherit_the_open_role_but_not_scopes() -> None:
    _graph(RoleBegin(name="r", role="user"), Fork(name="f", n=1), RoleEnd(name="e", role="user", stream="f.0"),
           Join(name="j", fork="f", mode="gather_variable")).lint()
    with pytest.raises(GraphError, match="closes scope"):
        _graph(ScopeBegin(name="b", var="v"), Fork(name="f", n=1), ScopeEnd(name="e", var="v", stream="f.0")).lint()


def test_fresh_names() -> None:
    graph = Graph()
    assert graph.create(Text, parts=("a",)).name == "0"
    assert graph.create(Gen, "gen_my var!", var="my var!").name == "gen_my_var_"
    assert graph.create(Gen, "gen_my var!", var="my var!").name == "gen_my_var__1"
    graph.append(Text(name="3", parts=("x",)))
    assert graph.fresh_name() == "4"


# -- text form ---------------------------------------------------------------------------------------------------

def test_literals() -> None:
    assert literal("a\n\"é\"") == '"a\\n\\"é\\""'
    assert literal((".", "\n")) == '[".", "\\n"]'
    assert [literal(v) for v in (0, 0.0, True, None, 1e-05)] == ["0", "0.0", "True", "None", "1e-05"]


def test_the_stream_column_appears_only_with_branches() -> None:
    single = _graph(Text(name="0", parts=("x",)))
    assert str(single) == 'graph g():\n  %0 = text("x")\n'
    forked = _graph(Fork(name="fork", n=1), Gen(name="g", var="x", stream="fork.0"),
                    Join(name="join", fork="fork", mode="gather_variable", vars=("x",)),
                    Text(name="t", parts=(Ref("join", "x"), Ref("g", "x"))))
    assert str(forked) == (
        "graph g():\n"
        "  main    %fork = fork(1)\n"
        '  fork.0  %g = gen("x")\n'
        '  main    %join = join(%fork, mode="gather_variable", vars=["x"])\n'
        '  main    %t = text(%join["x"], %g)\n'
    )


# -- JSON --------------------------------------------------------------------------------------------------------

def test_json_rejects_other_formats_and_unknown_kinds() -> None:
    good = json.loads(_graph(Text(name="0", parts=("x",))).to_json())
    with pytest.raises(GraphError, match="format"):
        Graph.from_json(json.dumps({**good, "format": 99}))
    with pytest.raises(GraphError, match="'name'"):
        Graph.from_json(json.dumps({"format": 1, "nodes": []}))
    with pytest.raises(GraphError, match="must be an object"):
        Graph.from_json(json.dumps({**good, "nodes": [3]}))
    with pytest.raises(GraphError, match="unknown node kind"):
        Graph.from_json(json.dumps({**good, "nodes": [{"op": "loop", "name": "0"}]}))
    with pytest.raises(GraphError, match="malformed text"):
        Graph.from_json(json.dumps({**good, "nodes": [{"op": "text", "name": "0", "words": ["x"]}]}))


_names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=8)
_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
_scalar = st.one_of(st.integers(-2**53, 2**53), st.floats(allow_nan=False), st.booleans(), _text)
_param = st.one_of(_scalar, st.tuples(_text, _text))
_params = st.dictionaries(st.sampled_from(["max_new_tokens", "stop", "temperature", "top_p", "n", "seed"]),
                          _param, max_size=3).map(lambda d: tuple(sorted(d.items())))
_constraint = st.one_of(st.none(), st.builds(Constraint, st.sampled_from(["regex", "json_schema", "dtype"]), _text))


@st.composite
def graphs(draw: st.DrawFn) -> Graph:
    """A lint-clean graph: nodes drawn one at a time over the streams that are open at that point."""
    graph = Graph(draw(_names))
    for arg in draw(st.lists(_names, unique=True, max_size=2)):
        graph.create(Placeholder, arg, arg=arg)
    producers = [(n.name, n.arg) for n in graph if isinstance(n, Placeholder)]
    streams: dict[str, str | None] = {"main": None}  # open stream -> open role
    forks: list[Fork] = []
    for _ in range(draw(st.integers(0, 14))):
        stream = draw(st.sampled_from(sorted(streams)))
        role = streams[stream]
        action = draw(st.sampled_from(["text", "gen", "select", "role", "image", "fork", "join", "scope"]))
        if action == "text":
            parts = draw(st.lists(st.one_of(_text, st.sampled_from(producers) if producers else _text), min_size=1,
                                  max_size=4))
            merged: list[str | Ref] = []
            for part in parts:
                part = Ref(*part) if isinstance(part, tuple) else part
                if isinstance(part, str) and merged and isinstance(merged[-1], str):
                    merged[-1] += part
                else:
                    merged.append(part)
            graph.create(Text, stream=stream, parts=tuple(merged))
        elif action in ("gen", "select"):
            var = draw(st.one_of(st.none(), _names))
            if action == "gen":
                node = graph.create(Gen, f"gen_{var}", stream, var=var, params=draw(_params),
                                    constraint=draw(_constraint))
            else:
                node = graph.create(Select, f"select_{var}", stream, var=var,
                                    choices=tuple(draw(st.lists(_text, min_size=1, max_size=3))),
                                    method="token_length_normalized", temperature=draw(st.floats(0, 2)))
            producers += [(node.name, v) for v in node.writes]
        elif action == "role":
            if role is None:
                streams[stream] = graph.create(RoleBegin, stream=stream, role=draw(_names)).role
            else:
                graph.create(RoleEnd, stream=stream, role=role)
                streams[stream] = None
        elif action == "image":
            graph.create(Image, stream=stream, source=draw(_text))
        elif action == "fork":
            fork = graph.create(Fork, "fork", stream, n=draw(st.integers(1, 3)))
            forks.append(fork)
            streams.update((branch, role) for branch in fork.branches)
        elif action == "join" and any(f.stream == stream for f in forks):
            fork = next(f for f in reversed(forks) if f.stream == stream)
            forks.remove(fork)
            for branch in fork.branches:
                streams.pop(branch, None)
            mode = draw(st.sampled_from(["gather_variable", "concate_and_append"]))
            gathered = tuple(draw(st.lists(_names, unique=True, max_size=2))) if mode == "gather_variable" else ()
            node = graph.create(Join, "join", stream, fork=fork.name, mode=mode, vars=gathered)
            producers += [(node.name, v) for v in node.writes]
        elif action == "scope":
            var = draw(_names)
            graph.create(ScopeBegin, stream=stream, var=var)
            node = graph.create(ScopeEnd, f"scope_{var}", stream, var=var)
            producers.append((node.name, var))
    if draw(st.booleans()):
        needs = draw(st.lists(st.sampled_from(producers), max_size=2)) if producers else []
        graph.create(Boundary, "boundary", reason=draw(_text), needs=tuple(Ref(*p) for p in needs),
                     line=draw(st.one_of(st.none(), st.integers(0, 500))))
    return graph


@settings(max_examples=300, deadline=None)
@given(graphs())
def test_json_round_trip_is_exact_for_random_graphs(graph: Graph) -> None:
    graph.lint()
    again = Graph.from_json(graph.to_json())
    assert again == graph
    assert str(again) == str(graph)
    assert again.to_json() == graph.to_json()  # also tells True from 1, which == does not
    assert Graph.from_json(graph.to_json(indent=2)) == graph

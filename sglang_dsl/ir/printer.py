"""The canonical text form of a graph: one line per node, in program order, shaped like the program's own calls.

::

    graph expert_answer():
      %0 = text("Question: What is the capital of France?\\n")
      %gen_expert = gen("expert", stop=[".", "\\n"])
      %2 = text(".\\nFor example,", %gen_expert, " would answer that ")

A read is ``%producer`` (``%join["var"]`` for a variable gathered by a join); strings are JSON literals;
parameters are sorted by key. When the graph has fork branches, each line starts with its stream. The form is a
pure function of the graph, so it is diffable and pinned by golden tests; `sglang_dsl.ir.serialize` is the exact
machine form.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Callable

from sglang_dsl.ir.nodes import (
    Boundary, Fork, Gen, Image, Join, Node, Placeholder, Ref, RoleBegin, RoleEnd, ScopeBegin, ScopeEnd, Select,
    Text, Value,
)

if TYPE_CHECKING:
    from sglang_dsl.ir.graph import Graph


def format_graph(graph: Graph) -> str:
    """The whole graph: a ``graph name(arguments):`` header, then one indented line per node."""
    lines = [f"graph {graph.name}({', '.join(graph.arguments)}):"]
    streamed = len(graph.streams) > 1
    width = max((len(n.stream) for n in graph), default=0)
    for node in graph:
        column = f"{node.stream:<{width}}  " if streamed else ""
        lines.append(f"  {column}%{node.name} = {format_node(node, graph)}")
    return "\n".join(lines) + "\n"


def format_node(node: Node, graph: Graph) -> str:
    """The right-hand side of ``node``'s line: ``op(arguments)``."""
    args = _ARGS[type(node)](node, lambda ref: _ref(ref, graph))
    return f"{node.op}({', '.join(args)})"


def literal(value: Value) -> str:
    """A constant as printed: strings as JSON, tuples as ``[...]``, numbers, booleans and ``None`` as Python."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, tuple):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    return repr(value)


def _ref(ref: Ref, graph: Graph) -> str:
    if isinstance(graph[ref.node], Join):
        return f"%{ref.node}[{literal(ref.var)}]"
    return f"%{ref.node}"


def _named(var: str | None) -> list[str]:
    return [] if var is None else [literal(var)]


def _gen(node: Gen, ref: Callable[[Ref], str]) -> list[str]:
    args = _named(node.var) + [f"{k}={literal(v)}" for k, v in node.params]
    if node.constraint is not None:
        args.append(f"{node.constraint.kind}={literal(node.constraint.value)}")
    return args


def _join(node: Join, ref: Callable[[Ref], str]) -> list[str]:
    args = [f"%{node.fork}", f"mode={literal(node.mode)}"]
    return args + ([f"vars={literal(node.vars)}"] if node.vars else [])


def _boundary(node: Boundary, ref: Callable[[Ref], str]) -> list[str]:
    args = [literal(node.reason)]
    if node.needs:
        args.append("needs=[" + ", ".join(ref(r) for r in node.needs) + "]")
    return args + ([f"line={node.line}"] if node.line is not None else [])


_ARGS: dict[type, Callable[..., list[str]]] = {
    Placeholder: lambda n, ref: [literal(n.arg)],
    Text: lambda n, ref: [ref(p) if isinstance(p, Ref) else literal(p) for p in n.parts],
    Gen: _gen,
    Select: lambda n, ref: _named(n.var) + [
        f"choices={literal(n.choices)}", f"method={literal(n.method)}", f"temperature={literal(n.temperature)}"],
    RoleBegin: lambda n, ref: [literal(n.role)],
    RoleEnd: lambda n, ref: [literal(n.role)],
    Image: lambda n, ref: [literal(n.source)],
    Fork: lambda n, ref: [str(n.n)],
    Join: _join,
    ScopeBegin: lambda n, ref: [literal(n.var)],
    ScopeEnd: lambda n, ref: [literal(n.var)],
    Boundary: _boundary,
}

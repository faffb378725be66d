"""The IR interpreter: run a graph's static part on a program state, node by node.

`Interpreter.run` walks the nodes in program order and dispatches each on its kind: ``getattr(self, node.op)``,
so a subclass changes how one kind runs by overriding the method of that name (``gen``, ``fork``...). Each
method maps its node onto the program-state operation that eager execution would have performed (``state +=``
an expression, ``state.fork(n)``, ``group.join(mode)``), so a traced program run through its graph produces
the same text and variables as running the program itself. A `Boundary` stops the run: what follows it is not
static and needs the program's own code.
"""

from __future__ import annotations

from typing import Any, Mapping

from sglang_dsl.compiler.fork_prefix import branch_heads
from sglang_dsl.ir.graph import Graph, GraphError
from sglang_dsl.ir.nodes import (
    MAIN, Boundary, Fork, Gen, Image, Join, Node, Placeholder, Ref, RoleBegin, RoleEnd, ScopeBegin, ScopeEnd,
    Select, Text,
)
from sglang_dsl.ir.tracer import CHOICES_METHODS
from sglang_dsl.lang import exprs
from sglang_dsl.lang.params import SamplingParams
from sglang_dsl.lang.primitives import image
from sglang_dsl.lang.state import ProgramState, ProgramStateGroup


def interpret(graph: Graph, state: ProgramState,
              arguments: Mapping[str, Any] | None = None) -> dict[str, ProgramState]:
    """Run ``graph``'s static part on ``state`` (the main stream), with ``arguments`` for its placeholders.
    Returns the state of every stream reached, by stream name (``"main"`` is ``state``). Raises ``TypeError``
    if a placeholder's argument is missing."""
    return Interpreter(graph).run(state, arguments or {})


class Interpreter:
    """Runs one graph; one method per node kind, named after the kind's ``op``."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.arguments: Mapping[str, Any] = {}
        self.states: dict[str, ProgramState] = {}
        self.groups: dict[str, ProgramStateGroup] = {}
        self.writers: dict[str, dict[str, str]] = {}  # stream -> variable -> node that last wrote it there

    def run(self, state: ProgramState, arguments: Mapping[str, Any]) -> dict[str, ProgramState]:
        """Run every node up to the boundary (or the end); returns the streams' states."""
        self.arguments, self.states, self.groups, self.writers = arguments, {MAIN: state}, {}, {MAIN: {}}
        for node in self.graph:
            if isinstance(node, Boundary):
                break
            self.run_node(node)
            self.writers[node.stream].update((var, node.name) for var in node.writes)
        return dict(self.states)

    def run_node(self, node: Node) -> None:
        getattr(self, node.op)(node)

    def value(self, ref: Ref) -> Any:
        """The value ``ref`` reads: an argument, or the variable as the producing node left it (read from a
        stream where that node is still the variable's last writer: its own, or a branch that inherited it)."""
        producer = self.graph[ref.node]
        if isinstance(producer, Placeholder):
            return self.arguments[producer.arg]
        for stream in (producer.stream, *self.states):
            if self.writers.get(stream, {}).get(ref.var) == ref.node:
                return self.states[stream][ref.var]
        raise GraphError(f"no stream holds {ref.var!r} as written by %{ref.node}")

    def append(self, node: Node, expr: exprs.ExprLike) -> None:
        state = self.states[node.stream]
        state += expr

    # -- one method per kind --------------------------------------------------------------------------------

    def placeholder(self, node: Placeholder) -> None:
        if node.arg not in self.arguments:
            raise TypeError(f"{self.graph.name}() is missing the argument {node.arg!r}")

    def text(self, node: Text) -> None:
        self.append(node, "".join(p if isinstance(p, str) else str(self.value(p)) for p in node.parts))

    def gen(self, node: Gen) -> None:
        constraint = {node.constraint.kind: node.constraint.value} if node.constraint else {}
        self.append(node, exprs.Gen(node.var, SamplingParams(**dict(node.params), **constraint)))

    def select(self, node: Select) -> None:
        method = CHOICES_METHODS[node.method]
        self.append(node, exprs.Select(node.var, node.choices, node.temperature, method))

    def role_begin(self, node: RoleBegin) -> None:
        self.append(node, exprs.RoleBegin(node.role))

    def role_end(self, node: RoleEnd) -> None:
        self.append(node, exprs.RoleEnd(node.role))

    def image(self, node: Image) -> None:
        self.append(node, image(node.source))

    def scope_begin(self, node: ScopeBegin) -> None:
        self.append(node, exprs.VarScopeBegin(node.var))

    def scope_end(self, node: ScopeEnd) -> None:
        self.append(node, exprs.VarScopeEnd(node.var))

    def fork(self, node: Fork) -> None:
        group = self.states[node.stream].fork(node.n)
        group.commit_prefix(branch_heads(self.graph, node, self.arguments))
        self.groups[node.name] = group
        for branch, state in zip(node.branches, group):
            self.states[branch] = state
            self.writers[branch] = dict(self.writers[node.stream])

    def join(self, node: Join) -> None:
        self.groups.pop(node.fork).join(node.mode)

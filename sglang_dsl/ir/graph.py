"""`Graph`: the nodes of one program in program order, with queries over streams and data flow.

The node list is the order the program produced the nodes in (its trace), across all streams; restricted to one
stream it is that stream's program order. It is therefore also a valid execution order: every node comes after
the nodes it reads and after the fork that opened its stream. `Graph.lint` checks these invariants.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Iterator, NoReturn, TypeVar

from sglang_dsl.ir.nodes import (
    CONSTRAINT_KINDS, JOIN_MODES, MAIN, Boundary, Fork, Gen, Join, Node, Placeholder, Ref, RoleBegin, RoleEnd,
    ScopeBegin, ScopeEnd, Text,
)

N = TypeVar("N", bound=Node)


class GraphError(ValueError):
    """A graph breaks an invariant; the message names the node."""


class Graph:
    """A program's nodes, in program order. Nodes are immutable; the graph only grows by `append`/`create`.

    Two graphs are equal when their names and node sequences are equal; ``str(graph)`` is the canonical text
    form (`sglang_dsl.ir.printer`), ``graph.to_json()`` the exact serialized form (`sglang_dsl.ir.serialize`).
    """

    def __init__(self, name: str = "program", nodes: Iterable[Node] = ()) -> None:
        self.name = name
        self._nodes: list[Node] = []
        self._by_name: dict[str, Node] = {}
        for node in nodes:
            self.append(node)

    # -- building ---------------------------------------------------------------------------------------------

    def fresh_name(self, base: str | None = None) -> str:
        """An unused node name: ``base`` made an identifier (``base_1``, ``base_2``... if taken), or, without a
        base, the node's position (``0``, ``1``...; the next free number if that is taken)."""
        if base:
            base = re.sub(r"\W", "_", base, flags=re.ASCII)
            name, k = base, 0
            while name in self._by_name:
                k += 1
                name = f"{base}_{k}"
            return name
        k = len(self._nodes)
        while str(k) in self._by_name:
            k += 1
        return str(k)

    def append(self, node: N) -> N:
        """Add ``node`` at the end. Its name must be unused; other invariants are `lint`'s."""
        if node.name in self._by_name:
            raise GraphError(f"node name %{node.name} is already used")
        self._nodes.append(node)
        self._by_name[node.name] = node
        return node

    def create(self, kind: type[N], base: str | None = None, stream: str = MAIN, **fields: Any) -> N:
        """Append a new ``kind`` node on ``stream``, named `fresh_name` of ``base``."""
        return self.append(kind(name=self.fresh_name(base), stream=stream, **fields))

    # -- reading ----------------------------------------------------------------------------------------------

    @property
    def nodes(self) -> tuple[Node, ...]:
        return tuple(self._nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    def __getitem__(self, name: str) -> Node:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Graph):
            return NotImplemented
        return self.name == other.name and self._nodes == other._nodes

    __hash__ = None  # type: ignore[assignment]  # mutable container

    def __repr__(self) -> str:
        return f"<Graph {self.name}: {len(self._nodes)} nodes>"

    def __str__(self) -> str:
        from sglang_dsl.ir.printer import format_graph

        return format_graph(self)

    def to_json(self, indent: int | None = None) -> str:
        """The exact JSON form (`sglang_dsl.ir.serialize`)."""
        from sglang_dsl.ir.serialize import to_json

        return to_json(self, indent)

    @classmethod
    def from_json(cls, text: str) -> Graph:
        """The graph serialized in ``text``; ``Graph.from_json(g.to_json()) == g``."""
        from sglang_dsl.ir.serialize import from_json

        return from_json(text)

    @property
    def arguments(self) -> tuple[str, ...]:
        """Names of the program arguments left as placeholders, in order."""
        return tuple(n.arg for n in self._nodes if isinstance(n, Placeholder))

    @property
    def streams(self) -> tuple[str, ...]:
        """``"main"`` then each fork's branch streams, in the order the forks appear."""
        out = [MAIN]
        for node in self._nodes:
            if isinstance(node, Fork):
                out.extend(node.branches)
        return tuple(out)

    def stream_nodes(self, stream: str) -> tuple[Node, ...]:
        """The nodes of ``stream``, in its program order."""
        return tuple(n for n in self._nodes if n.stream == stream)

    def users(self, name: str) -> tuple[Node, ...]:
        """The nodes that read a value produced by the node ``name``."""
        return tuple(n for n in self._nodes if any(r.node == name for r in n.reads))

    @property
    def boundary(self) -> Boundary | None:
        """The dynamic boundary ending the static part, or ``None`` if the whole program is static."""
        last = self._nodes[-1] if self._nodes else None
        return last if isinstance(last, Boundary) else None

    # -- invariants -------------------------------------------------------------------------------------------

    def lint(self) -> None:
        """Raise `GraphError` unless: names are unique; placeholders come first, on the main stream, one per
        argument; every node is on an open stream (main, or a branch between its fork and the fork's join); every
        `Ref` names an earlier node that writes the variable read; roles do not nest and close the role open on
        their stream (a branch starts in its parent's role); a scope ends only if it began on its stream; each
        fork is joined at most once, from its own stream; a boundary
        is last and on the main stream; texts, gen parameters, constraints and join modes are well formed."""
        _Linter(self).run()


class _Linter:
    """One pass over the nodes, tracking the open streams and what each has open."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.seen: dict[str, Node] = {}
        self.open: dict[str, tuple[str | None, tuple[str, ...]]] = {MAIN: (None, ())}  # stream -> (role, scopes)
        self.forks: dict[str, Fork] = {}

    def fail(self, node: Node, message: str) -> NoReturn:
        raise GraphError(f"%{node.name} ({node.op} on {node.stream}): {message}")

    def run(self) -> None:
        nodes = self.graph.nodes
        args: set[str] = set()
        for i, node in enumerate(nodes):
            if node.name in self.seen:
                self.fail(node, "duplicate name")
            if node.stream not in self.open:
                self.fail(node, "stream is not open here")
            for ref in node.reads:
                self.check_ref(node, ref)
            if isinstance(node, Placeholder):
                if node.stream != MAIN or len(args) != i:
                    self.fail(node, "placeholders come first, on the main stream")
                if node.arg in args:
                    self.fail(node, f"argument {node.arg!r} has two placeholders")
                args.add(node.arg)
            elif isinstance(node, Boundary) and (i != len(nodes) - 1 or node.stream != MAIN):
                self.fail(node, "a boundary must be the last node, on the main stream")
            self.check_shape(node)
            self.step(node)
            self.seen[node.name] = node

    def check_ref(self, node: Node, ref: Ref) -> None:
        producer = self.seen.get(ref.node)
        if producer is None:
            self.fail(node, f"reads %{ref.node}, which is not an earlier node")
        elif isinstance(producer, Placeholder):
            if ref.var != producer.arg:
                self.fail(node, f"reads {ref.var!r} from placeholder %{ref.node} of {producer.arg!r}")
        elif ref.var not in producer.writes:
            self.fail(node, f"reads {ref.var!r}, which %{ref.node} does not write")

    def check_shape(self, node: Node) -> None:
        if isinstance(node, Text):
            if not node.parts or "" in node.parts:
                self.fail(node, "empty text part")
            if any(isinstance(a, str) and isinstance(b, str) for a, b in zip(node.parts, node.parts[1:])):
                self.fail(node, "adjacent string parts")
        elif isinstance(node, Gen):
            keys = [k for k, _ in node.params]
            if keys != sorted(set(keys)):
                self.fail(node, "params must be sorted by key, without repeats")
            if node.constraint is not None and node.constraint.kind not in CONSTRAINT_KINDS:
                self.fail(node, f"unknown constraint {node.constraint.kind!r}")
        elif isinstance(node, Fork) and node.n < 0:
            self.fail(node, "a fork cannot have a negative number of branches")
        elif isinstance(node, Join) and node.mode not in JOIN_MODES:
            self.fail(node, f"unknown join mode {node.mode!r}")

    def step(self, node: Node) -> None:
        role, scopes = self.open[node.stream]
        if isinstance(node, RoleBegin):
            if role is not None:
                self.fail(node, f"role {role!r} is still open")
            role = node.role
        elif isinstance(node, RoleEnd):
            if role != node.role:
                self.fail(node, f"closes role {node.role!r} but {role!r} is open")
            role = None
        elif isinstance(node, ScopeBegin):
            scopes = (*scopes, node.var)
        elif isinstance(node, ScopeEnd):
            if node.var not in scopes:
                self.fail(node, f"closes scope {node.var!r}, which is not open on this stream")
            scopes = tuple(v for v in scopes if v != node.var)
        elif isinstance(node, Fork):
            self.forks[node.name] = node
            for branch in node.branches:
                self.open[branch] = (role, ())
        elif isinstance(node, Join):
            fork = self.forks.pop(node.fork, None)
            if fork is None or fork.stream != node.stream:
                self.fail(node, f"joins %{node.fork}, which is not an open fork of this stream")
            for branch in fork.branches:
                self.open.pop(branch, None)
        self.open[node.stream] = (role, scopes)

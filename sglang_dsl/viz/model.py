"""The picture of a program graph that every output format draws: boxes, edges, and what each box says.

`build` turns a `Graph` (plus, optionally, its constant prefix and the stats of a run) into a `Picture`:

- one `Box` per node, with a ``style`` (its colour in every format), a title, a few short body lines (the
  constraint of a ``gen``, the choices of a ``select``, the text of a ``text`` node) and the full details for
  tooltips;
- `Edge`\\ s: ``next`` (program order on a stream), ``branch`` (a fork to the first node of each branch),
  ``merge`` (a branch's last node to its join) and ``data`` (a value read by a later node);
- the constant prefix: the nodes wholly inside it, and the node where it ends;
- the fused segments (`sglang_dsl.compiler.segments`) of more than one model call: straight-line runs that a
  segments-capable backend runs as one request.

Placeholders (program arguments) are boxes with data edges only: they are inputs, not steps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal, Mapping

from sglang_dsl.compiler.segments import Segment, mark_segments
from sglang_dsl.ir.graph import Graph
from sglang_dsl.ir.nodes import (
    Boundary, Fork, Gen, Image, Join, Node, Placeholder, RoleBegin, RoleEnd, ScopeBegin, ScopeEnd, Select,
    Text,
)
from sglang_dsl.ir.printer import format_node

if TYPE_CHECKING:
    from sglang_dsl.compiler.prefix import PrefixInfo
    from sglang_dsl.viz.overlay import NodeStats

EdgeKind = Literal["next", "branch", "merge", "data"]
LINE_CHARS = 34  # characters of a box's body line before it is cut with "…"
TEXT_LINES = 3  # lines of a text node shown in its box

# Fill colours by style, shared by all formats (the legend lists them in this order).
FILLS: dict[str, str] = {
    "text": "#f3f4f6", "gen": "#dbeafe", "select": "#ede9fe", "role": "#fef3c7", "fork": "#dcfce7",
    "join": "#dcfce7", "scope": "#f1f5f9", "image": "#fce7f3", "argument": "#ffffff", "boundary": "#fee2e2",
}
BORDER = "#475569"
PREFIX_BORDER = "#ea580c"  # nodes of the constant prefix
PREFIX_FILL = "#fff7ed"  # the band behind them
CONSTRAINED_BORDER = "#1d4ed8"  # gens with a regex / JSON schema / dtype


@dataclass(frozen=True)
class Box:
    """One node as drawn. ``lines``: short body lines; ``details``: ``(label, full text)`` pairs for tooltips."""

    name: str
    op: str
    stream: str
    style: str
    title: str
    lines: tuple[str, ...]
    details: tuple[tuple[str, str], ...]
    in_prefix: bool = False
    prefix_end: bool = False
    constrained: bool = False
    stats: NodeStats | None = None
    segment: int | None = None  # index in `Picture.segments`

    @property
    def label_lines(self) -> tuple[str, ...]:
        """What the box shows: title, body lines, and what the run did here (if it did something notable)."""
        if self.stats is None or not self.stats.notable:
            return (self.title, *self.lines)
        first, *rest = self.stats.lines()
        return (self.title, *self.lines, "▶ " + first, *rest)


@dataclass(frozen=True)
class Edge:
    """An arrow between two boxes (see the module docstring for the kinds); ``label``: ``branch i`` on a fork's
    branch edges, the variable read on data edges."""

    source: str
    target: str
    kind: EdgeKind
    label: str = ""


@dataclass(frozen=True)
class Picture:
    """Everything a format draws. ``boxes`` are in program order; ``prefix`` is the analysis, if given;
    ``segments`` are the fused segments of several model calls."""

    name: str
    arguments: tuple[str, ...]
    boxes: tuple[Box, ...]
    edges: tuple[Edge, ...]
    streams: tuple[str, ...]
    prefix: PrefixInfo | None = None
    run_seconds: float | None = None
    segments: tuple[Segment, ...] = ()

    def box(self, name: str) -> Box:
        return next(b for b in self.boxes if b.name == name)

    @property
    def prefix_summary(self) -> str:
        """One line about the constant prefix (empty without the analysis)."""
        if self.prefix is None:
            return ""
        tokens = "" if self.prefix.tokens is None else f", {self.prefix.tokens} tokens"
        return (f"constant prefix: {len(self.prefix.nodes)} nodes, {len(self.prefix.text)} characters{tokens}; "
                f"ends: {self.prefix.reason}")


def build(graph: Graph, prefix: PrefixInfo | None = None, stats: Mapping[str, NodeStats] | None = None,
          run_seconds: float | None = None) -> Picture:
    """The picture of ``graph``; ``prefix`` (`sglang_dsl.compiler.prefix.constant_prefix`) marks the shared
    prefix, ``stats`` (by node name, `sglang_dsl.viz.overlay`) adds what a run did at each node."""
    stats = stats or {}
    inside = set(prefix.nodes) if prefix is not None else set()
    end = prefix.end if prefix is not None else None
    segments = tuple(s for s in mark_segments(graph) if s.calls > 1)
    segment_of = {name: i for i, segment in enumerate(segments) for name in segment.nodes}
    boxes = tuple(_box(node, graph, node.name in inside, node.name == end, stats.get(node.name))
                  for node in graph)
    boxes = tuple(_in_segment(box, segments, segment_of.get(box.name)) for box in boxes)
    return Picture(graph.name, graph.arguments, boxes, _edges(graph), graph.streams, prefix, run_seconds, segments)


# -- boxes ----------------------------------------------------------------------------------------------------

def _box(node: Node, graph: Graph, in_prefix: bool, prefix_end: bool, stats: NodeStats | None) -> Box:
    style, title, lines = _describe(node)
    details = [("node", f"%{node.name} on {node.stream}"), ("ir", format_node(node, graph))]
    if in_prefix:
        details.append(("prefix", "inside the constant prefix (the same for every argument)"))
    if prefix_end:
        details.append(("prefix", "the constant prefix ends here"))
    if stats is not None:
        details.append(("run", stats.summary()))
    constrained = isinstance(node, Gen) and node.constraint is not None
    return Box(node.name, node.op, node.stream, style, title, tuple(lines), tuple(details), in_prefix, prefix_end,
               constrained, stats)


def _in_segment(box: Box, segments: tuple[Segment, ...], index: int | None) -> Box:
    if index is None:
        return box
    note = (f"fused segment {index + 1}: with a segments backend, one request for its "
            f"{segments[index].calls} model calls")
    return replace(box, segment=index, details=(*box.details, ("segment", note)))


def _describe(node: Node) -> tuple[str, str, list[str]]:
    """``(style, title, body lines)`` of a node."""
    if isinstance(node, Placeholder):
        return "argument", f"argument {node.arg}", []
    if isinstance(node, Text):
        return "text", "text", _text_lines(_spelled(node))
    if isinstance(node, Gen):
        return "gen", _named("gen", node.var), _gen_lines(node)
    if isinstance(node, Select):
        return "select", _named("select", node.var), [cut("choices: " + " | ".join(node.choices)),
                                                        cut(f"{node.method}, t={node.temperature:g}")]
    if isinstance(node, (RoleBegin, RoleEnd)):
        return "role", (f"<{node.role}>" if isinstance(node, RoleBegin) else f"</{node.role}>"), []
    if isinstance(node, Image):
        return "image", "image", [cut(node.source)]
    if isinstance(node, Fork):
        return "fork", f"fork ×{node.n}", ["branches share the text so far"]
    if isinstance(node, Join):
        lines = [cut("gathers " + ", ".join(node.vars))] if node.vars else []
        return "join", f"join ({node.mode})", lines
    if isinstance(node, (ScopeBegin, ScopeEnd)):
        return "scope", f"scope {node.var} {'begins' if isinstance(node, ScopeBegin) else 'ends'}", []
    if isinstance(node, Boundary):
        where = [] if node.line is None else [f"at line +{node.line}"]
        return "boundary", "dynamic boundary", [cut(node.reason), *where]
    raise TypeError(f"no picture for {type(node).__name__}")


def _gen_lines(node: Gen) -> list[str]:
    lines = []
    if node.constraint is not None:
        lines.append(cut(f"{node.constraint.kind}: {_compact(node.constraint)}"))
    if node.params:
        lines.append(cut(", ".join(f"{k}={json.dumps(v)}" for k, v in node.params)))
    return lines


def _compact(constraint) -> str:
    if constraint.kind != "json_schema":
        return constraint.value
    try:
        return json.dumps(json.loads(constraint.value), separators=(",", ":"))
    except ValueError:
        return constraint.value


def _named(kind: str, var: str | None) -> str:
    return kind if var is None else f'{kind} "{var}"'


def _spelled(node: Text) -> str:
    """A text node's content with each value read written ``{name}``."""
    return "".join(p if isinstance(p, str) else "{" + p.var + "}" for p in node.parts)


def _text_lines(text: str, most: int = TEXT_LINES) -> list[str]:
    """The first ``most`` lines of ``text``, each `cut`, then how many more there are."""
    lines = text.splitlines(keepends=True)
    shown = [cut(line) for line in lines[:most]]
    return shown + ([f"… {len(lines) - most} more lines"] if len(lines) > most else [])


def cut(text: str, width: int = LINE_CHARS) -> str:
    """``text`` on one line (newlines shown as ⏎), at most ``width`` characters."""
    flat = text.replace("\r", "").replace("\n", "⏎")
    return flat if len(flat) <= width else flat[: width - 1] + "…"


# -- edges ----------------------------------------------------------------------------------------------------

def _edges(graph: Graph) -> tuple[Edge, ...]:
    joins = {n.fork: n for n in graph if isinstance(n, Join)}
    edges: list[Edge] = []
    for stream in graph.streams:
        steps = [n for n in graph.stream_nodes(stream) if not isinstance(n, Placeholder)]
        for before, after in zip(steps, steps[1:]):
            if not (isinstance(before, Fork) and before.n and joins.get(before.name) is after):
                edges.append(Edge(before.name, after.name, "next"))
    for fork in (n for n in graph if isinstance(n, Fork)):
        join = joins.get(fork.name)
        for i, branch in enumerate(fork.branches):
            nodes = graph.stream_nodes(branch)
            first, last = (nodes[0].name, nodes[-1].name) if nodes else (None, None)
            edges.append(Edge(fork.name, first or (join.name if join else fork.name), "branch", f"branch {i}"))
            if join is not None and last is not None:
                edges.append(Edge(last, join.name, "merge"))
    for node in graph:
        for ref in dict.fromkeys(node.reads):
            edges.append(Edge(ref.node, node.name, "data", ref.var))
    return tuple(e for e in edges if e.source != e.target)

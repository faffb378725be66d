"""Segment boundaries: the straight-line runs of text / gen / select nodes that one runtime request can execute.

`mark_segments` splits each stream's nodes, in program order, into maximal runs of `Text`, `Gen` and `Select`
nodes with at least one model call (a gen or select). A run ends before any other kind (roles, forks, joins,
images, variable scopes, the boundary) and before a node the engine could not run from the segment's start:

- a text reading a value produced *inside* the segment (its text is unknown when the request is sent; values
  produced before the segment are substituted by the interpreter);
- a gen asking for several samples (``n > 1``: there is no single continuation to append).

A backend with ``Capabilities.segments`` runs each segment as one request (`Backend.run_segment`, see
docs/compiler.md); a segment of one model call is an ordinary request.
"""

from __future__ import annotations

from dataclasses import dataclass

from sglang_dsl.ir.graph import Graph
from sglang_dsl.ir.nodes import Gen, Node, Select, Text


@dataclass(frozen=True)
class Segment:
    """``nodes`` (names, in order) on ``stream``, run as one request making ``calls`` model calls."""

    stream: str
    nodes: tuple[str, ...]
    calls: int


def mark_segments(graph: Graph) -> tuple[Segment, ...]:
    """The segments of ``graph``, stream by stream (in `Graph.streams` order), each in program order."""
    segments: list[Segment] = []
    for stream in graph.streams:
        run: list[Node] = []
        for node in graph.stream_nodes(stream):
            if not _fusable(node):
                _close(segments, stream, run)
                continue
            if isinstance(node, Text) and any(ref.node in {n.name for n in run} for ref in node.reads):
                _close(segments, stream, run)
            run.append(node)
        _close(segments, stream, run)
    return tuple(segments)


def _fusable(node: Node) -> bool:
    if isinstance(node, Gen):
        return dict(node.params).get("n", 1) in (None, 1)
    return isinstance(node, (Text, Select))


def _close(segments: list[Segment], stream: str, run: list[Node]) -> None:
    """End ``run``: it becomes a segment (without trailing texts, which the next request carries) if it makes a
    model call."""
    while run and isinstance(run[-1], Text):
        run.pop()
    calls = sum(isinstance(n, (Gen, Select)) for n in run)
    if calls:
        segments.append(Segment(stream, tuple(n.name for n in run), calls))
    run.clear()

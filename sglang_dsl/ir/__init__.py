"""The IR of LM programs: typed nodes in a graph, its canonical text form and JSON round-trip.

- `nodes`: the node kinds (frozen dataclasses) and `Ref`, a data-flow edge.
- `graph`: `Graph`, the nodes in program order on their streams, with `Graph.lint`.
- `printer` / `serialize`: the canonical text form (``str(graph)``) and the exact JSON form.
- `tracer`: `trace` a program (``SglFunction.trace``) into a graph, up to a dynamic boundary.
- `interpreter`: `interpret` a graph's static part on a program state.
"""

from sglang_dsl.ir.graph import Graph, GraphError
from sglang_dsl.ir.interpreter import Interpreter, interpret
from sglang_dsl.ir.nodes import (
    MAIN, Boundary, Constraint, Fork, Gen, Image, Join, Node, Placeholder, Ref, RoleBegin, RoleEnd, ScopeBegin,
    ScopeEnd, Select, Text,
)
from sglang_dsl.ir.tracer import trace

__all__ = [
    "Graph", "GraphError", "Interpreter", "interpret", "trace", "MAIN", "Node", "Ref", "Constraint", "Placeholder",
    "Text", "Gen", "Select", "RoleBegin", "RoleEnd", "Image", "Fork", "Join", "ScopeBegin", "ScopeEnd", "Boundary",
]

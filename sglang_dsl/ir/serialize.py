"""The exact JSON form of a graph: ``from_json(to_json(g)) == g`` for every graph ``g``.

``{"format": 1, "name": ..., "nodes": [...]}``; each node is ``{"op", "name", "stream", <its fields>}`` with its
fields in declaration order. A `Ref` is ``{"node", "var"}``, a `Constraint` ``{"kind", "value"}``, a gen's params
a JSON object (in the node's key order); tuples become lists. Loading rebuilds tuples, checks the format version
and kinds, and lints the graph.
"""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any, Callable

from sglang_dsl.ir.graph import Graph, GraphError
from sglang_dsl.ir.nodes import NODE_KINDS, Constraint, Node, Ref, Value

FORMAT = 1


def to_json(graph: Graph, indent: int | None = None) -> str:
    """``graph`` as JSON text (non-ASCII characters kept as they are)."""
    return json.dumps(to_dict(graph), ensure_ascii=False, indent=indent)


def from_json(text: str) -> Graph:
    """The graph ``text`` holds. Raises `GraphError` if it is not a well-formed, lint-clean graph."""
    return from_dict(json.loads(text))


def to_dict(graph: Graph) -> dict[str, Any]:
    """``graph`` as plain JSON-able data."""
    return {"format": FORMAT, "name": graph.name, "nodes": [_node_to_dict(n) for n in graph]}


def from_dict(data: dict[str, Any]) -> Graph:
    """The inverse of `to_dict`; raises `GraphError` on anything malformed."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise GraphError(f"not a graph of format {FORMAT}: {data!r:.80}")
    if not isinstance(data.get("name"), str) or not isinstance(data.get("nodes"), list):
        raise GraphError("a graph needs a string 'name' and a list of 'nodes'")
    graph = Graph(data["name"], (_node_from_dict(raw) for raw in data["nodes"]))
    graph.lint()
    return graph


def _node_to_dict(node: Node) -> dict[str, Any]:
    out: dict[str, Any] = {"op": node.op}
    for f in fields(node):
        value = getattr(node, f.name)
        out[f.name] = dict((k, _encode(v)) for k, v in value) if f.name == "params" else _encode(value)
    return out


def _encode(value: Any) -> Any:
    if isinstance(value, Ref):
        return {"node": value.node, "var": value.var}
    if isinstance(value, Constraint):
        return {"kind": value.kind, "value": _encode(value.value)}
    if isinstance(value, tuple):
        return [_encode(v) for v in value]
    return value


def _node_from_dict(raw: Any) -> Node:
    if not isinstance(raw, dict):
        raise GraphError(f"a node must be an object, not {raw!r:.80}")
    raw = dict(raw)
    kind = NODE_KINDS.get(raw.pop("op", None))
    if kind is None:
        raise GraphError(f"unknown node kind in {raw!r:.80}")
    try:
        return kind(**{key: _DECODE.get(key, _freeze)(value) for key, value in raw.items()})
    except (TypeError, KeyError, AttributeError) as err:
        raise GraphError(f"malformed {kind.op} node {raw!r:.80}: {err}") from None


def _freeze(value: Any) -> Value:
    return tuple(_freeze(v) for v in value) if isinstance(value, list) else value


def _ref(raw: dict[str, Any]) -> Ref:
    return Ref(raw["node"], raw["var"])


_DECODE: dict[str, Callable[[Any], Any]] = {
    "parts": lambda raw: tuple(p if isinstance(p, str) else _ref(p) for p in raw),
    "needs": lambda raw: tuple(_ref(r) for r in raw),
    "params": lambda raw: tuple((k, _freeze(v)) for k, v in raw.items()),
    "constraint": lambda raw: None if raw is None else Constraint(raw["kind"], _freeze(raw["value"])),
}

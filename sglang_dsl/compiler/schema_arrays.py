"""JSON arrays: ``items`` (a schema, or the draft 4-7 list of positions with ``additionalItems``), ``prefixItems``
with ``items`` after them, ``minItems``/``maxItems``, ``contains`` with ``minContains`` (an intersection of
languages). ``uniqueItems`` (no automaton can enforce it) is refused, except where at most one item is allowed;
``maxContains`` and ``unevaluatedItems`` are refused."""

from __future__ import annotations

from typing import Any

from sglang_dsl.compiler.errors import SchemaError
from sglang_dsl.compiler.schema_ir import EMPTY, NOTHING, Meet, Node, Rep, opt, refs, seq


def array_node(conv, schema: dict, path: str) -> Node:
    """The language of a JSON array under the array keywords of ``schema`` (``conv``: the `_Converter`)."""
    lo, hi = schema.get("minItems", 0), schema.get("maxItems")
    for key, value in (("minItems", lo), ("maxItems", hi)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise SchemaError(f"{path}/{key}", f"must be a non-negative integer, got {value!r}")
    if hi is not None and hi < lo:
        return NOTHING
    if schema.get("uniqueItems") is True and (hi is None or hi > 1):
        raise SchemaError(f"{path}/uniqueItems", "uniqueItems cannot be enforced by an automaton (refused)")
    for key in ("maxContains", "unevaluatedItems"):
        if key in schema and schema[key] is not True:
            raise SchemaError(f"{path}/{key}", f"{key} is not supported")
    prefix, rest = _positions(schema, path)
    heads = [conv.convert(p, f"{path}/prefixItems/{i}") for i, p in enumerate(prefix)]
    tail = conv.convert(rest, f"{path}/items") if rest is not False else NOTHING
    node = seq(conv.open_arr, _listing(conv, heads, tail, lo, hi), conv.close_arr)
    if "contains" in schema:
        node = _contains(conv, schema, node, path)
    return node


def _positions(schema: dict, path: str) -> tuple[list, Any]:
    """(schemas of the first positions, schema of the items after them)."""
    items = schema.get("items", True)
    if isinstance(items, list):  # draft 4-2019 tuple form
        return items, schema.get("additionalItems", True)
    prefix = schema.get("prefixItems")
    if prefix is None:
        return [], items
    if not isinstance(prefix, list):
        raise SchemaError(f"{path}/prefixItems", "must be an array of schemas")
    return prefix, items


def _listing(conv, heads: list[Node], tail: Node, lo: int, hi: int | None) -> Node:
    """``lo``..``hi`` comma-separated items: the i-th from ``heads`` while there are heads, then ``tail``s."""
    if hi is not None and hi < len(heads):
        heads, tail = heads[:hi], NOTHING
    n = len(heads)
    more_lo, more_hi = max(lo - n, 0), None if hi is None else hi - n
    open_tail = tail != NOTHING and more_hi != 0
    if more_lo and not open_tail:
        return NOTHING
    if n == 0:
        if not open_tail:
            return EMPTY
        from sglang_dsl.compiler.json_schema import repeat_separated

        return repeat_separated(tail, conv.comma, lo, hi)
    out = Rep(seq(conv.comma, tail), more_lo, more_hi) if open_tail else EMPTY
    for i in range(n - 1, -1, -1):
        step = seq(conv.comma if i else EMPTY, heads[i], out)
        out = step if i < lo else opt(step)
    return out


def _contains(conv, schema: dict, node: Node, path: str) -> Node:
    """Arrays of ``node`` with at least ``minContains`` (default 1) items valid under both ``items`` and
    ``contains``."""
    need = schema.get("minContains", 1)
    if isinstance(need, bool) or not isinstance(need, int) or need < 0:
        raise SchemaError(f"{path}/minContains", f"must be a non-negative integer, got {need!r}")
    if need == 0:
        return node
    prefix, rest = _positions(schema, path)
    if prefix:
        raise SchemaError(f"{path}/contains", "contains together with prefixItems/items positions is not supported")
    item = conv.convert(rest, f"{path}/items")
    match = conv.convert_all({} if rest is True else rest, schema["contains"], f"{path}/contains") \
        if isinstance(rest, dict) or rest is True else NOTHING
    if match == NOTHING:
        raise SchemaError(f"{path}/contains", "no item can satisfy contains")
    if refs(node) or refs(match):
        raise SchemaError(f"{path}/contains", "contains with a recursive $ref is not supported")
    anything = Rep(seq(item, conv.comma), 0, None)
    body = seq(anything, match, Rep(seq(conv.comma, anything, match), need - 1, need - 1),
               Rep(seq(conv.comma, item), 0, None))
    with_matches = seq(conv.open_arr, body, conv.close_arr)
    return Meet((node, with_matches)) if node != with_matches else node


"""JSON objects: declared ``properties`` in schema order (optional ones may be left out), then any number of
other members where ``patternProperties`` / ``additionalProperties`` allow them (keys that are not declared;
a key matching a pattern takes that pattern's schema, any other key ``additionalProperties``' schema),
``required``, ``minProperties`` / ``maxProperties`` (where the members written make the count plain), and sets
of properties that must not all be present (``not`` + ``required``, and dependencies as rewritten by
`schema_keywords.dependencies_as_cases`). ``propertyNames`` and ``unevaluatedProperties`` are refused."""

from __future__ import annotations

import json
import re
from typing import Any

from sglang_dsl.compiler.errors import SchemaError
from sglang_dsl.compiler.json_strings import ANY_CONTENT, pattern_node
from sglang_dsl.compiler.schema_ir import (
    EMPTY, NOTHING, Members, Minus, Node, Rep, alt, lit, opt, refs, seq)
from sglang_dsl.compiler.schema_automaton import is_empty

_REFUSED = ("propertyNames", "unevaluatedProperties")


def object_node(conv, schema: dict, path: str) -> Node:
    """The language of a JSON object under the object keywords of ``schema`` (``conv``: the `_Converter`)."""
    for key in _REFUSED:
        if key in schema and not _trivial(key, schema[key]):
            raise SchemaError(f"{path}/{key}", f"{key} is not supported")
    forbid = [list(names) for names in schema.get("\0forbid", [])]
    required = _required(schema, path)
    if any(set(names) <= set(required) for names in forbid):
        return NOTHING  # required properties that must not all be present
    cases = [[]] if not forbid else _absent_choices(forbid)
    return alt(*(_object_case(conv, schema, required, set(absent), path) for absent in cases))


def _absent_choices(forbid: list[list[str]]) -> list[list[str]]:
    """Ways to leave out one property of each forbidden set (duplicates removed)."""
    out: list[frozenset] = [frozenset()]
    for names in forbid:
        out = list(dict.fromkeys(c | {n} for c in out for n in names))
    return [sorted(c) for c in out]


def _object_case(conv, schema: dict, required: list[str], absent: set[str], path: str) -> Node:
    props = schema.get("properties", {})
    if not isinstance(props, dict):
        raise SchemaError(f"{path}/properties", "must be an object")
    patterns = schema.get("patternProperties", {})
    if not isinstance(patterns, dict):
        raise SchemaError(f"{path}/patternProperties", "must be an object")
    extra = schema.get("additionalProperties", True)
    declared: dict[str, Any] = {}
    for name in [*props, *(r for r in required if r not in props), *sorted(absent - set(props))]:
        matching = [s for p, s in patterns.items() if _search(p, name, f"{path}/patternProperties")]
        base = props[name] if name in props else (matching.pop(0) if matching else extra)
        sub = {"allOf": [base, *matching]} if matching else base
        declared[name] = False if name in absent else sub
    members = []
    for name, sub in declared.items():
        value = conv.convert(sub, f"{path}/properties/{_pointer(name)}")
        if value == NOTHING:
            if name in required:
                return NOTHING  # a required property that no value satisfies
            continue
        members.append((seq(conv.literal(name, f"{path}/properties"), conv.colon, value), name in required))
    other = _other_member(conv, declared, patterns, extra, path)
    lo, hi = schema.get("minProperties", 0), schema.get("maxProperties")
    for key, value in (("minProperties", lo), ("maxProperties", hi)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise SchemaError(f"{path}/{key}", f"must be a non-negative integer, got {value!r}")
    n_req = sum(r for _, r in members)
    extra_max = None
    if hi is not None:
        if hi < n_req:
            raise SchemaError(f"{path}/maxProperties", "maxProperties is below the number of required properties")
        if hi < len(members):
            if any(not r for _, r in members):
                raise SchemaError(f"{path}/maxProperties", "maxProperties below the number of declared properties "
                                                           "is not supported")
        extra_max = hi - len(members)
    node = seq(conv.open_obj, _members(conv, members, other, extra_max), conv.close_obj)
    if lo > n_req:
        if lo > 1 or refs(node):
            raise SchemaError(f"{path}/minProperties", "minProperties above the number of required properties is "
                                                       "supported for 1 only")
        node = Minus(node, seq(conv.open_obj, conv.close_obj))
    return node


def _other_member(conv, declared: dict, patterns: dict, extra: Any, path: str) -> Node:
    """A member whose key is not declared: a key matching a pattern with that pattern's value schema (keys that
    may also match a pattern with another schema left out), any other key with additionalProperties' schema
    (NOTHING when no such member is allowed). Keys are excluded by the patterns read widely (`pattern_node`'s
    ``outer``), so that no key a pattern matches is taken for another."""
    names = alt(*(lit(_key_text(n)) for n in declared)) if declared else NOTHING
    wide = {p: pattern_node(p, f"{path}/patternProperties/{_pointer(p)}", outer=True) for p in patterns}
    options = []
    for pattern, sub in patterns.items():
        where = f"{path}/patternProperties/{_pointer(pattern)}"
        others = [wide[p] for p, s in patterns.items() if p != pattern and s != sub]
        key = _without(pattern_node(pattern, where), [names, *others])
        value = conv.convert(sub, where)
        if value != NOTHING and not is_empty(key):
            options.append(seq(lit('"'), key, lit('"'), conv.colon, value))
    if extra is not False:
        key = _without(ANY_CONTENT, [names, *wide.values()])
        value = conv.any_value(1) if extra is True or extra == {} else conv.convert(extra,
                                                                                  f"{path}/additionalProperties")
        if value != NOTHING:
            options.append(seq(lit('"'), key, lit('"'), conv.colon, value))
    return alt(*options) if options else NOTHING


def _without(keys: Node, excluded: list[Node]) -> Node:
    excluded = [e for e in excluded if e != NOTHING]
    return Minus(keys, alt(*excluded)) if excluded else keys


def _members(conv, members: list[tuple[Node, bool]], other: Node, extra_max: int | None) -> Node:
    """Members in order (optional ones may be left out), then up to ``extra_max`` other members; commas only
    between members written."""
    if extra_max is None or other == NOTHING:
        return Members(tuple(members), other, conv.comma)
    n = len(members)
    after = Rep(seq(conv.comma, other), 0, extra_max) if extra_max else EMPTY
    first = opt(seq(other, Rep(seq(conv.comma, other), 0, extra_max - 1))) if extra_max else EMPTY
    for member, required in reversed(members):
        written = seq(member, after)
        after = seq(seq(conv.comma, member) if required else opt(seq(conv.comma, member)), after)
        first = written if required else alt(written, first)
    return first if n or extra_max else EMPTY


def _required(schema: dict, path: str) -> list[str]:
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise SchemaError(f"{path}/required", "must be an array of property names")
    return list(dict.fromkeys(required))


def _trivial(key: str, value: Any) -> bool:
    """Keyword values that constrain nothing."""
    return value is True or value == {}


def _search(pattern: Any, name: str, path: str) -> bool:
    try:
        return re.search(pattern, name) is not None
    except (re.error, TypeError) as err:
        raise SchemaError(f"{path}/{_pointer(str(pattern))}", f"not a valid regex: {err}") from None


def _key_text(name: str) -> str:
    """A property name as written between the quotes."""
    return json.dumps(name, ensure_ascii=False)[1:-1]


def _pointer(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")

"""JSON Schema keywords as the specification reads them, checked against the ``jsonschema`` validator: annotation
and unknown keywords ignored, patterns searched, ``patternProperties``, other properties, ``not``,
``if``/``then``/``else``, ``oneOf`` exclusivity, ``contains``, ``additionalItems``, dependencies, intersections
of ``pattern``/``format`` with length bounds, recursive ``$ref`` through the grammar engine. Every instance the
compiled automaton accepts validates (also for texts sampled at random from the automaton); listed valid
instances (written compactly) are accepted."""

from __future__ import annotations

import json
import random

import jsonschema
import pytest

from sglang_dsl.compiler.automaton import ByteDFA
from sglang_dsl.compiler.constraint import ConstraintSpec, compile_constraint
from sglang_dsl.compiler.errors import SchemaError
from sglang_dsl.compiler.json_schema import compile_schema
from test_constraint_regex import smollm2_tokenizer, smollm2_vocab  # noqa: F401



def VALIDATOR(schema):  # noqa: N802 - reads like the validator classes it wraps
    """Draft 7, formats asserted."""
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)


CASES = {
    "annotations_ignored": (
        {"type": "object", "id": "x", "self": {"vendor": "v"}, "readonly": True, "x-kubernetes-kind": "Pod",
         "properties": {"a": {"type": "integer", "_format": "int32", "comment": "c", "format": "int32"}},
         "required": ["a"]},
        [{"a": 1}, {"a": 2, "b": "other"}], [{"a": "1"}, {}]),
    "pattern_searched": (
        {"type": "string", "pattern": "^allow|deny$"}, ["allow", "allowed", "deny", "to deny"], ["denying", "x"]),
    "pattern_and_length": (
        {"type": "string", "pattern": "^[a-z]+$", "minLength": 2, "maxLength": 4}, ["ab", "abcd"],
        ["a", "abcde", "ab1"]),
    "format_and_length": (
        {"type": "string", "format": "email", "maxLength": 12}, ["a@b.co"], ["averylong@example.com", "nope"]),
    "pattern_properties": (
        {"type": "object", "properties": {"name": {"type": "string"}},
         "patternProperties": {"^x-": {"type": "integer"}}, "additionalProperties": {"type": "boolean"}},
        [{"name": "n", "x-a": 1, "other": True}, {"x-b": 2}], [{"x-a": "s"}, {"other": 1}, {"name": 1}]),
    "pattern_properties_closed": (
        {"type": "object", "patternProperties": {"^[a-z]+$": {"type": "string"}}, "additionalProperties": False},
        [{"ab": "x", "cd": "y"}, {}], [{"Ab": "x"}, {"ab": 1}]),
    "not_required": (
        {"type": "object", "properties": {"a": {}, "b": {}}, "not": {"required": ["a", "b"]}},
        [{"a": 1}, {"b": 2}, {}], [{"a": 1, "b": 2}]),
    "not_enum": ({"type": "string", "not": {"enum": ["x", "y"]}}, ["z", "xy"], ["x", "y"]),
    "not_type": ({"not": {"type": ["string", "object", "array"]}}, [1, None, True], ["s", {}, []]),
    "not_pattern": ({"type": "string", "not": {"pattern": "^a[0-9]"}}, ["ab", "b1"], ["a1", "a9z"]),
    "if_then_else": (
        {"type": "object", "properties": {"kind": {"enum": ["a", "b"]}, "n": {"type": "integer"}},
         "required": ["kind"],
         "if": {"properties": {"kind": {"const": "a"}}}, "then": {"required": ["n"]},
         "else": {"properties": {"n": {"maximum": 0}}}},
        [{"kind": "a", "n": 5}, {"kind": "b"}, {"kind": "b", "n": -1}], [{"kind": "a"}, {"kind": "b", "n": 3}]),
    "one_of_exclusive": (
        {"type": "object", "properties": {"side": {"type": "integer"}, "radius": {"type": "integer"}},
         "oneOf": [{"required": ["side"]}, {"required": ["radius"]}]},
        [{"side": 1}, {"radius": 2}], [{"side": 1, "radius": 2}, {}]),
    "one_of_tagged": (
        {"oneOf": [{"type": "object", "properties": {"t": {"const": "a"}, "v": {"type": "integer"}},
                    "required": ["t"]},
                   {"type": "object", "properties": {"t": {"const": "b"}, "v": {"type": "string"}},
                    "required": ["t"]}]},
        [{"t": "a", "v": 1}, {"t": "b", "v": "s"}], [{"t": "a", "v": "s"}, {"t": "c"}]),
    "contains": (
        {"type": "array", "items": {"type": "integer"}, "contains": {"minimum": 10}, "maxItems": 3},
        [[10], [1, 2, 30], [11, 1]], [[1, 2], [], [1, 2, 3, 40]]),
    "additional_items": (
        {"type": "array", "items": [{"type": "string"}, {"type": "integer"}], "additionalItems": {"type": "boolean"}},
        [["a", 1], ["a"], ["a", 1, True, False], []], [["a", 1, 2], [1], ["a", "b"]]),
    "prefix_then_items_counted": (
        {"type": "array", "items": [{"type": "null"}], "additionalItems": {"type": "integer"}, "minItems": 2,
         "maxItems": 3},
        [[None, 1], [None, 1, 2]], [[None], [None, 1, 2, 3]]),
    "dependencies": (
        {"type": "object", "properties": {"card": {"type": "string"}, "billing": {"type": "string"}},
         "dependencies": {"card": ["billing"]}},
        [{"card": "c", "billing": "b"}, {"billing": "b"}, {}], [{"card": "c"}]),
    "min_properties_one": (
        {"type": "object", "properties": {"a": {"type": "integer"}}, "minProperties": 1},
        [{"a": 1}, {"b": 2}], [{}]),
    "multiple_of": ({"type": "number", "multipleOf": 0.01, "maximum": 10}, [1.25, 3, 10], [1.255, 10.5]),
    "all_of_patterns": (
        {"allOf": [{"type": "string", "pattern": "a"}, {"pattern": "b"}, {"maxLength": 4}]},
        ["ab", "ba", "xaby"], ["aa", "abcde"]),
    "unknown_format_ignored": ({"type": "string", "format": "int32"}, ["12", "x"], [1]),
    "uri_reference": ({"type": "string", "format": "uri-reference"}, ["Web", "a/b:c", "https://x.org/p"], []),
}


def _compact(value) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize("name", sorted(CASES))
def test_keywords_accept_valid_and_reject_invalid_instances(name):
    schema, valid, invalid = CASES[name]
    dfa = compile_schema(schema)
    validator = VALIDATOR(schema)
    for value in valid:
        assert validator.is_valid(value), (name, value)  # the case itself is right
        assert dfa.matches(_compact(value)), (name, value)
    for value in invalid:
        assert not validator.is_valid(value), (name, value)
        assert not dfa.matches(_compact(value)), (name, value)


def _sample(dfa: ByteDFA, rng: random.Random, limit: int = 120) -> bytes:
    """A random text of the automaton: random live bytes, ending (at random, or past ``limit`` by the shortest
    way) in an accepting state."""
    t, dead = dfa.transitions, dfa.dead
    distance = _distance_to_accept(dfa)
    state, out = dfa.initial, bytearray()
    while True:
        if dfa.accepting[state] and (rng.random() < 0.2 or len(out) > limit):
            return bytes(out)
        live = [b for b in range(256) if t[state, b] != dead]
        if not live:
            return bytes(out)
        if len(out) > limit:
            live = [min(live, key=lambda b: distance[t[state, b]])]
        b = rng.choice(live)
        out.append(b)
        state = int(t[state, b])


def _distance_to_accept(dfa: ByteDFA) -> list[int]:
    n = dfa.transitions.shape[0]
    dist = [0 if dfa.accepting[s] else 1 << 30 for s in range(n)]
    changed = True
    while changed:
        changed = False
        for s in range(n - 1):
            best = min(dist[int(x)] for x in set(dfa.transitions[s].tolist())) + 1
            if best < dist[s]:
                dist[s], changed = best, True
    return dist


@pytest.mark.parametrize("name", ["pattern_properties", "not_required", "if_then_else", "one_of_exclusive",
                                  "contains", "additional_items", "dependencies", "not_pattern", "all_of_patterns"])
def test_random_texts_of_the_automaton_validate(name):
    schema = CASES[name][0]
    dfa = compile_schema(schema)
    validator = VALIDATOR(schema)
    rng = random.Random(name)
    for _ in range(40):
        text = _sample(dfa, rng).decode("utf-8")
        assert validator.is_valid(json.loads(text)), (name, text)


TREE = {"$defs": {"node": {"type": "object", "properties": {"value": {"type": "integer"},
                                                           "children": {"type": "array",
                                                                        "items": {"$ref": "#/$defs/node"}}},
                           "required": ["value"], "additionalProperties": False}},
        "$ref": "#/$defs/node"}


def test_recursive_refs_compile_to_a_grammar_that_nests_without_bound(smollm2_vocab):  # noqa: F811
    matcher = compile_constraint(ConstraintSpec("json_schema", json.dumps(TREE)), smollm2_vocab)
    deep = {"value": 0}
    for i in range(30):
        deep = {"value": i, "children": [deep, {"value": -i}]}

    def accepted(value) -> bool:
        state = matcher.advance_bytes(matcher.start(), _compact(value).encode())
        return state is not None and matcher.accepting(state)

    assert accepted(deep) and accepted({"value": 1, "children": []})
    for bad in ({"value": "x"}, {"children": []}, {"value": 1, "children": [{"value": 2, "extra": 1}]}):
        assert not jsonschema.Draft202012Validator(TREE).is_valid(bad) and not accepted(bad), bad


def test_recursive_ref_with_sibling_keywords_gets_its_own_rule():
    schema = {"definitions": {"list": {"type": "object", "properties": {"next": {"$ref": "#/definitions/list"}},
                                       "additionalProperties": False}},
              "properties": {"head": {"$ref": "#/definitions/list", "required": ["next"]}},
              "type": "object", "required": ["head"], "additionalProperties": False}
    grammar = compile_schema(schema)
    assert "rule0" in grammar.source and "rule1" in grammar.source


def test_uri_reference_rejects_a_colon_in_the_first_relative_segment():
    """RFC 3986 (what rfc3987, which jsonschema uses when installed, checks): ``://`` is no URI reference."""
    dfa = compile_schema({"type": "string", "format": "uri-reference"})
    assert not dfa.matches('"://"') and not dfa.matches('"a b"') and dfa.matches('"./a"')


def test_keywords_of_other_types_are_ignored():
    dfa = compile_schema({"type": "array", "additionalProperties": False, "maxLength": 1, "items": {"type": "null"}})
    assert dfa.matches("[null,null]") and not dfa.matches('"x"')


@pytest.mark.parametrize("schema, path", [
    ({"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}}, "#/properties/a/uniqueItems"),
    ({"not": {"type": "object", "properties": {"a": {"type": "array", "maxContains": 1}}}},
     "#/not/properties/a/maxContains"),
    ({"type": "string", "format": "regex"}, "#/format"),
    ({"not": {"type": "integer"}}, "#/not/type"),  # what is left would be the non-integral numbers
])
def test_unenforceable_keywords_are_refused_with_their_path(schema, path):
    with pytest.raises(SchemaError) as err:
        compile_schema(schema)
    assert err.value.path.endswith(path.rsplit("/", 1)[1]), str(err.value)


def test_recursive_schemas_round_trip_through_the_disk_cache(smollm2_vocab, tmp_path):  # noqa: F811
    from sglang_dsl.compiler.constraint import ConstraintCompiler

    spec = ConstraintSpec("json_schema", json.dumps(TREE))
    ConstraintCompiler(smollm2_vocab, cache_dir=tmp_path).compile(spec)
    fresh = ConstraintCompiler(smollm2_vocab, cache_dir=tmp_path)
    matcher = fresh.compile(spec)
    assert fresh.stats["disk_hits"] == 1 and fresh.stats["compiled"] == 0
    state = matcher.advance_bytes(matcher.start(), b'{"value":1,"children":[{"value":2}]}')
    assert state is not None and matcher.accepting(state)


def test_a_pydantic_models_objects_are_closed_unless_it_allows_extra_fields():
    import pydantic

    from sglang_dsl.compiler.json_schema import schema_to_dict

    class Inner(pydantic.BaseModel):
        properties: list[str]  # a field that shares its name with the keyword

    class Open(pydantic.BaseModel, extra="allow"):
        note: str

    class Outer(pydantic.BaseModel):
        inner: Inner
        extra: Open
        default_list: list[int] = [1]

    schema = schema_to_dict(Outer)
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["Inner"]["additionalProperties"] is False
    assert set(schema["$defs"]["Inner"]["properties"]) == {"properties"}
    assert schema["$defs"]["Open"]["additionalProperties"] is True
    assert schema["properties"]["default_list"]["default"] == [1]

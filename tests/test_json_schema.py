"""JSON Schema -> regex: every output sampled under the mask validates (``jsonschema``, formats checked), every
valid instance in the generated subset (schema order, compact) is matched, bounds are exact, and unsupported
keywords name their JSON path."""

from __future__ import annotations

import datetime as dt
import enum
import json
import random
import re
import uuid
from decimal import Decimal
from typing import Literal, Optional

import jsonschema
import pydantic
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sglang_dsl.compiler.automaton import regex_to_dfa
from sglang_dsl.compiler.errors import SchemaError
from sglang_dsl.compiler.json_strings import FORMATS as FORMAT_REGEXES
from sglang_dsl.compiler.json_schema import compile_schema, json_schema_to_regex
from sglang_dsl.compiler.numeric_ranges import decimal_range_regex, integer_range_regex
from sglang_dsl.compiler.token_index import TokenIndex
from test_constraint_regex import decoded, sample_under_mask, smollm2_tokenizer, smollm2_vocab  # noqa: F401

FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER

SCHEMAS = {
    "flat": {"type": "object", "additionalProperties": False, "required": ["name", "age"],
             "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0,
                                                                                "maximum": 130}}},
    "optional_members": {"type": "object", "additionalProperties": False, "required": ["b"],
                         "properties": {"a": {"type": "boolean"}, "b": {"type": "null"}, "c": {"enum": [1, "x", None]},
                                        "d": {"const": {"k": [1, 2]}}}},
    "moderate": {
        "type": "object", "additionalProperties": False,
        "required": ["id", "name", "status", "tags", "score", "active", "address", "created"],
        "properties": {
            "id": {"type": "integer", "minimum": 1, "maximum": 100000},
            "name": {"type": "string", "maxLength": 40},
            "status": {"enum": ["active", "inactive", "pending"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 5},
            "score": {"type": "number"},
            "active": {"type": "boolean"},
            "address": {"type": "object", "additionalProperties": False, "required": ["street", "city", "zip"],
                        "properties": {"street": {"type": "string"}, "city": {"type": "string"},
                                       "zip": {"type": "string", "pattern": "^[0-9]{5}$"}}},
            "created": {"type": "string", "format": "date-time"},
        },
    },
    "numbers": {"type": "array", "prefixItems": [
        {"type": "integer", "exclusiveMinimum": -5, "exclusiveMaximum": 17},
        {"type": "number", "minimum": -2.5, "maximum": 3.25},
        {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        {"type": "integer", "minimum": 1000},
    ], "items": False, "minItems": 2},
    "combinators": {"anyOf": [{"type": "string", "minLength": 2, "maxLength": 4}, {"type": "integer", "maximum": -1},
                              {"type": "null"}]},
    "one_of_refs": {
        "$defs": {"cat": {"type": "object", "properties": {"kind": {"const": "cat"}, "lives": {"type": "integer",
                                                                                                "minimum": 0,
                                                                                                "maximum": 9}},
                          "required": ["kind", "lives"], "additionalProperties": False},
                  "dog": {"type": "object", "properties": {"kind": {"const": "dog"}, "good": {"type": "boolean"}},
                          "required": ["kind"], "additionalProperties": False}},
        "type": "object", "additionalProperties": False, "required": ["pets"],
        "properties": {"pets": {"type": "array", "minItems": 1, "maxItems": 3,
                                "items": {"oneOf": [{"$ref": "#/$defs/cat"}, {"$ref": "#/$defs/dog"}]}}},
    },
    "all_of": {"allOf": [
        {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["a"]},
        {"properties": {"a": {}, "b": {"type": "string", "format": "date"}, "c": {"type": "null"}},
         "required": ["b"], "additionalProperties": False},
    ]},
    "formats": {"type": "object", "additionalProperties": False,
                "required": ["d", "t", "u", "e", "w", "ip"],
                "properties": {f: {"type": "string", "format": fmt} for f, fmt in
                               [("d", "date"), ("t", "time"), ("u", "uuid"), ("e", "email"), ("w", "uri"),
                                ("ip", "ipv4")]}},
    "map": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 99},
            "maxProperties": 3},
    "strings": {"type": "array", "maxItems": 4, "items": {"anyOf": [
        {"type": "string", "pattern": r"^[A-Z]{2}-\d{3}$"},
        {"type": "string", "pattern": r"^a.c\s*\"quoted\"$"},
        {"type": "string", "minLength": 3, "maxLength": 3},
    ]}},
    "nullable_types": {"type": "object", "additionalProperties": False, "required": ["x", "y"],
                       "properties": {"x": {"type": ["integer", "null"], "minimum": 10, "maximum": 20},
                                      "y": {"type": ["string", "boolean"], "maxLength": 2}}},
    "any": {"type": "object", "properties": {"payload": {}, "list": {"type": "array"}},
            "required": ["payload", "list"], "additionalProperties": False},
}


def validate(schema, text: str | bytes) -> None:
    jsonschema.validate(json.loads(text), schema, format_checker=FORMATS)


_DFAS = {}


def dfa_of(name):
    if name not in _DFAS:
        _DFAS[name] = compile_schema(SCHEMAS[name])
    return _DFAS[name]


# ---- soundness: sampling under the mask on SmolLM2's vocabulary ------------------------------------------------


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_sampled_outputs_validate(name, smollm2_vocab):
    index = TokenIndex.build(dfa_of(name), smollm2_vocab)
    rng = random.Random(name)
    finished = 0
    for _ in range(25):
        ids, ended = sample_under_mask(index, rng, max_tokens=600)
        if ended:
            finished += 1
            validate(SCHEMAS[name], decoded(index, ids))
    assert finished >= 15


# ---- completeness: valid instances, written compactly in schema order, match -----------------------------------


_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=8)
_ANY = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | _TEXT,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3), max_leaves=6)


def instances(schema, root):
    """Valid instances of ``schema`` as the regex writes them: object members in schema order, declared
    properties only, no control characters in strings, numbers without exponent."""
    if schema is True or schema == {}:
        return _ANY
    if "$ref" in schema:
        target = root
        for part in schema["$ref"][2:].split("/"):
            target = target[part]
        return instances(target, root)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of([instances(option, root) for option in schema[key]])
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    types = schema.get("type")
    if isinstance(types, list):
        return st.one_of([instances({**schema, "type": t}, root) for t in types])
    if types == "object":
        props, required = schema.get("properties", {}), set(schema.get("required", []))
        if not props:
            return st.dictionaries(st.text(st.characters(min_codepoint=97, max_codepoint=122), max_size=4),
                                   instances(schema["additionalProperties"], root),
                                   max_size=schema.get("maxProperties", 3))

        @st.composite
        def objects(draw):
            out = {}
            for name, sub in props.items():
                if name in required or draw(st.booleans()):
                    out[name] = draw(instances(sub, root))
            return out
        return objects()
    if types == "array":
        if "prefixItems" in schema:
            parts = [instances(p, root) for p in schema["prefixItems"]]
            return st.integers(schema.get("minItems", 0), len(parts)).flatmap(lambda k: st.tuples(*parts[:k])).map(list)
        return st.lists(instances(schema.get("items", {}), root), min_size=schema.get("minItems", 0),
                        max_size=schema.get("maxItems", 4))
    if types == "string":
        if "format" in schema:  # our own format regexes (formats themselves are checked by the other tests)
            return st.from_regex(FORMAT_REGEXES[schema["format"]], fullmatch=True)
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True).filter(lambda t: t.isprintable())
        return st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=schema.get("minLength", 0),
                       max_size=schema.get("maxLength", 10))
    if types == "integer":
        lo = schema.get("minimum", schema.get("exclusiveMinimum", -10**9 - 1) + 1)
        hi = schema.get("maximum", schema.get("exclusiveMaximum", 10**9 + 1) - 1)
        return st.integers(lo, hi)
    if types == "number":
        return st.floats(schema.get("minimum", schema.get("exclusiveMinimum")),
                         schema.get("maximum", schema.get("exclusiveMaximum")),
                         exclude_min="exclusiveMinimum" in schema, exclude_max="exclusiveMaximum" in schema,
                         allow_nan=False, allow_infinity=False).map(lambda x: x + 0.0).filter(  # no -0.0
            lambda x: "e" not in repr(x))
    if types == "boolean":
        return st.booleans()
    if types == "null":
        return st.none()
    raise AssertionError(schema)


GENERATED = ["flat", "optional_members", "moderate", "numbers", "combinators", "one_of_refs", "map",
             "nullable_types"]


@pytest.mark.parametrize("name", GENERATED)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_valid_instances_match(name, data):
    schema = SCHEMAS[name]
    instance = data.draw(instances(schema, schema))
    validate(schema, json.dumps(instance))
    text = json.dumps(instance, ensure_ascii=False, separators=(",", ":"))
    assume("\\u" not in text)
    assert dfa_of(name).matches(text), text


@pytest.mark.parametrize("name, text, ok", [
    ("flat", '{"name":"Al","age":130}', True),
    ("flat", '{"name":"Al","age":131}', False),
    ("flat", '{"age":3,"name":"Al"}', False),  # schema order
    ("flat", '{"name":"Al"}', False),
    ("flat", '{"name":"Al","age":3,"x":1}', False),
    ("numbers", '[-4,-2.5]', True),
    ("numbers", '[-5,0]', False),
    ("numbers", '[16,3.25,1,1000]', True),
    ("numbers", '[16,3.26]', False),
    ("numbers", '[0,0,0]', False),
    ("numbers", '[0,0,0.000001,999]', False),
    ("combinators", 'null', True),
    ("combinators", '"abcd"', True),
    ("combinators", '"abcde"', False),
    ("combinators", '-1', True),
    ("combinators", '0', False),
    ("strings", r'["AB-123","a-c \"quoted\"","a\\b"]', True),
    ("strings", r'["AB-12"]', False),
    ("all_of", '{"a":3,"b":"2024-02-28"}', True),
    ("all_of", '{"a":3,"b":"2024-02-30"}', False),
    ("map", '{"x":1,"y":2,"z":3}', True),
    ("map", '{"x":1,"y":2,"z":3,"w":4}', False),
])
def test_examples(name, text, ok):
    assert dfa_of(name).matches(text) == ok
    if ok:
        validate(SCHEMAS[name], text)


def test_whitespace_and_separators_are_configurable():
    schema = SCHEMAS["flat"]
    spaced = compile_schema(schema, separators=(", ", ": "))
    assert spaced.matches('{"name": "Al", "age": 3}') and not spaced.matches('{"name":"Al","age":3}')
    loose = compile_schema(schema, whitespace=r"[ \n]{1,2}")
    assert loose.matches('{\n "name" : "Al",\n "age": 3 }') and loose.matches('{"name":"Al","age":3}')


# ---- pydantic ---------------------------------------------------------------------------------------------------


class Color(str, enum.Enum):
    red = "red"
    green = "green"


class Address(pydantic.BaseModel):
    city: pydantic.constr(max_length=16)
    zip_code: pydantic.constr(pattern=r"^[0-9]{5}$")


class Person(pydantic.BaseModel):
    name: pydantic.constr(min_length=1, max_length=20)
    age: pydantic.conint(ge=0, le=120)
    height_m: pydantic.confloat(gt=0.3, lt=2.8)
    favourite: Color
    nickname: Optional[pydantic.constr(max_length=8)] = None
    kind: Literal["human", "robot"]
    born: dt.date
    id: uuid.UUID
    address: Address
    tags: pydantic.conlist(pydantic.constr(max_length=6), max_length=3)


def test_pydantic_models_compile_and_sampled_outputs_parse(smollm2_vocab):
    index = TokenIndex.build(compile_schema(Person), smollm2_vocab)
    rng = random.Random(3)
    parsed = 0
    for _ in range(20):
        ids, ended = sample_under_mask(index, rng, max_tokens=800)
        if ended:
            Person.model_validate_json(decoded(index, ids))
            parsed += 1
    assert parsed >= 12
    example = Person(name="Ada", age=36, height_m=1.65, favourite=Color.green, kind="human", born=dt.date(1815, 12, 10),
                     id=uuid.UUID(int=7), address=Address(city="London", zip_code="12345"), tags=["math"])
    assert index.dfa.matches(example.model_dump_json())


# ---- errors -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schema, path, reason", [
    ({"type": "array", "items": {"type": "string", "format": "ipv6"}}, "#/items/format", "format 'ipv6'"),
    ({"$ref": "#/$defs/missing"}, "#/$ref", "points nowhere"),
    ({"$ref": "http://example.com/schema"}, "#/$ref", "only local references"),
    ({"type": "string", "maxLength": "3"}, "#/maxLength", "non-negative integer"),
    ({"type": "string", "maxLength": 20000}, "#/maxLength", "above"),
    ({"type": "number", "multipleOf": 0.5}, "#/multipleOf", "multipleOf"),
    ({"type": "array", "uniqueItems": True}, "#/uniqueItems", "uniqueItems"),
    ({"type": "object", "propertyNames": {"maxLength": 3}}, "#/propertyNames", "not supported"),
    ({"not": {"multipleOf": 3}}, "#/not/multipleOf", "not with"),
    ({"type": "string", "pattern": "(?<=a)b"}, "#/pattern", "look-behind"),
    ({"type": "string", "pattern": '["x]'}, "#/pattern", "quote"),
    ({"type": "strin"}, "#/type", "unknown type"),
    ({"type": "integer", "minimum": 5, "maximum": 4}, "#", "no JSON value"),
    ({"allOf": [{"type": "string"}, {"type": "integer"}]}, "#", "no JSON value"),
    (False, "#", "no JSON value"),
])
def test_unsupported_or_invalid_schemas_name_the_path(schema, path, reason):
    with pytest.raises(SchemaError) as err:
        compile_schema(schema)
    assert err.value.path == path and reason in str(err.value), str(err.value)


# ---- numeric ranges ---------------------------------------------------------------------------------------------

INT_TEXT = re.compile(r"-?(0|[1-9][0-9]*)")
DEC_TEXT = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?")


@settings(max_examples=300, deadline=None)
@given(lo=st.none() | st.integers(-3000, 3000), hi=st.none() | st.integers(-3000, 3000),
       probes=st.lists(st.integers(-4000, 4000), min_size=10, max_size=30))
def test_integer_ranges_are_exact(lo, hi, probes):
    assume(lo is None or hi is None or lo <= hi)
    pattern = re.compile(integer_range_regex(lo, hi))
    for n in probes + [lo or 0, hi or 0, (lo or 0) - 1, (hi or 0) + 1]:
        inside = (lo is None or n >= lo) and (hi is None or n <= hi)
        assert (pattern.fullmatch(str(n)) is not None) == inside, (lo, hi, n)
    assert pattern.fullmatch("-0") is None and pattern.fullmatch("007") is None


decimal_texts = st.from_regex(DEC_TEXT, fullmatch=True).filter(lambda t: len(t) < 12)


@settings(max_examples=300, deadline=None)
@given(lo=st.none() | decimal_texts, hi=st.none() | decimal_texts, lo_strict=st.booleans(), hi_strict=st.booleans(),
       probes=st.lists(decimal_texts, min_size=10, max_size=30))
def test_decimal_ranges_are_exact(lo, hi, lo_strict, hi_strict, probes):
    lo_d = None if lo is None else Decimal(lo)
    hi_d = None if hi is None else Decimal(hi)
    assume(lo_d is None or hi_d is None or lo_d < hi_d or (lo_d == hi_d and not (lo_strict or hi_strict)))
    pattern = re.compile(decimal_range_regex(lo_d, hi_d, lo_strict, hi_strict))
    for text in probes + [t for t in (lo, hi) if t]:
        v = Decimal(text)
        inside = (lo_d is None or (v > lo_d if lo_strict else v >= lo_d)) and (
            hi_d is None or (v < hi_d if hi_strict else v <= hi_d))
        if text.startswith("-") and v == 0:
            inside = False  # "-0" is never written
        assert (pattern.fullmatch(text) is not None) == inside, (lo, lo_strict, hi, hi_strict, text)

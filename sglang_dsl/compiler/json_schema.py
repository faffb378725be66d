"""JSON Schema -> regex over JSON text.

``json_schema_to_regex(schema)`` accepts a dict, JSON text, or a pydantic model (class or instance). The regex
matches JSON documents that validate against the schema (for the supported subset, every match validates; the
reverse holds up to the choices listed below). Output is compact by default (``{"a":1,"b":[2,3]}``);
``separators=(", ", ": ")`` gives ``json.dumps``' default spacing and ``whitespace`` a regex of optional
whitespace allowed around punctuation (e.g. ``r"[ \\n]{0,2}"``).

Supported: ``type`` (one or a list, e.g. ``["string", "null"]``), ``properties``/``required`` (properties appear in
schema order; optional ones may be left out), ``additionalProperties`` (false, or without ``properties`` a
schema for the values of a free-form map, with ``minProperties``/``maxProperties``), ``enum``, ``const``,
``anyOf``/``oneOf`` (alternation: exclusivity is not enforced), ``allOf`` (merged when every part is an object
schema), local ``$ref`` into ``$defs``/``definitions`` (not recursive), arrays with ``items``/``prefixItems``/
``minItems``/``maxItems``, strings with ``minLength``/``maxLength``/``pattern``/``format`` (date, time, date-time,
uuid, email, uri, ipv4, hostname), integers and numbers with ``minimum``/``maximum``/``exclusiveMinimum``/
``exclusiveMaximum`` (exact digit-range regexes; bounded numbers are written without exponent), ``{}``/``true``
(any JSON value, nested at most ``ANY_DEPTH`` levels). Annotations (``title``, ``description``, ``default``,
``examples``...) are ignored. Anything else raises `SchemaError` naming the JSON path of the keyword.

Choices a validator would not notice: objects only contain declared properties (extra ones are allowed by the
schema but never generated); OpenAPI's ``nullable`` is not JSON Schema and is ignored (null is written only where
``type`` or ``anyOf`` allows it); free-form strings exclude ``\\u`` escapes and control characters; ``date`` has no
February 29; a ``pattern`` is matched in full (JSON Schema only asks for a match somewhere in the string). A
``maxLength`` of at least 1000 on an ``email``/``uri`` string is not enforced (those formats are unbounded).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sglang_dsl.compiler.errors import SchemaError
from sglang_dsl.compiler.numeric_ranges import decimal_range_regex, integer_range_regex
from sglang_dsl.compiler.json_strings import STRING, string_regex

ANY_DEPTH = 2

INTEGER = r"-?(0|[1-9][0-9]*)"
NUMBER = r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?"
BOOLEAN = r"(true|false)"
NULL = r"null"

_ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "example", "$schema", "$id", "$comment", "deprecated",
    "readOnly", "writeOnly", "$defs", "definitions", "discriminator", "xml", "externalDocs", "contentMediaType",
    "contentEncoding", "nullable",
})
_KEYWORDS = {
    "object": {"properties", "required", "additionalProperties", "minProperties", "maxProperties"},
    "array": {"items", "prefixItems", "minItems", "maxItems", "uniqueItems"},
    "string": {"minLength", "maxLength", "pattern", "format"},
    "integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"},
    "number": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"},
    "boolean": set(),
    "null": set(),
}
_COMBINATORS = {"anyOf", "oneOf", "allOf", "enum", "const", "$ref", "type"}
_TYPES = tuple(_KEYWORDS)


def schema_to_dict(schema: Any) -> Any:
    """A schema as plain JSON data: from a dict/bool, JSON text, or a pydantic model class or instance."""
    if isinstance(schema, (dict, bool)):
        return schema
    if isinstance(schema, (str, bytes)):
        try:
            return json.loads(schema)
        except ValueError as err:
            raise SchemaError("#", f"not valid JSON: {err}") from None
    method = getattr(schema, "model_json_schema", None) or getattr(schema, "schema", None)
    if callable(method):
        return method()
    raise SchemaError("#", f"a schema must be a dict, JSON text or a pydantic model, got {type(schema).__name__}")


def schema_to_json_text(schema: Any) -> str:
    return json.dumps(schema_to_dict(schema), sort_keys=False, ensure_ascii=False)


def json_schema_to_regex(schema: Any, *, separators: tuple[str, str] = (",", ":"), whitespace: str | None = None
                         ) -> str:
    """The regex of JSON documents valid under ``schema``; raises `SchemaError` naming the offending path."""
    root = schema_to_dict(schema)
    return _Converter(root, separators, whitespace).convert(root, "#")


@dataclass
class _Converter:
    root: Any
    separators: tuple[str, str]
    whitespace: str | None

    def __post_init__(self) -> None:
        ws = f"({self.whitespace})?" if self.whitespace else ""
        item, key = self.separators
        self.comma = ws + re.escape(item.strip()) + (ws or _spaces(item))
        self.colon = ws + re.escape(key.strip()) + (ws or _spaces(key))
        self.open_obj, self.close_obj = r"\{" + ws, ws + r"\}"
        self.open_arr, self.close_arr = r"\[" + ws, ws + r"\]"
        self.expanding: list[str] = []

    # ---- dispatch ---------------------------------------------------------------------------------------------

    def convert(self, schema: Any, path: str) -> str:
        if schema is True or schema == {}:
            return self.any_value(ANY_DEPTH)
        if schema is False:
            raise SchemaError(path, "the schema `false` matches nothing")
        if not isinstance(schema, dict):
            raise SchemaError(path, f"a schema must be an object or a boolean, got {json.dumps(schema)}")
        schema = self.without_annotations(schema, path)
        if "$ref" in schema:
            return self.ref(schema, path)
        if "allOf" in schema:
            return self.convert(self.merge_all_of(schema, path), path)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                options = schema[key]
                if not isinstance(options, list) or not options:
                    raise SchemaError(f"{path}/{key}", "must be a non-empty array of schemas")
                rest = {k: v for k, v in schema.items() if k != key}
                parts = [self.convert(self.merge(rest, option, f"{path}/{key}/{i}") if rest else option,
                                      f"{path}/{key}/{i}") for i, option in enumerate(options)]
                return _alternation(parts)
        if "const" in schema:
            return self.literal(schema["const"], f"{path}/const")
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise SchemaError(f"{path}/enum", "must be a non-empty array")
            return _alternation([self.literal(v, f"{path}/enum/{i}") for i, v in enumerate(values)])
        types = self.types(schema, path)
        return _alternation([self.typed(t, schema, path) for t in types])

    def without_annotations(self, schema: dict, path: str) -> dict:
        known = _ANNOTATIONS | _COMBINATORS | set().union(*_KEYWORDS.values())
        for key in schema:
            if key not in known:
                raise SchemaError(f"{path}/{key}", f"keyword {key!r} is not supported")
        return {k: v for k, v in schema.items() if k not in _ANNOTATIONS}

    def types(self, schema: dict, path: str) -> list[str]:
        declared = schema.get("type")
        if declared is None:
            types = [t for t in _TYPES if _KEYWORDS[t] & schema.keys()]
            if not types:
                return ["any"]
        elif isinstance(declared, str):
            types = [declared]
        elif isinstance(declared, list) and declared and all(isinstance(t, str) for t in declared):
            types = list(dict.fromkeys(declared))
        else:
            raise SchemaError(f"{path}/type", f"must be a type name or a non-empty list of them, got {declared!r}")
        for t in types:
            if t not in _TYPES:
                raise SchemaError(f"{path}/type", f"unknown type {t!r}")
        if "integer" in types and "number" in types:
            types.remove("integer")  # number includes the integers
        # keywords of types that are not allowed here
        allowed = set().union(*(_KEYWORDS[t] for t in types))
        for key in schema.keys() - allowed - _COMBINATORS:
            owner = next(t for t in _TYPES if key in _KEYWORDS[t])
            raise SchemaError(f"{path}/{key}", f"keyword {key!r} applies to {owner}s, but the type is "
                                               f"{' or '.join(types)}")
        return types

    def typed(self, kind: str, schema: dict, path: str) -> str:
        if kind == "any":
            return self.any_value(ANY_DEPTH)
        return getattr(self, f"type_{kind}")(schema, path)

    # ---- references and combinations --------------------------------------------------------------------------

    def resolve(self, ref: Any, path: str) -> Any:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise SchemaError(f"{path}/$ref", f"only local references (#/...) are supported, got {ref!r}")
        target = self.root
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and part in target:
                target = target[part]
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                raise SchemaError(f"{path}/$ref", f"reference {ref!r} points nowhere")
        return target

    def ref(self, schema: dict, path: str) -> str:
        ref = schema["$ref"]
        if ref in self.expanding:
            raise SchemaError(f"{path}/$ref", f"recursive reference {ref!r} is not supported (a regex cannot nest "
                                              "without bound)")
        target = self.resolve(ref, path)
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        self.expanding.append(ref)
        try:
            if rest:
                return self.convert(self.merge(rest, target, path), path)
            return self.convert(target, path)
        finally:
            self.expanding.pop()

    def merge_all_of(self, schema: dict, path: str) -> dict:
        parts = schema["allOf"]
        if not isinstance(parts, list) or not parts:
            raise SchemaError(f"{path}/allOf", "must be a non-empty array of schemas")
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for i, part in enumerate(parts):
            merged = self.merge(merged, part, f"{path}/allOf/{i}")
        return merged

    def merge(self, base: dict, other: Any, path: str) -> dict:
        """Both schemas at once, where that can be written as one: object schemas (properties merged, required
        united, additionalProperties false if either says so) and keywords that do not conflict."""
        while isinstance(other, dict) and "$ref" in other:
            if other["$ref"] in self.expanding:
                raise SchemaError(f"{path}/$ref", f"recursive reference {other['$ref']!r} is not supported")
            rest = {k: v for k, v in other.items() if k != "$ref"}
            other = {**self.resolve(other["$ref"], path), **rest}
        if other is True or other == {}:
            return base
        if not isinstance(other, dict):
            raise SchemaError(path, "allOf parts must be object schemas")
        if "allOf" in other:
            other = self.merge_all_of(other, path)
        out = dict(base)
        closed = [set(s.get("properties", {})) for s in (base, other) if s.get("additionalProperties") is False]
        for key, value in other.items():
            if key in _ANNOTATIONS:
                continue
            if key not in out:
                out[key] = value
            elif key == "properties":
                props = dict(out[key])
                for name, sub in value.items():
                    props[name] = self.merge(props[name], sub, f"{path}/properties/{name}") if name in props else sub
                out[key] = props
            elif key == "required":
                out[key] = list(dict.fromkeys([*out[key], *value]))
            elif key == "additionalProperties":
                out[key] = False if (out[key] is False or value is False) else out[key]
            elif key == "type" and out[key] != value:
                a = {out[key]} if isinstance(out[key], str) else set(out[key])
                b = {value} if isinstance(value, str) else set(value)
                common = a & b or ({"integer"} if "integer" in a | b and "number" in a | b else set())
                if not common:
                    raise SchemaError(f"{path}/type", f"allOf parts disagree on the type ({out[key]} vs {value})")
                out[key] = sorted(common)[0] if len(common) == 1 else sorted(common)
            elif out[key] != value:
                raise SchemaError(f"{path}/{key}", f"allOf parts disagree on {key!r}; only object schemas and "
                                                   "identical keywords can be combined")
        if closed:  # a part with additionalProperties false admits only its own properties
            allowed = set.intersection(*closed)
            out["properties"] = {k: v for k, v in out.get("properties", {}).items() if k in allowed}
            excluded = [r for r in out.get("required", []) if r not in allowed]
            if excluded:
                raise SchemaError(path, f"required properties {excluded} are excluded by additionalProperties false "
                                        "in another allOf part")
        return out

    # ---- values -------------------------------------------------------------------------------------------------

    def literal(self, value: Any, path: str) -> str:
        item, key = self.separators
        try:
            text = json.dumps(value, ensure_ascii=False, separators=(item, key))
        except (TypeError, ValueError) as err:
            raise SchemaError(path, f"not a JSON value: {err}") from None
        return re.escape(text)

    def any_value(self, depth: int) -> str:
        scalars = [STRING, NUMBER, BOOLEAN, NULL]
        if depth <= 0:
            return _alternation(scalars)
        inner = self.any_value(depth - 1)
        array = self.open_arr + f"({inner}({self.comma}{inner})*)?" + self.close_arr
        member = STRING + self.colon + inner
        obj = self.open_obj + f"({member}({self.comma}{member})*)?" + self.close_obj
        return _alternation(scalars + [array, obj])

    def type_null(self, schema: dict, path: str) -> str:
        return NULL

    def type_boolean(self, schema: dict, path: str) -> str:
        return BOOLEAN

    def type_integer(self, schema: dict, path: str) -> str:
        lo, lo_strict, hi, hi_strict = self.bounds(schema, path)
        self.check_multiple_of(schema, path, integer=True)
        if lo is None and hi is None:
            return INTEGER
        import math

        low = None if lo is None else (math.floor(lo) + 1 if lo_strict and lo == math.floor(lo) else math.ceil(lo))
        high = None if hi is None else (math.ceil(hi) - 1 if hi_strict and hi == math.ceil(hi) else math.floor(hi))
        try:
            return integer_range_regex(low, high)
        except ValueError as err:
            raise SchemaError(path, str(err)) from None

    def type_number(self, schema: dict, path: str) -> str:
        lo, lo_strict, hi, hi_strict = self.bounds(schema, path)
        self.check_multiple_of(schema, path, integer=False)
        if lo is None and hi is None:
            return NUMBER
        try:
            return decimal_range_regex(lo, hi, lo_strict, hi_strict)
        except ValueError as err:
            raise SchemaError(path, str(err)) from None

    def check_multiple_of(self, schema: dict, path: str, integer: bool) -> None:
        if "multipleOf" in schema and not (integer and schema["multipleOf"] == 1):
            raise SchemaError(f"{path}/multipleOf", "multipleOf is not supported (except 1 on integers)")

    def bounds(self, schema: dict, path: str) -> tuple[Decimal | None, bool, Decimal | None, bool]:
        def number(key):
            value = schema.get(key)
            if value is None or isinstance(value, bool):
                return None
            if not isinstance(value, (int, float)):
                raise SchemaError(f"{path}/{key}", f"must be a number, got {value!r}")
            return Decimal(str(value))

        lo, hi = number("minimum"), number("maximum")
        lo_strict = hi_strict = False
        ex_lo, ex_hi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        if ex_lo is True:  # draft 4: a flag on minimum
            lo_strict = True
        elif number("exclusiveMinimum") is not None and (lo is None or number("exclusiveMinimum") >= lo):
            lo, lo_strict = number("exclusiveMinimum"), True
        if ex_hi is True:
            hi_strict = True
        elif number("exclusiveMaximum") is not None and (hi is None or number("exclusiveMaximum") <= hi):
            hi, hi_strict = number("exclusiveMaximum"), True
        return lo, lo_strict, hi, hi_strict

    def type_string(self, schema: dict, path: str) -> str:
        return string_regex(schema, path)

    def type_array(self, schema: dict, path: str) -> str:
        lo, hi = schema.get("minItems", 0), schema.get("maxItems")
        for key, value in (("minItems", lo), ("maxItems", hi)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise SchemaError(f"{path}/{key}", f"must be a non-negative integer, got {value!r}")
        if schema.get("uniqueItems") is True:
            raise SchemaError(f"{path}/uniqueItems", "uniqueItems is not supported")
        if hi is not None and hi < lo:
            raise SchemaError(path, f"maxItems {hi} is below minItems {lo}")
        prefix = schema.get("prefixItems")
        items = schema.get("items", True)
        if isinstance(items, list):  # draft 4-2019 tuple form
            prefix, items = items, schema.get("additionalItems", True)
        if prefix is not None:
            return self.tuple_array(prefix, items, lo, hi, path)
        if items is False:
            if lo > 0:
                raise SchemaError(path, "items is false but minItems > 0")
            return self.open_arr + self.close_arr
        item = self.convert(items, f"{path}/items")
        return self.open_arr + _repeat_separated(item, self.comma, lo, hi) + self.close_arr

    def tuple_array(self, prefix: list, items: Any, lo: int, hi: int | None, path: str) -> str:
        parts = [self.convert(p, f"{path}/prefixItems/{i}") for i, p in enumerate(prefix)]
        if items is not False and (hi is None or hi > len(parts)):
            raise SchemaError(f"{path}/items", "prefixItems followed by more items is not supported (set items: "
                                               "false or maxItems)")
        n_max = len(parts) if hi is None else min(hi, len(parts))
        if lo > n_max:
            raise SchemaError(path, "minItems exceeds the number of prefixItems")
        tail = ""
        for i in range(n_max - 1, -1, -1):  # items from lo on may be left out, from the end
            segment = (self.comma if i else "") + parts[i] + tail
            tail = segment if i < lo else f"({segment})?"
        return self.open_arr + tail + self.close_arr

    def type_object(self, schema: dict, path: str) -> str:
        props = schema.get("properties", {})
        if not isinstance(props, dict):
            raise SchemaError(f"{path}/properties", "must be an object")
        required = schema.get("required", [])
        if not isinstance(required, list):
            raise SchemaError(f"{path}/required", "must be an array of property names")
        extra = schema.get("additionalProperties", True)
        lo, hi = schema.get("minProperties", 0), schema.get("maxProperties")
        missing = [r for r in required if r not in props]
        if missing and (extra is False or props):
            if extra is False:
                raise SchemaError(f"{path}/required", f"required properties {missing} are not allowed "
                                                      "(additionalProperties is false)")
            props = {**props, **{name: extra for name in missing}}  # required but only typed by additionalProperties
        if not props:
            if extra is False:
                if lo:
                    raise SchemaError(path, "minProperties > 0 but no property is allowed")
                return self.open_obj + self.close_obj
            value = self.convert(extra, f"{path}/additionalProperties") if extra is not True else \
                self.any_value(ANY_DEPTH - 1)
            member = STRING + self.colon + value
            return self.open_obj + _repeat_separated(member, self.comma, lo, hi) + self.close_obj
        if lo > len(props) or (hi is not None and hi < len(required)):
            raise SchemaError(path, "minProperties/maxProperties cannot be met with the declared properties")
        if lo > len(required) or (hi is not None and hi < len(props)):
            raise SchemaError(path, "minProperties/maxProperties beyond the required properties are not supported")
        members = []
        for name, sub in props.items():
            value = self.convert(sub, f"{path}/properties/{_pointer(name)}")
            members.append((self.literal(name, f"{path}/properties") + self.colon + value, name in required))
        return self.open_obj + self.members(members) + self.close_obj

    def members(self, members: list[tuple[str, bool]]) -> str:
        """Members in order; the optional ones may be left out; commas only between members written."""
        n = len(members)
        after = [""] * (n + 1)  # after[i]: members i.. when something was written before
        for i in range(n - 1, -1, -1):
            member, required = members[i]
            step = self.comma + member
            after[i] = (step if required else f"({step})?") + after[i + 1]
        first = [""] * (n + 1)  # first[i]: members i.. when nothing was written yet
        for i in range(n - 1, -1, -1):
            member, required = members[i]
            if required:
                first[i] = member + after[i + 1]
            else:
                first[i] = _alternation([member + after[i + 1], first[i + 1]]) if first[i + 1] else \
                    f"({member + after[i + 1]})?"
        return first[0]


def _spaces(separator: str) -> str:
    return re.escape(separator[len(separator.rstrip()):]) if separator != separator.rstrip() else ""


def _alternation(parts: list[str]) -> str:
    parts = list(dict.fromkeys(parts))
    return parts[0] if len(parts) == 1 else "(" + "|".join(parts) + ")"


def _repeat_separated(item: str, comma: str, lo: int, hi: int | None) -> str:
    """lo..hi items separated by comma."""
    if hi == 0:
        return ""
    more_lo = max(lo - 1, 0)
    more = "*" if hi is None and more_lo == 0 else (
        f"{{{more_lo},}}" if hi is None else f"{{{more_lo},{hi - 1}}}")
    body = f"{item}({comma}{item}){more}"
    return body if lo >= 1 else f"({body})?"


def _pointer(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")

"""JSON Schema -> the language of the JSON texts that validate, as a byte DFA or (recursive schemas) a grammar.

``compile_schema(schema)`` accepts a dict, JSON text, or a pydantic model (class or instance) and returns a
`CompiledSchema`: a byte DFA, or, when a ``$ref`` recurses, an LALR(1) grammar whose rules are the recursive
definitions (`schema_grammar.py`). ``json_schema_to_regex`` gives the same language as regex text where one
exists (no intersections, differences or recursion). Texts are compact by default (``{"a":1,"b":[2,3]}``);
``separators=(", ", ": ")`` gives ``json.dumps``' default spacing and ``whitespace`` a regex of optional
whitespace around punctuation.

Every text of the language validates (the compiler never accepts an invalid instance); a valid instance is
matched when written as the compiler writes JSON (below). Validation keywords are enforced or refused with the
JSON path of the keyword (`SchemaError`); other keywords (annotations, vendor extensions, unknown words) and
keywords of types the schema does not allow are ignored, as the specification says. See `docs/constraints.md`
for the list. How the compiler writes JSON: declared properties in schema order, then other properties where
``additionalProperties``/``patternProperties`` allow them; strings without ``\\u`` or ``\\/`` escapes; numbers
with bounds without exponent; free-form values (``{}``, ``true``) nested at most ``ANY_DEPTH`` levels.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from sglang_dsl.compiler.automaton import ByteDFA
from sglang_dsl.compiler.errors import SchemaError
from sglang_dsl.compiler.json_strings import STRING, string_node
from sglang_dsl.compiler.schema_ir import (
    EMPTY, NOTHING, Meet, Minus, Node, Re, Ref, Rep, SepList, alt, lit, refs, seq, to_regex)
from sglang_dsl.compiler.schema_automaton import to_dfa
from sglang_dsl.compiler.schema_keywords import (
    TYPE_KEYWORDS, TYPES, dependencies_as_cases, merge, negation, tags_apart, type_set, types_apart,
    validation_only)
from sglang_dsl.compiler.schema_numbers import integer_node, number_node

ANY_DEPTH = 2
BOOLEAN = r"(true|false)"
NULL = r"null"


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
        return closed_objects(method())
    raise SchemaError("#", f"a schema must be a dict, JSON text or a pydantic model, got {type(schema).__name__}")


_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")  # name -> schema
_DATA_KEYWORDS = ("enum", "const", "default", "examples")  # values, not schemas


def closed_objects(schema: Any) -> Any:
    """A pydantic model's schema with every object that lists ``properties`` and says nothing of others closed
    (``additionalProperties: false``): a model describes exactly its fields (one that allows extra fields says
    ``additionalProperties: true`` and stays open), where the specification's default would let a generated
    object carry keys of the model's own invention."""
    if isinstance(schema, list):
        return [closed_objects(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: closed_objects(sub) for name, sub in value.items()}
        else:
            out[key] = value if key in _DATA_KEYWORDS else closed_objects(value)
    if isinstance(out.get("properties"), dict) and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def schema_to_json_text(schema: Any) -> str:
    return json.dumps(schema_to_dict(schema), sort_keys=False, ensure_ascii=False)


@dataclass(frozen=True)
class SchemaLanguage:
    """A schema's language: ``start`` and, for recursive schemas, the ``rules`` it refers to."""

    start: Node
    rules: dict[str, Node] = field(default_factory=dict)


def schema_language(schema: Any, *, separators: tuple[str, str] = (",", ":"), whitespace: str | None = None
                    ) -> SchemaLanguage:
    """The language of ``schema`` (fast: no automaton is built). Raises `SchemaError` naming the offending path."""
    root = schema_to_dict(schema)
    return _Converter(root, separators, whitespace).language()


def compile_schema(schema: Any, **options) -> ByteDFA | Any:
    """A byte DFA of the schema's language, or (recursive schemas) a `lark_grammar.Grammar`."""
    language = schema_language(schema, **options)
    if language.rules:
        from sglang_dsl.compiler.schema_grammar import rules_to_grammar

        return rules_to_grammar(language.start, language.rules)
    dfa = to_dfa(language.start)
    if dfa.initial == dfa.dead:
        raise SchemaError("#", "no JSON value satisfies the schema")
    return dfa


def json_schema_to_regex(schema: Any, **options) -> str:
    """The regex of JSON documents valid under ``schema``; raises `SchemaError` naming the offending path, or
    when the language needs an automaton (intersections, differences) or a grammar (recursion)."""
    language = schema_language(schema, **options)
    text = None if language.rules else to_regex(language.start)
    if text is None:
        raise SchemaError("#", "this schema has no regex (it needs intersections, differences or recursion); "
                               "use compile_schema")
    return text


class _Recursive(Exception):
    def __init__(self, ref: str):
        self.ref = ref


class _Converter:
    def __init__(self, root: Any, separators: tuple[str, str], whitespace: str | None):
        self.root = root
        ws = f"({whitespace})?" if whitespace else ""
        item, key = separators
        self.comma = Re(ws + re.escape(item.strip()) + (ws or _spaces(item)))
        self.colon = Re(ws + re.escape(key.strip()) + (ws or _spaces(key)))
        self.open_obj, self.close_obj = Re(r"\{" + ws), Re(ws + r"\}")
        self.open_arr, self.close_arr = Re(r"\[" + ws), Re(ws + r"\]")
        self.separators = separators
        self.expanding: list[str] = []
        self.recursive: set[str] = set()  # $refs that recurse
        self.rules: dict[tuple[str, str], str] = {}  # (recursive $ref, its sibling keywords as JSON) -> rule name

    def language(self) -> SchemaLanguage:
        """Convert the root; a reference found to recurse becomes a rule (one per set of sibling keywords it is
        used with) and the conversion starts over."""
        while True:
            try:
                start = self.convert(self.root, "#")
                rules: dict[str, Node] = {}
                while len(rules) < len(self.rules):
                    for (ref, rest), name in list(self.rules.items()):
                        if name not in rules:
                            self.expanding = [ref]
                            target = self.resolve(ref, "#")
                            siblings = json.loads(rest)
                            rules[name] = self.convert_all(siblings, target, ref) if siblings else \
                                self.convert(target, ref)
                return SchemaLanguage(start, rules)
            except _Recursive as found:
                self.recursive.add(found.ref)
                self.expanding = []

    # ---- dispatch ---------------------------------------------------------------------------------------------

    def convert(self, schema: Any, path: str) -> Node:
        """The language of ``schema`` (NOTHING when no value validates)."""
        if schema is True:
            return self.any_value(ANY_DEPTH)
        if schema is False:
            return NOTHING
        if not isinstance(schema, dict):
            raise SchemaError(path, f"a schema must be an object or a boolean, got {json.dumps(schema)[:60]}")
        schema = validation_only(schema)
        if "$ref" in schema:
            return self.ref(schema, path)
        if any(k in schema for k in ("dependencies", "dependentRequired", "dependentSchemas")):
            schema = dependencies_as_cases(schema, path)
        if "allOf" in schema:
            return self.all_of(schema, path)
        if "not" in schema:
            rest = {k: v for k, v in schema.items() if k != "not"}
            return self.convert_all(rest, self.deref(negation(self.deref(schema["not"], path), f"{path}/not"),
                                                      path), path)
        if "if" in schema:
            rest = {k: v for k, v in schema.items() if k not in ("if", "then", "else")}
            cond = self.deref(schema["if"], f"{path}/if")
            yes = {"allOf": [cond, schema.get("then", True)]}
            no = {"allOf": [negation(cond, f"{path}/if"), schema.get("else", True)]}
            return self.convert({**rest, "anyOf": [yes, no]}, path)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self.alternatives(schema, key, path)
        types = self.types(schema, path)
        if "const" in schema or "enum" in schema:
            node = self.literals(schema, types, path)
        else:
            node = alt(*(self.typed(t, schema, path) for t in types))
        excluded = schema.get("\0literals")
        if excluded:
            node = self.without_literals(node, excluded, path)
        return node

    def convert_all(self, base: dict, other: Any, path: str) -> Node:
        """Values valid under both schemas: merged into one where possible, else the intersection."""
        if other is True:
            return self.convert(base, path)
        if other is False:
            return NOTHING
        merged = merge(base, validation_only(other), path)
        if merged is False:
            return NOTHING
        if merged is not None:
            return self.convert(merged, path)
        return self.meet(self.convert(base, path), self.convert(other, path), path)

    def meet(self, a: Node, b: Node, path: str) -> Node:
        if refs(a) or refs(b):
            raise SchemaError(path, "allOf parts that cannot be merged cannot contain a recursive $ref")
        return Meet((a, b))

    def types(self, schema: dict, path: str) -> list[str]:
        if "type" in schema:
            allowed = type_set(schema["type"], path)
        else:  # the types whose keywords the schema uses, else any
            allowed = {t for t in TYPES if TYPE_KEYWORDS[t] & schema.keys()} or set(TYPES)
            if "number" in allowed:
                allowed.add("integer")
        if "number" in allowed:
            allowed.discard("integer")  # number includes the integers
        return [t for t in TYPES if t in allowed]

    def typed(self, kind: str, schema: dict, path: str) -> Node:
        if kind == "null":
            return Re(NULL)
        if kind == "boolean":
            return Re(BOOLEAN)
        if kind == "string":
            return string_node(schema, path)
        if kind == "integer":
            return integer_node(schema, path)
        if kind == "number":
            return number_node(schema, path)
        if kind == "object":
            from sglang_dsl.compiler.schema_objects import object_node

            return object_node(self, schema, path)
        from sglang_dsl.compiler.schema_arrays import array_node

        return array_node(self, schema, path)

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

    def deref(self, schema: Any, path: str) -> Any:
        """``schema`` with a top-level ``$ref`` replaced by its target (siblings kept, non-recursive only)."""
        seen = []
        while isinstance(schema, dict) and "$ref" in schema:
            ref = schema["$ref"]
            if ref in seen or ref in self.expanding:
                raise SchemaError(f"{path}/$ref", f"recursive reference {ref!r} is not supported here (inside "
                                                  "not, if or a merged allOf)")
            seen.append(ref)
            target = self.resolve(ref, path)
            rest = {k: v for k, v in validation_only(schema).items() if k != "$ref"}
            if not rest:
                schema = target
            elif target is True or target == {}:
                schema = rest
            elif target is False:
                schema = False
            else:
                schema = {"allOf": [validation_only(target), rest]} if isinstance(target, dict) else target
        return schema

    def ref(self, schema: dict, path: str) -> Node:
        ref = schema["$ref"]
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        if ref in self.recursive:
            key = (ref, json.dumps(rest, sort_keys=True))
            return Ref(self.rules.setdefault(key, f"rule{len(self.rules)}"))
        if ref in self.expanding:
            raise _Recursive(ref)
        target = self.resolve(ref, path)
        self.expanding.append(ref)
        try:
            return self.convert_all(rest, target, path) if rest else self.convert(target, path)
        finally:
            self.expanding.pop()

    def all_of(self, schema: dict, path: str) -> Node:
        parts = schema["allOf"]
        if not isinstance(parts, list) or not parts:
            raise SchemaError(f"{path}/allOf", "must be a non-empty array of schemas")
        base = {k: v for k, v in schema.items() if k != "allOf"}
        pending: list[Node] = []
        for i, part in enumerate(parts):
            part = self.deref(part, f"{path}/allOf/{i}") if not self.is_recursive_ref(part) else part
            if part is True:
                continue
            if part is False:
                return NOTHING
            merged = merge(base, validation_only(part), f"{path}/allOf/{i}") if isinstance(part, dict) else None
            if merged is False:
                return NOTHING
            if merged is not None:
                base = merged
            else:
                pending.append(self.convert(part, f"{path}/allOf/{i}"))
        node = self.convert(base, path)
        for other in pending:
            node = self.meet(node, other, path)
        return node

    def is_recursive_ref(self, schema: Any) -> bool:
        return isinstance(schema, dict) and schema.get("$ref") in self.recursive

    def alternatives(self, schema: dict, key: str, path: str) -> Node:
        options = schema[key]
        if not isinstance(options, list) or not options:
            raise SchemaError(f"{path}/{key}", "must be a non-empty array of schemas")
        rest = {k: v for k, v in schema.items() if k != key}
        nodes = []
        for i, option in enumerate(options):
            where = f"{path}/{key}/{i}"
            if key == "oneOf" and len(options) > 1:
                others = [self.deref(o, where) for j, o in enumerate(options) if j != i]
                option = {"allOf": [option, *(negation(o, where) for o in others)]} if not self.disjoint(
                    option, others, where) else option
            nodes.append(self.convert_all(rest, option, where) if rest else self.convert(option, where))
        return alt(*nodes)

    def disjoint(self, option: Any, others: list, path: str) -> bool:
        """Whether no value can be valid under ``option`` and one of ``others`` (told by types or by a required
        property with different constant values), so that oneOf needs no exclusions."""
        option = self.deref(option, path)
        if not isinstance(option, dict):
            return option is False
        for other in others:
            if other is False:
                continue
            if not isinstance(other, dict) or not (types_apart(option, other) or tags_apart(option, other)):
                return False
        return True

    # ---- values -------------------------------------------------------------------------------------------------

    def literal(self, value: Any, path: str) -> Node:
        item, key = self.separators
        try:
            text = json.dumps(value, ensure_ascii=False, separators=(item, key))
        except (TypeError, ValueError) as err:
            raise SchemaError(path, f"not a JSON value: {err}") from None
        return lit(text)

    def literals(self, schema: dict, types: list[str], path: str) -> Node:
        """``const``/``enum`` values that the rest of the schema also accepts."""
        key = "const" if "const" in schema else "enum"
        values = [schema["const"]] if key == "const" else schema["enum"]
        if not isinstance(values, list):
            raise SchemaError(f"{path}/enum", "must be an array")
        rest = {k: v for k, v in schema.items() if k not in ("const", "enum", "type")}
        candidates = [self.literal(v, f"{path}/{key}") for v in values if _type_of(v) in types or (
            _type_of(v) == "integer" and "number" in types)]
        if rest and candidates:
            checker = to_dfa(alt(*(self.typed(t, rest, path) for t in types)))
            candidates = [c for c in candidates if checker.matches(_unescape(c))]
        return alt(*candidates) if candidates else NOTHING

    def without_literals(self, node: Node, excluded: list, path: str) -> Node:
        for value in excluded:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                raise SchemaError(f"{path}/not", "not with a numeric enum/const is not supported")
        if refs(node):
            raise SchemaError(f"{path}/not", "not with enum/const on a recursive schema is not supported")
        return Minus(node, alt(*(self.literal(v, f"{path}/not") for v in excluded)))

    def any_value(self, depth: int) -> Node:
        scalars = [Re(STRING), number_node({}, "#"), Re(BOOLEAN), Re(NULL)]
        if depth <= 0:
            return alt(*scalars)
        inner = self.any_value(depth - 1)
        array = seq(self.open_arr, repeat_separated(inner, self.comma, 0, None), self.close_arr)
        member = seq(Re(STRING), self.colon, inner)
        obj = seq(self.open_obj, repeat_separated(member, self.comma, 0, None), self.close_obj)
        return alt(*scalars, array, obj)


def repeat_separated(item: Node, comma: Node, lo: int, hi: int | None) -> Node:
    """lo..hi items separated by comma."""
    if hi == 0 or item == NOTHING:
        return EMPTY if lo == 0 else NOTHING
    if hi is None and lo <= 1:
        body = SepList(item, comma)
        return body if lo else Rep(body, 0, 1)
    more = Rep(seq(comma, item), max(lo - 1, 0), None if hi is None else hi - 1)
    body = seq(item, more)
    return body if lo >= 1 else Rep(body, 0, 1)


def _unescape(node: Node) -> str:
    """The text of a literal node (`lit` escapes regex metacharacters)."""
    return re.sub(r"\\(.)", r"\1", node.text, flags=re.S) if isinstance(node, Re) else ""


def _type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "integer"
    return {float: "number", str: "string", list: "array", dict: "object"}.get(type(value), "?")


def _spaces(separator: str) -> str:
    return re.escape(separator[len(separator.rstrip()):]) if separator != separator.rstrip() else ""



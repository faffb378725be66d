"""JSON Schema keywords as the compiler reads them: which ones validate (and for which instance types), how
``allOf`` parts merge into one schema, and how ``not`` is rewritten into positive keywords (a case split).

Keywords that are not validation keywords (annotations such as ``title`` or ``readOnly``, vendor keywords such as
``x-kubernetes-*``, misspellings) are ignored, as the specification says. Internal keywords start with ``\\0``:
``\\0patterns`` (more patterns a string must contain), ``\\0not`` (patterns it must not), ``\\0literals``
(values excluded by ``not`` + ``enum``/``const``), ``\\0forbid`` (sets of properties an object must not have all
of).
"""

from __future__ import annotations

from typing import Any

from sglang_dsl.compiler.errors import SchemaError

TYPE_KEYWORDS = {
    "object": {"properties", "required", "additionalProperties", "patternProperties", "minProperties",
               "maxProperties", "propertyNames", "dependencies", "dependentRequired", "dependentSchemas",
               "unevaluatedProperties", "\0forbid"},
    "array": {"items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems", "contains",
              "minContains", "maxContains", "unevaluatedItems"},
    "string": {"minLength", "maxLength", "pattern", "format", "\0patterns", "\0not"},
    "integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"},
    "number": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"},
    "boolean": set(),
    "null": set(),
}
GENERAL = {"type", "enum", "const", "allOf", "anyOf", "oneOf", "not", "if", "then", "else", "$ref", "\0literals"}
VALIDATION = GENERAL | set().union(*TYPE_KEYWORDS.values())
TYPES = tuple(TYPE_KEYWORDS)
_LOWER = ("minimum", "minLength", "minItems", "minProperties", "minContains")
_UPPER = ("maximum", "maxLength", "maxItems", "maxProperties", "maxContains")


def validation_only(schema: dict) -> dict:
    """``schema`` without the keywords that do not validate (an ``if`` without ``then``/``else`` included)."""
    out = {k: v for k, v in schema.items() if k in VALIDATION}
    if "if" in out and "then" not in out and "else" not in out:
        del out["if"]
    if "then" in out or "else" in out:
        if "if" not in out:
            out.pop("then", None)
            out.pop("else", None)
    return out


def type_set(value: Any, path: str) -> set[str]:
    """The instance types a ``type`` value allows (``number`` includes ``integer``)."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(t, str) for t in names):
        raise SchemaError(f"{path}/type", f"must be a type name or a non-empty list of them, got {value!r}")
    for t in names:
        if t not in TYPE_KEYWORDS:
            raise SchemaError(f"{path}/type", f"unknown type {t!r}")
    out = set(names)
    return out | {"integer"} if "number" in out else out


def merge(base: dict, other: dict, path: str) -> dict | bool | None:
    """One schema requiring both (validation keywords only, references resolved by the caller; False where the
    types exclude each other), or None where a keyword of both cannot be combined into one (the caller then
    intersects the two languages)."""
    out = dict(base)
    for key, value in other.items():
        if key not in out:
            out[key] = value
            continue
        mine = out[key]
        if mine == value:
            continue
        if key == "properties":
            props = dict(mine)
            for name, sub in value.items():
                props[name] = {"allOf": [props[name], sub]} if name in props else sub
            out[key] = props
        elif key == "required":
            out[key] = list(dict.fromkeys([*mine, *value]))
        elif key == "type":
            common = type_set(mine, path) & type_set(value, path)
            if not common:
                return False
            out[key] = sorted(common)
        elif key in _LOWER and _numbers(mine, value):
            out[key] = max(mine, value)
        elif key in _UPPER and _numbers(mine, value):
            out[key] = min(mine, value)
        elif key == "pattern":
            out["\0patterns"] = [*out.get("\0patterns", []), value]
        elif key in ("enum", "const"):
            values = [v for v in _values(out, key) if any(_same(v, w) for w in _values(other, key))]
            out.pop("const", None)
            out["enum"] = values
        elif key in ("\0patterns", "\0not", "\0literals", "\0forbid", "allOf"):
            out[key] = [*mine, *value]
        elif key == "anyOf" and len(mine) * len(value) <= 64:  # (a or b) and (c or d): the four cases
            out[key] = [{"allOf": [a, b]} for a in mine for b in value]
        elif key == "not":
            out[key] = {"anyOf": [mine, value]}
        elif key == "additionalProperties" and (mine is False or value is False):
            out[key] = False
        else:
            return None
    closed = [set(s.get("properties", {})) for s in (base, other) if s.get("additionalProperties") is False]
    if closed:  # a part with additionalProperties false admits only its own properties
        if base.get("patternProperties") or other.get("patternProperties"):
            return None
        allowed = set.intersection(*closed)
        out["properties"] = {k: ({"not": {}} if k not in allowed else v) for k, v in out.get("properties", {}).items()}
    return out


def _numbers(*values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _values(schema: dict, key: str) -> list:
    if key == "const" and "const" in schema:
        return [schema["const"]]
    return list(schema.get("enum", [schema.get("const")]))


def _same(a, b) -> bool:
    """JSON equality (``1 == 1.0``, ``True != 1``)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def negation(schema: Any, path: str) -> dict | bool:
    """A schema (validation keywords, references resolved) equivalent to ``not schema``, written with positive
    keywords and the internal exclusions; raises `SchemaError` where that cannot be done exactly."""
    if schema is False:
        return True
    if not isinstance(schema, dict):
        raise SchemaError(path, "must be a schema")
    keys = [k for k in schema if k in VALIDATION]
    if schema is True or not keys:
        return False
    if len(keys) > 1:  # not (a and b) = not a or not b
        return {"anyOf": [negation({k: schema[k]}, path) for k in keys]}
    key, value = keys[0], schema[keys[0]]
    if key == "not":
        return value
    if key == "format":
        from sglang_dsl.compiler.json_strings import FORMATS, UNSUPPORTED_FORMATS

        if value in FORMATS or value in UNSUPPORTED_FORMATS:
            raise SchemaError(f"{path}/format", "not with a format is not supported")
        return False  # an annotation: every value is valid, so none is under not
    if key == "type":
        rest = [t for t in TYPES if t not in type_set(value, path)]
        if "number" in type_set(value, path):
            rest = [t for t in rest if t != "integer"]
        if "number" in rest and "integer" not in rest:  # number here would include the integers
            raise SchemaError(f"{path}/type", "not integer (the non-integral numbers) is not supported")
        return {"type": rest} if rest else False
    if key in ("enum", "const"):
        values = [value] if key == "const" else value
        if not isinstance(values, list) or any(isinstance(v, (dict, list)) for v in values):
            raise SchemaError(f"{path}/{key}", "not with object or array values is not supported (their texts are "
                                               "not unique)")
        return {"\0literals": list(values)}
    if key == "required":
        return {"\0forbid": [list(value)]} if value else {"type": [t for t in TYPES if t != "object"]}
    if key == "anyOf":
        return {"allOf": [negation(v, f"{path}/anyOf/{i}") for i, v in enumerate(value)]}
    if key == "allOf":
        return {"anyOf": [negation(v, f"{path}/allOf/{i}") for i, v in enumerate(value)]}
    if key == "properties":
        return {"anyOf": [{"type": "object", "required": [name], "properties": {name: {"not": sub}}}
                          for name, sub in value.items()]}
    if key == "pattern":
        return {"anyOf": [{"type": [t for t in TYPES if t != "string"]}, {"type": "string", "\0not": [value]}]}
    swapped = _swapped_bound(key, value)
    if swapped is not None:
        owner = next(t for t in TYPES if key in TYPE_KEYWORDS[t])
        owners = {"integer", "number"} if owner == "integer" else {owner}
        return {"anyOf": [{"type": [t for t in TYPES if t not in owners]}, {"type": sorted(owners), **swapped}]}
    raise SchemaError(f"{path}/{key}", f"not with {key!r} is not supported")


def _swapped_bound(key: str, value: Any) -> dict | None:
    """The opposite bound of a length/count bound (``not minLength 3`` = ``maxLength 2``), else None."""
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    if key in ("minLength", "minItems", "minProperties") and value > 0:
        return {key.replace("min", "max"): value - 1}
    if key in ("maxLength", "maxItems", "maxProperties"):
        return {key.replace("max", "min"): value + 1}
    if key == "minimum":
        return {"exclusiveMaximum": value}
    if key == "maximum":
        return {"exclusiveMinimum": value}
    return None


def dependencies_as_cases(schema: dict, path: str) -> dict:
    """``dependencies`` / ``dependentRequired`` / ``dependentSchemas`` as a case split per property: absent, or
    present with its dependencies (``allOf`` of ``anyOf``s)."""
    rest = {k: v for k, v in schema.items() if k not in ("dependencies", "dependentRequired", "dependentSchemas")}
    cases = []
    for key in ("dependencies", "dependentRequired", "dependentSchemas"):
        table = schema.get(key, {})
        if not isinstance(table, dict):
            raise SchemaError(f"{path}/{key}", "must be an object")
        for name, need in table.items():
            present = {"required": [name, *need]} if isinstance(need, list) else {"required": [name], "allOf": [need]}
            cases.append({"anyOf": [{"\0forbid": [[name]]}, present]})
    return {**rest, "allOf": [*rest.get("allOf", []), *cases]} if cases else rest


def types_apart(a: dict, b: dict) -> bool:
    """Schemas whose ``type``s share no instance type."""
    if "type" not in a or "type" not in b:
        return False
    ta, tb = type_set(a["type"], "#"), type_set(b["type"], "#")
    return not (ta & tb)


def tags_apart(a: dict, b: dict) -> bool:
    """A property both require whose allowed constants differ."""
    for name in set(a.get("required", [])) & set(b.get("required", [])):
        va, vb = _constants(a, name), _constants(b, name)
        if va is not None and vb is not None and not any(x == y and type(x) is type(y) for x in va for y in vb):
            return True
    return False


def _constants(schema: dict, name: str) -> list | None:
    sub = schema.get("properties", {}).get(name)
    if isinstance(sub, dict):
        if "const" in sub:
            return [sub["const"]]
        if isinstance(sub.get("enum"), list):
            return sub["enum"]
    return None
